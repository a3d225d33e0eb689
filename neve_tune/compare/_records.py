"""What one search leaves behind: its trials, its cost, its anytime curve."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..records import Cost

__all__ = [
    "GRACE_PERIOD",
    "REDUCTION_FACTOR",
    "SearchTrial",
    "anytime_curve",
    "epochs_by_rung",
    "total_cost",
]

REDUCTION_FACTOR = 4
GRACE_PERIOD = 1


@dataclass
class SearchTrial:
    """One trial of a search, as both backends report it to the comparison.

    ``state`` is ``"COMPLETE"`` (a candidate for selection), ``"PRUNED"`` or ``"FAIL"``;
    ``objective`` and ``test_acc`` are None unless COMPLETE. ``lrs`` is the per-epoch
    learning rate (a validation search's retrain replays it); ``val_acc`` the per-epoch
    validation accuracy of a validation search's trial (the report's notes read it).
    """

    number: int
    config: dict[str, Any]
    state: str
    stopped_by: str | None
    epochs: int
    best_epoch: int | None
    objective: float | None
    test_acc: float | None
    cost: Cost
    train_size: int
    lrs: list[float | None] = field(default_factory=list)
    velocity: list[float | None] = field(default_factory=list)
    val_acc: list[float | None] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return (
            self.state == "COMPLETE"
            and self.objective is not None
            and math.isfinite(self.objective)
        )

    def to_dict(self) -> dict[str, Any]:
        """The trial's JSON entry (``lrs`` and ``val_acc`` left out)."""
        return {
            "number": self.number,
            "config": self.config,
            "state": self.state,
            "stopped_by": self.stopped_by,
            "epochs": self.epochs,
            "best_epoch": self.best_epoch,
            "objective": self.objective,
            "test_acc": self.test_acc,
            "cost": self.cost.as_dict(self.train_size),
            "velocity": self.velocity,
        }


def rung_edges(max_epochs: int) -> list[int]:
    """Rungs of the comparison's successive halving (1, 4, 16, ...) and ``max_epochs``."""
    edges, r = [], GRACE_PERIOD
    while r < max_epochs:
        edges.append(r)
        r *= REDUCTION_FACTOR
    return edges + [max_epochs]


def epochs_by_rung(
    trials: Sequence[SearchTrial | Mapping[str, Any]], max_epochs: int
) -> dict[str, int]:
    """Epochs spent between successive rungs (1, 4, 16, ... max_epochs), all trials."""
    out: dict[str, int] = {}
    lo = 0
    for hi in rung_edges(max_epochs):
        out[f"{lo + 1}-{hi}"] = sum(max(0, min(_epochs(t), hi) - lo) for t in trials)
        lo = hi
    return out


def _epochs(t: SearchTrial | Mapping[str, Any]) -> int:
    return t.epochs if isinstance(t, SearchTrial) else int(t["epochs"])


def anytime_curve(trials: Sequence[SearchTrial]) -> tuple[list[list[float]], SearchTrial | None]:
    """[cumulative cost, test acc of the best-so-far configuration] after each trial,
    and the best trial (lowest objective among the complete ones)."""
    curve: list[list[float]] = []
    spent = 0.0
    best: SearchTrial | None = None
    for t in trials:
        spent += t.cost.epochs_equiv(t.train_size)
        if t.complete and (best is None or t.objective < best.objective):  # type: ignore[operator]
            best = t
        if best is not None and best.test_acc is not None:
            curve.append([spent, float(best.test_acc)])
    return curve, best


def total_cost(trials: Iterable[SearchTrial]) -> Cost:
    total = Cost()
    for t in trials:
        total = total + t.cost
    return total


def rank_by_consensus(
    records: list[SearchTrial],
    last_predictions: dict[int, str],
    selection: str = "consensus",
    last_fits: dict[int, float] | None = None,
) -> str:
    """``Study.selection="consensus"``: each finished trial's objective becomes minus its
    agreement with the majority vote of the other finished trials' last predictions on the
    subset (``last_predictions``: by trial number), so the search picks the most consensual
    trial. Pruned trials do not vote: with their votes the pick measured worse on MNIST-1D
    (docs/measurements.md, "Which trial wins"). ``"auto"`` does so only when the finished trials'
    last fits of the subset's labels (``last_fits``) say the labels are noisy. Returns the rule
    applied (``"consensus"`` or ``"objective"``)."""
    from ..selection import consensus_scores, selection_mode

    if selection == "auto":
        done = [r.number for r in records if r.state == "COMPLETE"]
        selection = selection_mode([(last_fits or {}).get(k) for k in done])
    if selection != "consensus":
        return selection
    candidates = [
        r.number for r in records if r.state == "COMPLETE" and r.number in last_predictions
    ]
    scores = consensus_scores({k: last_predictions[k] for k in candidates})
    for r in records:
        if r.number in scores:
            r.objective = scores[r.number]
    return selection
