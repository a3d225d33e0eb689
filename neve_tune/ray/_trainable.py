"""``neve_trainable``: a Ray Tune function trainable built on :func:`neve_tune.run_trial`.

Every epoch it reports the metric names (:data:`neve_tune.records.METRIC_NAMES`) with
``tune.report`` together with a ``tune.Checkpoint`` holding the whole trial state (model, optimizer,
controller with the velocity state, history, cost counters, RNG); a restarted or retried trial
resumes from ``tune.get_checkpoint()`` and continues the same velocity series. A damaged checkpoint
(it fails its checksum) is not resumed from: the trial starts over from epoch 0 and
reports only the epochs after those Tune already has, so ``training_iteration`` and the
series stay those of an uninterrupted run.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any

import ray
from ray import tune

from .._checks import RESOURCE_KEYS as _RESOURCE_KEYS
from .._checks import check_int, check_resources
from .._trial_inputs import check_device_name, resolve_device
from ..data import DataBundle
from ..records import METHODS, METRIC_NAMES, SEARCH_METHODS, Cost, TrialResult
from ..space import Choice, IntUniform, LogUniform, Uniform
from ..study import Study, load_study
from ..trial import run_trial
from ._guard_noise import board_estimate, check_board, post_result

__all__ = [
    "CHECKPOINT_FILE",
    "SUMMARY_KEYS",
    "check_resources_available",
    "neve_trainable",
    "reported_metrics",
    "to_ray_space",
]

CHECKPOINT_FILE = "neve_trial.pt"
EPOCH_FILE = "neve_epoch.json"  # beside it in a Tune checkpoint: the epoch reported with it
# keys of the last result of a trial that ran to its end (the test set is read only there)
SUMMARY_KEYS = (
    "test_acc",
    "test_loss",
    "objective",
    "stopped_by",
    "epochs",
    "best_epoch",
    "epochs_equiv",
    "wall_s",
)
TRAINABLE_METHODS = SEARCH_METHODS


def reported_metrics(method: str = "neve") -> tuple[str, ...]:
    """Every key ``neve_trainable(method=...)`` reports each epoch, then at the end."""
    if method not in TRAINABLE_METHODS:
        raise ValueError(f"method must be one of {TRAINABLE_METHODS}, got {method!r}")
    extra = ("val_loss", "val_acc") if method != "neve" else ()
    return (
        METRIC_NAMES
        + extra
        + ("epochs_equiv", "node_id")
        + tuple(k for k in SUMMARY_KEYS if k != "epochs_equiv")
    )


# ---------------------------------------------------------------- search space
def to_ray_space(study: Study | str | os.PathLike, *, seed: int | None = None) -> dict[str, Any]:
    """The study's search space as a Ray Tune ``param_space``/``config``.

    ``LogUniform`` -> ``tune.loguniform``, ``Uniform`` -> ``tune.uniform``, ``IntUniform``
    -> ``tune.randint``/``tune.lograndint`` (both ends included, as in the study), ``Choice``
    -> ``tune.choice``. With ``seed`` (an int), every trial also gets ``config["seed"] = seed``.
    """
    seed = check_int("seed", seed, allow_none=True)  # not int("1") or int(1.7): refused
    study = load_study(study)
    study.validate()
    space: dict[str, Any] = {}
    for name, d in study.search_space.items():
        if isinstance(d, LogUniform):
            space[name] = tune.loguniform(d.low, d.high)
        elif isinstance(d, Uniform):
            space[name] = tune.uniform(d.low, d.high)
        elif isinstance(d, IntUniform):
            space[name] = (tune.lograndint if d.log else tune.randint)(d.low, d.high + 1)
        elif isinstance(d, Choice):
            space[name] = tune.choice(list(d.values))
        else:  # validate() rejects this already
            raise TypeError(f"search space {name!r}: cannot convert {d!r}")
    if seed is not None:
        space["seed"] = seed
    return space


# ---------------------------------------------------------------- resources
def check_resources_available(resources: Mapping[str, float]) -> None:
    """Raise ``ValueError`` when no alive node of the connected Ray cluster can hold one
    trial with ``resources`` (Tune would otherwise wait for them forever)."""
    if not ray.is_initialized():
        raise RuntimeError(
            "check_resources_available needs a connected Ray cluster: call ray.init() first"
        )
    need = {_RESOURCE_KEYS.get(k, k): v for k, v in check_resources(resources).items() if v > 0}
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    for node in nodes:
        have = node.get("Resources", {})
        if all(have.get(k, 0.0) + 1e-9 >= v for k, v in need.items()):
            return
    offer = [
        {
            k: v
            for k, v in n.get("Resources", {}).items()
            if k in ("CPU", "GPU") or not k.startswith("node:")
        }
        for n in nodes
    ]
    offer = [
        {
            k: v
            for k, v in o.items()
            if k not in ("object_store_memory",) and not k.startswith("accelerator_type")
        }
        for o in offer
    ]
    raise ValueError(
        f"resources per trial {dict(resources)} cannot be met: no node of this Ray cluster has "
        f"them (alive nodes offer {offer}); lower them (--cpus-per-trial/--gpus-per-trial, "
        "study.resources) or add nodes"
    )


# ---------------------------------------------------------------- the trainable
def _check_config(study: Study, config: Mapping[str, Any]) -> tuple[dict[str, Any], int | None]:
    if not isinstance(config, Mapping):
        raise TypeError(f"config must be a dict of hyperparameters, got {config!r}")
    known = set(study.defaults) | set(study.search_space) | {"seed"}
    unknown = sorted(set(config) - known)
    if unknown:
        raise ValueError(
            f"config has unknown hyperparameters {unknown}; study {study.name!r} knows "
            f"{sorted(known)}"
        )
    sampled = {k: v for k, v in config.items() if k != "seed"}
    seed = config.get("seed")
    seed = check_int("config['seed']", seed, allow_none=True)
    return study.config(sampled), seed


def _summary(result: TrialResult) -> dict[str, Any]:
    """The final record's keys of the last result (:data:`SUMMARY_KEYS`)."""
    return {
        "test_acc": result.test_acc,
        "test_loss": result.test_loss,
        "objective": result.objective,
        "stopped_by": result.stopped_by,
        "epochs": result.epochs,
        "best_epoch": result.best_epoch,
        "epochs_equiv": result.cost.epochs_equiv(result.train_size),
        "wall_s": result.cost.wall_s,
    }


