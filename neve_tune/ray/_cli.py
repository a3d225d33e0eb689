"""``run_search`` and ``neve-tune ray run``: a whole Ray Tune search from a study file."""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path
from typing import Any, Mapping

import ray
from ray import tune
from ray.tune.search.basic_variant import BasicVariantGenerator

from ..study import Choice, LogUniform, Study, Uniform, load_study
from ._scheduler import NeVeASHAScheduler
from ._stopper import NeVeStopper
from ._trainable import TRAINABLE_METHODS, check_resources, check_resources_available, neve_trainable, reported_metrics, to_ray_space

__all__ = ["add_cli", "asha_scheduler", "run_search", "summarize"]

SCHEDULERS = ("auto", "neve_asha", "asha", "fifo")
APIS = ("tuner", "run")


def asha_scheduler(study: "Study | str | os.PathLike", **overrides: Any) -> Any:
    """The validation baseline's scheduler: Ray's ``ASHAScheduler`` on ``val_loss``
    (``grace_period=1, reduction_factor=4, max_t=study.max_epochs``); use it with
    ``neve_trainable(study, method="asha")``."""
    from ray.tune.schedulers import ASHAScheduler

    study = load_study(study)
    kw: dict[str, Any] = dict(metric="val_loss", mode="min", grace_period=1, reduction_factor=4, max_t=study.max_epochs)
    kw.update(overrides)
    return ASHAScheduler(**kw)


def _scheduler(kind: str, study: Study, method: str, grace_period: int, reduction_factor: float) -> Any:
    if kind == "auto":
        kind = "neve_asha" if method == "neve" else "asha"
    if kind == "fifo":
        return None
    if kind == "asha":
        if method == "neve":
            raise ValueError("scheduler 'asha' decides on val_loss, which method 'neve' does not report; use 'neve_asha'")
        return asha_scheduler(study, grace_period=grace_period, reduction_factor=reduction_factor)
    if kind == "neve_asha":
        if method != "neve":
            raise ValueError(f"scheduler 'neve_asha' needs method 'neve', got {method!r}; use 'asha'")
        return NeVeASHAScheduler(max_t=study.max_epochs, grace_period=grace_period, reduction_factor=reduction_factor)
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
        print(f"trial {trial.trial_id} failed: {trial.error_file}", file=self.out or sys.stderr, flush=True)


def _fmt(x: Any) -> str:
    if isinstance(x, float):
        return f"{x:.4g}"
    return "-" if x is None else str(x)


