"""``report_epoch``: what a Ray Tune trainable of your own reports after every epoch.

The Ray sibling of :func:`neve_tune.optuna.report_epoch`. It checks one epoch's metric
dict the way :class:`~neve_tune.ray.NeVeStopper` and
:class:`~neve_tune.ray.NeVeASHAScheduler` will read it, turns NumPy and 0-d torch
scalars into plain Python numbers, and hands it to ``ray.tune.report`` (the public
function trainable API; ``ray.train.report`` fails a Tune trial), with an optional
``tune.Checkpoint``.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from typing import Any

from .._checks import is_bool, to_float, unwrap_scalar
from .._metrics import check_metric_keys

__all__ = ["report_epoch", "check_epoch_metrics"]

# keys Tune fills in itself: a trainable reporting them would overwrite Tune's bookkeeping
_TUNE_KEYS = frozenset(
    {
        "training_iteration",
        "done",
        "trial_id",
        "config",
        "time_total_s",
        "time_this_iter_s",
        "timestamp",
        "date",
        "pid",
        "hostname",
        "node_ip",
        "experiment_id",
    }
)


def _plain(key: str, value: Any) -> Any:
    """A reported value as Tune should store it: NumPy/tensor scalars as Python ones."""
    value = unwrap_scalar(value)
    if value is None or isinstance(value, str):
        return value
    if is_bool(value):
        return bool(value)
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    if hasattr(value, "shape") and getattr(value, "ndim", 0) > 0:
        raise TypeError(
            f"metrics[{key!r}] must be a scalar, got an array of shape {tuple(value.shape)} "
            "(reduce it first)"
        )
    return value


def check_epoch_metrics(
    metrics: Mapping[str, Any], *, metric: str = "velocity", loss_metric: str = "train_loss"
) -> dict[str, Any]:
    """One epoch's metrics, checked and converted (see :func:`report_epoch` for the rule).

    >>> import numpy as np
    >>> check_epoch_metrics({"epoch": np.int64(3), "velocity": np.float32(0.5), "train_loss": 0.25})
    {'epoch': 3, 'velocity': 0.5, 'train_loss': 0.25}
    >>> check_epoch_metrics({"velocty": 0.5, "train_loss": 0.25})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: metrics has 'velocty': did you mean 'velocity'? (a metric NeVe reads); its keys: ...
    """
    # the rule both backends share (names, velocity, flags); the caller's own names are no typos
    check_metric_keys(metrics, own=(metric, loss_metric))
    keys = sorted(map(str, metrics))
    for key in metrics:
        if key in _TUNE_KEYS:
            raise ValueError(
                f"metrics must not set {key!r}: Tune fills it in itself; its keys: {keys}"
            )
    out = {key: _plain(key, value) for key, value in metrics.items()}
    for key in (metric, loss_metric):
        if key not in out:
            raise ValueError(
                f"metrics has no {key!r} (NeVeStopper needs {metric!r} and {loss_metric!r} every "
                f"epoch); its keys: {keys}"
            )
    diverged = out.get("diverged") is True
    for key in (metric, loss_metric):
        if out[key] is None and not diverged:
            raise ValueError(f"metrics[{key!r}] is None on an epoch not flagged 'diverged'")
        if out[key] is not None:
            to_float(f"metrics[{key!r}]", out[key])
    return out


def report_epoch(
    metrics: Mapping[str, Any],
    checkpoint: Any = None,
    *,
    metric: str = "velocity",
    loss_metric: str = "train_loss",
) -> dict[str, Any]:
    """Report one finished epoch from your own Ray Tune function trainable; returns what
    was reported.

    The rule for the input, so that a stopper never judges a trial on a missing or
    mistyped key:

    - ``metric`` (``"velocity"``) and ``loss_metric`` (``"train_loss"``) are required:
      :class:`~neve_tune.ray.NeVeStopper` tells a converged trial from a stalled one by
      the training loss. Either may be ``None`` only on an epoch flagged ``diverged``;
    - a key one typo away from a NeVe metric name (``"velocty"``, ``"train_los"``) is
      refused with the name it resembles; a key Tune sets itself
      (``training_iteration``, ``done``, ``config``, ...) is refused;
    - NumPy and 0-d torch scalars become Python ``float``/``int``/``bool``; a tensor or
      array with more than one element is refused (reduce it first);
    - ``neve_stop``, ``stalled``, ``diverged``, when given, are booleans.

    The output of :meth:`neve_tune.NeVe.step` passes as it is (it holds the velocity,
    the training loss and the controller's flags). ``checkpoint`` is a
    ``ray.tune.Checkpoint`` (or ``None``; anything else is refused), saved with this result.

    Example, inside a trainable (``docs/ray_trainable.py`` is a complete one)::

        from neve_tune.ray import report_epoch
        metrics = neve.step(train_loss=total / batches)
        report_epoch(metrics)                     # -> ray.tune.report(metrics)
    """
    out = check_epoch_metrics(metrics, metric=metric, loss_metric=loss_metric)
    from ray import tune

    if checkpoint is not None and not isinstance(checkpoint, tune.Checkpoint):
        # else Ray fails the trial with "'dict' object has no attribute 'path'"
        raise TypeError(
            "checkpoint must be a ray.tune.Checkpoint (e.g. tune.Checkpoint.from_directory(dir)) "
            f"or None, got {type(checkpoint).__name__}"
        )
    tune.report(out, checkpoint=checkpoint)
    return out
