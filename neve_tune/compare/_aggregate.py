"""Means and spreads over the repeats (seeds) of a comparison."""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from typing import Any

__all__ = ["aggregate", "mean_curve", "mean_std", "ratios"]

RATIO_KEYS = ("cost_ratio", "test_acc_diff", "search_cost_ratio")


def mean_std(xs: Sequence[float | None]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation of the finite values (None, None if none)."""
    vals = [float(x) for x in xs if x is not None and math.isfinite(float(x))]
    if not vals:
        return None, None
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)


def mean_curve(curves: Sequence[Sequence[Sequence[float]]]) -> list[list[float]]:
    """Mean over runs of the best-so-far test accuracy (a step function of cost), at every
    cost where every run already has a point, so each point averages the same runs."""
    curves = [c for c in curves if c]
    if not curves:
        return []
    start = max(c[0][0] for c in curves)
    out = []
    for x in sorted({p[0] for c in curves for p in c if p[0] >= start}):
        out.append([x, statistics.fmean([[p[1] for p in c if p[0] <= x][-1] for c in curves])])
    return out


def ratios(neve: Mapping[str, Any], base: Mapping[str, Any]) -> dict[str, float | None]:
    """NeVe's search against a baseline's: cost ratios and test accuracy difference."""

    def ratio(a: float, b: float) -> float | None:
        return a / b if b else None

    acc = (
        None
        if neve["test_acc"] is None or base["test_acc"] is None
        else neve["test_acc"] - base["test_acc"]
    )
    return {
        "cost_ratio": ratio(neve["cost"]["epochs_equiv"], base["cost"]["epochs_equiv"]),
        "test_acc_diff": acc,
        "search_cost_ratio": ratio(
            neve["search_cost"]["epochs_equiv"], base["search_cost"]["epochs_equiv"]
        ),
    }


def aggregate(runs: Sequence[Mapping[str, Any]], searches: Sequence[str]) -> dict[str, Any]:
    """Per search (``searches``: the names the runs hold them under): means ± std over runs
    of cost, test accuracy, rungs and stop reasons; NeVe's ratios against each baseline
    (``vs``; ``asha`` also at the top level, ``asha_es`` in ``vs_asha_es``) with their
    spread and per-run values."""
    out: dict[str, Any] = {}
    for method in searches:
        recs = [r[method] for r in runs]
        agg: dict[str, Any] = {"method": recs[0].get("method", method)}
        for key in ("val_metric", "final"):  # a validation search's variant
            if key in recs[0]:
                agg[key] = recs[0][key]
        for key in ("cost", "search_cost"):
            agg[key], agg[key + "_std"] = {}, {}
            for name in recs[0][key]:
                agg[key][name], agg[key + "_std"][name] = mean_std([r[key][name] for r in recs])
        agg["test_acc"], agg["test_acc_std"] = mean_std([r["test_acc"] for r in recs])
        agg["search_test_acc"], agg["search_test_acc_std"] = mean_std(
            [r["search_test_acc"] for r in recs]
        )
        agg["test_acc_runs"] = [r["test_acc"] for r in recs]
        agg["best_config"] = [r["best_config"] for r in recs]
        agg["anytime"] = mean_curve([r["anytime"] for r in recs])
        agg["epochs_by_rung"] = {
            k: statistics.fmean(r["epochs_by_rung"][k] for r in recs)
            for k in recs[0]["epochs_by_rung"]
        }
        stopped: dict[str, float] = {}
        for r in recs:
            for k, v in r["stopped_by"].items():
                stopped[k] = stopped.get(k, 0) + v / len(recs)
        agg["stopped_by"] = stopped
        agg["trials"] = [dict(t, seed=run["seed"]) for run in runs for t in run[method]["trials"]]
        out[method] = agg

    def over_runs(pick: Callable[[Mapping[str, Any]], Mapping[str, Any]]) -> dict[str, Any]:
        d: dict[str, Any] = {}
        for key in RATIO_KEYS:
            vals = [pick(r)[key] for r in runs]
            d[key], d[key + "_std"] = mean_std(vals)
            d[key + "_runs"] = vals
        return d

    if "neve" in out and "asha" in out:
        out.update(over_runs(lambda r: r))
    if "neve" in out and "asha_es" in out:
        out["vs_asha_es"] = over_runs(lambda r: r["vs_asha_es"])
    if "neve" in out:  # NeVe against every baseline, variants included
        out["vs"] = {b: over_runs(lambda r, b=b: r["vs"][b]) for b in searches if b != "neve"}
    return out
