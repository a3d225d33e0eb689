"""The package's shape: what ships in the wheel, what the library may import and touch."""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
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
    assert not used, (
        f"{path.relative_to(ROOT)} touches {used}: move it into the backend's _compat.py"
    )


@pytest.mark.parametrize(
    "path",
    [p for p in SOURCES if "cli" not in p.relative_to(PACKAGE).parts and p.name != "__main__.py"],
    ids=lambda p: str(p.relative_to(ROOT)),
)
def test_the_library_never_imports_the_cli(path: Path) -> None:
    text = _code(path)
    assert not re.search(r"from \.+cli\b|import neve_tune\.cli|from neve_tune\.cli", text), path


# a citation in the sources: docs/<file>.md, "<section>" or README, "<section>"
CITATION = re.compile(r'(docs/[\w.-]+\.md|README)(?:\s*,\s*"([^"]+)")?')


def _headings(path: Path) -> list[str]:
    return [
        line.lstrip("#").strip() for line in path.read_text().splitlines() if line.startswith("#")
    ]


def _citations(text: str) -> list[tuple[str, str | None]]:
    return [
        (m.group(1), m.group(2) and " ".join(m.group(2).split())) for m in CITATION.finditer(text)
    ]


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
    return text[start : text.index("```", text.index("```", start) + 3)]


def test_design_document_has_its_sections_and_maps_every_module() -> None:
    headings = _headings(ROOT / "docs" / "design.md")
    for section in (
        "Velocity",
        "The controller",
        "The memorisation guard",
        "Metric names",
        "Cost model",
        "Comparison protocol",
        "Module map",
    ):
        assert any(section in h for h in headings), f"docs/design.md has no heading {section!r}"
    # an entry is the first word of a line indented two spaces under ``neve_tune/``; a name
    # mentioned in another entry's description is not an entry
    entries = re.findall(r"^  ([\w]+\.py|[\w]+/)(?:\s|$)", _module_map(), flags=re.M)
    expected = {
        p.name for p in PACKAGE.glob("*.py") if p.name not in ("__init__.py", "__main__.py")
    }
    expected |= {
        f"{p.parent.name}/" for p in PACKAGE.glob("*/__init__.py") if p.parent.name != "studies"
    }
    twice = sorted({e for e in entries if entries.count(e) > 1})
    assert not twice, f"docs/design.md's Module map lists {twice} more than once"
    missing, stale = sorted(expected - set(entries)), sorted(set(entries) - expected)
    assert not missing, f"docs/design.md's Module map does not list {missing}"
    assert not stale, f"docs/design.md's Module map lists {stale}, not in neve_tune/"


# ------------------------------------------------------------------ size, length, cycles
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in SOURCES}


def test_no_module_is_over_400_lines() -> None:
    long = {
        str(p.relative_to(ROOT)): n
        for p in SOURCES
        if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES
    }
    assert not long, f"modules over {MAX_MODULE_LINES} lines (split them by idea): {long}"


