"""What a search's trials leave for the comparison, below both backends: each trial as a
:class:`SearchTrial` record (the Optuna and Ray adapters write them, ``compare`` reads them)
and the selection policy's decision on them (:func:`select_trials`: the rule applied, and
with the consensus each finished trial's ``agreement`` with the others, in its own field)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from .records import Cost
from .selection_policy import SelectionDecision, SelectionPolicy, TrialOutcome

__all__ = ["SearchTrial", "select_trials", "selection_rows"]


@dataclass
class SearchTrial:
    """One trial of a search, as both backends report it to the comparison.

    ``state`` is ``"COMPLETE"`` (a candidate for selection), ``"PRUNED"`` or ``"FAIL"``;
    ``objective`` and ``test_acc`` are None unless COMPLETE. ``lrs`` is the per-epoch
    learning rate (a validation search's retrain replays it); ``val_acc`` the per-epoch
    validation accuracy of a validation search's trial (the report's notes read it).
    ``subset_fit``/``subset_pred``: the trial's last fit of the selection subset's labels and
    its predictions there (what the selection policy reads); ``agreement``: its agreement
    with the other finished trials' vote when the consensus picked (else None).
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
    subset_fit: float | None = None
    subset_pred: str | None = None
    agreement: float | None = None

    @property
    def complete(self) -> bool:
        return (
            self.state == "COMPLETE"
            and self.objective is not None
            and math.isfinite(self.objective)
        )

    def to_dict(self) -> dict[str, Any]:
        """The trial's JSON entry (``lrs``, ``val_acc`` and the subset's values left out)."""
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
            "agreement": self.agreement,
        }


#: a search record's state -> how the trial ended, for a trial that did not COMPLETE
_ENDED = {"PRUNED": "pruned", "FAIL": "failed"}


def selection_rows(records: list[SearchTrial]) -> list[TrialOutcome]:
    """The records as the selection policy reads them (a COMPLETE trial ended by its
    ``stopped_by``; a PRUNED or FAIL one by that state)."""
    return [
        TrialOutcome(
            r.number,
            r.objective,
            _ENDED.get(r.state, r.stopped_by),
            r.subset_fit,
            r.subset_pred,
        )
        for r in records
    ]


def select_trials(records: list[SearchTrial], selection: str = "auto") -> SelectionDecision:
    """The selection policy's decision on a search's records (``Study.selection``); with
    the consensus, each finished trial with predictions gets its ``agreement`` with the
    majority vote of the other finished trials' last predictions (pruned trials do not
    vote: with their votes the pick measured worse on MNIST-1D, docs/measurements.md, "Which
    trial wins"). The objective is never changed."""
    policy = SelectionPolicy()
    rows = selection_rows(records)
    decision = policy.decide(rows, selection)
    if decision.rule == "consensus":
        agree = policy.agreements(rows)
        for r in records:
            r.agreement = agree.get(r.number)
    return decision
