"""The trial rules every door shares: one definition each.

``fit`` and the CLI, :class:`neve_tune.NeVe` in a user's loop, the Lightning and Hugging
Face callbacks, the Ray stopper and scheduler all judge a run by these functions
(docs/design.md, "The controller"):

- :func:`auto_patience`: the LR patience ``"auto"``, scaled to the run's budget;
- :func:`learned`: whether a run learned (the stall rule at a stop);
- :func:`stalled_early`: a run whose loss has not moved for ``stall_patience`` epochs
  ends ``"stalled"`` without waiting for a velocity stop or the cap;
- :func:`check_threshold`: the velocity threshold each stop rule may take;
- :func:`resolve_threshold`: the stop rule of a threshold given with or without its mode.

These functions import nothing from the rest of the package.
"""

from __future__ import annotations

import math
from typing import Any

from ._checks import check_choice, check_float, check_int

__all__ = [
    "FLOAT32_MAX",
    "STALL_PATIENCE",
    "auto_patience",
    "check_threshold",
    "learned",
    "resolve_patience",
    "resolve_threshold",
    "stalled_early",
]

FLOAT32_MAX = 3.4028234663852886e38  # weights are float32: a larger step overflows in the optimizer

#: epochs after the first over which :func:`stalled_early` measures a run's pace before it
#: may end the run. A fixed number, not scaled to the budget: five epochs give the pace of
#: a slow learner (a loss that falls a little every epoch) apart from a dead run's (a
#: learning rate of 1e-6: the loss does not move and V / peak V stays near 1, so no
#: velocity stop comes), which then ends at epoch 6 instead of at the cap.
STALL_PATIENCE = 5


