"""The comparison's Optuna adapter: one in-memory search -> its trials as records."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import optuna
import torch

from .._search_records import SearchTrial
from ..data import DataBundle
from ..records import Cost
from ..study import Study
from ._objective import make_objective
from ._pruner import NeVePruner
from ._report import trial_history

__all__ = ["search_trials"]


def search_trials(
    study: Study,
    method: str,
    *,
    trials: int,
    seed: int,
    data: DataBundle,
    model_fn: Callable[[], torch.nn.Module] | None = None,
    device: str | None = None,
    rung_signal: str = "train_loss",
    on_trial: Callable[[], None] = lambda: None,
    min_resource: int = 1,
    reduction_factor: int = 4,
) -> list[SearchTrial]:
    """Run ``trials`` trials of ``method`` with a seeded TPE sampler and return them.

    ``neve``: :class:`NeVePruner` on ``rung_signal``; ``asha``/``asha_es``: Optuna's
    ``SuccessiveHalvingPruner`` on the study's validation metric (loss, or the error
    ``1 - val_acc``: the study minimises either); both with the same rungs.
    """
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if method == "neve":
        pruner: optuna.pruners.BasePruner = NeVePruner(
            rung_signal=rung_signal, min_resource=min_resource, reduction_factor=reduction_factor
        )
    else:
        pruner = optuna.pruners.SuccessiveHalvingPruner(
            min_resource=min_resource, reduction_factor=reduction_factor, min_early_stopping_rate=0
        )
    search = optuna.create_study(
        study_name=f"{study.name}-{method}-{seed}",
        direction="minimize",
        sampler=optuna.samplers.TPESampler(seed=seed),
        pruner=pruner,
    )
    extra: dict[str, Any] = {"model_fn": model_fn} if model_fn is not None else {}
    objective = make_objective(study, method=method, seed=seed, device=device, data=data, **extra)
    search.optimize(objective, n_trials=trials, callbacks=[lambda s, t: on_trial()], catch=())
    train_size = len(data.train)  # type: ignore[arg-type]
    return [_record(t, study, train_size) for t in search.trials]


def _record(t: optuna.trial.FrozenTrial, study: Study, train_size: int) -> SearchTrial:
    """One finished trial as the comparison's record (with its last subset fit and
    predictions, which the comparison's selection reads)."""
    attrs = t.user_attrs
    history = trial_history(t)
    complete = t.state == optuna.trial.TrialState.COMPLETE
    fits = [m["subset_fit"] for m in history if isinstance(m.get("subset_fit"), (int, float))]
    preds = [m["subset_pred"] for m in history if isinstance(m.get("subset_pred"), str)]
    return SearchTrial(
        number=t.number,
        config=study.config(t.params),
        state=t.state.name,
        stopped_by=attrs.get("stopped_by"),
        epochs=int(attrs.get("epochs") or len(history)),
        best_epoch=attrs.get("best_epoch"),
        objective=t.value if complete else None,
        test_acc=attrs.get("test_acc"),
        cost=Cost.from_dict(attrs.get("cost") or {}),
        train_size=train_size,
        lrs=[m.get("lr") for m in history],
        velocity=[m.get("velocity") for m in history],
        val_acc=[m.get("val_acc") for m in history],
        subset_fit=float(fits[-1]) if fits else None,
        subset_pred=preds[-1] if preds else None,
    )
