"""One search's record for the comparison: its final model (the validation searches' winner
retrained on all training data, or its own best-epoch weights), its search and final costs,
its anytime curve and what stopped its trials."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import torch

from .._search_records import SearchTrial, select_trials
from ..data import DataBundle
from ..records import TrialResult
from ..study import Study
from ..trial import run_trial
from ._records import anytime_curve, epochs_by_rung, total_cost
from ._variants import final_model_note

__all__ = ["search_record"]


def search_record(
    study: Study,
    method: str,
    trials: list[SearchTrial],
    *,
    data: DataBundle,
    seed: int,
    device: str | None,
    retrain: bool,
    model_fn: Callable[[], torch.nn.Module] | None,
    name: str | None = None,
) -> dict[str, Any]:
    """One search's record. A validation search's final model is, with ``study.final``
    ``"retrain"``, its best configuration retrained on all training data, replaying its
    learning rates (``asha``: every epoch it ran; ``asha_es``: up to its best epoch), that
    retrain part of its cost; with ``"best_checkpoint"``, the winner's own weights of its
    best validation epoch (its trial's score), at no further cost. ``note`` says why the
    final model ends far below its winner (:func:`final_model_note`), else None.
    ``selection``: the selection policy's decision that picked the winner (the rule applied,
    the noise estimate, the finished trials, why)."""
    full = len(data.train)  # type: ignore[arg-type]
    # the NeVe search picks by Study.selection, the validation searches by their objective
    decision = select_trials(trials, study.selection if method == "neve" else "objective")
    curve, best = anytime_curve(trials, decision.rule)
    search_cost = total_cost(trials)
    final_cost = search_cost
    record: dict[str, Any] = {
        "method": method,
        "best_config": None if best is None else best.config,
        "search_test_acc": None if best is None else best.test_acc,
        "test_acc": None if best is None else best.test_acc,
        "retrain": None,
        "selection": decision.as_dict(),
    }
    if method != "neve":
        record.update(val_metric=study.val_metric, final=study.final)
    if best is not None and method != "neve" and retrain and study.final == "retrain":
        rt = _retrain(study, method, best, data=data, seed=seed, device=device, model_fn=model_fn)
        final_cost = search_cost + rt.cost
        record["retrain"] = {
            "epochs": rt.epochs,
            "test_acc": rt.test_acc,
            "cost": rt.cost.as_dict(full),
            "train_acc": rt.history[-1].get("train_acc") if rt.history else None,
        }
        record["test_acc"] = rt.test_acc
        curve = curve + [[final_cost.epochs_equiv(full), float(rt.test_acc)]]  # type: ignore[arg-type]
    if method != "neve":
        record["note"] = final_model_note(
            name or method, method, study.val_metric, study.final, best, record["retrain"]
        )
    stopped = Counter(t.stopped_by or t.state.lower() for t in trials)
    record.update(
        cost=final_cost.as_dict(full),
        search_cost=search_cost.as_dict(full),
        anytime=curve,
        epochs_by_rung=epochs_by_rung(trials, study.max_epochs),
        stopped_by=dict(stopped),
        trials=[t.to_dict() for t in trials],
    )
    return record


def _retrain(
    study: Study,
    method: str,
    best: SearchTrial,
    *,
    data: DataBundle,
    seed: int,
    device: str | None,
    model_fn: Callable[[], torch.nn.Module] | None,
) -> TrialResult:
    """The validation search's winner retrained on all training data, replaying its
    learning rates: every epoch it ran (``asha``), or up to its best epoch (``asha_es``)."""
    epochs = int(best.best_epoch or best.epochs) if method == "asha_es" else best.epochs
    lrs = [float(x) for x in best.lrs[:epochs]]  # type: ignore[arg-type]
    return run_trial(
        study,
        best.config,
        method="retrain",
        seed=seed,
        device=device,
        data=data,
        lr_schedule=lrs,
        model_fn=model_fn,
    )