def auto_patience(max_epochs: int) -> int:
    """``lr_patience="auto"``: ``max(2, max_epochs // 20)`` epochs (3 for 60 epochs, 12 for 250).

    The one definition of the LR patience scaled to the run's budget: ``NeVe(lr_patience="auto")``
    (its default), ``Study(lr_patience="auto")`` and both callbacks use it.

    >>> auto_patience(60), auto_patience(250), auto_patience(10)
    (3, 12, 2)
    """
    return max(2, int(max_epochs) // 20)


def resolve_patience(patience: int | str, max_epochs: int, name: str = "lr_patience") -> int:
    """``patience`` in epochs: an int >= 0 as given, ``"auto"`` by :func:`auto_patience`.

    >>> resolve_patience("auto", 100), resolve_patience(7, 100)
    (5, 7)
    """
    if patience == "auto":
        return auto_patience(max_epochs)
    if isinstance(patience, str):
        raise ValueError(f"{name} must be an int >= 0 or 'auto', got {patience!r}")
    return int(check_int(name, patience, minimum=0))  # type: ignore[arg-type]


def learned(
    train_loss: float,
    first_loss: float | None,
    *,
    stall_margin: float = 0.1,
    num_classes: int | None = None,
) -> bool:
    """The stall rule: whether a run whose first epoch's training loss was ``first_loss``
    learned by the epoch whose loss is ``train_loss``. It did when that loss is below
    ``(1 - stall_margin) * first_loss`` and, when ``num_classes`` is known, below
    ``(1 - stall_margin) * log(num_classes)`` (chance). A run with no first loss has not.
    :class:`NeVe` and ``neve_tune.ray.NeVeStopper`` judge by this one rule.

    >>> learned(0.5, 0.7), learned(0.68, 0.7), learned(0.64, 0.73, num_classes=2)
    (True, False, False)
    """
    keep = 1.0 - stall_margin
    if first_loss is None or not train_loss < keep * first_loss:
        return False
    return num_classes is None or train_loss < keep * math.log(num_classes)


def stalled_early(
    epoch: int,
    best_loss: float | None,
    first_loss: float | None,
    *,
    max_epochs: int,
    stall_patience: int | None = STALL_PATIENCE,
    stall_margin: float = 0.1,
) -> bool:
    """Whether a run ends ``"stalled"`` at ``epoch`` before any stop fired: ``stall_patience``
    epochs after the first have passed, its lowest training loss so far (``best_loss``) is
    not below ``(1 - stall_margin) * first_loss``, and at its pace so far (that loss's drop
    per epoch since the first) it would not get there by ``max_epochs`` either. The pace
    is extrapolated linearly, which overrates a loss curve that flattens: a slow learner is
    given the benefit of the doubt, a dead run (no drop) is not. Chance is not checked
    here (a run above chance may be learning slowly); it is at the stop (:func:`learned`).
    ``stall_patience=None`` turns the check off.

    >>> stalled_early(6, 0.7549, 0.755, max_epochs=60)   # lr 1e-6: the loss does not move
    True
    >>> stalled_early(6, 0.688, 0.749, max_epochs=60)    # slow: 8 % in 5 epochs, 10 % on pace
    False
    >>> stalled_early(5, 0.755, 0.755, max_epochs=60), stalled_early(6, 0.6, 0.755, max_epochs=60)
    (False, False)
    """
    if stall_patience is None or best_loss is None or first_loss is None:
        return False
    if epoch - 1 < stall_patience or learned(best_loss, first_loss, stall_margin=stall_margin):
        return False
    pace = max(0.0, first_loss - best_loss) / (epoch - 1)  # loss drop per epoch so far
    return not pace * (max_epochs - 1) > stall_margin * first_loss


def check_threshold(name: str, value: Any, mode: str = "relative") -> float:
    """NeVe's velocity threshold under ``mode``: a ratio to the peak velocity in (0, 1]
    (``"relative"``: V / peak V is at most 1, so 1 already stops at the first epoch below
    the peak and a larger one means nothing more), or a finite positive float32
    (``"absolute"``).

    >>> check_threshold("--threshold", 1e308)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: --threshold must be a finite number > 0 and <= 1 (relative rule: ...), got 1e+308
    """
    check_choice("threshold_mode", mode, ("absolute", "relative"))
    try:
        if mode == "relative":
            out = check_float(name, value, low=0.0, high=1.0, low_open=True)
        else:
            out = check_float(name, value, positive=True, high=FLOAT32_MAX)
    except ValueError as e:
        rule = (
            "relative rule: a ratio to the peak velocity"
            if mode == "relative"
            else "absolute rule: the velocity"
        )
        head, _, got = str(e).rpartition(", got ")
        raise ValueError(f"{head} ({rule}), got {got}") from None
    assert out is not None
    return out


THRESHOLD_MODES = ("absolute", "relative")
# the velocity stop when no threshold is given: V / peak V < 1e-2, chosen from the
# model-family table (docs/measurements.md, "One stop rule for every model family";
# docs/design.md, "The controller")
DEFAULT_THRESHOLD_MODE = "relative"
DEFAULT_THRESHOLDS = {"relative": 1e-2, "absolute": 1e-3}


def resolve_threshold(
    threshold: float | None = None, threshold_mode: str | None = None
) -> tuple[float, str]:
    """The velocity stop's ``(threshold, threshold_mode)``.

    No threshold: the default rule, relative 1e-2 (1e-3 with ``threshold_mode="absolute"``).
    A threshold without a mode is a velocity (``"absolute"``), as it always was, so a
    value written for the absolute rule keeps its meaning.

    >>> resolve_threshold(), resolve_threshold(1e-3), resolve_threshold(0.05, "relative")
    ((0.01, 'relative'), (0.001, 'absolute'), (0.05, 'relative'))
    """
    if threshold_mode is None:
        threshold_mode = DEFAULT_THRESHOLD_MODE if threshold is None else "absolute"
    check_choice("threshold_mode", threshold_mode, THRESHOLD_MODES)
    if threshold is None:
        threshold = DEFAULT_THRESHOLDS[threshold_mode]
    return check_threshold("threshold", threshold, threshold_mode), threshold_mode
