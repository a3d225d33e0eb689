"""One Tune result's NeVe verdict (converged, diverged, stalled or go on): the rule that
:class:`~neve_tune.ray.NeVeStopper` and :class:`~neve_tune.ray.NeVeASHAScheduler` both apply,
so that they stop a trial on exactly the same evidence (:func:`velocity_verdict`).

    >>> velocity_verdict({"velocity": 0.5, "neve_stop": True})
    'converged'
    >>> velocity_verdict({"velocity": 0.001, "neve_stop": False})  # trusted: min_epochs not reached
    >>> raw = {"training_iteration": 3, "velocity": 0.001, "train_loss": 0.2,
    ...        "config": {"threshold": 0.01}}
    >>> velocity_verdict(raw, first_loss=0.7), velocity_verdict(raw, first_loss=0.21)
    ('converged', 'stalled')
    >>> velocity_verdict({"train_loss": 0.3})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: NeVeStopper: the trial's result has neither 'velocity' nor 'neve_stop'; ...
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from .._checks import check_float, check_mapping, to_float
from .._rules import STALL_PATIENCE, learned
from ._losses import stalls_early
from ._result import is_bare, reported_flag, reported_number, training_keys

__all__ = [
    "CONVERGED",
    "DIVERGED",
    "MIN_RAW_EPOCHS",
    "STALLED",
    "check_key",
    "check_threshold",
    "velocity_verdict",
]


CONVERGED = "converged"


DIVERGED = "diverged"


STALLED = "stalled"


#: No stop on a raw velocity before this ``training_iteration``: the controller's stall
#: rule (:func:`neve_tune._rules.learned`) needs the first epoch's loss and a later one,
#: so a velocity stop at iteration 1 could only ever be "stalled".
MIN_RAW_EPOCHS = 2


def check_threshold(value: Any, name: str = "threshold") -> float:
    """``value`` (Python, NumPy or 0-d tensor) as a positive finite float, else a
    ``TypeError``/``ValueError`` naming ``name``.

    >>> check_threshold(1e-3)
    0.001
    >>> check_threshold(0.0)
    Traceback (most recent call last):
    ...
    ValueError: threshold must be a finite number > 0, got 0.0
    """
    return check_float(name, value, positive=True)


def check_key(value: Any, name: str) -> str:
    if not isinstance(value, str) or not value:
        raise TypeError(f"{name} must be a non-empty str, got {value!r}")
    return value


def _trial_threshold(
    result: Mapping[str, Any], threshold_key: str, default: float | None, who: str
) -> float:
    thr: Any = result.get(threshold_key)
    if thr is None:
        config = result.get("config")
        if isinstance(config, Mapping):
            thr = config.get(threshold_key)
        else:  # schedulers get flattened results
            thr = result.get(f"config/{threshold_key}")
    if thr is None:
        thr = default
    if thr is None:
        raise ValueError(
            f"{who}: no velocity threshold for this trial: put {threshold_key!r} in the trial's "
            f"config (it is searched) or in its result, or pass threshold= to {who}"
        )
    try:
        return check_threshold(thr, f"{who}: the trial's {threshold_key!r}")
    except TypeError as e:
        raise ValueError(str(e)) from None


def velocity_verdict(
    result: Mapping[str, Any],
    *,
    metric: str = "velocity",
    threshold_key: str = "threshold",
    threshold: float | None = None,
    min_raw_epochs: int = MIN_RAW_EPOCHS,
    who: str = "NeVeStopper",
    first_loss: float | None = None,
    loss_metric: str = "train_loss",
    num_classes: int | None = None,
    stall_margin: float = 0.1,
    best_loss: float | None = None,
    max_epochs: int | None = None,
    stall_patience: int | None = STALL_PATIENCE,
) -> str | None:
    """``"diverged"``, ``"stalled"``, ``"converged"`` or ``None`` (go on) for one Tune result.

    In this order (numbers may be Python, NumPy or 0-d torch scalars):

    1. diverged: ``result["diverged"]`` is true, or ``result[metric]`` or
       ``result[loss_metric]`` is NaN or infinite;
    2. stalled: ``result["stalled"]`` is true (the trial did not learn). Never converged;
    3. a ``neve_stop`` key decides: converged if true, go on if false (the trial's
       controller applied its threshold and ``min_epochs`` already);
    4. otherwise the raw velocity, judged as the controller would
       (:func:`_raw_velocity_verdict`): from ``training_iteration >= min_raw_epochs``
       (default :data:`MIN_RAW_EPOCHS` = 2), ``result[metric] <`` the trial's threshold
       (``result[threshold_key]``, else its config's, else ``threshold``) ends it
       ``"converged"`` if it learned by :func:`neve_tune._rules.learned` (its loss
       against ``first_loss``, its first result's, and chance with ``num_classes``),
       else ``"stalled"``. Without ``first_loss`` this result is the first, so it cannot
       have learned. ``result[metric] = None`` means "not measured": go on. With
       ``max_epochs``, :func:`~neve_tune.ray._losses.stalls_early` may end it ``"stalled"``.

    Raises ``ValueError`` naming the key when a result with training metrics has neither
    ``metric`` nor ``neve_stop``, when a raw-velocity result has no ``loss_metric``, or
    when the threshold is missing or not positive; ``TypeError`` for a non-number metric
    or a non-bool flag.
    """
    check_mapping("result", result, "a dict of one epoch's reported metrics")
    diverged, value, loss = _diverged(result, metric, loss_metric, who)
    if diverged:
        return DIVERGED
    if reported_flag(result, "stalled", who):
        return STALLED
    if "neve_stop" in result:
        return CONVERGED if reported_flag(result, "neve_stop", who) else None
    rule = dict(
        min_raw_epochs=min_raw_epochs,
        first_loss=first_loss,
        num_classes=num_classes,
        stall_margin=stall_margin,
        best_loss=best_loss,
        max_epochs=max_epochs,
        stall_patience=stall_patience,
    )
    return _raw_velocity_verdict(
        result, value, loss, metric, loss_metric, threshold_key, threshold, who, **rule
    )


def _diverged(
    result: Mapping[str, Any], metric: str, loss_metric: str, who: str
) -> tuple[bool, float | None, float | None]:
    """Rule 1 of :func:`velocity_verdict`, and the result's ``metric`` and ``loss_metric``
    as numbers: (diverged, value, loss). A true ``diverged`` flag is read first and decides."""
    if reported_flag(result, "diverged", who):
        return True, None, None
    value, loss = reported_number(result, metric, who), reported_number(result, loss_metric, who)
    return any(x is not None and not math.isfinite(x) for x in (value, loss)), value, loss


def _raw_velocity_verdict(
    result: Mapping[str, Any],
    value: float | None,
    loss: float | None,
    metric: str,
    loss_metric: str,
    threshold_key: str,
    threshold: float | None,
    who: str,
    *,
    min_raw_epochs: int,
    first_loss: float | None,
    num_classes: int | None,
    stall_margin: float,
    best_loss: float | None,
    max_epochs: int | None,
    stall_patience: int | None,
) -> str | None:
    """Rule 4 of :func:`velocity_verdict`: a result without ``neve_stop``."""
    if metric not in result:
        if is_bare(result):
            return None
        keys = training_keys(result)
        raise ValueError(
            f"{who}: the trial's result has neither {metric!r} nor 'neve_stop'; it reports {keys}"
        )
    if value is None:  # not measured this iteration
        return None
    if loss is None:
        keys = training_keys(result)
        raise ValueError(
            f"{who}: a result with a raw {metric!r} and no 'neve_stop' needs {loss_metric!r} (the "
            "epoch's mean training loss) to tell a converged trial from a stalled one; it reports "
            f"{keys}"
        )
    # read before any early return: a trial with no threshold anywhere is refused at its first
    # result, not at the first one the rule compares
    limit = _trial_threshold(result, threshold_key, threshold, who)
    if max_epochs is not None and stalls_early(
        result, loss, best_loss, first_loss, max_epochs, stall_patience, stall_margin
    ):
        return STALLED
    if (
        to_float("training_iteration", result.get("training_iteration", min_raw_epochs))
        < min_raw_epochs
    ):
        return None
    if not value < limit:
        return None
    first = loss if first_loss is None else first_loss
    return (
        CONVERGED
        if learned(loss, first, stall_margin=stall_margin, num_classes=num_classes)
        else STALLED
    )
