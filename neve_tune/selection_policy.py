"""One selection policy for every backend: which trials count as finished, whether their
labels look noisy (so ``"auto"`` picks by the consensus), and which finished trial wins.

The Optuna pruner and :func:`~neve_tune.optuna.pick_trial`, ``neve-tune optuna best`` and
the worker's closing pick, the Ray scheduler and :func:`~neve_tune.ray.summarize`, and
``compare`` each turn their own records into :class:`TrialOutcome` rows and ask one
:class:`SelectionPolicy`; none decides by itself (docs/design.md, "Selection criteria").

**Finished.** A trial is finished when it ended on its own, by its own rule (a convergence
stop on the velocity or the memorisation guard, early stopping, the ``max_epochs`` cap, or a
scheduler's ``max_t``: the same budget set from outside), with a finite objective. A trial
that was pruned (a pruner's or a scheduler's rung), failed, is still running, stalled or
diverged is not: its objective describes a run that did not end by its rule. This is what
the replay (``benchmarks/selection_replay.py``) and Optuna's COMPLETE state give for a NeVe
search, where diverged and stalled trials are pruned.

    >>> policy = SelectionPolicy()
    >>> trials = [
    ...     TrialOutcome(0, 0.10, "velocity", subset_fit=0.80, subset_pred="0123"),
    ...     TrialOutcome(1, 0.30, "prediction_changes", subset_fit=0.82, subset_pred="0120"),
    ...     TrialOutcome(2, 0.20, "max_epochs", subset_fit=0.85, subset_pred="0100"),
    ...     TrialOutcome(3, 0.05, "pruned", subset_fit=0.99, subset_pred="0100"),
    ... ]
    >>> winner, decision = policy.pick(trials, "auto")
    >>> winner, decision.rule, decision.noise, decision.finished
    (1, 'consensus', 0.18, 3)
    >>> policy.pick(trials, "objective")[0]
    0

**Noisy, or underfit.** A low subset fit says labels the trials did not fit: flipped labels,
or a model that stopped before it fitted clean ones. ``"auto"`` takes the consensus only
when a finished trial was also stopped by the memorisation guard (``prediction_changes``):
its predictions turned to following labels after fitting the pattern, which flipped labels
cause. Without such a stop the low fit reads as underfitting and the objective picks:

    >>> underfit = [
    ...     TrialOutcome(0, 1.31, "velocity", subset_fit=0.68, subset_pred="0120"),
    ...     TrialOutcome(1, 0.02, "velocity", subset_fit=0.99, subset_pred="0123"),
    ...     TrialOutcome(2, 1.58, "velocity", subset_fit=0.55, subset_pred="0110"),
    ... ]
    >>> winner, decision = policy.pick(underfit, "auto")
    >>> winner, decision.rule, decision.noise
    (1, 'objective', 0.32)
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from ._checks import check_choice, check_float

__all__ = [
    "MEMORISATION_STOP",
    "NOT_FINISHED",
    "SELECTIONS",
    "SelectionDecision",
    "SelectionPolicy",
    "TrialOutcome",
    "consensus_rank",
]

SELECTIONS = ("objective", "consensus", "auto")
#: the memorisation guard's stop reason: the evidence ``"auto"`` needs that labels are flipped
MEMORISATION_STOP = "prediction_changes"
#: how a trial ended when it did not end by its own rule: never a candidate, never counted
NOT_FINISHED = ("pruned", "failed", "running", "diverged", "stalled")


@dataclass(frozen=True)
class TrialOutcome:
    """One trial as the policy reads it. ``key``: the backend's id (Optuna trial number, Ray
    trial id); ``objective``: lower is better (None: none recorded); ``ended_by``: why it
    ended (a stop reason of :data:`neve_tune.records.STOP_REASONS`, a scheduler outcome such
    as ``"max_t"``, one of :data:`NOT_FINISHED`, or None when the backend says it completed
    without naming a reason); ``subset_fit``/``subset_pred``: its last recorded fit of the
    selection subset's labels and its encoded predictions on the subset."""

    key: Hashable
    objective: float | None
    ended_by: str | None = None
    subset_fit: float | None = None
    subset_pred: str | None = None

    @property
    def finished(self) -> bool:
        """Ended by its own rule, with a finite objective (the module's definition)."""
        return (
            self.ended_by not in NOT_FINISHED
            and isinstance(self.objective, (int, float))
            and math.isfinite(self.objective)
        )


@dataclass(frozen=True)
class SelectionDecision:
    """The rule a pick applied and why. ``selection``: the rule asked for (``"auto"``,
    ``"objective"``, ``"consensus"``); ``rule``: the one applied; ``noise``: the label-noise
    rate the finished trials' subset fits suggest (None without a fit); ``finished``: the
    finished trials; ``fits``: those of them with a subset fit; ``reason``: the rule in words."""

    selection: str
    rule: str
    noise: float | None
    finished: int
    fits: int
    reason: str

    def as_dict(self) -> dict[str, Any]:
        """The JSON record (study user attribute ``neve_selection``, compare's ``selection``)."""
        return asdict(self)


