"""The accuracy–cost frontier (benchmarks/frontier.py, frontier_report.py, frontier_page.py):
the Pareto set, the NeVe match of a baseline point, the page generated from its JSON and
the check that fails when they disagree, on hand-made points (no training)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import frontier  # noqa: E402
import frontier_page  # noqa: E402
import frontier_report  # noqa: E402


def _point(name: str, family: str, accs: list[float], costs: list[float]) -> dict:
    per_seed = [
        {"seed": s, "test_acc": a, "cost": c, "search_cost": c}
        for s, (a, c) in enumerate(zip(accs, costs))
    ]
    acc, acc_std = frontier_report._mean_std(accs)
    cost, cost_std = frontier_report._mean_std(costs)
    settings = {"group_settings": "hand-made", "reduction_factor": 4, "data_options": {}}
    settings.update(
        {"rung_signal": "auto", "selection_subset": 500, "threshold_range": [1e-3, 1e-1]}
        if family == "neve"
        else {"val_metric": "loss", "final": "retrain"}
    )
    return {
        "name": name,
        "family": family,
        "group": "default",
        "search": "neve" if family == "neve" else name,
        "settings": settings,
        "per_seed": per_seed,
        "test_acc_mean": acc,
        "test_acc_std": acc_std,
        "test_acc_median": sorted(accs)[len(accs) // 2],
        "cost_mean": cost,
        "cost_std": cost_std,
    }


def _points() -> list[dict]:
    return [
        _point("NeVe", "neve", [0.96, 0.97], [5.0, 7.0]),  # 96.5 at 6
        _point("NeVe threshold_x2", "neve", [0.94, 0.95], [3.0, 3.0]),  # 94.5 at 3
        _point("asha", "baseline", [0.97, 0.975], [20.0, 22.0]),  # 97.25 at 21: frontier
        _point("asha_es", "baseline", [0.96, 0.96], [10.0, 10.0]),  # 96.0 at 10: dominated
        _point("asha_es:acc:best_checkpoint", "baseline", [0.965, 0.9648], [8.0, 8.0]),
    ]


def test_the_pareto_set_keeps_exactly_the_undominated_points_by_cost() -> None:
    pts = _points()
    # asha_es is beaten by NeVe (more accurate, cheaper); best_checkpoint (96.49 at 8) by
    # NeVe (96.5 at 6); the others trade accuracy for cost
    assert frontier_report.pareto(pts) == ["NeVe threshold_x2", "NeVe", "asha"]
    same = dict(pts[0], name="NeVe copy")  # a tie dominates neither
    assert frontier_report.pareto([pts[0], same]) == ["NeVe", "NeVe copy"]
    unscored = dict(pts[2], test_acc_mean=None)
    assert frontier_report.pareto([unscored, pts[3]]) == ["asha_es"]


def test_a_baseline_is_matched_only_by_a_cheaper_neve_point_within_the_tolerance() -> None:
    pts = _points()
    asha, es, ckpt = pts[2], pts[3], pts[4]
    assert frontier_report.neve_match(asha, pts, 0.1) is None  # NeVe is 0.75 points below
    assert frontier_report.neve_match(asha, pts, 1.0) == "NeVe"
    assert frontier_report.neve_match(es, pts, 0.1) == "NeVe"  # 96.5 >= 96.0 at 6 < 10
    assert frontier_report.neve_match(ckpt, pts, 0.1) == "NeVe"
    assert frontier_report.neve_match(es, pts, 2.0) == "NeVe threshold_x2"  # the cheapest


def test_a_condition_marks_its_frontier_the_unmatched_baseline_and_the_paired_figures() -> None:
    entry = frontier_report.condition_entry(_points(), [0, 1])
    on = {p["name"] for p in entry["points"] if p["on_frontier"]}
    assert on == {"NeVe threshold_x2", "NeVe", "asha"}
    assert entry["baselines_on_frontier"] == [{"name": "asha", "neve_match": None}]
    assert entry["neve_frontier"] == ["NeVe threshold_x2", "NeVe"]
    assert entry["baseline_frontier"] == ["asha_es:acc:best_checkpoint", "asha"]
    assert entry["strongest_baseline"] == "asha"
    vs = entry["neve_vs_strongest"]
    assert vs["test_acc_diff_points"] == pytest.approx(((96 - 97) + (97 - 97.5)) / 2)
    assert vs["cost_ratio"] == pytest.approx((5 / 20 + 7 / 22) / 2)
    assert vs["seeds"] == [0, 1]


def _data() -> dict:
    entry = frontier_report.condition_entry(_points(), [0, 1])
    entry.update(study="digits", data_options={"label_noise": 0.2}, partial_seeds=[2])
    return {
        "command": "python benchmarks/frontier.py --conditions digits_noise20 --seeds 0,1",
        "full_grid": False,
        "groups": ["default", "threshold_x2"],
        "match_tolerance_points": frontier_report.MATCH_TOLERANCE,
        "conditions": {"digits_noise20": entry},
    }


def test_the_page_holds_every_point_per_seed_the_frontier_and_the_commands(tmp_path) -> None:
    page = frontier_page.render(_data())
    assert "a reduced grid" in page and "seeds 0, 1" in page
    assert "python benchmarks/frontier.py --conditions digits_noise20 --seeds 0,1" in page
    assert f"```bash\n{frontier_page.FULL_GRID}\n```" in page
    assert all(f"`{g}`" in frontier_page.FULL_GRID_TEXT for g in frontier.GROUPS)
    assert "| asha | " in page and "97.00 97.50" in page and "20.0 22.0" in page
    assert "| **NeVe** | " in page and "96.50 ± 0.71" in page
    assert "- Frontier, by increasing cost: NeVe threshold_x2, NeVe, asha." in page
    assert "Baseline `asha` is on the frontier; no NeVe point is within 0.1 points" in page
    assert "Left out (not every group finished them): seeds 2." in page
    assert "![digits_noise20: accuracy against cost](frontier/digits_noise20.png)" in page


def test_the_check_fails_when_page_and_json_disagree(tmp_path) -> None:
    folder = tmp_path / frontier_report.FOLDER
    folder.mkdir()
    data = _data()
    (folder / "frontier.json").write_text(json.dumps(data))
    page = tmp_path / frontier_report.PAGE
    assert frontier_report.stale(tmp_path) == [str(page)]  # no page yet
    page.write_text(frontier_page.render(data))
    assert frontier_report.stale(tmp_path) == []
    data["conditions"]["digits_noise20"]["points"][2]["per_seed"][0]["test_acc"] = 0.5
    (folder / "frontier.json").write_text(json.dumps(data))
    assert frontier_report.stale(tmp_path) == [str(page)]
    (folder / "frontier.json").unlink()
    assert frontier_report.stale(tmp_path) == [str(page)]  # a page without its JSON


def test_the_committed_frontier_page_matches_its_json() -> None:
    assert frontier_report.stale() == []


def test_the_threshold_groups_scale_the_search_range_and_the_default_alike() -> None:
    base = frontier.job_study("digits_noise20", "default")
    half = frontier.job_study("digits_noise20", "threshold_x0.5")
    t, h = base.search_space["threshold"], half.search_space["threshold"]
    assert (h.low, h.high) == pytest.approx((t.low / 2, t.high / 2))
    assert half.defaults["threshold"] == pytest.approx(base.defaults["threshold"] / 2)
    assert half.data_options["label_noise"] == 0.2
    off = frontier.job_study("digits_clean", "subset_off")
    assert off.selection_subset == 0 and off.rung_signal == "train_loss"
    x4 = frontier.job_study("digits_noise20", "threshold_x4").search_space["threshold"]
    assert (x4.low, x4.high) == pytest.approx((t.low * 4, t.high * 4))
    both = frontier.job_study("digits_noise20", "rungs_train_loss_threshold_x2")
    assert both == frontier.job_study("digits_noise20", "threshold_x2")
    assert frontier.RUNG_SIGNAL["rungs_train_loss_threshold_x2"] == "train_loss"


def test_the_patience_groups_change_only_the_baselines_early_stopping() -> None:
    base = frontier.job_study("digits_noise20", "default")
    for group, patience in (("es_patience5", 5), ("es_patience20", 20)):
        study = frontier.job_study("digits_noise20", group)
        assert study == base.replace(early_stopping=patience)
        searches, _, with_variants, _ = frontier.GROUPS[group]
        assert searches == ("asha_es",) and with_variants  # no NeVe search to rerun


def test_rerun_neve_passes_over_the_groups_without_a_neve_search(tmp_path, capsys) -> None:
    argv = ["--rerun-neve", "--groups", "es_patience5", "--seeds", "0", "--no-report"]
    assert frontier.main([*argv, "--out", str(tmp_path)]) == 0
    assert "reran" not in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv",
    [
        ["--conditions", "digits_dirty"],
        ["--groups", "rf16"],
        ["--seeds", "0,x"],
        ["--trials", "0"],
        ["--baseline-variants", "asha:mse"],
    ],
)
def test_bad_options_are_refused_before_any_work(argv, tmp_path, capsys) -> None:
    with pytest.raises(SystemExit) as e:
        frontier.main([*argv, "--out", str(tmp_path / "runs")])
    assert e.value.code == 2
    assert argv[0] in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_the_plot_of_a_condition_is_written(tmp_path) -> None:
    import frontier_plot

    entry = frontier_report.condition_entry(_points(), [0, 1])
    frontier_plot.plot(entry, "digits_noise20", tmp_path / "digits_noise20.png")
    assert (tmp_path / "digits_noise20.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    lift = frontier_plot._label_levels(entry["points"])
    assert set(lift) == {p["name"] for p in entry["points"]} and min(lift.values()) == 0


def test_rerun_neve_refuses_a_job_without_a_record(tmp_path, capsys) -> None:
    argv = ["--rerun-neve", "--conditions", "digits_clean", "--groups", "default", "--seeds", "0"]
    with pytest.raises(SystemExit) as e:
        frontier.main([*argv, "--out", str(tmp_path)])
    assert e.value.code == 2
    assert "no record to update for digits_clean__default__seed0.json" in capsys.readouterr().err


@pytest.mark.slow
def test_rerun_neve_replaces_only_the_neve_search_and_reproduces_it(tmp_path) -> None:
    """A job, then its NeVe search run again with the same code: the record comes back the
    same (deterministic on one machine), baselines untouched, paired ratios recomputed."""
    argv = ["--conditions", "digits_clean", "--groups", "default", "--seeds", "0"]
    argv += ["--trials", "2", "--max-epochs", "2", "--out", str(tmp_path), "--no-report"]
    assert frontier.main(argv) == 0
    path = tmp_path / "digits_clean__default__seed0.json"
    before = json.loads(path.read_text())
    assert frontier.main(["--rerun-neve", *argv]) == 0
    after = json.loads(path.read_text())
    assert after["job"]["neve_rerun_seconds"] > 0

    keep = ("seed", "searches", "notes")
    assert {k: after["runs"][0][k] for k in keep} == {k: before["runs"][0][k] for k in keep}
    for name in before["searches"]:
        if name != "neve":
            assert after["runs"][0][name] == before["runs"][0][name]
    # every figure but the clock's: the same trials, stops, pick, costs and paired ratios
    assert _no_clock(after["runs"][0]) == _no_clock(before["runs"][0])
    assert after["strongest_baseline"] == before["strongest_baseline"]
    neve = after["runs"][0]["neve"]["cost"]["epochs_equiv"]
    asha = after["runs"][0]["asha"]["cost"]["epochs_equiv"]
    assert after["runs"][0]["cost_ratio"] == pytest.approx(neve / asha)


def _no_clock(x):
    if isinstance(x, dict):
        return {k: _no_clock(v) for k, v in x.items() if k not in ("wall_s", "elapsed_s")}
    if isinstance(x, list):
        return [_no_clock(v) for v in x]
    return x
