"""What one search leaves behind: its trials (:class:`~neve_tune._search_records.SearchTrial`,
written by the backends' adapters), its cost, its anytime curve, its epochs by rung."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from .._search_records import SearchTrial, selection_rows
from ..records import Cost
from ..selection_policy import consensus_rank

__all__ = [
    "MIN_RESOURCE",
    "REDUCTION_FACTOR",
    "anytime_curve",
    "epochs_by_rung",
    "total_cost",
]

REDUCTION_FACTOR = 4
MIN_RESOURCE = 1


def rung_edges(max_epochs: int) -> list[int]:
    """Rungs of the comparison's successive halving (1, 4, 16, ...) and ``max_epochs``."""
    edges, r = [], MIN_RESOURCE
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


def anytime_curve(
    trials: Sequence[SearchTrial], rule: str = "objective"
) -> tuple[list[list[float]], SearchTrial | None]:
    """[cumulative cost, test acc of the best-so-far configuration] after each trial,
    and the best trial: among the finished ones, the lowest objective, or with ``rule``
    ``"consensus"`` the highest ``agreement`` (the selection policy's pick: among equal
    agreements a memorisation-guard stop, then the first)."""
    curve: list[list[float]] = []
    spent = 0.0
    best: SearchTrial | None = None
    for t in trials:
        spent += t.cost.epochs_equiv(t.train_size)
        score = _score(t, rule)
        if score is not None and (best is None or score < _score(best, rule)):  # type: ignore[operator]
            best = t
        if best is not None and best.test_acc is not None:
            curve.append([spent, float(best.test_acc)])
    return curve, best


def _score(t: SearchTrial, rule: str) -> tuple[float, ...] | None:
    """Lower is better; None: not a candidate under ``rule`` (not finished by the selection
    policy's definition, or no agreement under the consensus)."""
    row = selection_rows([t])[0]
    if not row.finished:
        return None
    if rule == "consensus":
        if t.agreement is None:
            return None
        agreement, guarded = consensus_rank(row, t.agreement)
        return -agreement, -float(guarded)
    return (float(t.objective),)  # type: ignore[arg-type]  # finished: a finite objective


def total_cost(trials: Iterable[SearchTrial]) -> Cost:
    total = Cost()
    for t in trials:
        total = total + t.cost
    return total
