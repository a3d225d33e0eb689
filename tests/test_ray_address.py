"""``neve-tune ray run --address`` where no Ray listens: a one-line error naming
``--address`` in seconds (exit status 2), never ``ray.init``'s minute of retries. No Ray
is started here: ``ray.init`` is replaced by a stand-in that fails the test if reached
where the address check should have stopped the run."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("ray")

import ray  # noqa: E402

from neve_tune.cli import main as cli_main  # noqa: E402

ARGS = ["ray", "run", "digits", "--trials", "1", "--max-epochs", "1"]


@pytest.fixture
def dead_port() -> Iterator[int]:
    """A localhost port bound but not listening: connections are refused, and no other
    process can start listening there while the test runs."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        yield s.getsockname()[1]


@pytest.fixture
def no_ray_init(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        pytest.fail(
            f"ray.init{args or ''}{kwargs} was called: "
            "the address check should have stopped the run first"
        )

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", refuse)


@pytest.fixture
def no_ray_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No RAY_ADDRESS and an empty Ray temp dir: ``auto`` finds no recorded cluster."""
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    return tmp_path


def _one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in err and "--address" in err, err
    return err


@pytest.mark.parametrize("form", ["127.0.0.1:{port}", "ray://127.0.0.1:{port}", "localhost:{port}"])
def test_nothing_listening_is_a_clear_error(
    form, dead_port, no_ray_init, no_ray_env, capsys
) -> None:
    address = form.format(port=dead_port)
    assert cli_main([*ARGS, "--address", address]) == 2
    err = _one_line_error(capsys)
    assert f"--address {address}" in err and f":{dead_port}" in err and "nothing listens" in err


def test_auto_checks_ray_address_env(
    dead_port, no_ray_init, no_ray_env, monkeypatch, capsys
) -> None:
    monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{dead_port}")
    assert cli_main([*ARGS, "--address", "auto"]) == 2
    err = _one_line_error(capsys)
    assert f"RAY_ADDRESS=127.0.0.1:{dead_port}" in err and "nothing listens" in err


def test_auto_checks_the_recorded_cluster(dead_port, no_ray_init, no_ray_env, capsys) -> None:
    """A cluster ``ray start`` recorded and that has died since (the file stays behind)."""
    record = no_ray_env / "ray" / "ray_current_cluster"
    record.parent.mkdir()
    record.write_text(f"127.0.0.1:{dead_port}\n")
    assert cli_main([*ARGS, "--address", "auto"]) == 2
    err = _one_line_error(capsys)
    assert str(record) in err and f"127.0.0.1:{dead_port}" in err


@pytest.mark.parametrize(
    "address",
    [
        "10.0.0.5",
        "10.0.0.5:port",
        "10.0.0.5:99999",
        "http://10.0.0.5:8265",
        "ray://",
        "10.0.0.5:6379/x",
    ],
)
def test_malformed_address(address, no_ray_init, no_ray_env, capsys) -> None:
    assert cli_main([*ARGS, "--address", address]) == 2
    assert "expected HOST:PORT" in _one_line_error(capsys)


def test_auto_without_a_cluster_reports_ray_inits_connection_error(
    no_ray_env, monkeypatch, capsys
) -> None:
    """Neither RAY_ADDRESS nor a recorded cluster: ``ray.init`` decides (it may find a Ray
    started otherwise); its ConnectionError is one line naming --address."""
    calls: list[dict] = []

    def init(**kwargs: object) -> None:
        calls.append(kwargs)
        raise ConnectionError(
            "Could not find any running Ray instance.\nPlease specify the one to connect to."
        )

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", init)
    assert cli_main([*ARGS, "--address", "auto"]) == 2
    assert calls == [{"address": "auto"}]
    err = _one_line_error(capsys)
    assert err.endswith(
        "--address auto: cannot join the Ray cluster: Could not find any running Ray instance."
    ), err


@contextlib.contextmanager
def _server(answer: bytes | None, close: bool = False) -> Iterator[str]:
    """A localhost server that accepts, reads what the client sends, then answers
    ``answer`` (None: nothing, the connection held open) or closes at once."""
    server = socket.create_server(("127.0.0.1", 0))
    conns: list[socket.socket] = []

    def serve() -> None:
        try:
            conn, _ = server.accept()
        except OSError:
            return
        conns.append(conn)
        if close:
            conn.close()
            return
        conn.settimeout(5)
        try:
            conn.recv(1024)
            if answer is not None:
                conn.sendall(answer)
        except OSError:
            pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.getsockname()[1]}"
    finally:
        server.close()
        for c in conns:
            c.close()
        thread.join(5)


# what a gRPC server sends first: an empty SETTINGS frame on stream 0 (RFC 9113)
HTTP2_SETTINGS = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"


def test_a_grpc_head_passes_the_check(no_ray_env, monkeypatch, capsys) -> None:
    """The check only refuses what is no Ray: an HTTP/2 (gRPC) answer reaches ray.init."""
    reached: list[str] = []

    def init(address: str) -> None:
        reached.append(address)
        raise ConnectionError("stand-in for ray.init")

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", init)
    with _server(HTTP2_SETTINGS) as address:
        assert cli_main([*ARGS, "--address", address]) == 2
    assert reached == [address]
    assert "stand-in for ray.init" in _one_line_error(capsys)


@pytest.mark.parametrize(
    "answer, close, said",
    [
        (None, False, "sent nothing within 3 s"),
        (b"HTTP/1.1 400 Bad Request\r\n\r\n", False, "its answer is not HTTP/2"),
        (b"\xff" * 64, False, "its answer is not HTTP/2"),
        (b"", True, "HTTP/2"),  # closed or reset, as the timing falls
    ],
    ids=["silent", "http1", "garbage", "closes"],
)
def test_a_port_that_is_not_ray_fails_fast(
    answer, close, said, no_ray_init, no_ray_env, capsys
) -> None:
    """A port that accepts TCP but is no Ray head: exit 2 in seconds (ray.init would hang)."""
    start = time.monotonic()
    with _server(answer, close) as address:
        assert cli_main([*ARGS, "--address", address]) == 2
    err = _one_line_error(capsys)
    assert f"--address {address}: {address} is not a Ray head" in err and said in err, err
    assert time.monotonic() - start < 30  # a loose bound: the check itself waits 3 s at most


def test_bad_ray_flags_are_refused_before_ray_starts(no_ray_init, no_ray_env, capsys) -> None:
    for flag, value, said in [
        ("--reduction-factor", "1", "--reduction-factor must be a finite number > 1"),
        ("--max-concurrent", "0", "--max-concurrent must be an int >= 1"),
        ("--seed", "99999999999999999999", "--seed must be an int in [0, 4294967295]"),
        ("--num-cpus", "0", "--num-cpus must be an int >= 1"),
    ]:
        assert cli_main([*ARGS, flag, value]) == 2
        err = capsys.readouterr().err.strip()
        assert said in err and len(err.splitlines()) == 1 and "Traceback" not in err, err


def test_in_a_real_process_no_traceback_no_retries(dead_port, no_ray_env) -> None:
    """The installed entry point, with the real ray.init: exit 2 and one line on stderr.
    The subprocess timeout keeps a regression (Ray retrying) from hanging the suite."""
    proc = subprocess.run(
        [sys.executable, "-m", "neve_tune.cli", *ARGS, "--address", f"127.0.0.1:{dead_port}"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    err = proc.stderr.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert f"--address 127.0.0.1:{dead_port}" in err