def _body_lines(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """Lines of a function's body after its docstring: what it does, not how its
    signature is laid out (the formatter puts one parameter a line)."""
    body = node.body
    first = body[0]
    if (
        len(body) > 1
        and isinstance(first, ast.Expr)
        and isinstance(first.value, ast.Constant)
        and isinstance(first.value.value, str)
    ):
        first = body[1]
    return node.end_lineno - first.lineno + 1  # type: ignore[operator]


def test_no_function_is_over_60_lines_outside_the_cli() -> None:
    long = []
    for path in SOURCES:
        if "cli" in path.relative_to(PACKAGE).parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = _body_lines(node)
                if n > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({n} lines)")
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines (name their steps): {long}"


def _imports(path: Path) -> set[str]:
    """The neve_tune modules ``path`` imports, at module level or inside functions; imports
    under ``if TYPE_CHECKING:`` are for type checkers only and never run."""
    tree = ast.parse(path.read_text())
    skipped = {
        id(n)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for child in node.body
        for n in ast.walk(child)
    }
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
            submodules = {
                f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in MODULES
            }
            found |= submodules
            if node.module or len(submodules) < len(
                node.names
            ):  # "from . import x": x's module, not the package
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


def _package(module: str) -> str:
    """A module's node in the package graph: its subpackage of neve_tune (``neve_tune.optuna``
    for ``neve_tune.optuna._pruner``), or the module itself at the package's root."""
    sub = ".".join(module.split(".")[:2])
    return sub if sub in MODULES and MODULES[sub].name == "__init__.py" else module


def _package_graph() -> dict[str, dict[str, str]]:
    """package -> {package it imports: one importing file, as evidence}."""
    graph: dict[str, dict[str, str]] = {}
    for name, path in MODULES.items():
        edges = graph.setdefault(_package(name), {})
        for target in sorted(_imports(path)):
            if _package(target) != _package(name):
                edges.setdefault(_package(target), str(path.relative_to(ROOT)))
    return graph


def _cycle_path(graph: dict[str, dict[str, str]], component: list[str]) -> list[str]:
    """One closed path through ``component`` (a strongly connected set) from its first
    package, as ``a -> b (the file that imports)`` steps."""
    inside, start = set(component), component[0]

    def walk(path: list[str]) -> list[str] | None:
        for w in sorted(graph[path[-1]]):
            if w == start:
                return path + [start]
            if w in inside and w not in path and (found := walk(path + [w])):
                return found
        return None

    path = walk([start]) or [start]
    return [f"{a} -> {b} ({graph[a][b]})" for a, b in zip(path, path[1:])]


def test_the_package_graph_sees_an_import_inside_a_function() -> None:
    graph = _package_graph()
    # compare imports each backend inside a function, only when that backend is asked for
    assert {"neve_tune.optuna", "neve_tune.ray"} <= graph["neve_tune.compare"].keys()
    assert _package("neve_tune.optuna._pruner") == "neve_tune.optuna"
    assert _package("neve_tune.velocity") == "neve_tune.velocity"
    planted = {"a": {"b": "a.py"}, "b": {"c": "b.py"}, "c": {"a": "c.py"}, "d": {"a": "d.py"}}
    (component,) = _cycles({k: set(v) for k, v in planted.items()})
    assert _cycle_path(planted, component) == ["a -> b (a.py)", "b -> c (b.py)", "c -> a (c.py)"]


def test_no_import_cycle_among_the_packages() -> None:
    """The subpackages (optuna, ray, compare, hf, cli) and the root's modules import each
    other one way only: e.g. compare reads the backends, never the reverse."""
    graph = _package_graph()
    cycles = _cycles({k: set(v) for k, v in graph.items()})
    named = ["; ".join(_cycle_path(graph, c)) for c in cycles]
    assert not cycles, f"packages that import each other: {named}"


def _private_names_imported(path: Path) -> list[str]:
    """``file:line from M import _name`` for each private name ``path`` imports from another
    neve_tune module (a private module, ``from . import _checks``, is fine: its public names
    are its interface)."""
    package = _module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.ImportFrom):
            continue
        base = package[: len(package) - node.level + 1] if node.level else []
        target = ".".join(base + (node.module.split(".") if node.module else []))
        if target.split(".")[0] != "neve_tune":
            continue
        for alias in node.names:
            private = alias.name.startswith("_") and not alias.name.startswith("__")
            if private and f"{target}.{alias.name}" not in MODULES:
                where = f"{path.relative_to(ROOT)}:{node.lineno}"
                found.append(f"{where} from {target} import {alias.name}")
    return found


def test_the_private_name_check_tells_a_name_from_a_module(tmp_path: Path) -> None:
    names = _private_names_imported(PACKAGE / "hf" / "_callback.py")
    assert not any("_state" in n or "_search" in n for n in names)  # private modules
    planted = PACKAGE / "optuna" / "_planted_private_import.py"
    planted.write_text("from ._pruner import _helper\nfrom .. import _checks\n")
    try:
        assert _private_names_imported(planted) == [
            "neve_tune/optuna/_planted_private_import.py:1 "
            "from neve_tune.optuna._pruner import _helper"
        ]
    finally:
        planted.unlink()


def test_no_private_name_is_imported_across_modules() -> None:
    """A name with a leading underscore is its module's own; what another module needs is
    public in its (possibly private) module."""
    found = [hit for path in SOURCES for hit in _private_names_imported(path)]
    assert not found, f"private names imported across modules: {found}"


def _reexports(path: Path) -> dict[str, str]:
    """The names in a module's ``__all__`` that it imports rather than defines: name -> the
    module it imports it from."""
    package = _module_name(path).split(".")[:-1]
    tree = ast.parse(path.read_text())
    exported: list[str] = []
    sources: dict[str, str] = {}
    for node in tree.body:
        if isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            target = ".".join(base + (node.module.split(".") if node.module else []))
            sources.update({(a.asname or a.name): target for a in node.names})
        elif isinstance(node, ast.Assign) and any(
            isinstance(x, ast.Name) and x.id == "__all__" for x in node.targets
        ):
            exported = list(ast.literal_eval(node.value))
    return {name: sources[name] for name in exported if name in sources}


