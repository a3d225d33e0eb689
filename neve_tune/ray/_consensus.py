"""The consensus rungs of :class:`~neve_tune.ray.NeVeASHAScheduler` (``rung_signal="consensus"``):
asynchronous successive halving where a trial's value at a rung is its agreement with the
majority vote of the other trials that reached the same rung (their predicted classes on
one fixed training subset, :class:`~neve_tune.selection.SelectionSubset`). No validation
data; pure Python, no Ray.

Agreements change as trials arrive (the vote grows), so each decision recomputes them for
every trial recorded at the rung; the newcomer is stopped when its agreement is below the
``1 - 1/reduction_factor`` quantile of the earlier trials' (Ray's ASHA cutoff, the first
trial at a rung always continues).

    >>> rungs = ConsensusRungs([[4.0, 1.0]])
    >>> [rungs.decide(0, t, 1.0, p, 0.5) for t, p in (("a", "0123"), ("b", "0120"), ("c", "0100"))]
    [False, False, False]
    >>> rungs.decide(0, "d", 1.0, "3333", 0.5)          # agrees with nobody's vote
    True
    >>> milestone, preds = rungs.state_dict()["rungs"][0][1]
    >>> milestone, sorted(preds)
    (1.0, ['a', 'b', 'c', 'd'])
"""

from __future__ import annotations

import math
from typing import Any

from ..selection_policy import MEMORISATION_STOP, SelectionPolicy, TrialOutcome
from ._halving import Rung
from ._outcomes import COMPLETED
from ._result import plain_number
from ._verdict import CONVERGED

__all__ = ["ConsensusRungs", "check_predictions", "ended_trial"]


def check_predictions(value: Any, key: str, who: str) -> str:
    """The reported predictions (an encoded string), or a ``ValueError`` that says how to
    report them."""
    if isinstance(value, str) and value:
        return value
    raise ValueError(
        f"{who}(rung_signal='consensus') needs each result's {key!r}: the predicted classes of a "
        "fixed training subset, encoded (neve_tune.selection.SelectionSubset(...).predict(model), "
        "or "
        f"Study(selection_subset=500) in neve_trainable); got {type(value).__name__}"
    )


def ended_trial(trial_id: str, ended: str | None, result: dict, metric: str) -> TrialOutcome:
    """A trial the scheduler saw end, as the selection policy reads it: the scheduler's
    outcome (a trial it pruned is not finished; ``max_t`` is the budget's end; a trial that
    converged or completed ended by the result's ``stopped_by`` when it names one, so a
    memorisation-guard stop counts as such), the result's ``objective`` (else the rung
    ``metric``: only its finiteness counts here) and subset fit."""
    objective = result.get("objective", result.get(metric))
    fit = result.get("subset_fit")
    reason = result.get("stopped_by")
    if ended in (CONVERGED, COMPLETED) and isinstance(reason, str):
        ended = reason
    return TrialOutcome(trial_id, plain_number(objective), ended, plain_number(fit))


