"""The rungs and brackets of asynchronous successive halving, by the rule of Ray's
:class:`~ray.tune.schedulers.AsyncHyperBandScheduler` (same milestones, same cutoffs),
without Ray: the bookkeeping of :class:`~neve_tune.ray.NeVeASHAScheduler`, which bracket
each trial is in, and the halving decision at a rung.

    >>> bracket_milestones(1, 16, 2, 0)
    [16, 8, 4, 2, 1]
    >>> rung = Rung(1)
    >>> for trial, value in (("a", -0.5), ("b", -0.9), ("c", -0.7)):
    ...     rung.add(trial, value)
    >>> rung.cutoff(0.5)                    # the median of the recorded values
    -0.7
"""

from __future__ import annotations

import bisect
import math

import numpy as np

from .._checks import check_float, check_int

__all__ = ["Brackets", "Rung", "bracket_milestones", "choose_bracket"]


class Rung:
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


def bracket_milestones(min_t: int, max_t: int, rf: float, s: int) -> list[float]:
    """Rung milestones of bracket ``s``, highest first (Ray's formula, so the rungs match)."""
    n = int(np.log(max_t / min_t) / np.log(rf) - s + 1)
    return [min_t * rf ** (k + s) for k in reversed(range(n))]


def choose_bracket(brackets: list[list[Rung]]) -> int:
    """A new trial's bracket, by Ray's rule: a softmax over the brackets' numbers of rungs."""
    if len(brackets) == 1:
        return 0
    sizes = np.array([len(b) for b in brackets])
    probs = np.e ** (sizes - sizes.max())
    return int(np.random.choice(len(brackets), p=probs / probs.sum()))


class Brackets:
    """The brackets of rungs (each highest milestone first; ``min_resource``, ``max_t``,
    ``reduction_factor`` and ``brackets`` as in Ray's scheduler, checked here) and the
    bracket each trial that may still report is in. Values are recorded as
    ``sign * metric`` (higher is better)."""

    def __init__(
        self, min_resource: int, max_t: int, reduction_factor: float, brackets: int
    ) -> None:
        self.max_t = check_int("max_t", max_t, minimum=1)
        min_resource = check_int("min_resource", min_resource, minimum=1)
        if min_resource > self.max_t:
            raise ValueError(f"min_resource must be <= max_t={self.max_t}, got {min_resource}")
        rf = check_float("reduction_factor", reduction_factor, low=1.0, low_open=True)
        self.quantile = ((1 - 1 / rf) * 100) / 100  # as Ray computes it, for equal cutoffs
        self.rungs: list[list[Rung]] = [
            [Rung(m) for m in bracket_milestones(min_resource, self.max_t, rf, s)]
            for s in range(check_int("brackets", brackets, minimum=1))
        ]
        self.active: dict[str, int] = {}  # trial_id -> bracket index, while it may report

    def milestones(self) -> list[list[float]]:
        return [[r.milestone for r in b] for b in self.rungs]

    def describe(self) -> str:
        """One line per bracket, each rung's milestone and cutoff (Tune's status table)."""
        return "\n".join(
            "Bracket: "
            + " | ".join(f"Iter {r.milestone:.3f}: {r.cutoff(self.quantile)}" for r in bracket)
            for bracket in self.rungs
        )

    def rung_epochs(self, stop_last_trials: bool = True) -> tuple[int, ...]:
        """The whole ``time_attr`` values where a result first meets a milestone of any
        bracket (a milestone's ceiling), and ``max_t`` where ``stop_last_trials`` ends a
        trial there, ascending."""
        last = {self.max_t} if stop_last_trials else set()
        return tuple(sorted({math.ceil(m) for b in self.milestones() for m in b} | last))

    def add(self, trial_id: str) -> None:
        """Put a new trial in a bracket (Ray's rule)."""
        self.active[trial_id] = choose_bracket(self.rungs)

    def index(self, trial_id: str) -> int:
        """The trial's bracket; a trial never added (e.g. restored without state) gets one."""
        if trial_id not in self.active:
            self.add(trial_id)
        return self.active[trial_id]

    def of(self, trial_id: str) -> list[Rung]:
        return self.rungs[self.index(trial_id)]

    def pending(self, trial_id: str, t: float, stop_last_trials: bool) -> Rung | None:
        """The rung where a result at time ``t`` is decided (Ray's asynchronous successive
        halving: the highest rung reached and not yet recorded), None when there is none."""
        for rung in self.of(trial_id):  # highest milestone first
            if t >= rung.milestone and trial_id in rung.values and not stop_last_trials:
                return None  # decided at this rung already
            if t < rung.milestone or trial_id in rung.values:
                continue
            return rung
        return None

    def record(self, trial_id: str, t: float, reward: float) -> None:
        """Put a finished trial's value in the highest rung it reached (no decision)."""
        for rung in self.of(trial_id):
            if t >= rung.milestone and trial_id not in rung.values:
                rung.add(trial_id, reward)
                break

    def state_dict(self) -> list[list[tuple[float, dict[str, float]]]]:
        return [[(r.milestone, dict(r.values)) for r in bracket] for bracket in self.rungs]

    def load_state_dict(self, rungs: list[list[tuple[float, dict[str, float]]]]) -> None:
        """Load :meth:`state_dict`; ``ValueError`` when it was made with other rungs."""
        if [[m for m, _ in b] for b in rungs] != self.milestones():
            raise ValueError(
                "NeVeASHAScheduler state has other rungs than this scheduler "
                "(max_t, min_resource, reduction_factor or brackets changed?)"
            )
        for bracket, saved in zip(self.rungs, rungs):
            for rung, (_, values) in zip(bracket, saved):
                rung.load(values)
