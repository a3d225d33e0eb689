"""NeVePruner, in Optuna's own test style: create_study(pruner=...), ask, report,
should_prune, tell; histories seeded with add_trial(create_trial(...))."""

from __future__ import annotations

import math
import pickle

import optuna
import pytest
from optuna.trial import TrialState

from neve_tune.optuna import SETTINGS_ATTR, NeVePruner, report_epoch

optuna.logging.set_verbosity(optuna.logging.WARNING)

DIRECTIONS = ["minimize", "maximize"]


@pytest.fixture(params=["memory", "sqlite", "journal"])
def storage(request, tmp_path):
    if request.param == "memory":
        return optuna.storages.InMemoryStorage()
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'study.db'}"
    from optuna.storages.journal import JournalFileBackend

    return optuna.storages.JournalStorage(JournalFileBackend(str(tmp_path / "study.log")))


def _study(pruner: NeVePruner, direction: str = "minimize", storage=None) -> optuna.Study:
    return optuna.create_study(direction=direction, pruner=pruner, storage=storage)


def _epoch(epoch: int, velocity: float | None, train_loss: float = 1.0, **extra) -> dict:
    return {
        "epoch": epoch,
        "velocity": velocity,
        "train_loss": train_loss,
        "lr": 0.1,
        "diverged": False,
        "neve_stop": False,
        **extra,
    }


def _report(trial, epoch, velocity, train_loss=1.0, **extra) -> bool:
    # the velocity as the reported value: the pruner must not depend on which value is reported
    report_epoch(trial, _epoch(epoch, velocity, train_loss, **extra), signal="velocity")
    return trial.should_prune()


# ------------------------------------------------------------------ basics
def test_no_report_never_prunes() -> None:
    study = _study(NeVePruner())
    trial = study.ask()
    assert trial.should_prune() is False


@pytest.mark.parametrize(
    "kwargs, error",
    [
        ({"rung_signal": "val_loss"}, ValueError),
        ({"min_resource": 0}, ValueError),
        ({"reduction_factor": 1}, ValueError),
        ({"min_early_stopping_rate": -1}, ValueError),
        ({"unsettled_bound": 0.0}, ValueError),
        ({"unsettled_patience": 0}, ValueError),
        ({"min_resource": 1.5}, TypeError),
        ({"unsettled_bound": "high"}, TypeError),
    ],
)
def test_bad_arguments(kwargs, error) -> None:
    signal = kwargs.pop("rung_signal", "velocity")
    with pytest.raises(error):
        NeVePruner(signal, **kwargs)


def test_pickle_roundtrip_keeps_settings() -> None:
    p = NeVePruner("train_loss", reduction_factor=3, unsettled_bound=0.7)
    q = pickle.loads(pickle.dumps(p))
    assert q.settings == p.settings and repr(q) == repr(p)


# ------------------------------------------------------------------ rungs on velocity
@pytest.mark.parametrize("direction", DIRECTIONS)
def test_velocity_rung_prunes_least_settled(direction, storage) -> None:
    # reduction_factor=2, first rung at epoch 1
    study = _study(NeVePruner("velocity", min_resource=1, reduction_factor=2), direction, storage)
    t0 = study.ask()
    assert _report(t0, 1, 0.10) is False  # alone at the rung: promoted
    t1 = study.ask()
    assert _report(t1, 1, 0.50) is True  # less settled than t0 -> pruned
    study.tell(t1, state=TrialState.PRUNED)
    t2 = study.ask()
    assert _report(t2, 1, 0.05) is False  # the most settled so far -> promoted
    # between rungs nothing is decided
    assert _report(t0, 2, 0.30) is False
    assert study.trials[1].state == TrialState.PRUNED
    # the pruned trial's value is its signed velocity: +v when minimizing, -v when maximizing
    sign = 1.0 if direction == "minimize" else -1.0
    assert study.trials[1].value == pytest.approx(sign * 0.50)


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_velocity_rung_second_rung(direction) -> None:
    study = _study(NeVePruner("velocity", min_resource=1, reduction_factor=2), direction)
    t0, t1 = study.ask(), study.ask()
    assert _report(t0, 1, 0.2) is False
    assert _report(t1, 1, 0.1) is False
    for e in (2, 3):
        assert _report(t0, e, 0.05) is False
        assert _report(t1, e, 0.04) is False
    # rung 1 at epoch 2 * 1 = 2 was already passed above; rung 2 at epoch 4
    assert _report(t1, 4, 0.01) is False  # first at rung 2
    assert _report(t0, 4, 0.02) is True  # less settled than t1 at rung 2


