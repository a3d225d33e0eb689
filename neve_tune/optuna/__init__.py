"""Optuna backend: the NeVe pruner, per-epoch reporting, the objective builder, workers.

A NeVe search with Optuna needs no validation split. Each trial trains on the whole
training set, decays its learning rate and stops on its own velocity
(:class:`neve_tune.NeVe`), and reports every epoch its training loss as the
intermediate value (so a trial's value is a training loss in every state) with the
velocity and flags in its user attributes; :class:`NeVePruner` prunes diverged and
stalled trials and, at successive-halving rungs, those that fit the training set worst.

- :class:`NeVePruner`: an :class:`optuna.pruners.BasePruner`.
- :func:`report_epoch`: the one call an objective makes per epoch.
- :func:`make_objective`: a study file -> an Optuna objective.
- :func:`run_worker` / ``neve-tune optuna worker``: trials against a shared study in any
  storage (in-memory, SQLite, journal file, PostgreSQL), heartbeats and retries
  (:class:`RecoveryConfig`).
- :func:`plot_study`: velocity curves and search history as PNG.
- :func:`pick_trial`: the winning trial, by objective or by the cross-trial consensus.
- :func:`guard_noise_estimate`: the label noise the guard's veto compares a stop with.
- :func:`search_trials`: the comparison's adapter (one seeded search -> its trials).

The command line ``neve-tune optuna worker|plot|best`` lives in :mod:`neve_tune.cli.optuna`.

Example::

    import optuna
    from neve_tune import load_study
    from neve_tune.optuna import NeVePruner, make_objective

    search = optuna.create_study(direction="minimize", pruner=NeVePruner())
    search.optimize(make_objective(load_study("digits")), n_trials=20)

Only this package imports Optuna; ``import neve_tune`` does not.
"""

from ..selection_policy import SELECTIONS
from ._guard_noise import guard_noise_estimate
from ._objective import SUMMARY_ATTRS, checkpoint_path_for, make_objective, suggest_config
from ._open import StudyNotFoundError, open_study
from ._plots import plot_study
from ._pruner import NeVePruner
from ._pruner_settings import SETTINGS_ATTR
from ._recovery import RecoveryConfig
from ._report import EPOCH_ATTR_PREFIX, epoch_key, report_epoch, trial_history
from ._sampler import TrialSeededTPESampler
from ._search import search_trials
from ._selection import (
    SELECTION_ATTR,
    last_fits,
    last_predictions,
    pick_trial,
    record_selection,
    select_trial,
    trial_outcomes,
)
from ._stop import TrialLeft, WorkerInterrupted
from ._storage import StorageError, make_storage
from ._urls import redact_url
from ._worker import run_worker

__all__ = [
    "EPOCH_ATTR_PREFIX",
    "NeVePruner",
    "RecoveryConfig",
    "SELECTIONS",
    "SELECTION_ATTR",
    "SETTINGS_ATTR",
    "SUMMARY_ATTRS",
    "StorageError",
    "StudyNotFoundError",
    "TrialSeededTPESampler",
    "TrialLeft",
    "WorkerInterrupted",
    "checkpoint_path_for",
    "epoch_key",
    "guard_noise_estimate",
    "last_fits",
    "last_predictions",
    "make_objective",
    "make_storage",
    "open_study",
    "pick_trial",
    "plot_study",
    "record_selection",
    "redact_url",
    "report_epoch",
    "run_worker",
    "search_trials",
    "select_trial",
    "suggest_config",
    "trial_history",
    "trial_outcomes",
]