class ConsensusRungs:
    """The predictions recorded at each rung of each bracket (``milestones``: a list per
    bracket, highest first, as the scheduler's rungs), by trial id."""

    def __init__(self, milestones: list[list[float]]) -> None:
        self._milestones = [list(b) for b in milestones]
        self._preds: list[list[dict[str, str]]] = [[{} for _ in b] for b in milestones]
        self._fits: dict[str, float] = {}  # the finished trials' last subset_fit, for "auto"
        self._guarded: set[str] = set()  # finished trials the memorisation guard stopped

    def add_outcome(self, outcome: TrialOutcome) -> None:
        """A trial that ended: its last fit of the subset's given labels, and whether the
        memorisation guard stopped it, count for ``"auto"`` when the selection policy calls it
        finished (not pruned, stalled or diverged)."""
        if outcome.finished and outcome.ended_by == MEMORISATION_STOP:
            self._guarded.add(str(outcome.key))
        if outcome.finished and outcome.subset_fit is not None:
            self._fits[str(outcome.key)] = float(outcome.subset_fit)

    def noisy(self) -> bool:
        """Whether the finished trials say the labels are noisy (``"auto"``: their fits, and a
        memorisation-guard stop among them), by the selection policy's rule
        (:class:`~neve_tune.selection_policy.SelectionPolicy`)."""
        rows = [
            TrialOutcome(
                k, 0.0, MEMORISATION_STOP if k in self._guarded else None, self._fits.get(k)
            )
            for k in sorted(self._fits.keys() | self._guarded)
        ]
        return SelectionPolicy().decide(rows, "auto").rule == "consensus"

    def pending(
        self, bracket: int, trial_id: str, t: float, stop_last_trials: bool = True
    ) -> float | None:
        """The milestone of the highest rung ``t`` reached that the trial has not reached
        before: where a result at ``t`` is decided (None: no new rung, nothing to read)."""
        for milestone, preds in zip(self._milestones[bracket], self._preds[bracket]):
            if t >= milestone and trial_id in preds and not stop_last_trials:
                return None  # decided at this rung already
            if t >= milestone and trial_id not in preds:
                return milestone
        return None

    def owed(
        self,
        bracket: int,
        trial_id: str,
        t: float,
        stop_last_trials: bool,
        predictions: Any,
    ) -> bool:
        """Whether a result at ``t`` is decided at a rung (:meth:`pending`), so must carry
        ``predictions``. A result without any (None) that lies past the rung's first whole
        ``t`` is not: the result that met the rung was never seen here (an experiment
        restored without its rung state, whose trials report the subset only at the rung
        epochs), so that rung is passed over for the trial instead of decided elsewhere."""
        milestone = self.pending(bracket, trial_id, t, stop_last_trials)
        if milestone is None:
            return False
        missed = float(t).is_integer() and t > math.ceil(milestone)
        return predictions is not None or not missed

    def decide(
        self,
        bracket: int,
        trial_id: str,
        t: float,
        predictions: str,
        quantile: float,
        stop_last_trials: bool = True,
    ) -> bool:
        """Record ``predictions`` at the highest rung ``t`` reached that the trial has not
        reached before and return whether to stop it there (False when no new rung)."""
        milestone = self.pending(bracket, trial_id, t, stop_last_trials)
        if milestone is None:
            return False
        preds = self._preds[bracket][self._milestones[bracket].index(milestone)]
        others = list(preds)
        preds[trial_id] = predictions
        if not others:
            return False
        scores = _agreements(preds)
        earlier = Rung(milestone)
        for k in others:
            earlier.add(k, scores[k])
        cutoff = earlier.cutoff(quantile)
        return cutoff is not None and scores[trial_id] < cutoff

    def record(self, bracket: int, trial_id: str, t: float, predictions: str) -> None:
        """Put a finished trial's predictions at the highest rung it reached (no decision)."""
        for milestone, preds in zip(self._milestones[bracket], self._preds[bracket]):
            if t >= milestone and trial_id not in preds:
                preds[trial_id] = predictions
                return

    def agreements(self, bracket: int, milestone: float) -> dict[str, float]:
        """Each recorded trial's agreement with the others' vote at one rung."""
        preds = self._preds[bracket][self._milestones[bracket].index(milestone)]
        return _agreements(preds) if len(preds) > 1 else {k: float("nan") for k in preds}

    def state_dict(self) -> dict[str, Any]:
        return {
            "rungs": [
                [(m, dict(p)) for m, p in zip(ms, ps)]
                for ms, ps in zip(self._milestones, self._preds)
            ],
            "fits": dict(self._fits),
            "guarded": sorted(self._guarded),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if [[m for m, _ in b] for b in state["rungs"]] != self._milestones:
            raise ValueError("consensus rung state has other rungs than this scheduler")
        self._preds = [
            [{str(k): str(v) for k, v in p.items()} for _, p in b] for b in state["rungs"]
        ]
        self._fits = {str(k): float(v) for k, v in state.get("fits", {}).items()}
        self._guarded = {str(k) for k in state.get("guarded", ())}


def _agreements(preds: dict[str, str]) -> dict[str, float]:
    from ..selection import consensus_scores

    return {k: -v for k, v in consensus_scores(preds).items()}
