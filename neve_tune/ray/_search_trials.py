"""The comparison's Ray adapter: a whole search run in a temporary folder, its trials as
the comparison's records."""

from __future__ import annotations

import math
import tempfile
import warnings
from typing import Any

import ray
from ray import tune

from .._search_records import SearchTrial
from ..records import Cost
from ..study import Study
from ._search import default_max_failures, run_search

__all__ = ["search_trials"]


def search_trials(
    study: Study,
    method: str,
    *,
    trials: int,
    seed: int,
    data: Any,
    model_fn: Any = None,
    device: str | None = None,
    rung_signal: str = "train_loss",
    on_trial: Any = lambda: None,
    min_resource: int = 1,
    reduction_factor: int = 4,
) -> list[SearchTrial]:
    """The comparison's Ray adapter: :func:`run_search` in a temporary folder, its trials
    as records (``rung_signal``: the :class:`NeVeASHAScheduler` rung metric)."""

    class _Done(tune.Callback):
        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            on_trial()

        def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            on_trial()

    if not ray.is_initialized():
        ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)
    train_size = len(data.train)
    with tempfile.TemporaryDirectory(prefix="neve_compare_") as tmp:
        results = run_search(
            study,
            method=method,
            num_samples=trials,
            seed=seed,
            run_config=tune.RunConfig(
                storage_path=tmp,
                name=f"{study.name}-{method}-{seed}",
                callbacks=[_Done()],
                verbose=0,
                failure_config=tune.FailureConfig(max_failures=default_max_failures()),
            ),
            device=device,
            min_resource=min_resource,
            reduction_factor=reduction_factor,
            data=data,
            model_fn=model_fn,
            rung_signal=rung_signal if method == "neve" else None,  # the baselines rank on val
        )
        ordered = sorted(results, key=lambda r: r.metrics.get("trial_id", ""))
        return [_record(i, r, study, train_size) for i, r in enumerate(ordered)]


def _record(i: int, r: Any, study: Study, train_size: int) -> SearchTrial:
    """One Tune result as the comparison's record (a trial Tune stopped counts as pruned)."""
    df = r.metrics_dataframe
    rows = [] if df is None else df.sort_values("training_iteration").to_dict("records")
    last = r.metrics or {}
    objective = last.get("objective")
    finished = bool(last.get("done")) and last.get("stopped_by") not in ("diverged", "stalled")
    complete = finished and isinstance(objective, float) and math.isfinite(objective)
    cost = Cost.from_dict(last)
    fit, pred = last.get("subset_fit"), last.get("subset_pred")
    cost.wall_s = float(sum(x.get("epoch_time_s") or 0.0 for x in rows))
    epochs = int(last.get("epoch") or len(rows))
    if len(rows) < epochs:
        # on a retry Ray copies the progress file back from storage, which can lag
        warnings.warn(
            f"trial {i}: Ray's progress file holds {len(rows)} of its {epochs} epochs (a "
            "retry restored it from storage before the lost rows were synced): its LR and "
            "velocity series and wall time are partial; its cost in epochs is whole",
            RuntimeWarning,
            stacklevel=2,
        )
    if finished:
        stopped_by = last.get("stopped_by")
    else:
        stopped_by = (
            last.get("stopped_by")
            if last.get("stopped_by") in ("diverged", "stalled")
            else ("diverged" if last.get("diverged") else "pruned")
        )
    return SearchTrial(
        number=i,
        config=study.config({k: r.config[k] for k in study.search_space if k in r.config}),
        state="COMPLETE" if complete else ("FAIL" if r.error else "PRUNED"),
        stopped_by=stopped_by,
        epochs=epochs,
        best_epoch=last.get("best_epoch"),
        objective=float(objective) if complete else None,
        test_acc=last.get("test_acc") if complete else None,
        cost=cost,
        train_size=train_size,
        lrs=[x.get("lr") for x in rows],
        velocity=[_nan_to_none(x.get("velocity")) for x in rows],
        val_acc=[_nan_to_none(x.get("val_acc")) for x in rows],
        subset_fit=fit if isinstance(fit, float) and math.isfinite(fit) else None,
        subset_pred=pred if isinstance(pred, str) else None,
    )


def _nan_to_none(x: Any) -> float | None:
    return None if x is None or (isinstance(x, float) and not math.isfinite(x)) else float(x)
