"""A trial's part in its search's guard veto (docs/design.md, "The guard's veto"): the
:class:`~neve_tune.guard.GuardVeto` a study's NeVe trial runs under, and the evidence the
trial leaves for the next ones, the share of the counted labels its kept epoch did not fit.

    >>> from neve_tune import load_study
    >>> study = load_study("digits").replace(pc_veto_margin=0.1)   # off by default
    >>> veto = trial_veto(study, range(1437), noise_estimate=0.2)
    >>> veto.examples, veto.margin         # the training pass counts every example
    (1437, 0.1)
    >>> unfit_share([{"unfit": 300, "kept_epoch": 1}, {"unfit": 200, "kept_epoch": 1}], 1000)
    0.3
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Mapping, Sequence, Sized
from typing import TYPE_CHECKING, Any

from ._checks import is_finite
from .guard import GuardVeto, check_share

if TYPE_CHECKING:
    from .study import Study

__all__ = [
    "check_noise_estimate",
    "counted_examples",
    "guard_evidence",
    "noise_from_shares",
    "trial_unfit_share",
    "trial_veto",
    "unfit_share",
]

NoiseEstimate = float | Callable[[], float | None]


def counted_examples(study: Study, train_size: int) -> int:
    """How many examples a NeVe trial of ``study`` counts ``prediction_changes`` and
    ``unfit`` on: the whole training set in the pass, or the subset (all of a smaller set)."""
    if study.prediction_changes == "in_pass":
        return int(train_size)
    return min(int(study.pc_subset_size), int(train_size))


def trial_veto(
    study: Study, train_set: Sized, noise_estimate: NoiseEstimate | None
) -> GuardVeto | None:
    """The veto a NeVe trial of ``study`` on ``train_set`` runs under: None with no
    estimate or ``study.pc_veto_margin`` None (the default; a study refuses a margin with
    the guard off)."""
    if noise_estimate is None or study.pc_veto_margin is None:
        return None
    examples = counted_examples(study, len(train_set))
    return GuardVeto(noise_estimate, examples, margin=study.pc_veto_margin)


def unfit_share(
    history: Sequence[Mapping[str, Any]], examples: int, controller: Any = None
) -> float | None:
    """The share of the ``examples`` counted whose label the run left unfit: after a guard
    stop of ``controller`` (a :class:`~neve_tune.NeVe`) at the guard's minimum, the count
    its veto compares too, whether or not its weights were restored (memorisation lowers it
    after); else at the epoch the run kept (its last ``kept_epoch``). None where that count
    is not in the history."""
    if getattr(controller, "stopped_by", None) == "prediction_changes":
        return controller.guard.best_unfit / examples
    if not history:
        return None
    epoch = history[-1].get("kept_epoch")
    if not isinstance(epoch, int) or not 0 < epoch <= len(history):
        return None
    unfit = history[epoch - 1].get("unfit")
    return float(unfit) / examples if is_finite(unfit) else None


def trial_unfit_share(
    study: Study,
    method: str,
    history: Sequence[Mapping[str, Any]],
    controller: Any,
    train_size: int,
) -> float | None:
    """A ``method`` trial's :func:`unfit_share` (NeVe's; the baselines' None)."""
    if method != "neve":
        return None
    return unfit_share(history, counted_examples(study, train_size), controller)


def check_noise_estimate(noise_estimate: Any, method: str) -> None:
    """``run_trial``'s ``noise_estimate``: NeVe's only, a share in [0, 1] or a callable."""
    if noise_estimate is None:
        return
    if method != "neve":
        raise ValueError(f"noise_estimate is for NeVe's guard veto; method={method!r} has no guard")
    if not callable(noise_estimate):
        check_share(noise_estimate)


def guard_evidence(stopped_by: Any, share: Any) -> float | None:
    """What a finished NeVe trial adds to its search's noise estimate: its ``unfit_share``
    if the guard ended it (the guard's minimum comes before memorisation); a trial ended
    otherwise (velocity after memorising, the cap) would read less noise than there is."""
    return float(share) if stopped_by == "prediction_changes" and is_finite(share) else None


def noise_from_shares(shares: Sequence[float]) -> float | None:
    """The search's noise estimate: the median of its :func:`guard_evidence` (None: none)."""
    return statistics.median(shares) if shares else None
