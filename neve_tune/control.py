"""Per-trial controllers: what happens to the learning rate and whether to go on.

:class:`NeVe` (DESIGN section 2) needs no held-out data: after each epoch it measures the
velocity, steps torch's ``ReduceLROnPlateau`` on the velocity change (or the velocity),
and stops once the velocity is under ``threshold``. :class:`ValidationControl` is the
validation-based baseline: ``ReduceLROnPlateau`` on validation loss, a fixed epoch cap and,
optionally, early stopping on validation loss.

Both expose the same small interface, used by :func:`neve_tune.train.fit`:
``start()``, ``step(train_loss, val_loss=None) -> dict``, ``should_stop``, ``stopped_by``,
``state_dict()`` / ``load_state_dict()``.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import torch
from torch.optim.lr_scheduler import ReduceLROnPlateau

from .velocity import NeuralVelocity

__all__ = ["NeVe", "ValidationControl", "check_epochs"]

LR_SIGNALS = ("velocity_change", "velocity")


def check_epochs(min_epochs: int, max_epochs: int) -> None:
    for name, v in (("min_epochs", min_epochs), ("max_epochs", max_epochs)):
        if isinstance(v, bool) or not isinstance(v, int):
            raise TypeError(f"{name} must be an int, got {v!r}")
    if max_epochs < 1:
        raise ValueError(f"max_epochs must be at least 1, got {max_epochs}")
    if not 0 <= min_epochs <= max_epochs:
        raise ValueError(f"min_epochs must be in [0, max_epochs={max_epochs}], got {min_epochs}")


def _finite(x: float | None) -> bool:
    return x is None or math.isfinite(x)


def _lr(optimizer: torch.optim.Optimizer) -> float:
    return float(optimizer.param_groups[0]["lr"])


class NeVe:
    """Velocity-driven LR decay and stopping for one training run.

    After every epoch, :meth:`step`:

    1. measures the velocity ``V^t`` and its change ``D^t`` on the probe;
    2. steps ``ReduceLROnPlateau(mode="min", factor, patience, threshold=0)`` on ``D^t``
       (``lr_signal="velocity_change"``, from the 2nd epoch) or on ``V^t``;
    3. stops when ``V^t < threshold`` and at least ``min_epochs`` epochs ran
       (``stopped_by="velocity"``), or at ``max_epochs`` (``"max_epochs"``);
    4. a non-finite training loss or velocity ends the run as ``"diverged"`` (no exception).

    Example::

        >>> import torch
        >>> from neve_tune import NeVe, NeuralVelocity, gaussian_probe
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
        >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
        >>> neve = NeVe(opt, NeuralVelocity(model, gaussian_probe((4,), 16)), threshold=1e-3, max_epochs=5)
        >>> neve.start()
        >>> metrics = neve.step(train_loss=0.7)    # after one training epoch
        >>> sorted(metrics)
        ['diverged', 'epoch', 'lr', 'neve_stop', 'velocity', 'velocity_change']
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        velocity: NeuralVelocity,
        *,
        threshold: float = 1e-3,
        min_epochs: int = 0,
        max_epochs: int = 100,
        lr_signal: str = "velocity_change",
        factor: float = 0.5,
        patience: int = 10,
    ) -> None:
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
            raise TypeError(f"threshold must be a positive float, got {threshold!r}")
        if not (threshold > 0 and math.isfinite(threshold)):
            raise ValueError(f"threshold must be a positive finite float, got {threshold}")
        if lr_signal not in LR_SIGNALS:
            raise ValueError(f"lr_signal must be one of {LR_SIGNALS}, got {lr_signal!r}")
        if not isinstance(velocity, NeuralVelocity):
            raise TypeError(f"velocity must be a NeuralVelocity, got {type(velocity).__name__}")
        check_epochs(min_epochs, max_epochs)
        self.optimizer = optimizer
        self.velocity = velocity
        self.threshold = float(threshold)
        self.min_epochs = min_epochs
        self.max_epochs = max_epochs
        self.lr_signal = lr_signal
        self.scheduler = ReduceLROnPlateau(optimizer, mode="min", factor=factor, patience=patience, threshold=0.0)
        self.epoch = 0
        self.stopped_by: str | None = None

    @property
    def should_stop(self) -> bool:
        return self.stopped_by is not None

    def start(self) -> None:
        """Record the reference outputs (epoch 0) if not done yet."""
        if self.velocity.epoch < 0:
            self.velocity.measure()

    @property
    def probe_samples(self) -> int:
        return int(self.velocity.probe.shape[0])

    def step(self, train_loss: float, val_loss: float | None = None) -> dict[str, Any]:
        """Close one training epoch; ``val_loss`` is ignored (NeVe needs none)."""
        if self.should_stop:
            raise RuntimeError(f"the run already stopped ({self.stopped_by}); step() after stop")
        self.start()
        lr = _lr(self.optimizer)
        self.epoch += 1
        velocity = change = None
        diverged = not _finite(train_loss)
        if not diverged:
            report = self.velocity.measure()
            velocity, change = report.model_velocity, report.velocity_change
            diverged = not (_finite(velocity) and _finite(change))
        neve_stop = False
        if diverged:
            self.stopped_by = "diverged"
        else:
            signal = velocity if self.lr_signal == "velocity" else change
            if signal is not None:
                self.scheduler.step(signal)
            neve_stop = self.epoch >= self.min_epochs and velocity < self.threshold
            if neve_stop:
                self.stopped_by = "velocity"
            elif self.epoch >= self.max_epochs:
                self.stopped_by = "max_epochs"
        return {
            "epoch": self.epoch,
            "velocity": velocity,
            "velocity_change": change,
            "lr": lr,
            "neve_stop": neve_stop,
            "diverged": diverged,
        }

    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "stopped_by": self.stopped_by,
            "threshold": self.threshold,
            "scheduler": self.scheduler.state_dict(),
            "velocity": self.velocity.state_dict(),
        }

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        self.epoch = int(state_dict["epoch"])
        self.stopped_by = state_dict["stopped_by"]
        self.threshold = float(state_dict["threshold"])
        self.scheduler.load_state_dict(dict(state_dict["scheduler"]))
        self.velocity.load_state_dict(state_dict["velocity"])