class SelectionPolicy:
    """Decides the rule and picks the winner among finished trials (module doc).

    ``"auto"`` ranks by the consensus when the noise estimate (one minus the median of the
    finished trials' last ``subset_fit``, :func:`neve_tune.selection.noise_from_fits`) is at
    least ``threshold`` and a finished trial ended by the memorisation guard
    (:data:`MEMORISATION_STOP`), else by the objective (also when no finished trial has a
    fit). With the guard off (``pc_patience=None``) nothing tells flipped labels from
    underfitting: ask for ``"consensus"`` when the labels are known to be noisy.
    By the objective the lowest wins; by the consensus the finished trial whose predictions
    agree most with the majority vote of the other finished trials' (only finished trials
    with predictions vote); among equal agreements (two finished trials always agree equally
    with each other) a trial the memorisation guard stopped wins, restored to before it
    memorised labels. Other ties go to the first trial in the order given."""

    def __init__(self, threshold: float | None = None) -> None:
        from .selection import NOISE_THRESHOLD

        value = NOISE_THRESHOLD if threshold is None else threshold
        self.threshold = float(check_float("threshold", value, low=0.0, high=1.0, low_open=True))

    def __repr__(self) -> str:
        return f"SelectionPolicy(threshold={self.threshold:g})"

    @staticmethod
    def finished(trials: Sequence[TrialOutcome]) -> list[TrialOutcome]:
        """The finished trials of ``trials``, in their order."""
        return [t for t in trials if t.finished]

    def decide(self, trials: Sequence[TrialOutcome], selection: str = "auto") -> SelectionDecision:
        """The rule ``selection`` applies to ``trials`` (only finished ones count)."""
        from .selection import noise_from_fits, selection_mode

        check_choice("selection", selection, SELECTIONS)
        done = self.finished(trials)
        fits = [float(t.subset_fit) for t in done if _finite(t.subset_fit)]
        eps = noise_from_fits(fits)
        noise = eps if math.isfinite(eps) else None
        if selection != "auto":
            rule, reason = selection, f"by the {selection}"
        elif noise is None:
            rule = "objective"
            reason = "auto: no finished trial recorded subset_fit, so by the objective"
        else:
            noisy = selection_mode(fits, self.threshold) == "consensus"
            underfit = noisy and not any(t.ended_by == MEMORISATION_STOP for t in done)
            rule = "consensus" if noisy and not underfit else "objective"
            but = (
                "but the memorisation guard stopped none of them: read as underfitting, "
                if underfit
                else ""
            )
            reason = (
                f"auto: the finished trials' subset fit suggests {noise:.0%} label noise, "
                f"{but}so by the {rule}"
            )
        return SelectionDecision(selection, rule, noise, len(done), len(fits), reason)

    def agreements(self, trials: Sequence[TrialOutcome]) -> dict[Hashable, float]:
        """Each finished trial's agreement with the majority vote of the other finished
        trials' predictions (those with predictions; one alone agrees 0)."""
        from .selection import consensus_scores

        voters = {t.key: t.subset_pred for t in self.finished(trials) if t.subset_pred}
        return {k: -v for k, v in consensus_scores(voters).items()}  # type: ignore[arg-type]

    def pick(
        self, trials: Sequence[TrialOutcome], selection: str = "auto"
    ) -> tuple[Hashable | None, SelectionDecision]:
        """The winning finished trial's key (None when none finished) and the decision.
        ``ValueError`` when the consensus applies and no finished trial has predictions."""
        decision = self.decide(trials, selection)
        done = self.finished(trials)
        if not done:
            return None, decision
        if decision.rule == "objective":
            return min(done, key=lambda t: float(t.objective)).key, decision  # type: ignore[arg-type]
        agree = self.agreements(trials)
        if not agree:
            raise ValueError(
                "the consensus found no 'subset_pred' on the finished trials: record the "
                "predictions on the fixed subset with Study(selection_subset=500), or "
                "neve_tune.selection.SelectionSubset in your own loop"
            )
        voters = [t for t in done if t.key in agree]
        return max(voters, key=lambda t: consensus_rank(t, agree[t.key])).key, decision


def consensus_rank(trial: TrialOutcome, agreement: float) -> tuple[float, bool]:
    """A finished trial's rank under the consensus, higher wins: its agreement, then (a tie)
    whether the memorisation guard stopped it. :meth:`SelectionPolicy.pick` and
    ``compare``'s anytime curve both rank by it."""
    return agreement, trial.ended_by == MEMORISATION_STOP


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
