"""Whole Ray Tune searches of a study file: ``run_search``, its arguments checked before Ray
starts, and the two Tune APIs it runs through. Where the experiment lives, its callbacks,
output and retries come in Tune's own ``RunConfig`` (:mod:`neve_tune.ray._run_config`)."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from typing import Any

import ray
from ray import tune
from ray.tune.search.basic_variant import BasicVariantGenerator
from ray.tune.stopper import Stopper

from .._checks import check_bool, check_choice, check_float, check_int, check_seed
from .._names import check_folder_name, shown
from .._trial_inputs import check_device_name
from ..records import RUNG_SIGNALS, SCHEDULERS
from ..study import Study, load_study
from ._guard_noise import search_board
from ._run_config import check_run_config, run_config_for, run_kwargs
from ._scheduler import NeVeASHAScheduler
from ._scheduler_choice import pick_scheduler, scheduler_kind
from ._stopper import NeVeStopper
from ._trainable import (
    TRAINABLE_METHODS,
    check_resources,
    check_resources_available,
    neve_trainable,
    to_ray_space,
)

__all__ = [
    "APIS",
    "CLUSTER_MAX_FAILURES",
    "check_search_args",
    "default_max_failures",
    "run_search",
]

APIS = ("tuner", "run")
CLUSTER_MAX_FAILURES = 2  # retries of a trial on a multi-node cluster: survives a lost node, twice


class _TrialLines(tune.Callback):
    """One line per finished trial."""

    def __init__(self, out: Any = None) -> None:
        self.out = out

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        r = trial.last_result or {}
        acc = r.get("test_acc")
        print(
            f"trial {trial.trial_id} done: epochs={r.get('epoch')} "
            f"stopped_by={r.get('stopped_by') or 'tune'} train_loss={_fmt(r.get('train_loss'))} "
            f"velocity={_fmt(r.get('velocity'))} test_acc={_fmt(acc)} "
            f"lr={_fmt(trial.config.get('lr'))} threshold={_fmt(trial.config.get('threshold'))}",
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
    stopper: bool | Stopper = True,
    seed: int = 0,
    run_config: tune.RunConfig | None = None,
    resources: Mapping[str, float] | None = None,
    max_concurrent_trials: int | None = None,
    min_resource: int = 1,
    reduction_factor: float = 4,
    api: str = "tuner",
    resume: bool = False,
    device: str | None = None,
    reuse_actors: bool = True,
    data: Any = None,
    model_fn: Any = None,
    rung_signal: str | None = None,
) -> Any:
    """Run one Ray Tune search of ``study`` on the connected Ray cluster (``ray.init``
    first; a local one is started if none is) and return its ``ResultGrid``
    (``api="tuner"``) or ``ExperimentAnalysis`` (``api="run"``).

    ``method="neve"``: :func:`neve_trainable` + :class:`NeVeStopper` +
    :class:`NeVeASHAScheduler` (``scheduler="auto"``); ``method="asha"``/``"asha_es"``:
    the validation baseline with Ray's ``ASHAScheduler`` on ``val_loss``. Both start their
    first rung at ``min_resource`` epochs (default 1; Ray's schedulers call it
    ``grace_period``). Trials are sampled at random from
    :func:`to_ray_space` with a seeded ``BasicVariantGenerator`` (same seed, same
    configurations; not TPE, unlike the Optuna backend); trial ``i`` trains with seed
    ``seed``. ``data``/``model_fn`` replace the study's data set and model (see
    :func:`neve_trainable`).

    ``run_config`` (Tune's ``ray.tune.RunConfig``, for either ``api``) says where the
    experiment lives (``storage_path``, shared by every node on a cluster; ``name``, the
    experiment folder, a plain folder name as is the study's,
    :func:`neve_tune._names.check_folder_name`), its ``callbacks`` (run after the search's
    own), ``verbose`` and its retries (``failure_config=FailureConfig(max_failures=N)``: a
    failed trial restarts from its last checkpoint; -1: always). Without one: Tune's
    defaults, ``verbose=0``, and :func:`default_max_failures` retries (2 on a cluster of
    several nodes, where a lost node fails the trials it ran; 0 on one machine); a given
    ``RunConfig``'s ``FailureConfig`` is taken as it is (Tune's default: no retries). Its
    ``stop`` and ``checkpoint_config`` are the search's (the :class:`NeVeStopper`; the last 2
    checkpoints of each trial): setting them is refused (:func:`check_run_config`).
    ``resume=True`` restores the experiment ``storage_path/name`` with ``Tuner.restore``
    and finishes it. ``reuse_actors`` (on by default) keeps trial processes between
    trials: a fresh one spends seconds importing torch (see ``benchmarks/ray_trials.py``).
    ``rung_signal`` (default: the study's :attr:`~neve_tune.Study.rung_signal`) is the rung
    signal of :class:`NeVeASHAScheduler` (``"train_loss"``,
    ``"velocity"``, ``"consensus"`` or ``"auto"``: both need ``study.selection_subset``). Every
    argument is checked (:func:`check_search_args`) before Ray starts.
    """
    study = load_study(study)
    res = check_search_args(
        study,
        method=method,
        num_samples=num_samples,
        scheduler=scheduler,
        seed=seed,
        resources=resources,
        max_concurrent_trials=max_concurrent_trials,
        min_resource=min_resource,
        reduction_factor=reduction_factor,
        api=api,
        rung_signal=rung_signal,
        resume=resume,
        run_config=run_config,
        stopper=stopper,
    )
    rung_signal = study.rung_signal if rung_signal is None else rung_signal
    check_device_name(device)
    check_bool("reuse_actors", reuse_actors)
    if not ray.is_initialized():
        ray.init(address="local", include_dashboard=False)
    check_resources_available(res)
    if run_config is None:
        run_config = tune.RunConfig(
            verbose=0, failure_config=tune.FailureConfig(max_failures=default_max_failures())
        )
    sched = pick_scheduler(scheduler, study, method, min_resource, reduction_factor, rung_signal)
    with search_board(study, method) as board:  # the guard's veto: the search's noise estimate
        trainable = neve_trainable(
            study,
            method=method,
            seed=seed,
            device=device,
            resources=res,
            data=data,
            model_fn=model_fn,
            subset_epochs=sched.subset_epochs() if isinstance(sched, NeVeASHAScheduler) else None,
            guard_noise=board,
        )
        # the scheduler's rungs travel in Tune's experiment checkpoint through its callback
        own = [_TrialLines()] + ([sched.callback()] if isinstance(sched, NeVeASHAScheduler) else [])
        config = run_config_for(run_config, _stopper(method, stopper), own)
        if resume:
            return _restore(trainable, config)
        # a seeded sampler; it enforces the concurrency limit itself (Tune ignores
        # max_concurrent_trials for a search generator)
        search_alg = BasicVariantGenerator(
            random_state=seed, max_concurrent=max_concurrent_trials or 0
        )
        run = _run_api if api == "run" else _tuner_api
        return run(
            trainable,
            to_ray_space(study),
            num_samples=num_samples,
            search_alg=search_alg,
            scheduler=sched,
            reuse_actors=reuse_actors,
            run_config=config,
        )


def default_max_failures() -> int:
    """:data:`CLUSTER_MAX_FAILURES` when the connected Ray has more than one alive node (a
    node lost mid-search fails its trials, which then resume from their checkpoints), 0 on
    one machine (there a failure is the trial's own error: retrying repeats it)."""
    alive = [n for n in ray.nodes() if n.get("Alive")]
    return CLUSTER_MAX_FAILURES if len(alive) > 1 else 0


def check_search_args(
    study: Study,
    *,
    method: str = "neve",
    num_samples: int = 8,
    scheduler: str = "auto",
    seed: int = 0,
    resources: Mapping[str, float] | None = None,
    max_concurrent_trials: int | None = None,
    min_resource: int = 1,
    reduction_factor: float = 4,
    api: str = "tuner",
    rung_signal: str | None = None,
    resume: bool = False,
    run_config: Any = None,
    stopper: Any = True,
) -> dict[str, float]:
    """Every argument of :func:`run_search` that can be judged without Ray, each error
    naming its argument; returns the per-trial resources. The command line calls it before
    ``ray.init``, so a bad flag costs no cluster start."""
    check_choice("method", method, TRAINABLE_METHODS)
    check_choice("api", api, APIS)
    check_choice("scheduler", scheduler, SCHEDULERS)
    if rung_signal is not None and scheduler_kind(scheduler, method) != "neve_asha":
        raise ValueError(
            f"rung_signal ranks the NeVe scheduler's rungs; scheduler {scheduler!r} with method "
            f"{method!r} has none: drop rung_signal"
        )
    rung_signal = study.rung_signal if rung_signal is None else rung_signal
    check_choice("rung_signal", rung_signal, RUNG_SIGNALS)
    check_int("num_samples", num_samples, minimum=1)
    check_int("min_resource", min_resource, minimum=1)
    check_float("reduction_factor", reduction_factor, low=1.0, low_open=True)
    check_folder_name(
        f"study {shown(study.name)}'s name (it names the trials' folders)", study.name
    )
    check_run_config(run_config)
    check_int("max_concurrent_trials", max_concurrent_trials, minimum=1, allow_none=True)
    check_seed("seed", seed)
    if not isinstance(stopper, (bool, Stopper)):
        raise TypeError(
            "stopper must be True (a NeVeStopper for method 'neve'), False or a ray.tune.Stopper "
            f"instance, got {stopper!r}"
        )
    pick_scheduler(
        scheduler, study, method, min_resource, reduction_factor, rung_signal, build=False
    )
    if resume and (run_config is None or not run_config.name):
        raise ValueError(
            "resume needs run_config=RunConfig(storage_path=..., name=...): the experiment "
            "folder to restore"
        )
    return check_resources(resources if resources is not None else study.resources)


def _stopper(method: str, stopper: Any) -> Any:
    """NeVeStopper for NeVe searches (``True``), a given stopper as is, else none."""
    if isinstance(stopper, bool):
        return NeVeStopper() if stopper and method == "neve" else None
    return stopper


def _restore(trainable: Any, run_config: tune.RunConfig) -> Any:
    """Finish the experiment ``storage_path/name`` (Tune keeps its run config there)."""
    path = os.path.join(run_config.storage_path or "", run_config.name or "")
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
    reuse_actors: bool,
    run_config: tune.RunConfig,
) -> Any:
    """``tune.run``, given the ``RunConfig``'s fields one by one."""
    return tune.run(
        trainable,
        config=space,
        num_samples=num_samples,
        search_alg=search_alg,
        scheduler=scheduler,
        reuse_actors=reuse_actors,
        **run_kwargs(run_config),
    )


def _tuner_api(
    trainable: Any,
    space: Any,
    *,
    num_samples: int,
    search_alg: Any,
    scheduler: Any,
    reuse_actors: bool,
    run_config: tune.RunConfig,
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
        run_config=run_config,
    )
    return tuner.fit()
