"""What every per-trial controller shares: the :class:`Controller` interface that
:func:`neve_tune.train.fit` uses, the stop bookkeeping and the epoch-budget check.
The controllers are :class:`~neve_tune.control.NeVe` (validation-free) and the
baselines' :class:`~neve_tune.baselines.ValidationControl` and
:class:`~neve_tune.baselines.LRReplay`.

    >>> import torch
    >>> from neve_tune import LRReplay
    >>> opt = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1)
    >>> isinstance(LRReplay(opt, [0.1]), Controller)
    True
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol, runtime_checkable

import torch

from ._checks import check_int, is_finite

__all__ = [
    "Controller",
    "Stoppable",
    "check_epochs",
    "current_lr",
    "finite_or_absent",
    "reopened",
    "reopened_history",
]


@runtime_checkable
class Controller(Protocol):
    """What :func:`neve_tune.train.fit` needs from a per-trial controller.

    ``start()`` runs before the first epoch (NeVe records its reference outputs there);
    ``step(train_loss, val_loss=None, *, prediction_changes=None, unfit=None)`` closes an epoch and
    returns its metrics (at least ``epoch``, ``lr``, ``diverged``); ``stopped_by`` is None while the
    run goes on; ``probe_samples`` is the forward-only samples one ``step`` costs. A ``step`` that
    also takes a ``val_acc`` keyword gets the validation accuracy from
    :func:`~neve_tune.train.fit` (run with a ``val_set``).
    """

    epoch: int
    stopped_by: str | None

    @property
    def should_stop(self) -> bool: ...

    @property
    def probe_samples(self) -> int: ...

    def start(self) -> None: ...

    def step(
        self,
        train_loss: float,
        val_loss: float | None = None,
        *,
        prediction_changes: int | None = None,
        unfit: int | None = None,
    ) -> dict[str, Any]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None: ...


def check_epochs(min_epochs: int, max_epochs: int) -> None:
    check_int("max_epochs", max_epochs, minimum=1)
    check_int("min_epochs", min_epochs, minimum=0)
    if min_epochs > max_epochs:
        raise ValueError(f"min_epochs must be in [0, max_epochs={max_epochs}], got {min_epochs}")


def finite_or_absent(x: float | None) -> bool:
    """A metric that is absent (None) or a finite number; NaN/inf mean divergence."""
    return x is None or is_finite(x)


def reopened(
    stopped_by: str | None,
    epoch: int,
    max_epochs: int,
    capped: bool = False,
    stalls: Callable[[], bool] | None = None,
) -> str | None:
    """A restored ``stopped_by``, None when the run had stopped only at a cap smaller than
    ``max_epochs``: the cap is a setting, not part of the run, so a larger one continues
    it. That holds for a NeVe run the cap ended before it had learned (``"stalled"``,
    ``capped``) too, unless ``stalls()`` (the early stall check under the larger cap, which
    the cap pre-empted) ends it there, as it ends the uninterrupted run. Any other stop
    (velocity, prediction_changes, a stall they called, diverged, early_stopping) is the
    run's own end and stays.

    >>> reopened("max_epochs", 2, 4), reopened("stalled", 2, 4, capped=True)
    (None, None)
    >>> reopened("stalled", 2, 4), reopened("stalled", 4, 4, capped=True)
    ('stalled', 'stalled')
    """
    cap_only = stopped_by == "max_epochs" or (stopped_by == "stalled" and capped)
    if not cap_only or epoch >= max_epochs:
        return stopped_by
    return "stalled" if stalls is not None and stalls() else None


def reopened_history(history: list[dict[str, Any]], controller: Any) -> list[dict[str, Any]]:
    """``history`` restored with ``controller``: when :func:`reopened` continued the run (a
    larger cap), its last epoch is no longer its end, nor a stall: the uninterrupted run's."""
    if history and not controller.should_stop and history[-1].get("stopped_by") is not None:
        return [*history[:-1], {**history[-1], "stopped_by": None, "stalled": False}]
    return history


def current_lr(optimizer: torch.optim.Optimizer) -> float:
    return float(optimizer.param_groups[0]["lr"])


class Stoppable:
    """What every controller shares: it is over once ``stopped_by`` is set; ``start`` does
    nothing unless the controller has something to record before the first epoch."""

    stopped_by: str | None

    @property
    def should_stop(self) -> bool:
        return self.stopped_by is not None

    def start(self) -> None:
        pass

    def _check_open(self) -> None:
        if self.should_stop:
            raise RuntimeError(f"the run already stopped ({self.stopped_by}); step() after stop")