def test_min_early_stopping_rate_moves_first_rung() -> None:
    study = _study(
        NeVePruner("velocity", min_resource=1, reduction_factor=2, min_early_stopping_rate=2)
    )
    t0, t1 = study.ask(), study.ask()
    for e in (1, 2, 3):
        assert _report(t0, e, 0.01) is False
        assert _report(t1, e, 0.5) is False  # no rung before epoch 1 * 2**2 = 4
    assert _report(t0, 4, 0.01) is False
    assert _report(t1, 4, 0.5) is True


def test_seeded_history_rung_values() -> None:
    # 8 finished trials already competed at rung 0 (as SuccessiveHalvingPruner stores it)
    study = _study(NeVePruner("velocity", min_resource=1, reduction_factor=4))
    for v in [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]:
        study.add_trial(
            optuna.trial.create_trial(
                state=TrialState.COMPLETE,
                value=1.0,
                intermediate_values={1: v},
                system_attrs={"completed_rung_0": v},
            )
        )
    # with 9 values the top 9 // 4 = 2 are promoted: 0.1 and 0.2
    t = study.ask()
    assert _report(t, 1, 0.15) is False
    t = study.ask()
    assert _report(t, 1, 0.25) is True


# ------------------------------------------------------------------ rungs on training loss
@pytest.mark.parametrize("direction", DIRECTIONS)
def test_train_loss_rung_uses_loss_not_velocity(direction, storage) -> None:
    study = _study(NeVePruner("train_loss", min_resource=1, reduction_factor=2), direction, storage)
    t0 = study.ask()
    assert _report(t0, 1, velocity=0.50, train_loss=0.3) is False
    t1 = study.ask()
    # more settled, but a higher training loss -> pruned under rung_signal="train_loss"
    assert _report(t1, 1, velocity=0.05, train_loss=0.9) is True
    t2 = study.ask()
    assert _report(t2, 1, velocity=0.55, train_loss=0.2) is False


# ------------------------------------------------------------------ divergence
@pytest.mark.parametrize("direction", DIRECTIONS)
@pytest.mark.parametrize(
    "metrics",
    [
        {"velocity": None, "train_loss": float("nan"), "diverged": True},
        {"velocity": float("nan"), "train_loss": 1.0},
        {"velocity": 0.1, "train_loss": float("inf")},
        {"velocity": 0.1, "train_loss": 1.0, "diverged": True},
    ],
)
def test_non_finite_always_pruned(direction, metrics, storage) -> None:
    # no rung before epoch 100: only the divergence rule can fire
    study = _study(NeVePruner(min_resource=100), direction, storage)
    trial = study.ask()
    assert _report(trial, 1, 0.2) is False
    report_epoch(trial, {"epoch": 2, "lr": 0.1, **metrics})
    assert math.isnan(study.trials[0].intermediate_values[2])
    assert trial.should_prune() is True


def test_raw_nan_report_is_pruned() -> None:
    study = _study(NeVePruner(min_resource=100))
    trial = study.ask()
    trial.report(float("nan"), 3)  # an objective that reports without report_epoch
    assert trial.should_prune() is True


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_velocity_above_bound_for_patience(direction, storage) -> None:
    study = _study(
        NeVePruner(min_resource=100, unsettled_bound=0.6, unsettled_patience=3), direction, storage
    )
    trial = study.ask()
    assert _report(trial, 1, 0.9) is False
    assert _report(trial, 2, 0.8) is False  # 2 epochs above the bound: not yet
    assert _report(trial, 3, 0.7) is True  # 3 in a row -> pruned


