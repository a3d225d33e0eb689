"""Every code block of the README and the docs pages runs in the tests, or says why not.

A ``python`` block runs as it is, in a fresh interpreter, unless the line before it is one
of these markers:

- ``<!-- runs-as: docs/x.py -->``: the block is that file, as written, and
  ``tests/test_readme_loop.py`` runs the file;
- ``<!-- excerpt-of: docs/x.py -->``: every line of the block, except ``...`` elisions,
  is a line of that file, in order, and the file is run there too;
- ``<!-- slow: reason -->``: runs in the slow suite (a Ray cluster, minutes of training);
- ``<!-- not-run: reason -->``: needs what a test machine lacks (a server, a GPU, data).

A ``bash`` block's ``neve-tune`` lines are parsed by the CLI's own parser (nothing runs),
its ``python benchmarks/...`` lines must name a script that exists and its ``make``
lines a Makefile target.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from neve_tune.cli import build_parser

try:
    from tests.test_readme_loop import RECIPES
except ImportError:  # tests/ on sys.path (pytest's default import mode)
    from test_readme_loop import RECIPES

ROOT = Path(__file__).resolve().parents[1]
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
MARKER = re.compile(r"^<!--\s*([\w-]+):\s*(.*?)\s*-->$")
KINDS = ("runs-as", "excerpt-of", "slow", "not-run")
FENCE = re.compile(r"^```(\w*)\s*$")


@dataclass(frozen=True)
class Block:
    path: Path
    line: int  # of the opening fence, 1-based
    lang: str
    code: str
    marker: str | None
    arg: str

    @property
    def id(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def _blocks(path: Path) -> list[Block]:
    lines = path.read_text().splitlines()
    out, i = [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        end = next(j for j in range(i + 1, len(lines)) if lines[j].rstrip() == "```")
        before = next((lines[k].strip() for k in range(i - 1, -1, -1) if lines[k].strip()), "")
        mk = MARKER.match(before)
        out.append(
            Block(
                path,
                i + 1,
                m.group(1),
                "\n".join(lines[i + 1 : end]) + "\n",
                mk.group(1) if mk else None,
                mk.group(2) if mk else "",
            )
        )
        i = end + 1
    return out


BLOCKS = [b for p in DOC_FILES for b in _blocks(p)]
PYTHON = [b for b in BLOCKS if b.lang == "python"]


def _id(block: Block) -> str:
    return block.id


def test_the_docs_have_code_blocks_of_every_kind() -> None:
    kinds = {b.marker for b in PYTHON}
    assert {None, "runs-as", "excerpt-of", "slow"} <= kinds, kinds
    assert any(b.lang == "bash" for b in BLOCKS)


@pytest.mark.parametrize("path", DOC_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_marker_is_known_has_its_reason_and_sits_on_a_python_block(path: Path) -> None:
    lines = path.read_text().splitlines()
    starts = {b.line - 1: b for b in _blocks(path)}
    for n, line in enumerate(lines):
        m = MARKER.match(line.strip())
        if not m:
            continue
        kind, reason = m.groups()
        where = f"{path.relative_to(ROOT)}:{n + 1}"
        assert kind in KINDS, f"{where}: unknown marker {kind!r} (one of {KINDS})"
        assert len(reason.split()) >= 2 or kind in ("runs-as", "excerpt-of"), (
            f"{where}: {kind} needs a reason"
        )
        nxt = next((k for k in range(n + 1, len(lines)) if lines[k].strip()), None)
        assert nxt in starts and starts[nxt].lang == "python", (
            f"{where}: the marker must precede a python block"
        )


def _recipe(block: Block) -> Path:
    path = ROOT / block.arg
    assert path.is_file(), f"{block.id}: {block.arg} does not exist"
    assert path.parent == ROOT / "docs" and path.name in RECIPES, (
        f"{block.id}: {block.arg} is not a recipe tests/test_readme_loop.py runs"
    )
    return path


@pytest.mark.parametrize("block", [b for b in PYTHON if b.marker == "runs-as"], ids=_id)
def test_a_runs_as_block_is_its_file_as_written(block: Block) -> None:
    assert block.code.strip() == _recipe(block).read_text().strip(), (
        f"{block.id} differs from {block.arg}"
    )


@pytest.mark.parametrize("block", [b for b in PYTHON if b.marker == "excerpt-of"], ids=_id)
def test_an_excerpt_is_lines_of_its_file_in_order(block: Block) -> None:
    source = [line.rstrip() for line in _recipe(block).read_text().splitlines()]
    at = 0
    for line in (ln.rstrip() for ln in block.code.splitlines()):
        if not line or line.strip().startswith("..."):
            continue
        assert line in source[at:], (
            f"{block.id}: {line.strip()!r} is not in {block.arg} (after line {at})"
        )
        at = source.index(line, at) + 1


def _run(block: Block, tmp_path: Path, timeout: int) -> None:
    env = dict(
        os.environ, PYTHONPATH=str(ROOT), HOME=str(tmp_path), OMP_NUM_THREADS="1", MPLBACKEND="Agg"
    )
    proc = subprocess.run(
        [sys.executable, "-c", block.code],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, f"{block.id} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"


@pytest.mark.parametrize("block", [b for b in PYTHON if b.marker is None], ids=_id)
def test_a_python_block_runs(block: Block, tmp_path: Path) -> None:
    _run(block, tmp_path, timeout=300)


@pytest.mark.slow
@pytest.mark.parametrize("block", [b for b in PYTHON if b.marker == "slow"], ids=_id)
def test_a_slow_python_block_runs(block: Block, tmp_path: Path) -> None:
    _run(block, tmp_path, timeout=900)


def _commands(block: Block) -> list[str]:
    """The block's command lines, continuations joined, prompts and comments dropped."""
    text = block.code.replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip().removeprefix("$ ")
        if line and not line.startswith("#"):
            out.append(line)
    return out


