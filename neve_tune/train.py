"""The reference epoch loop every backend uses, with counted cost and checkpoints (the
passes over the data it runs: :mod:`neve_tune._passes`).

:func:`fit` trains until its controller (:class:`~neve_tune.control.NeVe` or
:class:`~neve_tune.baselines.ValidationControl`) stops, and after every epoch writes a
checkpoint (model, optimizer, controller with its velocity state, history, cost, RNG)
atomically; the format is :mod:`neve_tune.checkpoint`'s. Called again with the same
``checkpoint_path`` it resumes after the last finished epoch, so the velocity series
continues as if the run had never stopped; a run that had stopped only at a smaller
``max_epochs`` cap goes on up to the controller's cap. A checkpoint that cannot be
resumed from (unreadable, not a neve_tune checkpoint, made by another run, or without
the run's guard) raises :class:`CheckpointError`, one line naming ``checkpoint_path``.
A damaged one (its bytes fail the checksum written with them: truncated, or changed on
disk) is never resumed from: one warning line names it and the run starts over from
epoch 0, which, like a resume, gives the uninterrupted run's series.

Cost is counted, not guessed (docs/design.md, "Cost model"): ``train_samples`` (forward+backward),
``probe_samples`` and ``eval_samples`` (forward only), ``wall_s``. ``epochs_equiv``
expresses it in full-data training epochs, a forward-only sample counting one third
of a trained one (the usual forward:backward = 1:2 FLOP ratio).
"""

from __future__ import annotations

import inspect
import logging
import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from ._checks import check_int
from ._controller import reopened_history
from ._passes import batches, evaluate, train_epoch
from .checkpoint import (
    CheckpointError,
    DamagedCheckpointError,
    check_guard,
    first_line,
    fit_payload,
    load_checkpoint,
    save_checkpoint,
    set_rng_state,
)
from .prediction_changes import (
    PREDICTION_CHANGES,
    PredictionChanges,
    SubsetPredictionChanges,
)
from .probe import module_device
from .records import Cost

__all__ = ["FitResult", "batches", "evaluate", "fit", "train_epoch"]

logger = logging.getLogger("neve_tune")


@dataclass
class FitResult:
    """How a :func:`fit` run ended, its per-epoch metrics and its counted cost."""

    stopped_by: str
    epochs: int
    history: list[dict[str, Any]]
    cost: Cost


def fit(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    train_set: Dataset,
    controller: Any,
    *,
    batch_size: int,
    val_set: Dataset | None = None,
    device: torch.device | str = "cpu",
    seed: int = 0,
    loss_fn: Callable = F.cross_entropy,
    amp_dtype: torch.dtype | None = None,
    checkpoint_path: str | os.PathLike | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    measure: Callable[[dict[str, Any]], None] | None = None,
    num_workers: int = 0,
    checkpoint_meta: dict[str, Any] | None = None,
    prediction_changes: str = "in_pass",
    pc_subset_size: int = 1000,
) -> FitResult:
    """Train ``model`` until ``controller`` stops.

    ``on_epoch(metrics)`` is called after each epoch's checkpoint is written, with the metric
    names (:data:`neve_tune.records.METRIC_NAMES`) plus ``stopped_by`` (None until the last
    epoch; and ``val_loss``/``val_acc`` with ``val_set``); it may raise (e.g.
    ``optuna.TrialPruned``) to end the run. Epochs restored from ``checkpoint_path`` are not
    reported again. ``measure(metrics)`` may add entries to each epoch's metrics before its
    checkpoint is written (a resumed run replays them as they were). ``checkpoint_meta`` (the
    run guard: config, method, seed, data, model, controller settings) is stored with each
    checkpoint; resuming from one whose meta differs, or that has none, raises
    :class:`CheckpointError` naming what differs. ``max_epochs`` is not part of it: a run that
    stopped only at the cap continues up to a larger one with the same velocity series as an
    uninterrupted run; a run stopped for any other reason is finished and returned as it is. A
    damaged checkpoint (it fails its checksum) is logged in one line and the run starts over; a
    checkpoint that cannot be written raises :class:`CheckpointWriteError` naming it.

    ``prediction_changes``: ``"in_pass"`` counts the class of every training example in the
    training pass (no extra forward); ``"subset"`` (:class:`~neve_tune.SubsetPredictionChanges`)
    forwards ``pc_subset_size`` training examples drawn with ``seed`` in eval mode after each
    epoch, their samples counted in ``probe_samples``.
    """
    check_int("batch_size", batch_size, minimum=1)
    if len(train_set) == 0:  # type: ignore[arg-type]
        raise ValueError("train_set is empty")
    device = torch.device(device)
    scaler = (
        torch.amp.GradScaler("cuda")
        if amp_dtype == torch.float16 and device.type == "cuda"
        else None
    )
    tracker = FitPredictionChanges(
        prediction_changes, train_set, seed=seed, subset_size=pc_subset_size
    )
    history, cost = _resume(
        checkpoint_path, checkpoint_meta, model, optimizer, controller, scaler, tracker
    )
    if not history:  # epoch 0: the reference measurement
        _start(controller, cost)
    while not controller.should_stop:
        metrics = _fit_epoch(
            model,
            optimizer,
            train_set,
            controller,
            tracker,
            cost,
            batch_size=batch_size,
            val_set=val_set,
            device=device,
            seed=seed,
            loss_fn=loss_fn,
            amp_dtype=amp_dtype,
            scaler=scaler,
            num_workers=num_workers,
        )
        if measure is not None:
            measure(metrics)
        history.append(metrics)
        if checkpoint_path is not None:
            save_checkpoint(
                checkpoint_path,
                fit_payload(
                    metrics["epoch"],
                    model,
                    optimizer,
                    controller,
                    history,
                    cost,
                    scaler,
                    tracker.checkpoint(),
                    checkpoint_meta,
                ),
            )
        if on_epoch is not None:
            on_epoch(metrics)
    return FitResult(controller.stopped_by, len(history), history, cost)


