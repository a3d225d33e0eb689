"""The guard's veto in a callback given an Optuna trial (docs/design.md, "The guard's veto").

With ``pc_veto_margin`` set, the run's :class:`~neve_tune.GuardVeto` reads the trial's study;
veto or not, a run that ends leaves the evidence the study's next runs read (``stopped_by``
and ``unfit_share``, the attributes :func:`neve_tune.optuna.make_objective`'s trials carry).
Without a trial a callback's run has no other runs and no veto. Optuna is imported only
here, once given a trial.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .._trial_veto import unfit_share
from ..guard import GuardVeto
from .pc_source import PCSource

__all__ = ["record_stop", "search_veto"]


def search_veto(trial: Any, source: PCSource | None, margin: float | None) -> GuardVeto | None:
    """With an Optuna ``trial``, the guard counting on ``source`` and a ``margin``
    (``pc_veto_margin``), the veto reading the trial's study; else None."""
    study = getattr(trial, "study", None)
    if study is None or source is None or margin is None:
        return None
    from ..optuna import guard_noise_estimate

    return GuardVeto(lambda: guard_noise_estimate(study), examples=source.examples, margin=margin)


def record_stop(
    trial: Any,
    neve: Any,
    history: Sequence[Mapping[str, Any]],
    source: PCSource | None,
) -> None:
    """On the trial, how ``neve`` ended the run and the share of labels it left unfit
    (:func:`~neve_tune._trial_veto.unfit_share`)."""
    if trial is None or neve.stopped_by is None:
        return
    share = None if source is None else unfit_share(history, source.examples, neve)
    trial.set_user_attr("stopped_by", neve.stopped_by)
    trial.set_user_attr("unfit_share", share)