def _hub_names(path: Path) -> list[str]:
    """Re-exports that make ``path`` a hub: any re-export of a private module (its names
    have one home), and a public module's re-export of another public module's names (a
    public module may gather its own private parts, as ``velocity`` does ``_layers``)."""
    private = any(part.startswith("_") for part in _module_name(path).split(".")[1:])
    return [
        f"{name} (from {source})"
        for name, source in _reexports(path).items()
        if private or not any(part.startswith("_") for part in source.split(".")[1:])
    ]


def test_the_hub_check_tells_a_module_s_own_parts_from_another_module() -> None:
    assert _reexports(PACKAGE / "velocity.py")["select_layers"] == "neve_tune._layers"
    assert not _hub_names(PACKAGE / "velocity.py")  # its own private parts
    planted = PACKAGE / "_planted_hub.py"
    planted.write_text('from .checkpoint import CheckpointError\n__all__ = ["CheckpointError"]\n')
    try:
        assert _hub_names(planted) == ["CheckpointError (from neve_tune.checkpoint)"]
    finally:
        planted.unlink()


@pytest.mark.parametrize(
    "path",
    [p for p in SOURCES if p.name not in ("__init__.py", "__main__.py")],
    ids=lambda p: str(p.relative_to(ROOT)),
)
def test_no_module_re_exports_another_module_s_names(path: Path) -> None:
    """No re-export hubs: a name has one home, and code imports it from there; only the
    package ``__init__`` files (the public faces) and a public module's own private parts
    gather names."""
    names = _hub_names(path)
    assert not names, f"{path.relative_to(ROOT)} re-exports {names}: import them from their home"


# the Lightning and Hugging Face callbacks and the helpers they share
INTEGRATIONS = [
    p for p in SOURCES if p.relative_to(PACKAGE).parts[0] in ("hf", "lightning.py", "_callbacks")
]


def _optuna_imports_outside_functions(path: Path) -> list[str]:
    """``file:line`` of each import of ``optuna`` or ``neve_tune.optuna`` that runs when the
    module is imported or a class is built (not inside a function)."""
    found = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                visit(child, True)
                continue
            names: list[str] = []
            if isinstance(child, ast.Import):
                names = [a.name for a in child.names]
            elif isinstance(child, ast.ImportFrom):
                names = [("." * child.level) + (child.module or "")]
            optuna = any(n.split(".")[0] == "optuna" or n.lstrip(".") == "optuna" for n in names)
            if optuna and not in_function:
                found.append(f"{path.relative_to(ROOT)}:{child.lineno}")
            visit(child, in_function)

    visit(ast.parse(path.read_text()), False)
    return found


def test_the_callbacks_import_optuna_only_when_given_a_trial() -> None:
    """Optuna is imported by a callback's methods once the user gave it an Optuna trial
    (checking it, reporting to it, pruning), never when the callback's module is imported."""
    assert {"lightning.py", "_callback.py", "forward.py"} <= {p.name for p in INTEGRATIONS}
    found = [hit for path in INTEGRATIONS for hit in _optuna_imports_outside_functions(path)]
    assert not found, f"Optuna imported at import time by the callbacks: {found}"


def _layers() -> list[tuple[int, str, list[str]]]:
    """docs/layout.md's layer table: (number, name, the files and packages it holds)."""
    text = (ROOT / "docs" / "layout.md").read_text()
    block = text[text.index("## Layers") :].split("```")[1]
    layers: list[tuple[int, str, list[str]]] = []
    for line in block.strip("\n").splitlines():
        head = re.match(r"(\d+) (\w+)\s+(.*)", line)
        entries = head.group(3) if head else line
        if head:
            layers.append((int(head.group(1)), head.group(2), []))
        layers[-1][2].extend(e.strip() for e in entries.split(",") if e.strip())
    return layers


def _layer_of() -> dict[str, tuple[int, str]]:
    """Every module of the package -> (layer number, layer name), by docs/layout.md."""
    where: dict[str, tuple[int, str]] = {}
    for number, name, entries in _layers():
        for entry in entries:
            prefix = "neve_tune" + ("." + entry.rstrip("/") if entry != "__init__.py" else "")
            prefix = prefix.removesuffix(".py")
            for module in MODULES:
                inside = entry.endswith("/") and module.startswith(prefix + ".")
                if module == prefix or inside:
                    where[module] = (number, name)
    return where


def _upward_imports(graph: dict[str, set[str]], where: dict[str, tuple[int, str]]) -> list[str]:
    return [
        f"{src} ({where[src][1]}) imports {dst} ({where[dst][1]})"
        for src, targets in sorted(graph.items())
        for dst in sorted(targets)
        if where[dst][0] > where[src][0]
    ]


