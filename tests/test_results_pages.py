"""The results pages are generated from their JSON records (benchmarks/report_pages.py):
a page that disagrees with its record fails here, and so does a generated page without one.

``tests/data/compare_tiny.json`` is a fixture, not a result: what
``neve-tune compare digits --trials 3 --repeats 2 --max-epochs 5 --json ...`` wrote, kept
to exercise the generator on a real record."""

from __future__ import annotations

import copy
import importlib.util
import json
import shutil
from pathlib import Path

import pytest

from neve_tune.compare import summary_table

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = Path(__file__).parent / "data" / "compare_tiny.json"


def _load_generator():
    spec = importlib.util.spec_from_file_location(
        "report_pages", ROOT / "benchmarks" / "report_pages.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


report_pages = _load_generator()


def test_the_committed_pages_match_their_json() -> None:
    assert (ROOT / "docs" / "results" / "index.md").is_file()
    assert report_pages.stale_pages() == []


@pytest.fixture
def results(tmp_path: Path) -> Path:
    shutil.copyfile(FIXTURE, tmp_path / "compare_digits.json")
    for path, text in report_pages.expected_pages(tmp_path).items():
        path.write_text(text)
    return tmp_path


def test_a_generated_page_holds_the_printed_table_and_every_seed(results: Path) -> None:
    record = json.loads(FIXTURE.read_text())
    page = (results / "compare_digits.md").read_text()
    assert summary_table(record) in page
    for run in record["runs"]:
        assert f"| {run['seed']} | {100 * run['neve']['test_acc']:.2f} |" in page
    assert "[digits: compare_digits](compare_digits.md)" in (results / "index.md").read_text()
    assert report_pages.stale_pages(results) == []


def test_a_page_that_disagrees_with_its_json_fails(results: Path) -> None:
    record = json.loads((results / "compare_digits.json").read_text())
    changed = copy.deepcopy(record)
    changed["runs"][0]["neve"]["test_acc"] = 0.5
    (results / "compare_digits.json").write_text(json.dumps(changed))
    assert report_pages.stale_pages(results) == [str(results / "compare_digits.md")]

    (results / "compare_digits.json").write_text(json.dumps(record))
    page = results / "compare_digits.md"
    page.write_text(page.read_text().replace("98.", "99.", 1))  # a hand edit
    assert report_pages.stale_pages(results) == [str(page)]


def test_a_generated_page_without_its_json_fails(results: Path) -> None:
    (results / "compare_digits.json").unlink()
    stale = report_pages.stale_pages(results)
    assert str(results / "index.md") in stale and str(results / "compare_digits.md") in stale


def test_the_page_command_of_make_runs_record_is_make_run() -> None:
    record = json.loads(FIXTURE.read_text())
    record.update(trials=20, seeds=[0, 1, 2, 3, 4], max_epochs=60)
    makefile = report_pages._makefile_run()
    assert makefile is not None and report_pages.command(record) == makefile
    assert report_pages.page_name(record) == "compare_digits"


def test_the_command_carries_what_differs_from_the_defaults() -> None:
    record = json.loads(FIXTURE.read_text())
    record.update(
        seeds=[10, 11],
        data_options={"label_noise": 0.2, "noise_seed": 1},
        reduction_factor=8,
        rung_signal="train_loss",
    )
    cmd = report_pages.command(record).split()
    assert cmd[:5] == ["neve-tune", "compare", "digits", "--trials", "3"]
    for flag, value in (
        ("--seed", "10"),
        ("--repeats", "2"),
        ("--max-epochs", "5"),
        ("--label-noise", "0.2"),
        ("--noise-seed", "1"),
        ("--reduction-factor", "8"),
        ("--rung-signal", "train_loss"),
    ):
        assert cmd[cmd.index(flag) + 1] == value, flag
    assert report_pages.page_name(record) == "compare_digits_label_noise0.2_noise_seed1"


def test_publishing_a_record_copies_it_and_writes_its_page(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(report_pages, "RESULTS", tmp_path / "results")
    run_dir = tmp_path / "runs" / "compare"
    run_dir.mkdir(parents=True)
    shutil.copyfile(FIXTURE, run_dir / "compare.json")
    assert report_pages.main([str(run_dir / "compare.json")]) == 0
    assert (tmp_path / "results" / "compare_digits.json").read_text() == FIXTURE.read_text()
    assert (tmp_path / "results" / "compare_digits.md").is_file()
    assert report_pages.main([str(tmp_path / "missing.json")]) == 2


def _make_run_record() -> dict:
    """The fixture with make run's settings (what the Makefile's command would record)."""
    record = json.loads(FIXTURE.read_text())
    record.update(trials=20, seeds=[0, 1, 2, 3, 4], max_epochs=60)
    return record


def test_the_readme_headline_is_generated_once_make_runs_record_is_published(
    tmp_path: Path,
) -> None:
    readme = tmp_path / "README.md"
    shutil.copyfile(ROOT / "README.md", readme)
    results = tmp_path / "results"
    results.mkdir()
    (results / "compare_other.json").write_text(FIXTURE.read_text())  # not make run's settings
    assert report_pages.expected_readme(results, readme) is None
    assert str(readme) not in report_pages.stale_pages(results, readme)

    record = _make_run_record()
    (results / "compare_digits.json").write_text(json.dumps(record))
    text = report_pages.expected_readme(results, readme)
    before, after = (
        readme.read_text().split(report_pages.BEGIN)[0],
        readme.read_text().split(report_pages.END)[1],
    )
    assert text is not None and text.startswith(before) and text.endswith(after)
    block = text[text.index(report_pages.BEGIN) : text.index(report_pages.END)]
    assert summary_table(record) in block and "pasted" not in block
    assert f"{record['cost_ratio']:.2f} of `asha`'s cost" in block
    assert str(readme) in report_pages.stale_pages(results, readme)
    readme.write_text(text)
    assert str(readme) not in report_pages.stale_pages(results, readme)