def run_search(
    study: "Study | str | os.PathLike",
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
    max_failures: int = 0,
    grace_period: int = 1,
    reduction_factor: float = 4,
    api: str = "tuner",
    resume: bool = False,
    device: str | None = None,
    callbacks: list | None = None,
    reuse_actors: bool = True,
    verbose: int = 0,
    data: Any = None,
    model_fn: Any = None,
) -> Any:
    """Run one Ray Tune search of ``study`` on the connected Ray cluster (``ray.init``
    first; a local one is started if none is) and return its ``ResultGrid``
    (``api="tuner"``) or ``ExperimentAnalysis`` (``api="run"``).

    ``method="neve"``: :func:`neve_trainable` + :class:`NeVeStopper` +
    :class:`NeVeASHAScheduler` (``scheduler="auto"``); ``method="asha"``/``"asha_es"``:
    the validation baseline with Ray's ``ASHAScheduler`` on ``val_loss``. Trials are
    sampled from :func:`to_ray_space` with a seeded ``BasicVariantGenerator`` (same seed,
    same configurations); trial ``i`` trains with seed ``seed``. ``storage_path`` must be
    shared by every node on a cluster. ``data``/``model_fn`` replace the study's data set
    and model (see :func:`neve_trainable`). ``resume=True`` restores the experiment
    ``storage_path/name`` with ``Tuner.restore`` and finishes it. ``reuse_actors`` (on by
    default) keeps trial processes between trials: a fresh one spends seconds importing
    torch (see ``benchmarks/ray_trials.py``).
    """
    study = load_study(study)
    if method not in TRAINABLE_METHODS:
        raise ValueError(f"method must be one of {TRAINABLE_METHODS}, got {method!r}")
    if api not in APIS:
        raise ValueError(f"api must be one of {APIS}, got {api!r}")
    for pname, v in (("num_samples", num_samples), ("grace_period", grace_period)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{pname} must be a positive int, got {v!r}")
    if isinstance(max_failures, bool) or not isinstance(max_failures, int) or max_failures < -1:
        raise ValueError(f"max_failures must be an int >= -1 (-1: retry forever), got {max_failures!r}")
    if max_concurrent_trials is not None and (not isinstance(max_concurrent_trials, int) or max_concurrent_trials < 1):
        raise ValueError(f"max_concurrent_trials must be a positive int or None, got {max_concurrent_trials!r}")
    thr = study.search_space.get("threshold")
    if isinstance(thr, (LogUniform, Uniform)) and not thr.low > 0:
        raise ValueError(f"search space 'threshold' must be > 0, got low={thr.low}")
    if isinstance(thr, Choice) and not all(isinstance(v, (int, float)) and v > 0 for v in thr.values):
        raise ValueError(f"search space 'threshold' values must be > 0, got {list(thr.values)}")
    if not study.defaults.get("threshold", 1) > 0:
        raise ValueError(f"study default threshold must be > 0, got {study.defaults.get('threshold')!r}")
    res = check_resources(resources if resources is not None else study.resources)
    if not ray.is_initialized():
        ray.init(address="local", include_dashboard=False)
    check_resources_available(res)

    trainable = neve_trainable(study, method=method, seed=seed, device=device, resources=res, data=data, model_fn=model_fn)
    sched = _scheduler(scheduler, study, method, grace_period, reduction_factor)
    stop: Any = None
    if method == "neve" and stopper:
        stop = stopper if isinstance(stopper, NeVeStopper) else NeVeStopper(grace_period=study.min_epochs)
    elif not isinstance(stopper, bool):
        stop = stopper
    storage = str(Path(storage_path).resolve()) if storage_path is not None else None
    cbs = [_TrialLines()] + list(callbacks or [])
    failure = tune.FailureConfig(max_failures=max_failures)
    ckpt_cfg = tune.CheckpointConfig(num_to_keep=2)

    if resume:
        if storage is None or not name:
            raise ValueError("resume needs storage_path and name (the experiment folder to restore)")
        path = os.path.join(storage, name)
        if not tune.Tuner.can_restore(path):
            raise FileNotFoundError(f"no Ray Tune experiment to restore at {path!r}")
        tuner = tune.Tuner.restore(path, trainable=trainable, resume_unfinished=True, resume_errored=True)
        return tuner.fit()

    space = to_ray_space(study)
    # a seeded sampler; it enforces the concurrency limit itself (Tune ignores
    # max_concurrent_trials for a search generator)
    search_alg = BasicVariantGenerator(random_state=seed, max_concurrent=max_concurrent_trials or 0)
    if api == "run":
        return tune.run(
            trainable,
            config=space,
            num_samples=num_samples,
            search_alg=search_alg,
            scheduler=sched,
            stop=stop,
            storage_path=storage,
            name=name,
            max_failures=max_failures,
            reuse_actors=reuse_actors,
            checkpoint_config=ckpt_cfg,
            callbacks=cbs,
            verbose=verbose,
        )
    tuner = tune.Tuner(
        trainable,
        param_space=space,
        tune_config=tune.TuneConfig(
            num_samples=num_samples,
            search_alg=search_alg,
            scheduler=sched,
            reuse_actors=reuse_actors,
        ),
        run_config=tune.RunConfig(
            name=name,
            storage_path=storage,
            stop=stop,
            failure_config=failure,
            checkpoint_config=ckpt_cfg,
            callbacks=cbs,
            verbose=verbose,
        ),
    )
    return tuner.fit()


def summarize(results: Any) -> dict[str, Any]:
    """Per-trial rows and the best finished trial (lowest ``objective``) of a search."""
    if hasattr(results, "trials"):  # ExperimentAnalysis
        items = [(t.trial_id, t.config, t.last_result or {}, t.error_file) for t in results.trials]
    else:  # ResultGrid
        items = [(r.metrics.get("trial_id"), r.config, r.metrics or {}, str(r.error) if r.error else None) for r in results]
    keep = reported_metrics("asha") + ("training_iteration", "trial_id")
    rows, cost = [], 0.0
    for tid, config, metrics, error in items:
        row = {"trial_id": tid, "config": dict(config or {}), "error": error}
        row.update({k: metrics[k] for k in keep if k in metrics and k != "trial_id"})
        rows.append(row)
        cost += float(metrics.get("epochs_equiv") or 0.0)
    finished = [r for r in rows if isinstance(r.get("objective"), float) and math.isfinite(r["objective"])]
    best = min(finished, key=lambda r: r["objective"]) if finished else None
    return {"trials": rows, "best": best, "total_epochs_equiv": cost, "errors": sum(1 for r in rows if r["error"])}


# ------------------------------------------------------------------ CLI
def add_cli(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("ray", help="Ray Tune searches with NeVeStopper, locally or on a cluster", description="Ray Tune backend.")
    sub = p.add_subparsers(dest="ray_command", metavar="VERB")
    r = sub.add_parser("run", help="run a search of a study file", description=_run.__doc__)
    r.add_argument("study", nargs="?", default="digits", help="study file or bundled name (default: digits)")
    r.add_argument("--address", help="Ray cluster to join ('auto', 'HOST:6379'); default: start a local Ray")
    r.add_argument("--num-cpus", type=int, help="CPUs of the local Ray started without --address")
    r.add_argument("--method", choices=TRAINABLE_METHODS, default="neve", help="neve (default), or the validation baselines")
    r.add_argument("--num-samples", type=int, default=8, help="trials to run (default: 8)")
    r.add_argument("--scheduler", choices=SCHEDULERS, default="auto", help="auto: neve_asha for neve, asha for the baselines")
    r.add_argument("--no-stopper", action="store_true", help="no NeVeStopper (the trial's own controller still stops it)")
    r.add_argument("--max-epochs", type=int, help="epoch cap per trial (default: the study's)")
    r.add_argument("--grace-period", type=int, default=1, help="first rung, in epochs (default: 1)")
    r.add_argument("--reduction-factor", type=float, default=4, help="rung reduction factor (default: 4)")
    r.add_argument("--cpus-per-trial", type=float, help="default: the study's resources")
    r.add_argument("--gpus-per-trial", type=float, help="fractional GPUs share one GPU (default: the study's)")
    r.add_argument("--max-concurrent", type=int, help="trials at once (default: as many as resources allow)")
    r.add_argument("--storage-path", help="where results and checkpoints go; shared by all nodes on a cluster")
    r.add_argument("--name", help="experiment name (a folder under --storage-path)")
    r.add_argument("--max-failures", type=int, default=0, help="retries of a failed trial from its last checkpoint")
    r.add_argument("--resume", action="store_true", help="restore --storage-path/--name with Tuner.restore and finish it")
    r.add_argument("--api", choices=APIS, default="tuner", help="tune.Tuner (default) or tune.run")
    r.add_argument("--seed", type=int, default=0, help="sampling and training seed (default: 0)")
    r.add_argument("--device", help="cpu, cuda (default: the GPU Ray gives the trial, if any)")
    r.add_argument("--json", dest="json_path", help="write trials and the best one here")
    r.add_argument("--verbose", type=int, default=0, choices=[0, 1, 2, 3], help="Ray Tune's own progress output")
    r.set_defaults(func=_run)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def _run(args: argparse.Namespace) -> int:
    """Run a Ray Tune search of a study file: NeVe-controlled trials, NeVeStopper and the
    NeVeASHAScheduler (or the validation ASHA baseline), on a local Ray or a cluster."""
    from ..cli import CLIError, write_json

    study = load_study(args.study)
    if args.max_epochs is not None:
        study = study.replace(max_epochs=args.max_epochs)
    resources = None
    if args.cpus_per_trial is not None or args.gpus_per_trial is not None:
        resources = dict(study.resources)
        if args.cpus_per_trial is not None:
            resources["cpu"] = args.cpus_per_trial
        if args.gpus_per_trial is not None:
            resources["gpu"] = args.gpus_per_trial
    if args.address and args.num_cpus is not None:
        raise CLIError("--num-cpus is for a local Ray; a cluster joined with --address has its own")
    started = False
    if not ray.is_initialized():
        kw: dict[str, Any] = {"address": args.address} if args.address else {"address": "local", "num_cpus": args.num_cpus, "include_dashboard": False}
        ray.init(**kw)
        started = True
    try:
        results = run_search(
            study,
            method=args.method,
            num_samples=args.num_samples,
            scheduler=args.scheduler,
            stopper=not args.no_stopper,
            seed=args.seed,
            storage_path=args.storage_path,
            name=args.name,
            resources=resources,
            max_concurrent_trials=args.max_concurrent,
            max_failures=args.max_failures,
            grace_period=args.grace_period,
            reduction_factor=args.reduction_factor,
            api=args.api,
            resume=args.resume,
            device=args.device,
            verbose=args.verbose,
        )
        summary = summarize(results)
    finally:
        if started:
            ray.shutdown()
    n = len(summary["trials"])
    done = sum(1 for t in summary["trials"] if t.get("stopped_by"))
    print(f"{n} trials: {done} stopped themselves, {n - done - summary['errors']} stopped by Tune, {summary['errors']} failed; "
          f"total cost {summary['total_epochs_equiv']:.1f} epochs")
    best = summary["best"]
    if best:
        cfg = ", ".join(f"{k}={_fmt(v)}" for k, v in best["config"].items())
        print(f"best: {cfg}  objective={best['objective']:.4f}  test_acc={_fmt(best.get('test_acc'))}  "
              f"epochs={best.get('epochs')}  stopped_by={best.get('stopped_by')}")
    if args.json_path:
        write_json(args.json_path, {"study": study.name, "method": args.method, **summary})
        print(f"wrote {args.json_path}")
    return 1 if summary["errors"] else 0
