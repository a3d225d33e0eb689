"""The package's shape: what ships in the wheel, what the library may import and touch."""

from __future__ import annotations

import ast
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


# a citation in the sources: docs/<file>.md, "<section>" or README, "<section>"
CITATION = re.compile(r'(docs/[\w.-]+\.md|README)(?:\s*,\s*"([^"]+)")?')


def _headings(path: Path) -> list[str]:
    return [line.lstrip("#").strip() for line in path.read_text().splitlines() if line.startswith("#")]


def _citations(text: str) -> list[tuple[str, str | None]]:
    return [(m.group(1), m.group(2) and " ".join(m.group(2).split())) for m in CITATION.finditer(text)]


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_docstrings_cite_documents_and_sections_that_exist(path: Path) -> None:
    """Every ``docs/x.md, "Section"`` (or ``README, "Section"``) a module cites names a
    document of the repository and a heading of it."""
    wrong = []
    for doc, section in _citations(_code(path)):
        target = ROOT / ("README.md" if doc == "README" else doc)
        if not target.is_file():
            wrong.append(f"{doc} does not exist")
        elif section and not any(section.lower() in h.lower() for h in _headings(target)):
            wrong.append(f"{doc} has no heading {section!r}")
    assert not wrong, f"{path.relative_to(ROOT)} cites: {'; '.join(wrong)}"


def _module_map() -> str:
    text = (ROOT / "docs" / "design.md").read_text()
    start = text.index("Module map")
    return text[start:text.index("```", text.index("```", start) + 3)]


def test_design_document_has_its_sections_and_maps_every_module() -> None:
    headings = _headings(ROOT / "docs" / "design.md")
    for section in ("Velocity", "The controller", "The memorisation guard", "Metric names", "Cost model",
                    "Comparison protocol", "Module map"):
        assert any(section in h for h in headings), f"docs/design.md has no heading {section!r}"
    listed = set(re.findall(r"[\w]+\.py|[\w]+/", _module_map()))
    expected = {p.name for p in PACKAGE.glob("*.py") if p.name not in ("__init__.py", "__main__.py")}
    expected |= {f"{p.parent.name}/" for p in PACKAGE.glob("*/__init__.py") if p.parent.name != "studies"}
    missing = sorted(expected - listed)
    assert not missing, f"docs/design.md's Module map does not list {missing}"


# ------------------------------------------------------------------ size, length, cycles
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in SOURCES}


def test_no_module_is_over_400_lines() -> None:
    long = {str(p.relative_to(ROOT)): n for p in SOURCES if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES}
    assert not long, f"modules over {MAX_MODULE_LINES} lines (split them by idea): {long}"


def test_no_function_is_over_60_lines_outside_the_cli() -> None:
    long = []
    for path in SOURCES:
        if "cli" in path.relative_to(PACKAGE).parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1  # type: ignore[operator]
                if n > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({n} lines)")
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines (name their steps): {long}"


def _imports(path: Path) -> set[str]:
    """The neve_tune modules ``path`` imports, at module level or inside functions; imports
    under ``if TYPE_CHECKING:`` are for type checkers only and never run."""
    tree = ast.parse(path.read_text())
    skipped = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
               for child in node.body for n in ast.walk(child)}
    package = _module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "neve_tune"}
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            target = ".".join(base + (node.module.split(".") if node.module else []))
            if target.split(".")[0] != "neve_tune":
                continue
            submodules = {f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in MODULES}
            found |= submodules
            if node.module or len(submodules) < len(node.names):  # "from . import x": x's module, not the package
                found.add(target)
    return {m for m in found if m in MODULES and m != _module_name(path)}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_import_graph_finds_a_known_edge_and_a_planted_cycle() -> None:
    graph = {name: _imports(path) for name, path in MODULES.items()}
    assert "neve_tune.checkpoint" in graph["neve_tune.train"]
    assert "neve_tune.optuna" in graph["neve_tune.compare._api"]  # imported inside a function
    assert "neve_tune.study" not in graph["neve_tune.trial"]  # under TYPE_CHECKING only
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycle_among_the_modules() -> None:
    graph = {name: _imports(path) for name, path in MODULES.items()}
    cycles = _cycles(graph)
    assert not cycles, f"modules that import each other (directly or through others): {cycles}"


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
