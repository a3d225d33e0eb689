"""Per-trial controllers: what happens to the learning rate and whether to go on.

:class:`NeVe` (docs/design.md, "The controller") needs no held-out data: after each epoch it measures the
velocity, steps torch's ``ReduceLROnPlateau`` on the velocity change (or the velocity),
and stops once the velocity is under ``threshold``. :class:`ValidationControl` is the
validation-based baseline: ``ReduceLROnPlateau`` on validation loss, a fixed epoch cap and,
optionally, early stopping on validation loss. :class:`LRReplay` replays a recorded
learning-rate schedule (the final retrain of a validation-based search).

All three implement :class:`Controller`, the interface :func:`neve_tune.train.fit` uses.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Protocol, Sequence, runtime_checkable

import torch
from torch.optim.lr_scheduler import ReduceLROnPlateau

from ._checks import check_choice, check_float, check_int, is_finite
from .velocity import NeuralVelocity

__all__ = ["Controller", "LRReplay", "NeVe", "ValidationControl", "check_epochs"]

LR_SIGNALS = ("velocity_change", "velocity")


@runtime_checkable
class Controller(Protocol):
    """What :func:`neve_tune.train.fit` needs from a per-trial controller.

    ``start()`` runs before the first epoch (NeVe records its reference outputs there);
    ``step(train_loss, val_loss=None)`` closes an epoch and returns its metrics (at
    least ``epoch``, ``lr``, ``diverged``); ``stopped_by`` is None while the run goes on;
    ``probe_samples`` is the forward-only samples one ``step`` costs.
    """

    epoch: int
    stopped_by: str | None

    @property
    def should_stop(self) -> bool: ...

    @property
    def probe_samples(self) -> int: ...

    def start(self) -> None: ...

    def step(self, train_loss: float, val_loss: float | None = None) -> dict[str, Any]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None: ...


def check_epochs(min_epochs: int, max_epochs: int) -> None:
    check_int("max_epochs", max_epochs, minimum=1)
    check_int("min_epochs", min_epochs, minimum=0)
    if min_epochs > max_epochs:
        raise ValueError(f"min_epochs must be in [0, max_epochs={max_epochs}], got {min_epochs}")


def _finite(x: float | None) -> bool:
    """A metric that is absent (None) or a finite number; NaN/inf mean divergence."""
    return x is None or is_finite(x)


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
        threshold = check_float("threshold", threshold, positive=True)
        check_choice("lr_signal", lr_signal, LR_SIGNALS)
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
        check_int("early_stopping", early_stopping, minimum=1, allow_none=True)
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


class LRReplay:
    """Replays a recorded per-epoch learning-rate schedule for ``len(lrs)`` epochs.

    A validation-based search retrains its best configuration on all training data this
    way: the same learning rates its trial saw, without the held-out split. It stops at
    the end of the schedule (``"max_epochs"``) or on a non-finite loss (``"diverged"``).

        >>> import torch
        >>> opt = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=1.0)
        >>> replay = LRReplay(opt, [0.1, 0.05])
        >>> [replay.step(0.5)["lr"] for _ in range(2)], replay.stopped_by
        ([0.1, 0.05], 'max_epochs')
    """

    probe_samples = 0

    def __init__(self, optimizer: torch.optim.Optimizer, lrs: Sequence[float]) -> None:
        if not lrs:
            raise ValueError("lr_schedule must hold at least one epoch")
        self.optimizer = optimizer
        self.lrs = [check_float(f"lr_schedule[{i}]", lr, positive=True) for i, lr in enumerate(lrs)]
        self.epoch = 0
        self.stopped_by: str | None = None
        self._set(0)

    def _set(self, i: int) -> None:
        for g in self.optimizer.param_groups:
            g["lr"] = float(self.lrs[i])

    @property
    def should_stop(self) -> bool:
        return self.stopped_by is not None

    def start(self) -> None:
        pass

    def step(self, train_loss: float, val_loss: float | None = None) -> dict[str, Any]:
        lr = _lr(self.optimizer)
        self.epoch += 1
        diverged = not _finite(train_loss)
        if diverged:
            self.stopped_by = "diverged"
        elif self.epoch >= len(self.lrs):
            self.stopped_by = "max_epochs"
        else:
            self._set(self.epoch)
        return {"epoch": self.epoch, "lr": lr, "diverged": diverged}

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "stopped_by": self.stopped_by}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        self.epoch, self.stopped_by = int(state_dict["epoch"]), state_dict["stopped_by"]
        if self.stopped_by is None:
            self._set(self.epoch)
