"""Whole Ray Tune searches of a study file: ``run_search``, its summary, and the
comparison's adapter ``search_trials``."""

from __future__ import annotations

import math
import os
import sys
import tempfile
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import ray
from ray import tune
from ray.tune.search.basic_variant import BasicVariantGenerator

from .._checks import check_choice, check_float, check_int, check_seed
from .._names import check_folder_name, check_path_fits, shown
from ..compare._records import SearchTrial, rank_by_consensus
from ..records import SCHEDULERS, Cost, val_metric_key
from ..study import Study, load_study
from ._scheduler import NeVeASHAScheduler
from ._stopper import NeVeStopper
from ._trainable import (
    TRAINABLE_METHODS,
    check_resources,
    check_resources_available,
    neve_trainable,
    reported_metrics,
    to_ray_space,
)

__all__ = [
    "APIS",
    "CLUSTER_MAX_FAILURES",
    "SCHEDULERS",
    "asha_scheduler",
    "check_search_args",
    "default_max_failures",
    "run_search",
    "search_trials",
    "summarize",
]

APIS = ("tuner", "run")
CLUSTER_MAX_FAILURES = 2  # retries of a trial on a multi-node cluster: survives a lost node, twice


def asha_scheduler(study: Study | str | os.PathLike, **overrides: Any) -> Any:
    """The validation baseline's scheduler: Ray's ``ASHAScheduler`` on the study's
    validation metric (``val_loss``, mode ``min``; ``val_acc``, mode ``max``, with
    ``study.val_metric="acc"``; ``grace_period=1, reduction_factor=4,
    max_t=study.max_epochs``); use it with ``neve_trainable(study, method="asha")``."""
    from ray.tune.schedulers import ASHAScheduler

    study = load_study(study)
    metric, mode = val_metric_key(study.val_metric)
    kw: dict[str, Any] = dict(
        metric=metric, mode=mode, grace_period=1, reduction_factor=4, max_t=study.max_epochs
    )
    kw.update(overrides)
    return ASHAScheduler(**kw)


def _scheduler(
    kind: str,
    study: Study,
    method: str,
    min_resource: int,
    reduction_factor: float,
    signal: str,
    build: bool = True,
) -> Any:
    """The trial scheduler ``kind`` names for ``method`` (``build=False``: only check
    that the pair fits)."""
    if kind == "auto":
        kind = "neve_asha" if method == "neve" else "asha"
    if kind == "fifo":
        return None
    if kind == "asha":
        if method == "neve":
            raise ValueError(
                "scheduler 'asha' decides on val_loss or val_acc, which method 'neve' does not "
                "report; use 'neve_asha'"
            )
        return (
            asha_scheduler(study, grace_period=min_resource, reduction_factor=reduction_factor)
            if build
            else None
        )
    if kind == "neve_asha":
        if method != "neve":
            raise ValueError(
                f"scheduler 'neve_asha' needs method 'neve', got {method!r}; use 'asha'"
            )
        if signal in ("consensus", "auto") and not study.selection_subset:
            raise ValueError(
                f"neve_signal={signal!r} needs a study with selection_subset > 0 (e.g. "
                "study.replace(selection_subset=500)): the predictions it compares"
            )
        kw: dict[str, Any] = (
            {"signal": signal} if signal in ("consensus", "auto") else {"metric": signal}
        )
        return (
            NeVeASHAScheduler(
                max_t=study.max_epochs,
                grace_period=min_resource,
                reduction_factor=reduction_factor,
                **kw,
            )
            if build
            else None
        )
    raise ValueError(f"scheduler must be one of {SCHEDULERS}, got {kind!r}")


class _TrialLines(tune.Callback):
    """One line per finished trial."""

    def __init__(self, out: Any = None) -> None:
        self.out = out

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        r = trial.last_result or {}
        acc = r.get("test_acc")
        print(
            f"trial {trial.trial_id} done: epochs={r.get('epoch')} stopped_by={r.get('stopped_by') or 'tune'} "
            f"train_loss={_fmt(r.get('train_loss'))} velocity={_fmt(r.get('velocity'))} "
            f"test_acc={_fmt(acc)} lr={_fmt(trial.config.get('lr'))} threshold={_fmt(trial.config.get('threshold'))}",
            file=self.out or sys.stdout,
            flush=True,
        )

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        print(
            f"trial {trial.trial_id} failed: {trial.error_file}",
            file=self.out or sys.stderr,
            flush=True,
        )


def _fmt(x: Any) -> str:
    if isinstance(x, float):
        return f"{x:.4g}"
    return "-" if x is None else str(x)


