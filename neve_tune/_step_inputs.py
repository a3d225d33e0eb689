"""What :meth:`~neve_tune.control.NeVe.step` is given, checked before anything changes: the
training loss and counts as plain numbers, the prediction changes the LR signal or the
memorisation guard needs (refused, or warned about once, when missing)."""

from __future__ import annotations

import math
import warnings
from typing import TYPE_CHECKING, Any

from ._checks import to_float

if TYPE_CHECKING:
    from .control import NeVe

__all__ = ["check_step_inputs"]


def _count(name: str, value: Any) -> int | float | None:
    """A reported count (Python, NumPy or 0-d tensor) as a plain number: an int when whole.
    A count is finite and >= 0: a negative or NaN one would read as a new low to the guard."""
    number = to_float(name, value, allow_none=True)
    if number is not None and not (math.isfinite(number) and number >= 0):
        raise ValueError(f"{name} must be a finite count >= 0, got {value!r}")
    if number is None or not number.is_integer():
        return number
    return int(number)


def check_step_inputs(
    neve: NeVe, train_loss: Any, val_loss: Any, prediction_changes: Any, unfit: Any
) -> tuple[float, float | None, Any, Any]:
    """:meth:`NeVe.step`'s inputs checked (before anything changes) and as plain numbers."""
    neve._check_open()
    if neve.lr_signal == "prediction_changes" and prediction_changes is None and neve.epoch >= 1:
        raise ValueError(
            "lr_signal='prediction_changes' needs step(..., prediction_changes=n) from the 2nd "
            "epoch on: n = training examples whose predicted class changed since the previous "
            "epoch"
        )
    train_loss = to_float("train_loss", train_loss)
    if neve.pc_patience is not None and prediction_changes is None and neve.epoch >= 1:
        _warn_no_prediction_changes(neve)
    if neve.velocity.epoch < 0:
        raise RuntimeError(
            "NeVe.step() before start(): call neve.start() once before the first training epoch "
            "(it records the probe's reference outputs)"
        )
    if val_loss is not None:
        val_loss = to_float("val_loss", val_loss)
    prediction_changes, unfit = (
        _count("prediction_changes", prediction_changes),
        _count("unfit", unfit),
    )
    if neve.guard is not None and prediction_changes is not None and unfit is None:
        raise ValueError(
            "the memorisation guard (pc_patience set) needs step(..., unfit=m) with "
            "prediction_changes: m = the examples prediction_changes counts whose predicted class "
            "is not their label (PredictionChanges.unfit after update(index, output, target); "
            "SubsetPredictionChanges.unfit), or pc_patience=None"
        )
    return train_loss, val_loss, prediction_changes, unfit


def _warn_no_prediction_changes(neve: NeVe) -> None:
    """The guard is on but gets no counts: say so once, rather than run without it in
    silence (the 1st epoch has none to give: nothing to compare with yet)."""
    if neve._pc_warned:
        return
    neve._pc_warned = True
    warnings.warn(
        f"NeVe(pc_patience={neve.pc_patience}) got no prediction_changes at epoch "
        f"{neve.epoch + 1}: the memorisation guard cannot stop this run. Pass "
        "step(..., prediction_changes=n) after every epoch, n = training examples whose "
        "predicted class changed since the previous epoch (PredictionChanges.epoch_end() or "
        "SubsetPredictionChanges.measure(model)), or NeVe(pc_patience=None)",
        UserWarning,
        stacklevel=4,
    )
