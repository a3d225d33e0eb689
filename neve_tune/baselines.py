"""The validation-based baselines' controllers: what a validation search does in a trial.

:class:`ValidationControl` steps ``ReduceLROnPlateau`` on validation loss, with a fixed
epoch cap and, optionally, early stopping on validation loss (the ``asha`` and
``asha_es`` methods). :class:`LRReplay` replays a recorded learning-rate schedule: the
final retrain of a validation search's best configuration on all training data
(docs/design.md, "Comparison protocol"). Both implement
:class:`~neve_tune.control.Controller`; :class:`~neve_tune.control.NeVe` is the
validation-free one.

    >>> import torch
    >>> opt = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1)
    >>> control = ValidationControl(opt, max_epochs=3, early_stopping=1)
    >>> [control.step(0.5, val_loss=v)["best_epoch"] for v in (0.9, 1.0)], control.stopped_by
    ([1, 1], 'early_stopping')
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import torch
from torch.optim.lr_scheduler import ReduceLROnPlateau

from ._checks import check_float, check_int
from ._controller import _finite, _lr, _reopened, _Stoppable, check_epochs

__all__ = ["LRReplay", "ValidationControl"]


class ValidationControl(_Stoppable):
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

    def step(
        self, train_loss: float, val_loss: float | None = None, *, prediction_changes: int | None = None,
        unfit: int | None = None,
    ) -> dict[str, Any]:
        if val_loss is None:
            raise ValueError("val_loss is required: ValidationControl decides on validation loss")
        self._check_open()
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
        """Restore a run; one stopped only by a smaller ``max_epochs`` cap is reopened."""
        self.epoch = int(state_dict["epoch"])
        self.stopped_by = _reopened(state_dict["stopped_by"], self.epoch, self.max_epochs)
        self.best_loss = float(state_dict["best_loss"])
        self.best_epoch = int(state_dict["best_epoch"])
        self.scheduler.load_state_dict(dict(state_dict["scheduler"]))


class LRReplay(_Stoppable):
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

    def step(
        self, train_loss: float, val_loss: float | None = None, *, prediction_changes: int | None = None,
        unfit: int | None = None,
    ) -> dict[str, Any]:
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
        """Restore a replay; one that ended with a shorter schedule goes on with this one."""
        self.epoch = int(state_dict["epoch"])
        self.stopped_by = _reopened(state_dict["stopped_by"], self.epoch, len(self.lrs))
        if self.stopped_by is None:
            self._set(self.epoch)