def run_search(
    study: Study | str | os.PathLike,
    *,
    method: str = "neve",
    num_samples: int = 8,
    scheduler: str = "auto",
    stopper: bool | NeVeStopper = True,
    seed: int = 0,
    storage_path: str | os.PathLike | None = None,
    name: str | None = None,
    resources: Mapping[str, float] | None = None,
    max_concurrent_trials: int | None = None,
    max_failures: int | None = None,
    min_resource: int | None = None,
    reduction_factor: float = 4,
    api: str = "tuner",
    resume: bool = False,
    device: str | None = None,
    callbacks: list | None = None,
    reuse_actors: bool = True,
    verbose: int = 0,
    data: Any = None,
    model_fn: Any = None,
    neve_signal: str | None = None,
    grace_period: int | None = None,
) -> Any:
    """Run one Ray Tune search of ``study`` on the connected Ray cluster (``ray.init``
    first; a local one is started if none is) and return its ``ResultGrid``
    (``api="tuner"``) or ``ExperimentAnalysis`` (``api="run"``).

    ``method="neve"``: :func:`neve_trainable` + :class:`NeVeStopper` +
    :class:`NeVeASHAScheduler` (``scheduler="auto"``); ``method="asha"``/``"asha_es"``:
    the validation baseline with Ray's ``ASHAScheduler`` on ``val_loss``. Both start their
    first rung at ``min_resource`` epochs (default 1; Ray calls it ``grace_period``, the
    deprecated name of this argument). Trials are sampled at random from
    :func:`to_ray_space` with a seeded ``BasicVariantGenerator`` (same seed, same
    configurations; not TPE, unlike the Optuna backend); trial ``i`` trains with seed
    ``seed``. ``storage_path`` must be shared by every node on a cluster. ``data``/
    ``model_fn`` replace the study's data set and model (see :func:`neve_trainable`).
    ``max_failures``: retries of a failed trial from its last checkpoint (Tune's
    ``FailureConfig``; -1: always); default (None) :func:`default_max_failures`: 2 on a
    cluster of several nodes, where a lost node fails the trials it ran, 0 on one machine.
    ``name`` (the experiment folder under ``storage_path``) and the study's name must be
    plain folder names (:func:`neve_tune._names.check_folder_name`).
    ``resume=True`` restores the experiment ``storage_path/name`` with ``Tuner.restore``
    and finishes it. ``reuse_actors`` (on by default) keeps trial processes between
    trials: a fresh one spends seconds importing torch (see ``benchmarks/ray_trials.py``).
    ``neve_signal`` (default: the study's :attr:`~neve_tune.Study.rung_signal`) is the rung
    signal of :class:`NeVeASHAScheduler` (``"train_loss"``,
    ``"velocity"``, ``"consensus"`` or ``"auto"``: both need ``study.selection_subset``). Every argument is checked (:func:`check_search_args`) before Ray starts.
    """
    min_resource = _renamed_min_resource(grace_period, min_resource)
    study = load_study(study)
    neve_signal = study.rung_signal if neve_signal is None else neve_signal
    res = check_search_args(
        study,
        method=method,
        num_samples=num_samples,
        scheduler=scheduler,
        seed=seed,
        resources=resources,
        max_concurrent_trials=max_concurrent_trials,
        max_failures=max_failures,
        min_resource=min_resource,
        reduction_factor=reduction_factor,
        api=api,
        neve_signal=neve_signal,
        resume=resume,
        storage_path=storage_path,
        name=name,
    )
    if not ray.is_initialized():
        ray.init(address="local", include_dashboard=False)
    check_resources_available(res)
    max_failures = default_max_failures() if max_failures is None else max_failures
    trainable = neve_trainable(
        study, method=method, seed=seed, device=device, resources=res, data=data, model_fn=model_fn
    )
    sched = _scheduler(scheduler, study, method, min_resource, reduction_factor, neve_signal)
    storage = str(Path(storage_path).resolve()) if storage_path is not None else None
    if resume:
        return _restore(trainable, storage, name)
    # the scheduler's rungs travel in Tune's experiment checkpoint through its callback
    cbs = (
        [_TrialLines()]
        + ([sched.callback()] if isinstance(sched, NeVeASHAScheduler) else [])
        + list(callbacks or [])
    )
    # a seeded sampler; it enforces the concurrency limit itself (Tune ignores
    # max_concurrent_trials for a search generator)
    search_alg = BasicVariantGenerator(random_state=seed, max_concurrent=max_concurrent_trials or 0)
    run = _run_api if api == "run" else _tuner_api
    return run(
        trainable,
        to_ray_space(study),
        num_samples=num_samples,
        search_alg=search_alg,
        scheduler=sched,
        stop=_stopper(method, stopper),
        storage=storage,
        name=name,
        max_failures=max_failures,
        reuse_actors=reuse_actors,
        callbacks=cbs,
        verbose=verbose,
    )