def warn_damaged(error: DamagedCheckpointError) -> None:
    """The one line a damaged checkpoint gets (logger ``neve_tune``) before its run
    starts over."""
    logger.warning(
        "checkpoint %r %s; not resuming from it: the run starts over from epoch 0",
        error.path,
        error.problem,
    )


def _start(controller: Any, cost: Cost) -> None:
    """Epoch 0: the controller records what it needs before training (NeVe: the probe's
    reference outputs), counted in ``cost``."""
    t0 = time.perf_counter()
    controller.start()
    cost.probe_samples += controller.probe_samples
    cost.wall_s += time.perf_counter() - t0


def _resume(
    checkpoint_path: str | os.PathLike | None,
    checkpoint_meta: dict[str, Any] | None,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    controller: Any,
    scaler: Any,
    tracker: FitPredictionChanges,
) -> tuple[list[dict[str, Any]], Cost]:
    """Load the checkpoint, if there is one, into the run's objects; its (history, cost),
    empty for a fresh start (no checkpoint, or a damaged one: logged). Refused, as a
    :class:`CheckpointError`, when it belongs to another run or does not fit this one."""
    if checkpoint_path is None or not Path(checkpoint_path).exists():
        return [], Cost()
    try:
        ckpt = load_checkpoint(checkpoint_path)
    except DamagedCheckpointError as e:  # refused before anything was loaded: start over
        warn_damaged(e)
        return [], Cost()
    check_guard(checkpoint_path, ckpt.get("meta"), checkpoint_meta)
    try:
        if scaler is not None and ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        controller.load_state_dict(ckpt["controller"])
        history = list(ckpt["history"])
        cost = Cost(**ckpt["cost"])
        tracker.load_checkpoint(ckpt)
        set_rng_state(ckpt["rng"])
    except (RuntimeError, KeyError, ValueError, TypeError, AttributeError, IndexError) as e:
        raise CheckpointError(checkpoint_path, f"does not fit this run ({first_line(e)})") from None
    return reopened_history(history, controller), cost


def _takes(controller: Any, keyword: str) -> bool:
    """Whether ``controller.step`` has ``keyword`` (``val_acc``: the validation baselines';
    ``class_fit``: NeVe's), so a user's own controller is never given one it does not take."""
    try:
        return keyword in inspect.signature(controller.step).parameters
    except (TypeError, ValueError):  # a callable without a signature
        return False


def _fit_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    train_set: Dataset,
    controller: Any,
    tracker: FitPredictionChanges,
    cost: Cost,
    *,
    batch_size: int,
    val_set: Dataset | None,
    device: torch.device,
    seed: int,
    loss_fn: Callable,
    amp_dtype: torch.dtype | None,
    scaler: Any,
    num_workers: int,
) -> dict[str, Any]:
    """One epoch of :func:`fit`: train, evaluate (``val_set``), step the controller; its
    metrics (the counters in ``cost`` updated)."""
    t0 = time.perf_counter()
    epoch = controller.epoch + 1
    train_loss, train_acc, n = train_epoch(
        model,
        optimizer,
        train_set,
        batch_size,
        device=device,
        seed=seed * 1_000_003 + epoch,
        loss_fn=loss_fn,
        amp_dtype=amp_dtype,
        scaler=scaler,
        num_workers=num_workers,
        predictions=tracker.in_pass,
    )
    changes, unfit, forwarded = tracker.epoch_end(model, amp_dtype)
    cost.train_samples += n
    cost.probe_samples += forwarded
    extra: dict[str, Any] = {}
    val_loss, step_kw = None, {}
    if tracker.class_fit is not None and _takes(controller, "class_fit"):
        step_kw["class_fit"] = tracker.class_fit
    if val_set is not None:
        val_loss, val_acc, nv = evaluate(
            model, val_set, device=device, loss_fn=loss_fn, amp_dtype=amp_dtype
        )
        cost.eval_samples += nv
        extra = {"val_loss": val_loss, "val_acc": val_acc}
        if _takes(controller, "val_acc"):  # a controller that may decide on accuracy gets it too
            step_kw["val_acc"] = val_acc
    step = controller.step(train_loss, val_loss, prediction_changes=changes, unfit=unfit, **step_kw)
    cost.probe_samples += controller.probe_samples
    dt = time.perf_counter() - t0
    cost.wall_s += dt
    return {
        **_epoch_metrics(epoch, step, train_loss, train_acc, changes, unfit),
        "epoch_time_s": dt,
        "train_samples": cost.train_samples,
        "probe_samples": cost.probe_samples,
        "eval_samples": cost.eval_samples,
        "stopped_by": controller.stopped_by,  # None until the run's last epoch
        **extra,
    }


