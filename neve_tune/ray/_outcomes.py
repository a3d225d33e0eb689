"""How each trial of a :class:`~neve_tune.ray.NeVeASHAScheduler` ended (converged,
diverged, stalled, pruned at a rung, stopped at ``max_t``, or completed by itself), counted
by outcome, with the number of stops the scheduler made."""

from __future__ import annotations

from typing import Any

from ._verdict import CONVERGED, DIVERGED, STALLED

__all__ = ["COMPLETED", "MAX_T", "OUTCOMES", "PRUNED", "Outcomes"]

PRUNED, MAX_T, COMPLETED = "pruned", "max_t", "completed"
OUTCOMES = (CONVERGED, DIVERGED, STALLED, PRUNED, MAX_T, COMPLETED)
#: the trial's own end: a repeated final result does not change or count it again
FINAL = (CONVERGED, DIVERGED, STALLED)


class Outcomes:
    """Each trial's outcome (one of :data:`OUTCOMES`), the count of each, and ``stops``."""

    def __init__(self) -> None:
        self.by_trial: dict[str, str] = {}
        self.counts: dict[str, int] = dict.fromkeys(OUTCOMES, 0)
        self.stops = 0

    def __contains__(self, trial_id: str) -> bool:
        return trial_id in self.by_trial

    def get(self, trial_id: str) -> str | None:
        return self.by_trial.get(trial_id)

    def set(self, trial_id: str, why: str) -> None:
        """Record (or replace) the trial's outcome."""
        old = self.by_trial.get(trial_id)
        if old is not None:
            self.counts[old] -= 1
        self.by_trial[trial_id] = why
        self.counts[why] += 1

    def finish(self, trial_id: str, why: str) -> None:
        """The scheduler stops the trial for ``why`` (once: a final outcome stays)."""
        if self.by_trial.get(trial_id) in FINAL:
            return  # the repeated final result
        self.set(trial_id, why)
        self.stops += 1

    def state_dict(self) -> dict[str, Any]:
        return {"outcome": dict(self.by_trial), "num_stopped": self.stops}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.by_trial, self.counts = {}, dict.fromkeys(OUTCOMES, 0)
        for trial_id, why in state["outcome"].items():
            self.set(trial_id, why)
        self.stops = int(state["num_stopped"])
