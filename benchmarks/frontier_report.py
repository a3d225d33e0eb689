"""The frontier's JSON, plots and page from the per-job records of ``benchmarks/frontier.py``.

A point is one search of one group (``NeVe``, ``asha``, ``asha_es:acc:retrain``,
``NeVe threshold_x2``, ...) in one condition: mean test accuracy of its final model ± std
over seeds against its mean cost to that model (``cost.epochs_equiv``, as ``neve-tune
compare`` reports it). Only the seeds every group of a condition finished are used, so all
points of a condition average the same seeds. The frontier of a condition is its Pareto set
(no other point at least as accurate and at most as costly, one of them strictly); for every
baseline point on it, ``neve_match`` names the cheapest NeVe point that costs less and is at
most ``MATCH_TOLERANCE`` points less accurate (None: no NeVe point does).

    python benchmarks/frontier_report.py --check     # the page == what its JSON makes?

The page (``docs/results/frontier.md``) is generated from ``docs/results/frontier/frontier.json``
and never edited by hand; ``--check`` (and ``tests/test_frontier.py``) fail when they differ.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results"
# JSON and plots go to docs/results/frontier/, not docs/results/*.json: those
# benchmarks/report_pages.py reads as compare records
FOLDER = "frontier"
PAGE = "frontier.md"
# accuracy points a NeVe point may lose and still "match" a baseline point (the issue's
# clean-data target: NeVe >= asha - 0.1 points)
MATCH_TOLERANCE = 0.1


def _mean_std(xs: Sequence[float | None]) -> tuple[float | None, float | None]:
    from neve_tune.compare._aggregate import mean_std

    return mean_std(xs)


def point_name(group: str, search: str) -> str:
    """``NeVe`` / the baseline's name in the default group, else followed by the group."""
    base = "NeVe" if search == "neve" else search
    return base if group == "default" else f"{base} {group}"


def complete_seeds(
    records: Mapping[tuple[str, str, int], Any], condition: str, groups: Sequence[str]
) -> list[int]:
    """The seeds for which every group of ``condition`` has a record."""
    seeds = {s for (c, _, s) in records if c == condition}
    return sorted(s for s in seeds if all((condition, g, s) in records for g in groups))


def _settings(record: Mapping[str, Any], search: str, group_settings: str) -> dict[str, Any]:
    run = record["runs"][0][search]
    out: dict[str, Any] = {
        "group_settings": group_settings,
        "reduction_factor": record["reduction_factor"],
        "trials": record["trials"],
        "max_epochs": record["max_epochs"],
        "data_options": record["data_options"],
    }
    if search == "neve":
        # compare's key; records cached under runs/frontier before its rename say neve_signal
        out["rung_signal"] = record.get("rung_signal", record.get("neve_signal"))
    else:
        out.update(val_metric=run.get("val_metric"), final=run.get("final"))
    return out