def _epoch_metrics(
    epoch: int,
    step: dict[str, Any],
    train_loss: float,
    train_acc: float,
    changes: int | None,
    unfit: int | None,
) -> dict[str, Any]:
    """What the epoch measured and what its controller's ``step`` decided, under the
    metric names (a non-finite training loss as NaN)."""
    loss = train_loss if math.isfinite(train_loss) else float("nan")
    return {
        "epoch": epoch,
        "velocity": step.get("velocity"),
        "velocity_change": step.get("velocity_change"),
        "train_loss": loss,
        "train_acc": train_acc,
        "prediction_changes": changes,
        "unfit": unfit,
        "lr": step["lr"],
        "neve_stop": bool(step.get("neve_stop", False)),
        "stalled": bool(step.get("stalled", False)),
        "diverged": bool(step["diverged"]),
        # the epoch whose weights the model holds (a guard stop may restore an earlier one)
        "kept_epoch": step.get("kept_epoch", epoch),
        "kept_train_loss": step.get("kept_train_loss", loss),
    }


class FitPredictionChanges:
    """The prediction changes :func:`neve_tune.train.fit` reports, from either source:
    ``"in_pass"`` (:attr:`in_pass` goes to ``train_epoch``, no extra forward) or
    ``"subset"`` (``subset_size`` training examples drawn with ``seed``, forwarded after
    each epoch; their forward-only samples are returned with the count)."""

    def __init__(
        self, source: str, train_set: Dataset, *, seed: int, subset_size: int = 1000
    ) -> None:
        if source not in PREDICTION_CHANGES:
            raise ValueError(
                f"prediction_changes must be one of {PREDICTION_CHANGES}, got {source!r}"
            )
        check_int("pc_subset_size", subset_size, minimum=1)
        self.source = source
        n = len(train_set)  # type: ignore[arg-type]
        self.in_pass = PredictionChanges(n) if source == "in_pass" else None
        self.subset = (
            SubsetPredictionChanges.from_dataset(train_set, subset_size, seed=abs(int(seed)))
            if source == "subset"
            else None
        )

    def epoch_end(
        self, model: nn.Module, amp_dtype: torch.dtype | None = None
    ) -> tuple[int | None, int | None, int]:
        """(this epoch's count, its unfit examples, forward-only samples it cost)."""
        if self.in_pass is not None:
            return self.in_pass.epoch_end(), self.in_pass.unfit, 0
        assert self.subset is not None
        device = module_device(model)
        with torch.autocast(
            device_type=device.type, dtype=amp_dtype, enabled=amp_dtype is not None
        ):
            changes = self.subset.measure(model)
        return changes, self.subset.unfit, self.subset.num_examples

    @property
    def class_fit(self) -> list[float | None] | None:
        """The last count's per-class shares fitted (None: no labels counted yet)."""
        source = self.in_pass if self.in_pass is not None else self.subset
        return source.class_fit  # type: ignore[union-attr]

    def checkpoint(self) -> dict[str, Any]:
        """What a checkpoint holds of it (``predictions``: the in-pass tracker's state)."""
        if self.in_pass is not None:
            return {"predictions": self.in_pass.state_dict()}
        return {"predictions": None, "pc_subset": self.subset.state_dict()}  # type: ignore[union-attr]

    def load_checkpoint(self, ckpt: Mapping[str, Any]) -> None:
        """Continue from a checkpoint :meth:`checkpoint` wrote; another source is refused."""
        saved = "subset" if ckpt.get("pc_subset") is not None else "in_pass"
        if saved != self.source:
            raise ValueError(
                f"it counted prediction_changes={saved!r}, this run counts {self.source!r}"
            )
        if self.subset is not None:
            self.subset.load_state_dict(ckpt["pc_subset"])
        elif ckpt.get("predictions") is not None:
            self.in_pass.load_state_dict(ckpt["predictions"])  # type: ignore[union-attr]
