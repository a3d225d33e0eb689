"""A finished Ray search read back: per-trial rows, the cost spent, the winning trial (by
objective or by the consensus of the trials' predictions)."""

from __future__ import annotations

import math
import warnings
from typing import Any

from .._checks import check_choice
from ._trainable import reported_metrics

__all__ = ["AUTO_WITHOUT_DATA", "summarize"]

#: what summarize(..., "auto") says when no finished trial recorded what it decides on
AUTO_WITHOUT_DATA = (
    "summarize(selection='auto'): no finished trial reported subset_fit, so 'auto' cannot tell "
    "noisy labels and picks by the objective; record it in your trainable with "
    "neve_tune.selection.SelectionSubset.from_dataset(train_set, 500, seed=0) (the same seed in "
    "every trial): codes = subset.predict(model); metrics.update(subset_pred=codes, "
    "subset_fit=subset.fit(codes)) before report_epoch (docs/ray.md)"
)


def _results(results: Any) -> list[Any]:
    """The ``Result`` objects of a ResultGrid (indexable, not always ``Iterable``)."""
    try:
        out = list(results)
    except TypeError:
        out = None
    if out is None or not all(hasattr(r, "metrics") for r in out):
        raise TypeError(f"results must be a Tune ResultGrid or ExperimentAnalysis, got {results!r}")
    return out


def summarize(results: Any, selection: str = "objective") -> dict[str, Any]:
    """Per-trial rows and the winning finished trial of a search: the lowest ``objective``,
    or by ``selection`` (``"consensus"``, or ``"auto"``: the consensus once the finished
    trials' ``subset_fit`` says the labels are noisy; :mod:`neve_tune.selection`). ``"auto"``
    with no finished trial's ``subset_fit`` warns (:data:`AUTO_WITHOUT_DATA`) and picks by
    the objective, as :func:`neve_tune.optuna.pick_trial` does."""
    from ..selection import consensus_winner, selection_mode

    check_choice("selection", selection, ("objective", "consensus", "auto"))
    if hasattr(results, "trials"):  # ExperimentAnalysis
        items = [(t.trial_id, t.config, t.last_result or {}, t.error_file) for t in results.trials]
    else:  # ResultGrid
        items = [
            (
                r.metrics.get("trial_id"),
                r.config,
                r.metrics or {},
                str(r.error) if r.error else None,
            )
            for r in _results(results)
        ]
    keep = reported_metrics("asha") + ("training_iteration", "trial_id")
    rows, cost, preds, fits = [], 0.0, {}, {}
    for tid, config, metrics, error in items:
        row = {"trial_id": tid, "config": dict(config or {}), "error": error}
        row.update({k: metrics[k] for k in keep if k in metrics and k != "trial_id"})
        rows.append(row)
        cost += float(metrics.get("epochs_equiv") or 0.0)
        if isinstance(metrics.get("subset_pred"), str):
            preds[tid] = metrics["subset_pred"]
        if isinstance(metrics.get("subset_fit"), (int, float)):
            fits[tid] = float(metrics["subset_fit"])
    finished = [
        r for r in rows if isinstance(r.get("objective"), float) and math.isfinite(r["objective"])
    ]
    if selection == "auto":
        if finished and not any(r["trial_id"] in fits for r in finished):
            warnings.warn(AUTO_WITHOUT_DATA, UserWarning, stacklevel=2)
        selection = selection_mode([fits.get(r["trial_id"]) for r in finished])
    if selection == "consensus" and finished:
        winner = consensus_winner(preds, [r["trial_id"] for r in finished])
        best = next(r for r in finished if r["trial_id"] == winner)
    else:
        best = min(finished, key=lambda r: r["objective"]) if finished else None
    return {
        "trials": rows,
        "best": best,
        "total_epochs_equiv": cost,
        "errors": sum(1 for r in rows if r["error"]),
    }