def test_velocity_dipping_below_bound_resets_patience() -> None:
    study = _study(NeVePruner(min_resource=100, unsettled_bound=0.6, unsettled_patience=3))
    trial = study.ask()
    for epoch, v in enumerate([0.9, 0.9, 0.5, 0.9, 0.9], start=1):
        assert _report(trial, epoch, v) is False
    assert _report(trial, 6, 0.9) is True


def test_infinite_bound_turns_rule_off() -> None:
    study = _study(NeVePruner(min_resource=100, unsettled_bound=math.inf, unsettled_patience=1))
    trial = study.ask()
    assert _report(trial, 1, 3.0) is False


# ------------------------------------------------------------------ convergence
@pytest.mark.parametrize("direction", DIRECTIONS)
def test_converged_trial_is_never_pruned(direction, storage) -> None:
    study = _study(NeVePruner("velocity", min_resource=1, reduction_factor=2), direction, storage)
    t0 = study.ask()
    assert _report(t0, 1, 0.0001) is False
    t1 = study.ask()
    # it would lose the rung (higher velocity), but it converged: the trial stops itself
    assert _report(t1, 1, 0.0005, neve_stop=True) is False
    study.tell(t1, 0.42)
    assert study.trials[1].state == TrialState.COMPLETE
    # ... and its rung value was recorded, so it competes with later trials
    assert study.trials[1].system_attrs["completed_rung_0"] == pytest.approx(
        (1 if direction == "minimize" else -1) * 0.0005
    )


@pytest.mark.parametrize("signal", ["velocity", "train_loss"])
def test_stalled_trial_is_pruned(signal, storage) -> None:
    # no rung before epoch 100: only the stalled rule can fire
    study = _study(NeVePruner(signal, min_resource=100), storage=storage)
    trial = study.ask()
    assert _report(trial, 1, 0.2, stalled=False) is False
    assert _report(trial, 2, 1e-5, stalled=True) is True  # settled without learning


def test_stalled_flag_of_an_earlier_epoch_does_not_prune() -> None:
    study = _study(NeVePruner(min_resource=100))
    trial = study.ask()
    report_epoch(trial, _epoch(1, 0.2, stalled=True))
    assert _report(trial, 2, 0.1, stalled=False) is False  # only the last epoch counts


def test_converged_epoch_is_never_pruned_even_if_stalled() -> None:
    study = _study(NeVePruner(min_resource=100))
    trial = study.ask()
    assert _report(trial, 1, 1e-5, neve_stop=True, stalled=True) is False


@pytest.mark.parametrize("missing", ["key", "no_epoch_attr"])
def test_train_loss_signal_without_train_loss_raises(missing) -> None:
    study = _study(NeVePruner("train_loss", min_resource=100))
    trial = study.ask()
    if missing == "key":  # an epoch without train_loss, its velocity reported
        report_epoch(
            trial,
            {"epoch": 1, "velocity": 0.2, "lr": 0.1, "neve_stop": False, "diverged": False},
            signal="velocity",
        )
    else:  # an objective that reports without report_epoch
        trial.report(0.2, 1)
    with pytest.raises(
        ValueError, match="report the epoch's mean training loss.*signal='velocity'"
    ):
        trial.should_prune()
    # the velocity signal needs no training loss
    other = _study(NeVePruner("velocity", min_resource=100)).ask()
    report_epoch(other, {"epoch": 1, "velocity": 0.2}, signal="velocity")
    assert other.should_prune() is False


def test_numpy_and_tensor_scalars_rank_like_floats() -> None:
    np = pytest.importorskip("numpy")
    torch = pytest.importorskip("torch")
    study = _study(NeVePruner("train_loss", min_resource=1, reduction_factor=2))
    t0 = study.ask()
    report_epoch(
        t0,
        {"epoch": 1, "velocity": np.float32(0.5), "train_loss": torch.tensor(0.3)},
        signal="velocity",
    )
    assert t0.should_prune() is False
    t1 = study.ask()
    report_epoch(
        t1,
        {"epoch": 1, "velocity": torch.tensor(0.05), "train_loss": np.float64(0.9)},
        signal="velocity",
    )
    assert t1.should_prune() is True  # a higher training loss, not a NaN
    assert study.trials[1].intermediate_values == {1: pytest.approx(0.05)}