def test_the_layer_table_places_every_module_once() -> None:
    layers = _layers()
    assert [n for n, _, _ in layers] == sorted((n for n, _, _ in layers), reverse=True)
    entries = [e for _, _, es in layers for e in es]
    assert len(entries) == len(set(entries)), "a file is in two layers of docs/layout.md"
    missing = sorted(set(MODULES) - set(_layer_of()))
    assert not missing, f"docs/layout.md's layer table does not place {missing}"
    where = {"a": (0, "low"), "b": (1, "high")}
    assert _upward_imports({"a": {"b"}, "b": {"a"}}, where) == ["a (low) imports b (high)"]


def test_no_layer_imports_a_higher_one() -> None:
    """velocity -> rules -> signals -> training -> backends -> integrations -> cli: a layer
    imports only its own and lower ones (docs/layout.md, "Layers"), function-level imports
    included."""
    graph = {name: _imports(path) for name, path in MODULES.items()}
    upward = _upward_imports(graph, _layer_of())
    assert not upward, f"imports that point up a layer: {upward}"


def test_core_imports_neither_optuna_nor_ray() -> None:
    code = (
        "import sys, neve_tune, neve_tune.trial, neve_tune.compare, neve_tune.cli; "
        "bad = [m for m in ('optuna', 'ray') if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stdout + out.stderr


# a module named __main__ runs the CLI when imported
_WALK = """
import importlib, json, pkgutil, sys
import neve_tune
from neve_tune.study import bundled_studies, load_study
names = ["neve_tune"] + [m.name for m in pkgutil.walk_packages(neve_tune.__path__, "neve_tune.")
                         if not m.name.endswith("__main__")]
files = {name: importlib.import_module(name).__file__ for name in names}
studies = {name: load_study(name).name for name in bundled_studies()}
print(json.dumps({"files": files, "studies": studies}))
"""


def _tree_modules() -> set[str]:
    """Every module of the source tree, as the wheel must ship it (studies/ is
    neve_tune.studies)."""
    found = {"/".join(p.relative_to(ROOT).parts) for p in SOURCES}
    found |= {f"neve_tune/studies/{p.name}" for p in (ROOT / "studies").glob("*.py")}
    return found


# about 13 s: builds and installs the wheel, then imports every module from it
def test_the_wheel_is_the_tree(tmp_path: Path) -> None:
    """The wheel ships every module of the tree (packages are discovered, not listed), and
    from the installed wheel alone, outside the checkout, every module imports and every
    bundled study loads."""
    src = tmp_path / "src"  # a clean copy: no build/ left over from an earlier build
    junk = shutil.ignore_patterns("__pycache__", "*.egg-info", "build")
    for name in ("neve_tune", "studies"):
        shutil.copytree(ROOT / name, src / name, ignore=junk)
    for name in ("pyproject.toml", "setup.py", "setup.cfg", "README.md"):
        if (ROOT / name).exists():
            shutil.copy(ROOT / name, src / name)
    wheels = tmp_path / "wheels"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            str(src),
            "-w",
            str(wheels),
        ],
        check=True,
        capture_output=True,
        cwd=tmp_path,
    )
    (wheel,) = wheels.glob("neve_tune-*.whl")
    shipped = {n for n in zipfile.ZipFile(wheel).namelist() if n.endswith(".py")}
    assert shipped == _tree_modules(), (
        sorted(_tree_modules() - shipped),
        sorted(shipped - _tree_modules()),
    )
    site = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--target",
            str(site),
            str(wheel),
        ],
        check=True,
        capture_output=True,
        cwd=tmp_path,
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"PYTHONPATH": str(site)}
    out = subprocess.run(
        [sys.executable, "-c", _WALK], capture_output=True, text=True, cwd=tmp_path, env=env
    )
    assert out.returncode == 0, out.stderr[-3000:]
    found = json.loads(out.stdout.splitlines()[-1])
    assert {
        "neve_tune.hf",
        "neve_tune.hf._callback",
        "neve_tune.lightning",
        "neve_tune.ray._stopper",
        "neve_tune.optuna._pruner",
        "neve_tune.studies",
    } <= set(found["files"])
    outside = {name: f for name, f in found["files"].items() if not f.startswith(str(site))}
    assert not outside, f"imported from outside the installed wheel: {outside}"
    studies = sorted(p.stem for p in (ROOT / "studies").glob("*.py") if not p.stem.startswith("_"))
    assert sorted(found["studies"]) == studies and all(found["studies"][n] == n for n in studies)
