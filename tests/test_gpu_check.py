"""benchmarks/gpu_check.py must not rot: its CPU dry run is part of the suite."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


def _load():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # its dataclass looks itself up there
    spec.loader.exec_module(module)
    return module


def _rows(out: str) -> dict[str, list[str]]:
    lines = out.strip().splitlines()
    assert lines[0].startswith("gpu_check  device=") and "mode=dry-run" in lines[0]
    assert lines[1].split() == ["check", "result", "seconds", "details"]
    rows = {line.split()[0]: line.split(None, 3)[1:] for line in lines[2:] if line.strip()}
    assert "summary" in rows and len(rows) == len(lines) - 2, out  # nothing but the table on stdout
    return rows


def test_dry_run_of_the_in_process_checks(capsys):
    gpu_check = _load()
    assert gpu_check.main(["--dry-run", "--only", "velocity,overhead"]) == 0
    rows = _rows(capsys.readouterr().out)
    assert rows["velocity"][0] == "PASS" and "fp32 vs cpu: max rel diff" in rows["velocity"][2]
    assert rows["overhead"][0] == "PASS" and "exact refs" in rows["overhead"][2]
    assert rows["summary"][0] == "PASS" and rows["summary"][2] == "2 checks, 0 failed"


def test_a_failing_check_fails_the_run(capsys, monkeypatch):
    gpu_check = _load()

    def broken(sz):
        raise RuntimeError("device lost")

    monkeypatch.setattr(gpu_check, "check_velocity", broken)
    assert gpu_check.main(["--dry-run", "--only", "velocity"]) == 1
    rows = _rows(capsys.readouterr().out)
    assert rows["velocity"][0] == "FAIL" and "RuntimeError: device lost" in rows["velocity"][2]
    assert rows["summary"][:1] == ["FAIL"]


def test_unknown_check_is_refused(capsys):
    """Refused with argparse's usage error: exit status 2 and the name, never a silent 0."""
    with pytest.raises(SystemExit) as exited:
        _load().main(["--dry-run", "--only", "velocity,warp"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "--only: unknown checks ['warp']" in err


@pytest.mark.skipif(
    torch.cuda.is_available(), reason="the machine has CUDA: the real check would run"
)
def test_without_cuda_it_says_so_and_exits_0():
    proc = subprocess.run(
        [sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0
    assert "CUDA is not available" in proc.stdout


@pytest.mark.slow
@pytest.mark.ray
def test_full_dry_run_end_to_end():
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--dry-run"], capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = _rows(proc.stdout)
    assert [k for k in rows] == ["velocity", "overhead", "optuna", "ray", "compare", "summary"]
    assert all(r[0] == "PASS" for r in rows.values()), proc.stdout
    assert "intervals overlap" in rows["ray"][2]
