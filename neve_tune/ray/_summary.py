"""A finished Ray search read back: per-trial rows, the cost spent, the winning trial (by
objective or by the consensus of the trials' predictions) and the rule that picked it."""

from __future__ import annotations

import warnings
from typing import Any

from .._checks import check_choice
from ..selection_policy import SELECTIONS, SelectionPolicy, TrialOutcome
from ._result import plain_number
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


def _outcome(tid: Any, metrics: dict[str, Any], error: Any) -> TrialOutcome:
    """One Tune trial as the selection policy reads it: its last result's ``objective``,
    why it ended (``stopped_by``: the trial's own reason, or the scheduler's outcome that
    :meth:`~neve_tune.ray.NeVeASHAScheduler.callback` writes, e.g. ``"pruned"``; an error:
    ``"failed"``) and its last subset fit and predictions."""
    objective, fit, pred = (metrics.get(k) for k in ("objective", "subset_fit", "subset_pred"))
    ended = "failed" if error else metrics.get("stopped_by")
    return TrialOutcome(
        tid,
        plain_number(objective),  # NumPy and 0-d tensor scalars too
        ended if isinstance(ended, str) else None,
        plain_number(fit),
        pred if isinstance(pred, str) else None,
    )


def summarize(results: Any, selection: str = "objective") -> dict[str, Any]:
    """Per-trial rows and the winning finished trial of a search by ``selection``
    (``"objective"``: the lowest; ``"consensus"``; ``"auto"``: the consensus once the finished
    trials' ``subset_fit`` says the labels are noisy and the memorisation guard stopped one of
    them), decided by the selection policy
    (:mod:`neve_tune.selection_policy`: a finished trial ended by its own rule with a finite
    objective; a last result whose ``stopped_by`` says pruned, stalled or diverged, or an
    error, is not finished: pass the scheduler's callback so a pruned trial says so).
    ``"selection"`` in the returned dict is the decision (the rule applied, the noise
    estimate, the finished trials, why). ``"auto"`` with no finished trial's ``subset_fit``
    warns (:data:`AUTO_WITHOUT_DATA`) and picks by the objective, as
    :func:`neve_tune.optuna.pick_trial` does."""
    check_choice("selection", selection, SELECTIONS)
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
    rows, cost, outcomes = [], 0.0, []
    for tid, config, metrics, error in items:
        row = {"trial_id": tid, "config": dict(config or {}), "error": error}
        row.update({k: metrics[k] for k in keep if k in metrics and k != "trial_id"})
        rows.append(row)
        cost += float(metrics.get("epochs_equiv") or 0.0)
        outcomes.append(_outcome(tid, metrics, error))
    winner, decision = SelectionPolicy().pick(outcomes, selection)
    if selection == "auto" and decision.finished and not decision.fits:
        warnings.warn(AUTO_WITHOUT_DATA, UserWarning, stacklevel=2)
    return {
        "trials": rows,
        "best": next((r for r in rows if winner is not None and r["trial_id"] == winner), None),
        "selection": decision.as_dict(),
        "total_epochs_equiv": cost,
        "errors": sum(1 for r in rows if r["error"]),
    }
