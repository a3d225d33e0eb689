"""The label noise a NeVe search estimates for its guard's veto (docs/design.md, "The
guard's veto"), read from the study's finished trials.

Only the trials the guard itself ended count (:func:`neve_tune._trial_veto.guard_evidence`):
its minimum comes before memorisation, so the share of labels such a trial left unfit there
(its ``unfit_share`` attribute) estimates the noise without the fit memorisation adds later.

    >>> import optuna
    >>> optuna.logging.set_verbosity(optuna.logging.WARNING)
    >>> search = optuna.create_study()
    >>> for share, stop in [(0.21, "prediction_changes"), (0.25, "prediction_changes"),
    ...                     (0.02, "velocity")]:
    ...     search.add_trial(optuna.trial.create_trial(value=0.5, user_attrs={
    ...         "method": "neve", "stopped_by": stop, "unfit_share": share}))
    >>> round(guard_noise_estimate(search), 2)       # the median of the two guard stops
    0.23
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import optuna
from optuna.trial import TrialState

from .._trial_veto import guard_evidence, noise_from_shares

__all__ = ["guard_noise_estimate", "study_noise_estimate"]


def guard_noise_estimate(study: optuna.Study) -> float | None:
    """The median ``unfit_share`` of ``study``'s COMPLETE NeVe trials that the memorisation
    guard ended (``stopped_by == "prediction_changes"``); None while there is none.

    A trial's objective passes it to :func:`neve_tune.run_trial` as ``noise_estimate``
    (:func:`~neve_tune.optuna.make_objective` does), asked only when a guard stop would fire,
    so workers sharing a study read the trials finished by then.
    """
    if not isinstance(study, optuna.Study):
        raise TypeError(f"study must be an optuna.Study, got {type(study).__name__}")
    evidence = (
        guard_evidence(t.user_attrs.get("stopped_by"), t.user_attrs.get("unfit_share"))
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if t.user_attrs.get("method", "neve") == "neve"
    )
    return noise_from_shares([share for share in evidence if share is not None])


def study_noise_estimate(trial: Any, method: str) -> Callable[[], float | None] | None:
    """What a ``method`` trial's objective passes as ``noise_estimate``: NeVe's reads its
    study's :func:`guard_noise_estimate` when a guard stop would fire; the baselines' none."""
    study = getattr(trial, "study", None)
    if method != "neve" or not isinstance(study, optuna.Study):
        return None
    return lambda: guard_noise_estimate(study)
