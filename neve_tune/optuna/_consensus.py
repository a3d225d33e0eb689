"""The consensus rungs of :class:`~neve_tune.optuna.NeVePruner` (``rung_signal="consensus"`` and
``"auto"``), read from the storage: the trials' predictions on the fixed training subset
(``subset_pred``) and their fit of the given labels (``subset_fit``) travel in each epoch's
user attribute, so every worker decides on the same data.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._report import epoch_key

if TYPE_CHECKING:
    import optuna

__all__ = ["consensus_rung", "rung_index"]


def rung_index(
    step: int, min_resource: int, reduction_factor: int, min_early_stopping_rate: int
) -> int | None:
    """The rung ``step`` is (0 for the first), or None when it is no rung epoch.

    >>> [rung_index(s, 1, 4, 0) for s in (1, 2, 4, 16)]
    [0, None, 1, 2]
    """
    k = 0
    while min_resource * reduction_factor ** (min_early_stopping_rate + k) < step:
        k += 1
    return k if min_resource * reduction_factor ** (min_early_stopping_rate + k) == step else None


def consensus_rung(
    study: optuna.study.Study,
    trial: optuna.trial.FrozenTrial,
    step: int,
    mine: str,
    reduction_factor: int,
) -> bool:
    """Pruned at rung epoch ``step`` when the trial's agreement with the others' vote is
    not in the best ``1 / reduction_factor`` of the trials that reported this epoch
    (Optuna's successive-halving rule, the best one always kept)."""
    from ..selection import consensus_scores

    key = epoch_key(step)
    preds = {
        t.number: t.user_attrs[key]["subset_pred"]
        for t in study.get_trials(deepcopy=False)
        if t.number != trial.number
        and isinstance(t.user_attrs.get(key), dict)
        and isinstance(t.user_attrs[key].get("subset_pred"), str)
    }
    preds[trial.number] = mine
    scores = consensus_scores(preds)
    ranked = sorted(scores.values())
    return not scores[trial.number] <= ranked[max(len(ranked) // reduction_factor - 1, 0)]
