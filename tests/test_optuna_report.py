"""report_epoch: what trial.report carries, the epoch series in user attrs, and how
pruned trials then rank for TPE in minimize and maximize studies."""

from __future__ import annotations

import math
import warnings

import optuna
import pytest
from optuna.samplers._tpe.sampler import _get_pruned_trial_score
from optuna.trial import TrialState

from neve_tune.optuna import NeVePruner, epoch_key, report_epoch, trial_history

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _metrics(epoch: int, velocity, train_loss=1.0, **extra) -> dict:
    return {
        "epoch": epoch, "velocity": velocity, "velocity_change": None, "train_loss": train_loss, "train_acc": 0.5,
        "lr": 0.1, "neve_stop": False, "diverged": False, "epoch_time_s": 0.01,
        "train_samples": 100 * epoch, "probe_samples": 10 * epoch, "eval_samples": 0, **extra,
    }


@pytest.fixture(params=["memory", "sqlite", "journal"])
def storage(request, tmp_path):
    if request.param == "memory":
        return None
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'study.db'}"
    return f"journal:{tmp_path / 'study.log'}"


def _create(direction: str, storage) -> optuna.Study:
    from neve_tune.optuna import make_storage

    backend = make_storage(storage, heartbeat_interval=None) if isinstance(storage, str) else storage
    return optuna.create_study(direction=direction, storage=backend, pruner=NeVePruner())


@pytest.mark.parametrize("direction, sign", [("minimize", 1.0), ("maximize", -1.0)])
def test_reports_velocity_oriented_by_direction(direction, sign, storage) -> None:
    study = _create(direction, storage)
    trial = study.ask()
    assert report_epoch(trial, _metrics(1, 0.25)) == sign * 0.25
    assert report_epoch(trial, _metrics(2, 0.125)) == sign * 0.125
    frozen = study.trials[0]
    assert frozen.intermediate_values == {1: sign * 0.25, 2: sign * 0.125}
    # the raw series, with every metric name, is in the user attributes (JSON, string keys)
    hist = trial_history(frozen)
    assert [m["epoch"] for m in hist] == [1, 2]
    assert [m["velocity"] for m in hist] == [0.25, 0.125]
    assert hist[1]["train_samples"] == 200 and hist[1]["lr"] == 0.1 and hist[0]["velocity_change"] is None


def test_non_finite_values_become_nan_and_null(storage) -> None:
    study = _create("minimize", storage)
    trial = study.ask()
    assert math.isnan(report_epoch(trial, _metrics(1, None, float("nan"), diverged=True)))
    assert math.isnan(report_epoch(trial, _metrics(2, float("inf"))))
    frozen = study.trials[0]
    assert math.isnan(frozen.intermediate_values[1]) and math.isnan(frozen.intermediate_values[2])
    hist = trial_history(frozen)
    assert hist[0]["train_loss"] is None and hist[1]["velocity"] is None  # JSON-safe for every storage
    assert hist[0]["diverged"] is True


def test_repeated_step_is_skipped_without_warning() -> None:
    study = optuna.create_study()
    trial = study.ask()
    report_epoch(trial, _metrics(1, 0.3))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert report_epoch(trial, _metrics(1, 0.9)) == 0.9  # what would be reported...
    assert study.trials[0].intermediate_values == {1: 0.3}  # ...but the first report stays
    assert trial_history(study.trials[0])[0]["velocity"] == 0.3


@pytest.mark.parametrize("signal, key", [("val_loss", "val_loss"), ("train_loss", "train_loss")])
def test_other_signals(signal, key) -> None:
    study = optuna.create_study(direction="maximize")
    trial = study.ask()
    report_epoch(trial, _metrics(1, 0.3, train_loss=0.7, val_loss=0.9), signal=signal)
    assert study.trials[0].intermediate_values[1] == -{"val_loss": 0.9, "train_loss": 0.7}[key]


@pytest.mark.parametrize("kind", ["python", "float32", "float64", "tensor"])
@pytest.mark.parametrize("direction, sign", [("minimize", 1.0), ("maximize", -1.0)])
def test_numpy_and_tensor_scalars_are_numbers(kind, direction, sign) -> None:
    """Regression: a NumPy float32 or a 0-d tensor velocity was reported as NaN (and the
    trial pruned as diverged)."""
    np = pytest.importorskip("numpy")
    torch = pytest.importorskip("torch")
    cast = {"python": float, "float32": np.float32, "float64": np.float64, "tensor": torch.tensor}[kind]
    study = optuna.create_study(direction=direction, pruner=NeVePruner(min_resource=100))
    trial = study.ask()
    epoch = np.int64(1) if kind != "python" else 1
    metrics = {**_metrics(1, cast(0.3), train_loss=cast(1.25), lr=cast(0.1), diverged=np.bool_(False)), "epoch": epoch}
    assert report_epoch(trial, metrics) == pytest.approx(sign * 0.3)
    assert trial.should_prune() is False
    frozen = study.trials[0]
    assert frozen.intermediate_values == {1: pytest.approx(sign * 0.3)}
    stored = trial_history(frozen)[0]
    assert stored["velocity"] == pytest.approx(0.3) and stored["train_loss"] == 1.25 and stored["epoch"] == 1
    assert all(type(stored[k]) in (int, float, bool) for k in ("velocity", "train_loss", "lr", "epoch", "diverged"))


