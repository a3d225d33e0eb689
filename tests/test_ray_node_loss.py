"""A cluster that survives a node: a head and a second node started with ``ray start`` on
this machine (one CPU each), ``neve-tune ray run --address`` with the default retries,
and the second node's raylet killed (SIGKILL) while a trial trains there. The search must
end without an error, and the trial that lost its node must resume from its checkpoint
(on the head) with the series of an uninterrupted run. Only the processes started here
are stopped: each node's whole process group (``ray start --block`` in its own session),
not ``ray stop --force``, which would end every Ray on the machine."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

pytest.importorskip("ray.tune")
psutil = pytest.importorskip("psutil")

from tests.test_ray_cluster import (  # noqa: E402
    RAY,
    _free_ports,
    _node_args,
    _stop,
    _wait_for_nodes,
)

pytestmark = [pytest.mark.ray, pytest.mark.slow]

STUDY = (
    "from neve_tune import Choice, LogUniform, Study\n"
    "STUDY = Study(name='lost_node', max_epochs=10, resources={'cpu': 1, 'gpu': 0}, "
    "search_space={'lr': LogUniform(0.03, 0.08), 'threshold': LogUniform(1e-6, 1e-5), "
    "'batch_size': Choice([64])})\n"
)


def _node_ids(address: str, env: dict) -> dict[int, str]:
    """Node manager port -> node id of the alive nodes."""
    code = (
        "import json, ray\n"
        f"ray.init(address={address!r}, log_to_driver=False)\n"
        "alive = [n for n in ray.nodes() if n['Alive']]\n"
        "print(json.dumps({n['NodeManagerPort']: n['NodeID'] for n in alive}))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        check=True,
        timeout=120,
        env=env,
        capture_output=True,
        text=True,
    )
    return {int(k): v for k, v in json.loads(out.stdout.strip().splitlines()[-1]).items()}


def _rows(trial_dir: Path) -> list[dict]:
    path = trial_dir / "result.json"
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a line being written
            pass
    return rows


def _raylet(node: subprocess.Popen) -> psutil.Process:
    for child in psutil.Process(node.pid).children(recursive=True):
        if child.name() == "raylet":
            return child
    raise AssertionError("the second node has no raylet process")


@pytest.fixture
def cluster(tmp_path):
    """Head and second node, each ``ray start --block`` in its own session; yields
    (address, env, second node's process, its node id)."""
    if not RAY.exists():
        pytest.skip("the ray command is not installed next to this Python")
    head_port, *ports = _free_ports(13)
    address = f"127.0.0.1:{head_port}"
    logs = tmp_path / "logs"
    logs.mkdir()
    # token authentication (Ray 2.60): `ray start --head` needs a token when the mode is on;
    # the test's own, in the environment of the head, the node and the drivers
    env = dict(
        os.environ,
        RAY_USAGE_STATS_ENABLED="0",
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN=secrets.token_hex(16),
        RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="2",
    )
    # each node its own temp dir, short (Ray's socket paths must stay under 108 bytes) and
    # not /tmp/ray: a `ray.init()` elsewhere on the machine must not find this cluster there
    temp = Path(tempfile.mkdtemp(prefix="neve_rn_"))
    procs: list[subprocess.Popen] = []
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
                    f"--temp-dir={temp / 'h'}",
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
                    f"--temp-dir={temp / 'n'}",
                    *_node_args(ports[6:12]),
                ],
                stdout=open(logs / "node2.log", "w"),
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        )
        _wait_for_nodes(address, 2, env)
        yield address, env, procs[1], _node_ids(address, env)[ports[6]]
    finally:
        for p in reversed(procs):
            _stop(p)
            try:  # what the node left running after its `ray start` ended (the killed node)
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(temp, ignore_errors=True)


def test_a_lost_node_costs_no_trial_and_no_epoch(cluster, tmp_path):
    address, env, node2, node2_id = cluster
    study_file = tmp_path / "lost_node.py"
    study_file.write_text(STUDY)
    storage, out = tmp_path / "shared", tmp_path / "lost.json"
    driver = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "neve_tune.cli",
            "ray",
            "run",
            str(study_file),
            "--address",
            address,
            "--num-samples",
            "2",
            "--scheduler",
            "fifo",
            "--no-stopper",
            "--storage-path",
            str(storage),
            "--name",
            "lost",
            "--json",
            str(out),
        ],  # no --max-failures: the cluster default
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        start_new_session=True,
    )
    killed_dir = None
    try:
        deadline = time.monotonic() + 300
        while killed_dir is None and time.monotonic() < deadline and driver.poll() is None:
            for trial_dir in (storage / "lost").glob("*/"):
                if any(
                    r.get("node_id") == node2_id and r.get("epoch", 0) >= 2
                    for r in _rows(trial_dir)
                ):
                    _raylet(node2).send_signal(signal.SIGKILL)  # the node is lost mid-trial
                    killed_dir = trial_dir
                    break
            time.sleep(0.1)
        assert killed_dir is not None, "no trial reached epoch 2 on the second node"
        output, _ = driver.communicate(timeout=400)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait()
    assert driver.returncode == 0, output[-4000:]
    summary = json.loads(out.read_text())
    assert len(summary["trials"]) == 2 and summary["errors"] == 0, summary
    assert all(t.get("stopped_by") for t in summary["trials"]), "both trials ran to their own end"

    rows = _rows(killed_dir)
    assert rows[0]["node_id"] == node2_id and rows[-1]["node_id"] != node2_id, "resumed on the head"
    assert rows[-1].get("done"), "and went on to its own end there"
    lost = [r["epoch"] for r in rows if r["node_id"] == node2_id]
    resumed = [r["epoch"] for r in rows if r["node_id"] != node2_id]
    assert resumed[0] == lost[-1] + 1 > 2, (
        "from its last checkpoint: no epoch lost, none trained twice"
    )
    series = {r["epoch"]: r for r in rows}  # a restored epoch reported twice keeps its last report

    import torch

    from neve_tune import load_study, run_trial

    before = torch.get_num_threads()
    torch.set_num_threads(1)  # as the trial trained (one CPU)
    try:
        config = {k: rows[-1]["config"][k] for k in ("lr", "threshold", "batch_size")}
        reference = run_trial(load_study(str(study_file)), config, evaluate_test=False)
    finally:
        torch.set_num_threads(before)
    assert sorted(series) == [m["epoch"] for m in reference.history]
    assert [series[m["epoch"]]["velocity"] for m in reference.history] == [
        m["velocity"] for m in reference.history
    ]
    assert [series[m["epoch"]]["train_loss"] for m in reference.history] == [
        m["train_loss"] for m in reference.history
    ]
