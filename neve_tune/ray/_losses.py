"""What a Ray stopper or scheduler remembers of each trial's training losses (per trial id,
plain dicts, so the state pickles): the first one, which the stall rule compares with, and
the lowest one, which the early stall check (:func:`neve_tune._rules.stalled_early`,
here :func:`stalls_early`) reads."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .._checks import is_finite, to_float, unwrap_scalar
from .._rules import stalled_early

__all__ = ["remember_best_loss", "remember_first_loss", "stalls_early"]


def remember_first_loss(
    first: dict[str, tuple[float, float]],
    trial_id: str,
    result: Mapping[str, Any],
    loss_metric: str = "train_loss",
) -> float | None:
    """Keep in ``first`` (trial id -> (iteration, loss)) the finite ``loss_metric`` of the
    earliest iteration seen for the trial, and return it (None before any).

    >>> first = {}
    >>> remember_first_loss(first, "t", {"training_iteration": 2, "train_loss": 0.6})
    0.6
    >>> remember_first_loss(first, "t", {"training_iteration": 1, "train_loss": 0.7})  # earlier
    0.7
    """
    loss = unwrap_scalar(result.get(loss_metric))
    if is_finite(loss):
        iteration = to_float("training_iteration", result.get("training_iteration", 0))
        known = first.get(trial_id)
        if known is None or iteration < known[0]:
            first[trial_id] = (float(iteration), float(loss))  # type: ignore[arg-type]
    known = first.get(trial_id)
    return None if known is None else known[1]


def remember_best_loss(
    best: dict[str, float],
    trial_id: str,
    result: Mapping[str, Any],
    loss_metric: str = "train_loss",
) -> float | None:
    """Keep in ``best`` (trial id -> loss) the lowest finite ``loss_metric`` the trial
    reported, and return it (None before any).

    >>> best = {}
    >>> remember_best_loss(best, "t", {"train_loss": 0.6})
    0.6
    >>> remember_best_loss(best, "t", {"train_loss": 0.7})
    0.6
    """
    loss = unwrap_scalar(result.get(loss_metric))
    if is_finite(loss) and (trial_id not in best or float(loss) < best[trial_id]):  # type: ignore
        best[trial_id] = float(loss)  # type: ignore[arg-type]
    return best.get(trial_id)


def stalls_early(
    result: Mapping[str, Any],
    loss: float | None,
    best_loss: float | None,
    first_loss: float | None,
    max_epochs: int,
    stall_patience: int | None,
    stall_margin: float,
) -> bool:
    """The controller's early stall check (:func:`neve_tune._rules.stalled_early`) on a raw
    result: no 10 % loss drop after ``stall_patience`` epochs and none in sight by
    ``max_epochs`` at its pace (``best_loss``: the trial's lowest loss before this one)."""
    if loss is None:
        return False
    iteration = int(to_float("training_iteration", result.get("training_iteration", 0)))
    lowest = loss if best_loss is None else min(best_loss, loss)
    return stalled_early(
        iteration,
        lowest,
        first_loss,
        max_epochs=max_epochs,
        stall_patience=stall_patience,
        stall_margin=stall_margin,
    )
