"""The Optuna behaviour ``neve_tune/optuna/_compat.py`` relies on, checked against Optuna
5.0.0 (``CHECKED_OPTUNA``). These tests never skip: when one fails on a newer Optuna,
``_compat.py`` must change (NeVePruner(rung_signal="train_loss") would otherwise rank trials
on velocity without saying so)."""

from __future__ import annotations

import optuna
import pytest
from optuna.pruners import SuccessiveHalvingPruner
from optuna.trial import TrialState

from neve_tune.optuna import NeVePruner, make_storage, report_epoch
from neve_tune.optuna._compat import CHECKED_OPTUNA, with_step_value

optuna.logging.set_verbosity(optuna.logging.WARNING)

WHERE = (
    f"(checked against Optuna {CHECKED_OPTUNA}; installed {optuna.__version__}): "
    "update neve_tune/optuna/_compat.py"
)


@pytest.fixture(params=["memory", "sqlite"])
def storage(request, tmp_path):
    if request.param == "memory":
        return optuna.storages.InMemoryStorage()
    return make_storage(f"sqlite:///{tmp_path / 's.db'}", heartbeat_interval=None)


def _running(study: optuna.Study, number: int) -> optuna.trial.FrozenTrial:
    return next(t for t in study.get_trials(states=(TrialState.RUNNING,)) if t.number == number)


def test_successive_halving_ranks_the_given_value_and_records_it_on_the_stored_trial(
    storage,
) -> None:
    sha = SuccessiveHalvingPruner(min_resource=1, reduction_factor=2)
    study = optuna.create_study(storage=storage)
    first, second = study.ask(), study.ask()
    first.report(0.9, 1)  # reported values opposite to the ones handed to the pruner
    second.report(0.1, 1)

    promoted = not sha.prune(study, with_step_value(_running(study, 0), 1, 0.1))
    pruned = sha.prune(study, with_step_value(_running(study, 1), 1, 0.9))
    assert promoted and pruned, (
        f"SuccessiveHalvingPruner no longer ranks the trial it is given {WHERE}"
    )
    rungs = [_running(study, n).system_attrs.get("completed_rung_0") for n in (0, 1)]
    assert rungs == [0.1, 0.9], (
        f"SuccessiveHalvingPruner no longer records the given value on the stored trial {WHERE}"
    )
    # the stored intermediate values are untouched
    assert [_running(study, n).intermediate_values for n in (0, 1)] == [{1: 0.9}, {1: 0.1}]


def test_neve_pruner_on_train_loss_records_the_loss_as_rung_value(storage) -> None:
    """End to end through the public pruner: the rung holds the training loss, not the
    reported velocity."""
    study = optuna.create_study(
        storage=storage, pruner=NeVePruner("train_loss", min_resource=1, reduction_factor=2)
    )
    trial = study.ask()
    report_epoch(trial, {"epoch": 1, "velocity": 0.5, "train_loss": 0.25}, signal="velocity")
    assert trial.should_prune() is False
    frozen = study.trials[0]
    assert frozen.intermediate_values == {1: 0.5}
    assert frozen.system_attrs.get("completed_rung_0") == 0.25, (
        f"rung value is not the training loss {WHERE}"
    )


def test_with_step_value_leaves_the_trial_alone() -> None:
    trial = optuna.trial.create_trial(value=1.0, intermediate_values={1: 0.5, 3: 0.25})
    view = with_step_value(trial, 3, 0.75)
    assert (
        view.intermediate_values == {3: 0.75}
        and view.last_step == 3
        and view.number == trial.number
    )
    assert trial.intermediate_values == {1: 0.5, 3: 0.25}
