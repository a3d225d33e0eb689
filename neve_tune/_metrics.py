"""One epoch's metric dict, checked the same way for every backend.

Both ``report_epoch`` functions (:func:`neve_tune.optuna.report_epoch` and
:func:`neve_tune.ray.report_epoch`) hand what a training loop reports to a pruner or a
scheduler that reads it by name. :func:`check_metric_keys` refuses what would be read
wrong without a word: a key one typo away from a metric NeVe reads (``"velocty"``), a
negative velocity, a flag that is not a bool.

    >>> check_metric_keys({"epoch": 1, "velocity": 0.5, "train_los": 0.2})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: metrics has 'train_los': did you mean 'train_loss'? (a metric NeVe reads); ...
    >>> check_metric_keys({"velocity": -0.1})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: metrics['velocity'] must be >= 0 (a velocity is a mean absolute change; ...
"""

from __future__ import annotations

import difflib
import math
import numbers
from collections.abc import Collection, Mapping
from typing import Any

from ._checks import is_bool, unwrap_scalar
from .records import METRIC_NAMES

__all__ = ["FLAGS", "KNOWN_NAMES", "check_metric_keys", "close_metric_name"]

#: the controller's flags: booleans when given
FLAGS = ("neve_stop", "stalled", "diverged")

#: every name a NeVe door reports or reads by name: the per-epoch names, the validation
#: baselines', the selection subset's, and a trial's last result
#: (docs/design.md, "Metric names"). A key one typo away from one of them is refused; the
#: names themselves never are (``best_epoch`` is no typo of ``kept_epoch``).
KNOWN_NAMES = METRIC_NAMES + (
    "val_loss",
    "val_acc",
    "subset_pred",
    "subset_fit",
    "stopped_by",
    "objective",
    "epochs",
    "best_epoch",
    "epochs_equiv",
    "test_acc",
    "test_loss",
    "wall_s",
)


def close_metric_name(key: str) -> str | None:
    """The name ``key`` is one typo away from (``"velocty"`` -> ``"velocity"``), if any, among
    :data:`KNOWN_NAMES`.

    >>> [close_metric_name(k) for k in ("velocty", "stoped_by", "best_epoch")]
    ['velocity', 'stopped_by', None]
    """
    match = difflib.get_close_matches(key, KNOWN_NAMES, n=1, cutoff=0.8)
    return match[0] if match and match[0] != key else None


def check_metric_keys(metrics: Any, own: Collection[str] = ()) -> Mapping[str, Any]:
    """``metrics`` if it is a mapping with str keys, none of them a misspelled metric name
    (the caller's ``own`` names, e.g. a ``metric=`` it was given, are never taken for one),
    a velocity that is not negative (NaN and inf pass: they mark a diverged epoch) and
    boolean flags; else a ``TypeError``/``ValueError`` naming the key."""
    if not isinstance(metrics, Mapping):
        raise TypeError(
            f"metrics must be a mapping of metric names to values (one epoch), got {metrics!r}"
        )
    keys = sorted(map(str, metrics))
    for key in metrics:
        if not isinstance(key, str):
            raise TypeError(f"metrics keys must be str, got {key!r}")
        near = None if key in own else close_metric_name(key)
        if near is not None and near not in metrics:
            raise ValueError(
                f"metrics has {key!r}: did you mean {near!r}? (a metric NeVe reads); "
                f"its keys: {keys}"
            )
    # its type is each backend's check (arrays, strings)
    velocity = unwrap_scalar(metrics.get("velocity"))
    number = isinstance(velocity, numbers.Real) and not is_bool(velocity)
    if number and not math.isnan(velocity) and velocity < 0:
        raise ValueError(
            f"metrics['velocity'] must be >= 0 (a velocity is a mean absolute change; "
            f"NaN or inf mark divergence), got {velocity!r}"
        )
    for key in FLAGS:
        value = unwrap_scalar(metrics.get(key))
        if value is not None and not is_bool(value):
            raise TypeError(f"metrics[{key!r}] must be a bool, got {value!r}")
    return metrics