class ValidationControl:
    """The validation-based baseline controller.

    After every epoch, :meth:`step` steps ``ReduceLROnPlateau(mode="min", factor,
    patience, threshold=0)`` on the validation loss; it stops at ``max_epochs``
    (``"max_epochs"``), after ``early_stopping`` epochs without a new best validation loss
    when that is set (``"early_stopping"``), or when a loss is non-finite (``"diverged"``).
    ``best_epoch`` is the epoch of the lowest validation loss.
    """

    probe_samples = 0

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        *,
        max_epochs: int = 100,
        factor: float = 0.5,
        patience: int = 10,
        early_stopping: int | None = None,
    ) -> None:
        check_epochs(0, max_epochs)
        if early_stopping is not None and (not isinstance(early_stopping, int) or early_stopping < 1):
            raise ValueError(f"early_stopping must be a positive int or None, got {early_stopping!r}")
        self.optimizer = optimizer
        self.max_epochs = max_epochs
        self.early_stopping = early_stopping
        self.scheduler = ReduceLROnPlateau(optimizer, mode="min", factor=factor, patience=patience, threshold=0.0)
        self.epoch = 0
        self.best_loss = math.inf
        self.best_epoch = 0
        self.stopped_by: str | None = None

    @property
    def should_stop(self) -> bool:
        return self.stopped_by is not None

    def start(self) -> None:
        pass

    def step(self, train_loss: float, val_loss: float | None = None) -> dict[str, Any]:
        if val_loss is None:
            raise ValueError("val_loss is required: ValidationControl decides on validation loss")
        if self.should_stop:
            raise RuntimeError(f"the run already stopped ({self.stopped_by}); step() after stop")
        lr = _lr(self.optimizer)
        self.epoch += 1
        diverged = not (_finite(train_loss) and _finite(val_loss))
        if diverged:
            self.stopped_by = "diverged"
        else:
            self.scheduler.step(val_loss)
            if val_loss < self.best_loss:
                self.best_loss, self.best_epoch = float(val_loss), self.epoch
            if self.early_stopping is not None and self.epoch - self.best_epoch >= self.early_stopping:
                self.stopped_by = "early_stopping"
            elif self.epoch >= self.max_epochs:
                self.stopped_by = "max_epochs"
        return {"epoch": self.epoch, "lr": lr, "diverged": diverged, "best_epoch": self.best_epoch}

    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "stopped_by": self.stopped_by,
            "best_loss": self.best_loss,
            "best_epoch": self.best_epoch,
            "scheduler": self.scheduler.state_dict(),
        }

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        self.epoch = int(state_dict["epoch"])
        self.stopped_by = state_dict["stopped_by"]
        self.best_loss = float(state_dict["best_loss"])
        self.best_epoch = int(state_dict["best_epoch"])
        self.scheduler.load_state_dict(dict(state_dict["scheduler"]))