def default_max_failures() -> int:
    """:data:`CLUSTER_MAX_FAILURES` when the connected Ray has more than one alive node (a
    node lost mid-search fails its trials, which then resume from their checkpoints), 0 on
    one machine (there a failure is the trial's own error: retrying repeats it)."""
    alive = [n for n in ray.nodes() if n.get("Alive")]
    return CLUSTER_MAX_FAILURES if len(alive) > 1 else 0


def _renamed_min_resource(grace_period: int | None, min_resource: int | None) -> int:
    if grace_period is None:
        return 1 if min_resource is None else min_resource
    if min_resource is not None:
        raise ValueError("give min_resource only (grace_period is its deprecated name)")
    warnings.warn("grace_period is deprecated, use min_resource", DeprecationWarning, stacklevel=3)
    return grace_period


def check_search_args(
    study: Study,
    *,
    method: str = "neve",
    num_samples: int = 8,
    scheduler: str = "auto",
    seed: int = 0,
    resources: Mapping[str, float] | None = None,
    max_concurrent_trials: int | None = None,
    max_failures: int | None = None,
    min_resource: int = 1,
    reduction_factor: float = 4,
    api: str = "tuner",
    neve_signal: str | None = None,
    resume: bool = False,
    storage_path: Any = None,
    name: str | None = None,
) -> dict[str, float]:
    """Every argument of :func:`run_search` that can be judged without Ray, each error
    naming its argument; returns the per-trial resources. The command line calls it before
    ``ray.init``, so a bad flag costs no cluster start."""
    check_choice("method", method, TRAINABLE_METHODS)
    check_choice("api", api, APIS)
    neve_signal = study.rung_signal if neve_signal is None else neve_signal
    check_choice("neve_signal", neve_signal, ("train_loss", "velocity", "consensus", "auto"))
    check_choice("scheduler", scheduler, SCHEDULERS)
    check_int("num_samples", num_samples, minimum=1)
    check_int("min_resource", min_resource, minimum=1)
    check_float("reduction_factor", reduction_factor, low=1.0, low_open=True)
    check_int("max_failures", max_failures, minimum=-1, allow_none=True)
    check_folder_name(
        f"study {shown(study.name)}'s name (it names the trials' folders)", study.name
    )
    if name is not None:
        check_folder_name("name", name)
    if storage_path is not None:
        check_path_fits("storage_path", storage_path)
    check_int("max_concurrent_trials", max_concurrent_trials, minimum=1, allow_none=True)
    check_seed("seed", seed)
    _scheduler(scheduler, study, method, min_resource, reduction_factor, neve_signal, build=False)
    if resume and (storage_path is None or not name):
        raise ValueError("resume needs storage_path and name (the experiment folder to restore)")
    return check_resources(resources if resources is not None else study.resources)


def _stopper(method: str, stopper: Any) -> Any:
    """NeVeStopper for NeVe searches (``True``), a given stopper as is, else none."""
    if method == "neve" and stopper:
        return stopper if isinstance(stopper, NeVeStopper) else NeVeStopper()
    return None if isinstance(stopper, bool) else stopper


def _restore(trainable: Any, storage: str | None, name: str | None) -> Any:
    path = os.path.join(storage or "", name or "")
    if not tune.Tuner.can_restore(path):
        raise FileNotFoundError(f"no Ray Tune experiment to restore at {path!r}")
    return tune.Tuner.restore(
        path, trainable=trainable, resume_unfinished=True, resume_errored=True
    ).fit()


def _run_api(
    trainable: Any,
    space: Any,
    *,
    num_samples: int,
    search_alg: Any,
    scheduler: Any,
    stop: Any,
    storage: str | None,
    name: str | None,
    max_failures: int,
    reuse_actors: bool,
    callbacks: list,
    verbose: int,
) -> Any:
    return tune.run(
        trainable,
        config=space,
        num_samples=num_samples,
        search_alg=search_alg,
        scheduler=scheduler,
        stop=stop,
        storage_path=storage,
        name=name,
        max_failures=max_failures,
        reuse_actors=reuse_actors,
        checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
        callbacks=callbacks,
        verbose=verbose,
    )