def _report(metrics: dict[str, Any], checkpoint_file: Path) -> None:
    """``tune.report`` with a copy of the trial's checkpoint file and the epoch it reports
    (:data:`EPOCH_FILE`; Tune persists both to the run's storage during the call, so the
    copy can go right after)."""
    with tempfile.TemporaryDirectory(prefix="neve_ckpt_") as d:
        shutil.copy2(checkpoint_file, Path(d, CHECKPOINT_FILE))
        Path(d, EPOCH_FILE).write_text(json.dumps({"epoch": int(metrics["epoch"])}))
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))


def _reported_epoch(folder: str) -> int:
    """The epoch a Tune checkpoint was reported with (0 when it does not say)."""
    try:
        return int(json.loads(Path(folder, EPOCH_FILE).read_text())["epoch"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def _restore_checkpoint(local: Path) -> int:
    """Copy the trial's file out of the Tune checkpoint it resumes from, if any, to
    ``local``; the epoch that checkpoint was reported with (0: a fresh start)."""
    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        return 0
    with checkpoint.as_directory() as d:
        src = Path(d, CHECKPOINT_FILE)
        if not src.is_file():
            raise FileNotFoundError(
                f"checkpoint {checkpoint.path} has no {CHECKPOINT_FILE}: not a "
                "neve_trainable checkpoint"
            )
        shutil.copy2(src, local)
        return _reported_epoch(d)


def _set_threads() -> None:
    import torch

    try:
        cpus = tune.get_context().get_trial_resources().required_resources.get("CPU", 1)
    except Exception:  # not inside a Tune trial
        return
    torch.set_num_threads(max(1, int(cpus)))


def _make_train_fn(
    study: Study,
    method: str,
    seed: int | None,
    device: Any,
    user_model_fn: Callable[[], Any] | None = None,
    subset_epochs: tuple[int, ...] | None = None,
    board: Any = None,
) -> Callable[..., None]:
    def train(config: dict[str, Any], data: DataBundle | None = None) -> None:
        cfg, config_seed = _check_config(study, config)
        trial_seed = config_seed if config_seed is not None else (seed if seed is not None else 0)
        _set_threads()
        bundle = data if data is not None else study.load_data()
        dev = resolve_device(device)
        node_id = ray.get_runtime_context().get_node_id()
        workdir = Path(tempfile.mkdtemp(prefix="neve_trial_"))
        local = workdir / CHECKPOINT_FILE
        last: dict[str, Any] = {}
        try:
            # epochs Tune has results of: a run started over does not report them again
            reported = _restore_checkpoint(local)

            def on_epoch(m: dict[str, Any]) -> None:
                if m["epoch"] <= reported and m["stopped_by"] is None:
                    return  # a damaged checkpoint: fit started over; Tune has this epoch already
                cost = Cost.from_dict(m)
                metrics = dict(
                    m, epochs_equiv=cost.epochs_equiv(len(bundle.train)), node_id=node_id
                )
                del metrics["stopped_by"]  # reported with the summary, on the last epoch only
                if m["stopped_by"] is not None:  # the last epoch: reported with the final record
                    last.update(metrics)
                    return
                _report(metrics, local)

            result = run_trial(
                study,
                cfg,
                method=method,
                seed=trial_seed,
                device=dev,
                checkpoint_path=local,
                on_epoch=on_epoch,
                data=bundle,
                evaluate_test=True,
                model_fn=user_model_fn,
                subset_epochs=subset_epochs,
                noise_estimate=None if board is None else board_estimate(board),
            )
            if board is not None:
                post_result(board, result)
            if result.history:
                # the last epoch (or, restored from a checkpoint of the last epoch whose
                # report never arrived, that epoch) with the final record
                metrics = last or dict(result.history[-1], node_id=node_id)
                metrics.pop("stopped_by", None)
                metrics.update(_summary(result), done=True)
                _report(metrics, local)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)

    train.__name__ = train.__qualname__ = (
        f"neve_{study.name}" if method == "neve" else f"{method}_{study.name}"
    )
    return train


def neve_trainable(
    study: Study | str | os.PathLike,
    *,
    method: str = "neve",
    seed: int | None = None,
    device: str | None = None,
    data: DataBundle | None = None,
    resources: Mapping[str, float] | None = None,
    model_fn: Callable[[], Any] | None = None,
    subset_epochs: Collection[int] | None = None,
    guard_noise: Any = None,
) -> Any:
    """A Ray Tune function trainable that trains one configuration of ``study``.

    The trial's ``config`` holds sampled hyperparameters (``lr``, ``threshold``,
    ``batch_size``, ...; missing ones come from ``study.defaults``; unknown keys are an
    error) and optionally ``seed`` (else ``seed``, else 0). Each epoch it reports the
    metric names of docs/design.md, "Metric names" (``epoch``, ``velocity``, ``train_loss``,
    the flags ``neve_stop``/``stalled``/``diverged``, ``prediction_changes``, ``unfit``,
    ``kept_epoch``/``kept_train_loss``, the cumulative cost counters, ...;
    ``val_loss``/``val_acc`` for the validation baselines; :func:`reported_metrics` lists
    them) plus ``epochs_equiv`` and ``node_id``, with a ``tune.Checkpoint`` of the whole
    trial state. A trial restarted by Tune (``FailureConfig(max_failures=...)``,
    ``Tuner.restore``) resumes from its last checkpoint with the same velocity series.

    The result of the epoch on which the trial stops itself (velocity under its threshold,
    ``max_epochs``, divergence, early stopping) also holds the final record: ``test_acc``,
    ``test_loss`` (the test set is read there, once, never for a decision),
    ``objective``, ``stopped_by``, ``epochs``, ``best_epoch``, ``epochs_equiv``,
    ``wall_s`` and ``done=True``. A trial stopped by a scheduler has no test score.

    Args:
        study: a :class:`~neve_tune.study.Study`, a study file or a bundled name.
        method: ``"neve"``, or the validation baselines ``"asha"``/``"asha_es"``
            (``study.val_fraction`` of the training set held out).
        seed: the seed of trials whose config has none.
        device: ``"cpu"``, ``"cuda"``...; default: the GPU Ray gave the trial, if any.
        data: a :class:`~neve_tune.data.DataBundle` shipped to the workers through the
            object store (``tune.with_parameters``); default: each trial loads the study's.
        resources: per-trial resources, default ``study.resources`` (e.g.
            ``{"cpu": 1, "gpu": 0.25}``: four trials share one GPU).
        model_fn: a factory of fresh models replacing the study's model (pickled to the
            workers with the trainable).
        subset_epochs: with ``study.selection_subset``, report ``subset_pred``/``subset_fit``
            only at these epochs and the last: the scheduler's
            :meth:`~neve_tune.ray.NeVeASHAScheduler.subset_epochs`, as
            :func:`~neve_tune.ray.run_search` passes them (None: every epoch).
        guard_noise: a board from :func:`~neve_tune.ray.guard_noise_board` (``run_search``
            passes one to NeVe): each trial the guard ends posts its ``unfit_share`` there,
            and the guard's veto reads the search's noise estimate from it (docs/design.md,
            "The guard's veto"); None: no veto.

    Example::

        from ray import tune
        from neve_tune.ray import NeVeStopper, neve_trainable, to_ray_space
        tune.run(neve_trainable("digits"), config=to_ray_space("digits"),
                 stop=NeVeStopper(), num_samples=20)
    """
    study = load_study(study)
    _check_arguments(study, method, seed, data)
    check_device_name(device)
    res = check_resources(
        resources if resources is not None else study.resources,
        name="resources" if resources is not None else f"study {study.name!r} resources",
    )
    epochs = _check_subset_epochs(subset_epochs)
    board = check_board(guard_noise, study, method)
    fn: Any = _make_train_fn(study, method, seed, device, model_fn, epochs, board)
    if data is not None:
        fn = tune.with_parameters(fn, data=data)
    return tune.with_resources(fn, res)


def _check_arguments(study: Study, method: str, seed: int | None, data: DataBundle | None) -> None:
    """:func:`neve_trainable`'s arguments, each refused in one line naming it."""
    study.validate()
    if method not in TRAINABLE_METHODS:
        hint = " ('retrain' is not a search method)" if method in METHODS else ""
        raise ValueError(f"method must be one of {TRAINABLE_METHODS}, got {method!r}{hint}")
    check_int("seed", seed, allow_none=True)
    if data is not None and not isinstance(data, DataBundle):
        raise TypeError(
            f"data must be a neve_tune.data.DataBundle or None, got {type(data).__name__}"
        )


def _check_subset_epochs(epochs: Collection[int] | None) -> tuple[int, ...] | None:
    """``subset_epochs`` as sorted epochs, each an int >= 1, or an error naming it."""
    if epochs is None:
        return None
    if isinstance(epochs, (str, bytes)) or not isinstance(epochs, Collection):
        raise TypeError(f"subset_epochs must be a collection of epochs, got {epochs!r}")
    return tuple(sorted({int(check_int("subset_epochs", e, minimum=1)) for e in epochs}))