BASH = [b for b in BLOCKS if b.lang == "bash"]


@pytest.mark.parametrize("block", BASH, ids=_id)
def test_bash_commands_name_what_exists(block: Block) -> None:
    targets = set(re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), flags=re.M))
    for line in _commands(block):
        argv = shlex.split(line, comments=True)
        if argv[0] == "neve-tune":
            try:
                build_parser(argv[1:]).parse_args(argv[1:])
            except SystemExit as e:
                pytest.fail(f"{block.id}: `{line}` does not parse (exit {e.code})")
        elif argv[0] == "python" and argv[1].startswith("benchmarks/"):
            assert (ROOT / argv[1]).is_file(), f"{block.id}: {argv[1]} does not exist"
        elif argv[0] == "make":
            assert argv[1] in targets, f"{block.id}: the Makefile has no target {argv[1]!r}"


def test_the_readme_opens_with_the_two_commands_and_stays_short() -> None:
    text = (ROOT / "README.md").read_text()
    first = _blocks(ROOT / "README.md")[0]
    assert first.lang == "bash" and [c.split()[:2] for c in _commands(first)] == [
        ["make", "run"],
        ["make", "test"],
    ]
    assert text.index("```") < text.index("\n## "), "the two commands come before any section"
    assert len(text.splitlines()) <= 250
    assert 'pip install "neve_tune[' in text


@pytest.mark.parametrize("path", [ROOT / "README.md"], ids=["README.md"])
def test_relative_links_of_the_readme_exist(path: Path) -> None:
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", path.read_text())
    missing = [link for link in links if "://" not in link and not (path.parent / link).exists()]
    assert links and not missing, missing


def test_every_page_is_in_the_site_navigation() -> None:
    """mkdocs only notes a page left out of ``nav``; here it fails (the generated results
    pages aside, which ``docs/results/index.md`` lists as their records arrive)."""
    nav = re.split(
        r"\n(?=\S)", (ROOT / "mkdocs.yml").read_text().split("\nnav:", 1)[1], maxsplit=1
    )[0]
    listed = set(re.findall(r"([\w/.-]+\.md)\s*$", nav, flags=re.M))
    pages = {str(p.relative_to(ROOT / "docs")) for p in (ROOT / "docs").rglob("*.md")}
    generated = {p for p in pages if p.startswith("results/") and p != "results/index.md"}
    assert pages - generated <= listed, sorted(pages - generated - listed)
    assert listed <= pages, sorted(listed - pages)
    for module in (
        "neve_tune",
        "neve_tune.optuna",
        "neve_tune.ray",
        "neve_tune.lightning",
        "neve_tune.hf",
        "neve_tune.compare",
    ):
        assert any(
            f"::: {module}\n" in (ROOT / "docs" / p).read_text()
            for p in listed
            if p.startswith("api/")
        ), module


@pytest.mark.parametrize("block", BASH, ids=_id)
def test_a_worker_on_a_storage_finds_or_creates_its_study(block: Block) -> None:
    """A worker on a storage refuses a study that does not exist there: each documented
    worker line passes ``--create``, or its block runs ``optuna create-study`` first."""
    created = False
    for line in _commands(block):
        argv = shlex.split(line, comments=True)
        created = created or argv[:2] == ["optuna", "create-study"]
        if argv[:3] == ["neve-tune", "optuna", "worker"] and "--storage" in argv:
            assert created or "--create" in argv, f"{block.id}: `{line}` finds no study"