def test_convergence_does_not_hide_divergence() -> None:
    study = _study(NeVePruner(min_resource=100))
    trial = study.ask()
    report_epoch(trial, _epoch(1, None, float("nan"), diverged=True, neve_stop=True))
    assert trial.should_prune() is True


# ------------------------------------------------------------------ shared settings
def test_settings_stored_in_study_on_first_use(storage) -> None:
    pruner = NeVePruner("velocity", reduction_factor=3)
    study = _study(pruner, storage=storage)
    assert SETTINGS_ATTR not in study.user_attrs
    trial = study.ask()
    _report(trial, 1, 0.1)
    stored = study.user_attrs[SETTINGS_ATTR]
    assert stored["reduction_factor"] == 3 and stored["rung_signal"] == "velocity"


def test_conflicting_settings_refused(storage) -> None:
    study = _study(NeVePruner("velocity"), storage=storage)
    _report(study.ask(), 1, 0.1)
    other = optuna.load_study(
        study_name=study.study_name, storage=storage, pruner=NeVePruner("train_loss")
    )
    trial = other.ask()
    report_epoch(trial, _epoch(1, 0.2))
    with pytest.raises(ValueError, match="rung_signal"):
        trial.should_prune()
    with pytest.raises(ValueError, match="same settings"):
        NeVePruner(unsettled_patience=9).bind(study)


def test_same_settings_accepted_and_from_study_adopts(storage) -> None:
    study = _study(
        NeVePruner("train_loss", reduction_factor=3, unsettled_bound=math.inf), storage=storage
    )
    _report(study.ask(), 1, 0.1)
    NeVePruner("train_loss", reduction_factor=3, unsettled_bound=math.inf).bind(study)  # no error
    adopted = NeVePruner.from_study(study)
    assert (
        adopted.settings
        == NeVePruner("train_loss", reduction_factor=3, unsettled_bound=math.inf).settings
    )
    adopted.bind(study)
    with pytest.raises(ValueError):
        NeVePruner.from_study(study, rung_signal="velocity").bind(study)


def test_from_study_without_stored_settings_gives_defaults() -> None:
    study = optuna.create_study()
    assert NeVePruner.from_study(study).settings == NeVePruner().settings
    assert NeVePruner.from_study(study, reduction_factor=2).settings["reduction_factor"] == 2


# ------------------------------------------------------------------ optimize end to end
@pytest.mark.parametrize("direction", DIRECTIONS)
def test_optimize_with_pruner(direction) -> None:
    def objective(trial: optuna.Trial) -> float:
        lr = trial.suggest_float("lr", 1e-3, 1.0, log=True)
        loss = 2.3
        for epoch in range(1, 31):
            loss *= 1.0 - min(lr, 0.5) / 2
            velocity = 5.0 if lr > 0.8 else lr / epoch  # a very high LR never settles
            report_epoch(trial, _epoch(epoch, velocity, loss, neve_stop=velocity < 1e-3))
            if velocity < 1e-3:
                break
            if trial.should_prune():
                raise optuna.TrialPruned()
        return loss if direction == "minimize" else -loss

    study = optuna.create_study(
        direction=direction,
        pruner=NeVePruner(),
        sampler=optuna.samplers.TPESampler(seed=0, n_startup_trials=5),
    )
    # the sampler rarely draws an LR above 0.8 (3% of the log range): two are asked for
    for lr in (0.9, 0.95):
        study.enqueue_trial({"lr": lr})
    study.optimize(objective, n_trials=25)
    states = {t.state for t in study.trials}
    assert states <= {TrialState.COMPLETE, TrialState.PRUNED}
    assert TrialState.PRUNED in states and TrialState.COMPLETE in states
    unsettled = [t for t in study.trials if t.params["lr"] > 0.8]
    assert len(unsettled) >= 2
    for t in unsettled:  # stays above the unsettled bound -> pruned by epoch 5
        assert t.state == TrialState.PRUNED and t.last_step <= 5
    for t in study.trials:
        if t.state == TrialState.COMPLETE:
            assert t.user_attrs[f"epoch_{t.last_step:04d}"]["neve_stop"] or t.last_step == 30
