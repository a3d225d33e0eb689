"""A two-node Ray cluster on this machine: a head and a worker node started with
``ray start`` (different ports, one CPU each), and ``neve-tune ray run --address`` as the
driver. Trials must land on both nodes and the experiment finish with a shared
``storage_path``. Only the processes started here are stopped (``ray start --block``
exits with its node's processes)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

pytest.importorskip("ray.tune")

pytestmark = [pytest.mark.ray, pytest.mark.slow]

RAY = Path(sys.executable).with_name("ray")


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _node_args(ports: list[int]) -> list[str]:
    nm, om, agent, agent_grpc, metrics, runtime_env = ports
    return [
        f"--node-manager-port={nm}",
        f"--object-manager-port={om}",
        f"--dashboard-agent-listen-port={agent}",
        f"--dashboard-agent-grpc-port={agent_grpc}",
        f"--metrics-export-port={metrics}",
        f"--runtime-env-agent-port={runtime_env}",
        "--num-cpus=1",
        "--num-gpus=0",
        "--disable-usage-stats",
        "--block",
    ]


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _wait_for_nodes(address: str, n: int, env: dict, timeout: float = 90) -> None:
    code = (
        "import ray, sys, time\n"
        f"ray.init(address={address!r}, log_to_driver=False)\n"
        "t0 = time.time()\n"
        "def alive(): return len([x for x in ray.nodes() if x['Alive']])\n"
        f"while alive() < {n} and time.time() - t0 < {timeout}:\n"
        "    time.sleep(0.5)\n"
        f"sys.exit(0 if alive() >= {n} else 1)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=timeout + 60, env=env)


@pytest.fixture
def two_node_cluster(tmp_path):
    if not RAY.exists():
        pytest.skip("the ray command is not installed next to this Python")
    head_port, *ports = _free_ports(13)
    address = f"127.0.0.1:{head_port}"
    logs = tmp_path / "logs"
    logs.mkdir()
    # Ray 2.60 enables token authentication on `ray start --head`; the joining node and
    # the driver must then use the token too (~/.ray/auth_token, written by the head)
    env = dict(
        os.environ,
        RAY_USAGE_STATS_ENABLED="0",
        RAY_AUTH_MODE="token",
        RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="2",
    )
    procs = []
    try:
        procs.append(
            subprocess.Popen(
                [
                    str(RAY),
                    "start",
                    "--head",
                    f"--port={head_port}",
                    "--node-ip-address=127.0.0.1",
                    "--include-dashboard=false",
                    *_node_args(ports[:6]),
                ],
                stdout=open(logs / "head.log", "w"),
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        )
        time.sleep(3)
        procs.append(
            subprocess.Popen(
                [
                    str(RAY),
                    "start",
                    f"--address={address}",
                    "--node-ip-address=127.0.0.1",
                    *_node_args(ports[6:12]),
                ],
                stdout=open(logs / "worker.log", "w"),
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        )
        _wait_for_nodes(address, 2, env)
        yield address, env
    finally:
        for p in reversed(procs):
            _stop(p)
        # `ray start --head` points later ray.init() calls at this cluster; it is gone now
        current = Path(tempfile.gettempdir(), "ray", "ray_current_cluster")
        if current.is_file() and current.read_text().strip().endswith(f":{head_port}"):
            current.unlink()


def test_trials_spread_over_two_nodes_with_shared_storage(two_node_cluster, tmp_path):
    study_file = tmp_path / "tiny_digits.py"
    study_file.write_text(
        "from neve_tune import Choice, LogUniform, Study\n"
        "STUDY = Study(name='tiny_digits', max_epochs=6, resources={'cpu': 1, 'gpu': 0}, "
        "search_space={'lr': LogUniform(0.03, 0.08), 'threshold': LogUniform(0.09, 0.2), "
        "'batch_size': Choice([64, 128])})\n"
    )
    address, env = two_node_cluster
    storage = tmp_path / "shared"
    out = tmp_path / "two_nodes.json"
    cmd = [
        sys.executable,
        "-m",
        "neve_tune.cli",
        "ray",
        "run",
        str(study_file),
        "--address",
        address,
        "--num-samples",
        "4",
        "--storage-path",
        str(storage),
        "--name",
        "two_nodes",
        "--json",
        str(out),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=400, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads(out.read_text())
    assert len(data["trials"]) == 4 and data["errors"] == 0
    nodes = {t["node_id"] for t in data["trials"]}
    assert len(nodes) == 2, nodes  # one CPU per node, two trials at once: both nodes ran trials
    exp = storage / "two_nodes"
    trial_dirs = [d for d in exp.iterdir() if d.is_dir() and (d / "result.json").is_file()]
    assert len(trial_dirs) == 4 and all(list(d.glob("checkpoint_*")) for d in trial_dirs)
    assert list(exp.glob("experiment_state-*.json"))
