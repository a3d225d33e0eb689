"""The package's shape: what ships in the wheel, what the library may import and touch."""

from __future__ import annotations

import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "neve_tune"
SOURCES = sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)

# private internals of Optuna / Ray that once were load-bearing here; only a backend's
# _compat module may name one (with a version test beside it)
PRIVATE_NAMES = (
    "_cached_frozen_trial",
    "_trial_info",
    "_rungs",
    "_metric_op",
    "_num_stopped",
    "experiment_driver_staging_path",
    "sqlalchemy.text",
    "_storage.",
    "_get_pruned_trial_score",
)


def _code(path: Path) -> str:
    return path.read_text()


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_private_library_internals_only_in_compat_modules(path: Path) -> None:
    if path.name == "_compat.py":
        return
    text = _code(path)
    used = [name for name in PRIVATE_NAMES if name in text]
    assert not used, f"{path.relative_to(ROOT)} touches {used}: move it into the backend's _compat.py"


@pytest.mark.parametrize("path", [p for p in SOURCES if "cli" not in p.relative_to(PACKAGE).parts and p.name != "__main__.py"],
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_the_library_never_imports_the_cli(path: Path) -> None:
    text = _code(path)
    assert not re.search(r"from \.+cli\b|import neve_tune\.cli|from neve_tune\.cli", text), path


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_docstrings_cite_only_documents_that_ship(path: Path) -> None:
    assert "DESIGN section" not in _code(path) and "DESIGN.md" not in _code(path)


def test_design_document_exists_with_its_sections() -> None:
    text = (ROOT / "docs" / "design.md").read_text()
    for heading in ("Velocity", "controller", "Metric names", "Cost model", "Comparison protocol", "Module map"):
        assert heading in text, heading


def test_core_imports_neither_optuna_nor_ray() -> None:
    code = ("import sys, neve_tune, neve_tune.trial, neve_tune.compare, neve_tune.cli; "
            "bad = [m for m in ('optuna', 'ray') if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stdout + out.stderr


def test_wheel_ships_the_studies_and_load_study_works_from_it(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", str(ROOT),
                    "-w", str(wheels)], check=True, capture_output=True, cwd=tmp_path)
    (wheel,) = wheels.glob("neve_tune-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "neve_tune/studies/digits.py" in names and "neve_tune/studies/cifar10_resnet32.py" in names
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(wheel)],
                   check=True, capture_output=True, cwd=tmp_path)
    code = ("import neve_tune; from neve_tune import load_study; "
            "s = load_study('digits'); c = load_study('cifar100_resnet32'); "
            "print(neve_tune.__file__, s.name, c.data)")
    out = subprocess.run([sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {str(site)!r}); {code}"],
                         capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    path, name, data = out.stdout.split()
    assert path.startswith(str(site)) and name == "digits" and data == "cifar100"