@pytest.mark.parametrize(
    "metrics, signal, error, message",
    [
        ({"epoch": 1, "train_loss": 1.0}, "velocity", ValueError, "no 'velocity'"),
        ({"epoch": 1, "velocty": 0.1, "train_loss": 1.0}, "velocity", ValueError, r"no 'velocity'.*'velocty'"),
        ({"epoch": 1, "velocity": 0.1}, "val_loss", ValueError, "no 'val_loss'"),
        ({"velocity": 0.1}, "velocity", ValueError, "no 'epoch'"),
        ({"epoch": 1.7, "velocity": 0.1}, "velocity", TypeError, r"metrics\['epoch'\] must be an int >= 0, got 1.7"),
        ({"epoch": "x", "velocity": 0.1}, "velocity", TypeError, r"metrics\['epoch'\] must be an int"),
        ({"epoch": -1, "velocity": 0.1}, "velocity", ValueError, r"metrics\['epoch'\] must be an int >= 0"),
        ({"epoch": True, "velocity": 0.1}, "velocity", TypeError, r"metrics\['epoch'\]"),
        ({"epoch": 1, "velocity": "fast"}, "velocity", TypeError, r"metrics\['velocity'\] must be a number"),
        ({"epoch": 1, "velocity": 0.1, "train_loss": "low"}, "velocity", TypeError, r"metrics\['train_loss'\]"),
        ({"epoch": 1, "velocity": None}, "velocity", ValueError, "None on an epoch not flagged 'diverged'"),
        (None, "velocity", TypeError, "metrics must be a mapping"),
        ([("epoch", 1)], "velocity", TypeError, "metrics must be a mapping"),
        ({"epoch": 1, "velocity": 0.1}, "accuracy", ValueError, "signal must be one of"),
    ],
)
def test_bad_metrics_are_clear_errors(metrics, signal, error, message) -> None:
    study = optuna.create_study()
    trial = study.ask()
    with pytest.raises(error, match=message):
        report_epoch(trial, metrics, signal=signal)
    assert study.trials[0].intermediate_values == {} and study.trials[0].user_attrs == {}  # nothing written


@pytest.mark.parametrize("inherit", [True, False])
def test_retried_trial_reports_each_step_once(inherit, tmp_path) -> None:
    """A retry inherits its predecessor's epoch attributes (and its intermediate values
    only with ``inherit_intermediate_values``); replaying the history reports exactly the
    steps the retry lacks, read through public API."""
    from neve_tune.optuna import make_storage

    study = optuna.create_study(storage=make_storage(f"sqlite:///{tmp_path / 's.db'}", heartbeat_interval=None))
    trial = study.ask()
    for e in (1, 2):
        report_epoch(trial, _metrics(e, 0.1 * e))
    trial.set_user_attr(epoch_key(3), _metrics(3, 0.3))  # killed between the attribute and the report
    study.tell(trial, state=TrialState.FAIL)
    with pytest.warns(optuna.exceptions.ExperimentalWarning):
        retry = optuna.storages.RetryHeartbeatStaleTrialCallback(inherit_intermediate_values=inherit)
    retry(study, study.trials[0])
    again = study.ask()
    assert again.number == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Optuna warns when a step is reported twice
        for e in (1, 2, 3, 4):
            report_epoch(again, _metrics(e, 0.1 * e))
    assert study.trials[1].intermediate_values == pytest.approx({1: 0.1, 2: 0.2, 3: 0.3, 4: 0.4})


def test_bad_input() -> None:
    trial = optuna.create_study().ask()
    with pytest.raises(ValueError, match="signal"):
        report_epoch(trial, _metrics(1, 0.1), signal="accuracy")
    with pytest.raises(ValueError, match="epoch"):
        report_epoch(trial, {"velocity": 0.1})
    multi = optuna.create_study(directions=["minimize", "minimize"]).ask()
    with pytest.raises(ValueError, match="single-objective"):
        report_epoch(multi, _metrics(1, 0.1))


def test_fixed_trial_is_accepted() -> None:
    trial = optuna.trial.FixedTrial({"lr": 0.1})
    assert report_epoch(trial, _metrics(1, 0.2)) == 0.2
    assert trial.user_attrs[epoch_key(1)]["velocity"] == 0.2


def test_history_is_in_epoch_order_past_padding() -> None:
    trial = optuna.trial.create_trial(
        state=TrialState.COMPLETE,
        value=1.0,
        user_attrs={epoch_key(e): {"epoch": e} for e in (10000, 2, 9999, 1)} | {"epoch_x": 1, "test_acc": 0.9},
    )
    assert [m["epoch"] for m in trial_history(trial)] == [1, 2, 9999, 10000]


@pytest.mark.parametrize("direction", ["minimize", "maximize"])
def test_pruned_trials_rank_settled_first_for_tpe(direction) -> None:
    """TPE ranks pruned trials by deepest step, then value in the study's direction; with
    the oriented report the more settled trial ranks first in both directions, and a
    diverged (NaN) trial last."""
    study = optuna.create_study(direction=direction)
    velocities = {"settled": 0.01, "unsettled": 0.4, "diverged": None}
    for name, v in velocities.items():
        trial = study.ask()
        trial.set_user_attr("name", name)
        report_epoch(trial, _metrics(1, 0.9))
        report_epoch(trial, _metrics(2, v, diverged=v is None, train_loss=float("nan") if v is None else 1.0))
        study.tell(trial, state=TrialState.PRUNED)
    shallow = study.ask()
    shallow.set_user_attr("name", "shallow")
    report_epoch(shallow, _metrics(1, 0.001))
    study.tell(shallow, state=TrialState.PRUNED)

    ranked = sorted(study.trials, key=lambda t: _get_pruned_trial_score(t, study))
    assert [t.user_attrs["name"] for t in ranked] == ["settled", "unsettled", "diverged", "shallow"]
    sign = 1.0 if direction == "minimize" else -1.0
    assert ranked[0].value == pytest.approx(sign * 0.01)  # a pruned trial's value: its signed velocity
    assert ranked[2].value is None  # Optuna keeps no value for a NaN last report
