"""What a :class:`~neve_tune.lightning.NeVeCallback` reads from Lightning's Trainer and logs and
writes to them: its epoch budget, the epoch's training loss from ``trainer.callback_metrics``,
the epoch's metrics through ``pl_module.log``, and the stop in every logger's hyperparameters."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import lightning.pytorch as pl

from .._checks import to_float
from ..control import NeVe

__all__ = ["StepLoggedLoss", "epoch_budget", "log_epoch", "log_stop", "train_loss_of"]

# names NeVe.step() returns that are not logged: Lightning keeps its own "epoch"
NOT_LOGGED = frozenset({"epoch"})


def epoch_budget(trainer: pl.Trainer) -> int | None:
    """The epochs the Trainer will run: ``max_epochs``, else its ``max_steps`` in epochs
    (``Trainer(max_steps=...)`` has no ``max_epochs``); None when unbounded. Read once the
    training data is set up (``on_train_start`` and later)."""
    if isinstance(trainer.max_epochs, int) and trainer.max_epochs > 0:
        return trainer.max_epochs
    steps = trainer.estimated_stepping_batches  # max_steps when the epochs are unbounded
    per_epoch = math.ceil(trainer.num_training_batches / trainer.accumulate_grad_batches)
    if not (math.isfinite(steps) and math.isfinite(per_epoch) and per_epoch > 0):
        return None
    return max(1, math.ceil(steps / per_epoch))


def train_loss_of(trainer: pl.Trainer, loss_key: str) -> float:
    """The epoch's training loss the module logged under ``loss_key`` (its epoch
    aggregate), or a ValueError saying how to log it."""
    metrics = trainer.callback_metrics
    for key in (f"{loss_key}_epoch", loss_key):
        if key in metrics:
            return to_float(key, metrics[key])
    raise ValueError(
        "NeVeCallback needs the epoch's training loss in "
        f"trainer.callback_metrics[{loss_key!r}]: log it in training_step with "
        f"self.log({loss_key!r}, loss, on_epoch=True), or pass loss_key= naming the "
        f"logged loss; logged keys are {sorted(metrics)}"
    )


class StepLoggedLoss:
    """Tells a training loss logged per step only (``self.log(key, loss)`` in
    ``training_step``: Lightning's default there is ``on_step=True, on_epoch=False``), whose
    last batch's value :func:`train_loss_of` would read as the epoch's. Such a value changes
    in ``trainer.callback_metrics`` at every step with no ``<key>_step`` beside it; an epoch
    aggregate (``on_epoch=True``) does not. Compared by identity: no device sync per batch."""

    def __init__(self, loss_key: str) -> None:
        self.loss_key = loss_key
        self.last: Any = None
        self.per_step = False

    def batch_end(self, trainer: pl.Trainer) -> None:
        metrics = trainer.callback_metrics
        value = metrics.get(self.loss_key)
        if value is None or f"{self.loss_key}_step" in metrics:
            self.last = None
            return
        self.per_step = self.per_step or (self.last is not None and value is not self.last)
        self.last = value

    def epoch_end(self) -> None:
        """Raise, saying how to log it, when this epoch's loss was logged per step only."""
        self.last = None
        if self.per_step:
            raise ValueError(
                f"NeVeCallback reads the epoch's training loss, but {self.loss_key!r} is logged "
                "per step only (self.log's default in training_step), so it would read the last "
                f"batch's: log it with self.log({self.loss_key!r}, loss, on_epoch=True)"
            )


def log_epoch(pl_module: pl.LightningModule, metrics: Mapping[str, Any]) -> None:
    """Every number of the epoch's metrics through ``pl_module.log`` (flags as 0/1; text
    and missing values stay in the callback's history only)."""
    for name, value in metrics.items():
        if name in NOT_LOGGED or value is None or isinstance(value, str):
            continue
        try:
            value = float(value) if isinstance(value, bool) else to_float(name, value)
        except TypeError:
            continue  # not a number: kept in history only
        pl_module.log(name, value, on_step=False, on_epoch=True)


def log_stop(trainer: pl.Trainer, neve: NeVe, why: str | None = None) -> None:
    """The stop (``why``, else the controller's reason; the epoch, the epoch kept and its
    loss) in every logger's hyperparameters."""
    for logger in trainer.loggers:
        logger.log_hyperparams(
            {
                "neve_stopped_by": why or neve.stopped_by,
                "neve_stop_epoch": neve.epoch,
                "neve_best_epoch": neve.best_epoch,
                "neve_kept_train_loss": neve.kept()["kept_train_loss"],
            }
        )