def _tuner_api(
    trainable: Any,
    space: Any,
    *,
    num_samples: int,
    search_alg: Any,
    scheduler: Any,
    stop: Any,
    storage: str | None,
    name: str | None,
    max_failures: int,
    reuse_actors: bool,
    callbacks: list,
    verbose: int,
) -> Any:
    tuner = tune.Tuner(
        trainable,
        param_space=space,
        tune_config=tune.TuneConfig(
            num_samples=num_samples,
            search_alg=search_alg,
            scheduler=scheduler,
            reuse_actors=reuse_actors,
        ),
        run_config=tune.RunConfig(
            name=name,
            storage_path=storage,
            stop=stop,
            failure_config=tune.FailureConfig(max_failures=max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
            callbacks=callbacks,
            verbose=verbose,
        ),
    )
    return tuner.fit()


def _results(results: Any) -> list[Any]:
    """The ``Result`` objects of a ResultGrid (indexable, not always ``Iterable``)."""
    try:
        out = list(results)
    except TypeError:
        out = None
    if out is None or not all(hasattr(r, "metrics") for r in out):
        raise TypeError(f"results must be a Tune ResultGrid or ExperimentAnalysis, got {results!r}")
    return out


#: what summarize(..., "auto") says when no finished trial recorded what it decides on
AUTO_WITHOUT_DATA = (
    "summarize(selection='auto'): no finished trial reported subset_fit, so 'auto' cannot tell "
    "noisy labels and picks by the objective; record it in your trainable with "
    "neve_tune.selection.SelectionSubset.from_dataset(train_set, 500, seed=0) (the same seed in "
    "every trial): codes = subset.predict(model); metrics.update(subset_pred=codes, "
    "subset_fit=subset.fit(codes)) before report_epoch (docs/ray.md)"
)


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


def search_trials(
    study: Study,
    method: str,
    *,
    trials: int,
    seed: int,
    data: Any,
    model_fn: Any = None,
    device: str | None = None,
    neve_signal: str = "train_loss",
    on_trial: Any = lambda: None,
    grace_period: int = 1,
    reduction_factor: int = 4,
) -> list[SearchTrial]:
    """The comparison's Ray adapter: :func:`run_search` in a temporary folder, its trials
    as records (``neve_signal``: the :class:`NeVeASHAScheduler` rung metric)."""

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
            storage_path=tmp,
            name=f"{study.name}-{method}-{seed}",
            device=device,
            callbacks=[_Done()],
            min_resource=grace_period,
            reduction_factor=reduction_factor,
            data=data,
            model_fn=model_fn,
            neve_signal=neve_signal,
        )
        ordered = sorted(results, key=lambda r: r.metrics.get("trial_id", ""))
        out = [_record(i, r, study, train_size) for i, r in enumerate(ordered)]
        if method == "neve" and study.selection in ("consensus", "auto"):
            last = {i: (r.metrics or {}).get("subset_pred") for i, r in enumerate(ordered)}
            fits = {i: (r.metrics or {}).get("subset_fit") for i, r in enumerate(ordered)}
            rank_by_consensus(
                out,
                {i: p for i, p in last.items() if isinstance(p, str)},
                study.selection,
                {i: float(f) for i, f in fits.items() if isinstance(f, (int, float))},
            )
        return out


def _record(i: int, r: Any, study: Study, train_size: int) -> SearchTrial:
    """One Tune result as the comparison's record (a trial Tune stopped counts as pruned)."""
    df = r.metrics_dataframe
    rows = [] if df is None else df.sort_values("training_iteration").to_dict("records")
    last = r.metrics or {}
    objective = last.get("objective")
    finished = bool(last.get("done")) and last.get("stopped_by") not in ("diverged", "stalled")
    complete = finished and isinstance(objective, float) and math.isfinite(objective)
    cost = Cost.from_dict(last)
    cost.wall_s = float(sum(x.get("epoch_time_s") or 0.0 for x in rows))
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
        epochs=int(last.get("epoch") or len(rows)),
        best_epoch=last.get("best_epoch"),
        objective=float(objective) if complete else None,
        test_acc=last.get("test_acc") if complete else None,
        cost=cost,
        train_size=train_size,
        lrs=[x.get("lr") for x in rows],
        velocity=[_nan_to_none(x.get("velocity")) for x in rows],
        val_acc=[_nan_to_none(x.get("val_acc")) for x in rows],
    )


def _nan_to_none(x: Any) -> float | None:
    return None if x is None or (isinstance(x, float) and not math.isfinite(x)) else float(x)
