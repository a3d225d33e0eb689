"""Reading one Tune result: its flags and numbers (Python, NumPy or 0-d torch scalars),
and the keys Tune fills in by itself, which carry no training metrics.

    >>> reported_flag({"stalled": 1.0}, "stalled", "NeVeStopper"), is_bare({"done": True})
    (True, True)
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from typing import Any

from .._checks import is_bool, to_float, unwrap_scalar

__all__ = [
    "AUTO_KEYS",
    "has_rung_keys",
    "is_bare",
    "plain_number",
    "reported_flag",
    "reported_number",
    "training_keys",
]

# Keys Tune fills in by itself, or that a bare final result carries: a result holding only
# these carries no training metrics (e.g. a function trainable that returned early).
AUTO_KEYS = frozenset(
    {
        "done",
        "training_iteration",
        "trial_id",
        "experiment_id",
        "date",
        "timestamp",
        "time_this_iter_s",
        "time_total_s",
        "pid",
        "hostname",
        "node_ip",
        "config",
        "time_since_restore",
        "iterations_since_restore",
        "timesteps_since_restore",
        "checkpoint_dir_name",
        "should_checkpoint",
        "__duplicate__",
    }
)


def reported_flag(result: Mapping[str, Any], key: str, who: str) -> bool:
    """A reported boolean (Python, NumPy or 0-d tensor); missing or ``None`` is false."""
    value = result.get(key)
    if value is True or value is False:  # the common case, without the conversion
        return value
    value = unwrap_scalar(value)
    if value is None:
        return False
    if not is_bool(value):
        if isinstance(value, (int, float)) and value in (0, 1):  # Lightning logs flags as 0.0/1.0
            return bool(value)
        raise TypeError(f"{who}: {key!r} must be a bool (or 0/1), got {value!r}")
    return bool(value)


def is_bare(result: Mapping[str, Any]) -> bool:
    """Whether ``result`` holds only keys Tune fills in (no training metrics)."""
    return all(k in AUTO_KEYS for k in result)


def reported_number(result: Mapping[str, Any], key: str, who: str) -> float | None:
    """``result[key]`` as a float; missing or ``None`` is None, a non-number a ``TypeError``."""
    return (
        to_float(f"{who}: metric {key!r}", result[key], allow_none=True) if key in result else None
    )


def plain_number(value: Any) -> float | None:
    """A reported real number (Python, NumPy or 0-d tensor: a trainable's own ``tune.report``
    keeps them as given) as a float; a bool, text or anything else None.

    >>> import numpy as np
    >>> plain_number(np.float32(0.5)), plain_number(True), plain_number("0.5")
    (0.5, None, None)
    """
    value = unwrap_scalar(value)
    return float(value) if isinstance(value, numbers.Real) and not is_bool(value) else None


def training_keys(result: Mapping[str, Any]) -> list[str]:
    """The keys of ``result`` that Tune did not fill in, sorted (for error messages)."""
    return sorted(k for k in result if k not in AUTO_KEYS)


def has_rung_keys(result: Mapping[str, Any], keys: tuple[str, ...], who: str) -> bool:
    """Whether a scheduler can place ``result`` at a rung: it holds every one of ``keys``
    (the progress key and the ranked metric). A result of Tune's own keys only has nothing to
    rank (False); one with training metrics but without one of ``keys`` is a ``ValueError``
    naming it, since the trial would never be ranked, in silence."""
    if is_bare(result):
        return False
    missing = [k for k in keys if k not in result]
    if missing:
        raise ValueError(
            f"{who}: the trial's result has no {missing[0]!r}, which its rungs need (without "
            f"it the trial is never ranked); it reports {training_keys(result)}"
        )
    return True
