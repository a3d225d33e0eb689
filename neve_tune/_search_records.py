"""What a search's trials leave for the comparison, below both backends: each trial as a
:class:`SearchTrial` record (the Optuna and Ray adapters write them, ``compare`` reads them)
and the consensus ranking that replaces a finished trial's objective with its agreement
with the others (``Study.selection="consensus"``)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from .records import Cost

__all__ = ["SearchTrial", "rank_by_consensus"]


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
    from .selection import consensus_scores, selection_mode

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
