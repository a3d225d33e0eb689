"""The rungs of asynchronous successive halving, by the rule of Ray's
:class:`~ray.tune.schedulers.AsyncHyperBandScheduler` (same milestones, same cutoffs),
without Ray: the bookkeeping of :class:`~neve_tune.ray.NeVeASHAScheduler`.

    >>> _bracket_milestones(1, 16, 2, 0)
    [16, 8, 4, 2, 1]
    >>> rung = _Rung(1)
    >>> for trial, value in (("a", -0.5), ("b", -0.9), ("c", -0.7)):
    ...     rung.add(trial, value)
    >>> rung.cutoff(0.5)                    # the median of the recorded values
    -0.7
"""

from __future__ import annotations

import bisect
import math

import numpy as np

from .._checks import check_choice

__all__: list[str] = []


class _Rung:
    """One rung: the values recorded there (``sign * metric``, higher is better) by trial,
    and the non-NaN ones kept sorted, so the cutoff costs O(1) and a record O(log n)
    comparisons instead of a percentile over every recorded value."""

    __slots__ = ("milestone", "values", "_sorted")

    def __init__(self, milestone: float) -> None:
        self.milestone = milestone
        self.values: dict[str, float] = {}
        self._sorted: list[float] = []

    def add(self, trial_id: str, value: float) -> None:
        self.values[trial_id] = value
        if not math.isnan(value):
            bisect.insort(self._sorted, value)

    def load(self, values: dict[str, float]) -> None:
        """Replace the recorded values (a saved :attr:`values`)."""
        self.values = {tid: float(v) for tid, v in values.items()}
        self._sorted = sorted(v for v in self.values.values() if not math.isnan(v))

    def cutoff(self, q: float) -> float | None:
        """``numpy.nanpercentile(values, 100 * q)`` (linear), bit for bit; ``None`` when
        nothing is recorded, NaN when only NaN is."""
        if not self.values:
            return None
        a, n = self._sorted, len(self._sorted)
        if n == 0:
            return math.nan
        index = (n - 1) * q
        lo = math.floor(index)
        if lo >= n - 1:
            return a[-1]
        t = index - lo
        lo_v, hi_v = a[lo], a[lo + 1]
        diff = hi_v - lo_v
        return hi_v - diff * (1 - t) if t >= 0.5 else lo_v + diff * t  # numpy's _lerp


def _bracket_milestones(min_t: int, max_t: int, rf: float, s: int) -> list[float]:
    """Rung milestones of bracket ``s``, highest first (Ray's formula, so the rungs match)."""
    n = int(np.log(max_t / min_t) / np.log(rf) - s + 1)
    return [min_t * rf ** (k + s) for k in reversed(range(n))]


def _choose_bracket(brackets: list[list[_Rung]]) -> int:
    """A new trial's bracket, by Ray's rule: a softmax over the brackets' numbers of rungs."""
    if len(brackets) == 1:
        return 0
    sizes = np.array([len(b) for b in brackets])
    probs = np.e ** (sizes - sizes.max())
    return int(np.random.choice(len(brackets), p=probs / probs.sum()))


def check_mode(metric: str, mode: str) -> str:
    """``mode`` (``"min"``/``"max"``) of the rung ``metric``; ``"max"`` on a loss would keep
    the trials that fit worst at every rung, so it is refused.

    >>> check_mode("train_loss", "max")
    Traceback (most recent call last):
    ...
    ValueError: mode must be 'min' for metric 'train_loss': a loss is minimised, got 'max'
    """
    check_choice("mode", mode, ("min", "max"))
    if mode == "max" and metric.endswith("loss"):
        raise ValueError(
            f"mode must be 'min' for metric {metric!r}: a loss is minimised, got 'max'"
        )
    return mode
