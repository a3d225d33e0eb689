"""The validation-based baselines' controllers: what a validation search does in a trial.

:class:`ValidationControl` steps ``ReduceLROnPlateau`` on a validation metric (loss or
accuracy), with a fixed epoch cap and, optionally, early stopping on that metric (the
``asha`` and ``asha_es`` methods), and can keep the weights of its best epoch.
:class:`LRReplay` replays a recorded learning-rate schedule: the final retrain of a
validation search's best configuration on all training data (docs/design.md,
"Comparison protocol"). Both implement
:class:`~neve_tune._controller.Controller`; :class:`~neve_tune.control.NeVe` is the
validation-free one.

    >>> import torch
    >>> opt = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1)
    >>> control = ValidationControl(opt, max_epochs=3, early_stopping=1)
    >>> [control.step(0.5, val_loss=v)["best_epoch"] for v in (0.9, 1.0)], control.stopped_by
    ([1, 1], 'early_stopping')
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch.optim.lr_scheduler import ReduceLROnPlateau

from ._checks import check_choice, check_float, check_int
from ._controller import Stoppable, check_epochs, current_lr, finite_or_absent, reopened
from .records import VAL_METRICS, val_metric_key

__all__ = ["LRReplay", "ValidationControl"]


class ValidationControl(Stoppable):
    """The validation-based baseline controller.

    After every epoch, :meth:`step` steps ``ReduceLROnPlateau(mode, lr_factor, lr_patience,
    threshold=0)`` on the validation metric ``metric`` (``"loss"``: ``val_loss``, mode
    ``min``; ``"acc"``: ``val_acc``, mode ``max``); it stops at ``max_epochs``
    (``"max_epochs"``), after ``early_stopping`` epochs without a strictly better value when
    that is set (``"early_stopping"``), or when a loss or the accuracy is non-finite
    (``"diverged"``). ``best_epoch`` is the first epoch of the best value. With
    ``keep_best_weights`` (it needs ``model``) the controller holds a copy of the model's
    weights at ``best_epoch`` (:attr:`best_weights`, kept in its state for a resumed run):
    what ``Study.final="best_checkpoint"`` delivers.
    """

    probe_samples = 0

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        *,
        max_epochs: int = 100,
        lr_factor: float = 0.5,
        lr_patience: int = 10,
        early_stopping: int | None = None,
        metric: str = "loss",
        keep_best_weights: bool = False,
        model: torch.nn.Module | None = None,
    ) -> None:
        check_epochs(0, max_epochs)
        check_int("early_stopping", early_stopping, minimum=1, allow_none=True)
        check_choice("metric", metric, VAL_METRICS)
        self.metric_key, mode = val_metric_key(metric)
        if keep_best_weights and model is None:
            raise ValueError("keep_best_weights needs model: the module whose weights are kept")
        self.optimizer = optimizer
        self.max_epochs = max_epochs
        self.early_stopping = early_stopping
        self.metric = metric
        self.model = model if keep_best_weights else None
        self.scheduler = ReduceLROnPlateau(
            optimizer, mode=mode, factor=lr_factor, patience=lr_patience, threshold=0.0
        )
        self.epoch = 0
        self.best = math.inf if mode == "min" else -math.inf
        self.best_epoch = 0
        self.best_weights: dict[str, torch.Tensor] | None = None
        self.stopped_by: str | None = None

    def _better(self, value: float) -> bool:
        return value < self.best if self.metric == "loss" else value > self.best

    def step(
        self,
        train_loss: float,
        val_loss: float | None = None,
        *,
        prediction_changes: int | None = None,
        unfit: int | None = None,
        val_acc: float | None = None,
    ) -> dict[str, Any]:
        """Close one epoch on its validation loss and accuracy; the one ``metric`` names is
        required (a ``ValueError`` names it)."""
        value = val_loss if self.metric == "loss" else val_acc
        if value is None:
            raise ValueError(
                f"{self.metric_key} is required: ValidationControl decides on it "
                f"(metric={self.metric!r})"
            )
        self._check_open()
        lr = current_lr(self.optimizer)
        self.epoch += 1
        diverged = not (
            finite_or_absent(train_loss) and finite_or_absent(val_loss) and finite_or_absent(value)
        )
        if diverged:
            self.stopped_by = "diverged"
        else:
            self.scheduler.step(value)
            if self._better(float(value)):
                self.best, self.best_epoch = float(value), self.epoch
                if self.model is not None:  # a copy: training goes on from the live weights
                    state = self.model.state_dict()
                    self.best_weights = {k: v.detach().clone() for k, v in state.items()}
            if (
                self.early_stopping is not None
                and self.epoch - self.best_epoch >= self.early_stopping
            ):
                self.stopped_by = "early_stopping"
            elif self.epoch >= self.max_epochs:
                self.stopped_by = "max_epochs"
        return {"epoch": self.epoch, "lr": lr, "diverged": diverged, "best_epoch": self.best_epoch}

    @property
    def best_loss(self) -> float:
        """The lowest validation loss so far (``metric="loss"``; NaN otherwise)."""
        return self.best if self.metric == "loss" else math.nan

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            "epoch": self.epoch,
            "stopped_by": self.stopped_by,
            f"best_{self.metric}": self.best,
            "best_epoch": self.best_epoch,
            "scheduler": self.scheduler.state_dict(),
        }
        if self.model is not None:
            state["best_weights"] = None if self.best_weights is None else dict(self.best_weights)
        return state

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore a run; one stopped only by a smaller ``max_epochs`` cap is reopened."""
        self.epoch = int(state_dict["epoch"])
        self.stopped_by = reopened(state_dict["stopped_by"], self.epoch, self.max_epochs)
        self.best = float(state_dict[f"best_{self.metric}"])
        self.best_epoch = int(state_dict["best_epoch"])
        self.scheduler.load_state_dict(dict(state_dict["scheduler"]))
        if self.model is not None:
            best = state_dict["best_weights"]
            self.best_weights = None if best is None else {k: v.clone() for k, v in best.items()}


class LRReplay(Stoppable):
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
        self,
        train_loss: float,
        val_loss: float | None = None,
        *,
        prediction_changes: int | None = None,
        unfit: int | None = None,
    ) -> dict[str, Any]:
        lr = current_lr(self.optimizer)
        self.epoch += 1
        diverged = not finite_or_absent(train_loss)
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
        self.stopped_by = reopened(state_dict["stopped_by"], self.epoch, len(self.lrs))
        if self.stopped_by is None:
            self._set(self.epoch)