def points(
    records: Mapping[tuple[str, str, int], Any],
    condition: str,
    groups: Sequence[str],
    seeds: Sequence[int],
    extra: Mapping[str, Mapping[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """Every search of every group of ``condition`` as a point over ``seeds``; ``extra``
    adds settings per group (the NeVe threshold range, the selection subset)."""
    out = []
    for group in groups:
        first = records[(condition, group, seeds[0])]
        for search in first["searches"]:
            per_seed = []
            for s in seeds:
                run = records[(condition, group, s)]["runs"][0]
                per_seed.append(
                    {
                        "seed": s,
                        "test_acc": run[search]["test_acc"],
                        "cost": run[search]["cost"]["epochs_equiv"],
                        "search_cost": run[search]["search_cost"]["epochs_equiv"],
                    }
                )
            acc, acc_std = _mean_std([p["test_acc"] for p in per_seed])
            cost, cost_std = _mean_std([p["cost"] for p in per_seed])
            scored = [p["test_acc"] for p in per_seed if p["test_acc"] is not None]
            settings = _settings(first, search, first["job"]["settings"])
            if search == "neve" and extra and group in extra:
                settings.update(extra[group])
            out.append(
                {
                    "name": point_name(group, search),
                    "family": "neve" if search == "neve" else "baseline",
                    "group": group,
                    "search": search,
                    "settings": settings,
                    "per_seed": per_seed,
                    "test_acc_mean": acc,
                    "test_acc_std": acc_std,
                    "test_acc_median": statistics.median(scored) if scored else None,
                    "cost_mean": cost,
                    "cost_std": cost_std,
                }
            )
    return out


def pareto(pts: Iterable[Mapping[str, Any]]) -> list[str]:
    """Names of the points no other point dominates (at least as accurate and at most as
    costly, one of the two strictly), by increasing cost; points without a score are out."""
    scored = [p for p in pts if p["test_acc_mean"] is not None and p["cost_mean"] is not None]

    def dominates(q: Mapping[str, Any], p: Mapping[str, Any]) -> bool:
        better_eq = q["test_acc_mean"] >= p["test_acc_mean"] and q["cost_mean"] <= p["cost_mean"]
        strictly = q["test_acc_mean"] > p["test_acc_mean"] or q["cost_mean"] < p["cost_mean"]
        return better_eq and strictly

    front = [p for p in scored if not any(dominates(q, p) for q in scored)]
    return [p["name"] for p in sorted(front, key=lambda p: (p["cost_mean"], -p["test_acc_mean"]))]


def neve_match(
    baseline: Mapping[str, Any], pts: Iterable[Mapping[str, Any]], tolerance: float
) -> str | None:
    """The cheapest NeVe point costing less than ``baseline`` and at most ``tolerance``
    points (percent) less accurate; None when there is none."""
    fits = [
        p
        for p in pts
        if p["family"] == "neve"
        and p["test_acc_mean"] is not None
        and p["cost_mean"] is not None
        and p["cost_mean"] < baseline["cost_mean"]
        and 100 * p["test_acc_mean"] >= 100 * baseline["test_acc_mean"] - tolerance - 1e-9
    ]
    return min(fits, key=lambda p: p["cost_mean"])["name"] if fits else None


def condition_entry(pts: list[dict[str, Any]], seeds: Sequence[int]) -> dict[str, Any]:
    """A condition's points with its frontiers (all points, NeVe's, the baselines') and,
    for every baseline point on the frontier, the NeVe point that matches it if any."""
    front = pareto(pts)
    for p in pts:
        p["on_frontier"] = p["name"] in front
        if p["family"] == "baseline":
            p["neve_match"] = neve_match(p, pts, MATCH_TOLERANCE)
    strongest = strongest_baseline(pts)
    neve = next((p for p in pts if p["name"] == "NeVe"), None)
    return {
        "seeds": list(seeds),
        "points": pts,
        "frontier": front,
        "neve_frontier": pareto(p for p in pts if p["family"] == "neve"),
        "baseline_frontier": pareto(p for p in pts if p["family"] == "baseline"),
        "baselines_on_frontier": [
            {"name": p["name"], "neve_match": p["neve_match"]}
            for p in pts
            if p["on_frontier"] and p["family"] == "baseline"
        ],
        "strongest_baseline": None if strongest is None else strongest["name"],
        "neve_vs_strongest": None if neve is None or strongest is None else paired(neve, strongest),
    }


def strongest_baseline(pts: Iterable[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The baseline point of highest mean test accuracy, ties by the lower mean cost (the
    rule of ``compare``'s ``strongest_baseline``)."""
    scored = [p for p in pts if p["family"] == "baseline" and p["test_acc_mean"] is not None]
    return min(scored, key=lambda p: (-p["test_acc_mean"], p["cost_mean"])) if scored else None


def paired(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
    """``a`` against ``b`` seed by seed, as ``compare``'s ``vs``: test accuracy difference
    in points and cost ratio, mean and std over the seeds both scored."""
    bs = {x["seed"]: x for x in b["per_seed"]}
    pairs = [
        (x, bs[x["seed"]])
        for x in a["per_seed"]
        if x["seed"] in bs and x["test_acc"] is not None and bs[x["seed"]]["test_acc"] is not None
    ]
    diff, diff_std = _mean_std([100 * (x["test_acc"] - y["test_acc"]) for x, y in pairs])
    ratio, ratio_std = _mean_std([x["cost"] / y["cost"] for x, y in pairs if y["cost"]])
    return {
        "of": a["name"],
        "against": b["name"],
        "test_acc_diff_points": diff,
        "test_acc_diff_points_std": diff_std,
        "cost_ratio": ratio,
        "cost_ratio_std": ratio_std,
        "seeds": [x["seed"] for x, _ in pairs],
    }


def load_records(out: Path) -> dict[tuple[str, str, int], Any]:
    """The per-job records of ``out`` by (condition, group, seed)."""
    found = {}
    for path in sorted(out.glob("*__*__seed*.json")):
        record = json.loads(path.read_text())
        job = record.get("job") or {}
        if {"condition", "group", "seed"} <= job.keys():
            found[(job["condition"], job["group"], int(job["seed"]))] = record
    return found


def _neve_extra(condition: str, groups: Sequence[str]) -> dict[str, dict[str, Any]]:
    """The NeVe settings a record does not hold: threshold range and selection subset."""
    import frontier

    extra = {}
    for group in groups:
        study = frontier.job_study(condition, group)
        t = study.search_space.get("threshold")
        extra[group] = {
            "threshold_range": None if t is None else [t.low, t.high],
            "threshold_default": study.defaults["threshold"],
            "selection_subset": study.selection_subset,
            "selection": study.selection,
        }
    return extra


def build(
    records: Mapping[tuple[str, str, int], Any],
    conditions: Sequence[str],
    groups: Sequence[str],
    command: str,
    extra: Mapping[str, Mapping[str, Mapping[str, Any]]] | None = None,
    full_grid: bool = False,
) -> dict[str, Any]:
    """The frontier JSON: per condition (with at least one complete seed) its points."""
    out: dict[str, Any] = {
        "command": command,
        "full_grid": full_grid,
        "groups": list(groups),
        "match_tolerance_points": MATCH_TOLERANCE,
        "conditions": {},
    }
    for c in conditions:
        seeds = complete_seeds(records, c, groups)
        partial = sorted({s for (cc, _, s) in records if cc == c} - set(seeds))
        if not seeds:
            continue
        pts = points(records, c, groups, seeds, (extra or {}).get(c))
        first = records[(c, groups[0], seeds[0])]
        entry = condition_entry(pts, seeds)
        entry.update(study=first["study"], data_options=first["data_options"])
        entry["partial_seeds"] = partial
        out["conditions"][c] = entry
    return out


def publish(
    out: Path,
    conditions: Sequence[str],
    groups: Sequence[str],
    seeds: Sequence[int],
    trials: int,
    results: Path | None = None,
) -> int:
    """Write ``frontier.json``, one plot per condition and the page; 1 when no condition
    has a complete seed."""
    import frontier_page
    import frontier_plot

    results = RESULTS if results is None else results
    records = {  # only what the command asked for: other seeds may be running
        k: r
        for k, r in load_records(out).items()
        if k[0] in conditions and k[1] in groups and k[2] in seeds
    }
    extra = {c: _neve_extra(c, groups) for c in conditions}
    command = (
        "python benchmarks/frontier.py --conditions "
        f"{','.join(conditions)} --groups {','.join(groups)} "
        f"--seeds {','.join(map(str, seeds))} --trials {trials}"
    )
    import frontier

    full = (
        set(conditions) == set(frontier.CONDITIONS)
        and set(groups) == set(frontier.GROUPS)
        and set(seeds) >= set(range(5))
        and trials == 20
    )
    data = build(records, conditions, groups, command, extra, full_grid=full)
    if full:  # every seed of the full grid finished: its command is the script alone
        done = all(set(range(5)) <= set(e["seeds"]) for e in data["conditions"].values())
        data["full_grid"] = done and len(data["conditions"]) == len(conditions)
    if not data["conditions"]:
        print("frontier: no condition has a seed that every group finished", file=sys.stderr)
        return 1
    folder = results / FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "frontier.json").write_text(json.dumps(data, indent=1) + "\n")
    for c, entry in data["conditions"].items():
        frontier_plot.plot(entry, c, folder / f"{c}.png")
    (results / PAGE).write_text(frontier_page.render(data))
    print(f"wrote {folder / 'frontier.json'}, {len(data['conditions'])} plots, {results / PAGE}")
    return 0


def stale(results: Path | None = None) -> list[str]:
    """The page when it differs from what its JSON makes (or exists without its JSON)."""
    import frontier_page

    results = RESULTS if results is None else results
    src, page = results / FOLDER / "frontier.json", results / PAGE
    if not src.is_file():
        return [str(page)] if page.is_file() else []
    text = frontier_page.render(json.loads(src.read_text()))
    return [] if page.is_file() and page.read_text() == text else [str(page)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when the page is stale")
    args = parser.parse_args(argv)
    if not args.check:
        parser.error("nothing to do: the runner (benchmarks/frontier.py) writes the page")
    for path in stale():
        print(f"frontier_report: {path} does not match its JSON", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.exit(main())
