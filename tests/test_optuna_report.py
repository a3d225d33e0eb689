"""report_epoch: what trial.report carries (the objective's quantity, the training loss,
so a trial's value means one thing in every state), the epoch series in user attrs, and
how pruned trials then rank for TPE in minimize and maximize studies."""

from __future__ import annotations

import math
import warnings

import optuna
import pytest
import torch
from optuna.samplers._tpe.sampler import _get_pruned_trial_score
from optuna.trial import TrialState

from neve_tune.optuna import NeVePruner, epoch_key, report_epoch, trial_history

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _metrics(epoch: int, velocity, train_loss=1.0, **extra) -> dict:
    return {
        "epoch": epoch,
        "velocity": velocity,
        "velocity_change": None,
        "train_loss": train_loss,
        "train_acc": 0.5,
        "lr": 0.1,
        "neve_stop": False,
        "diverged": False,
        "epoch_time_s": 0.01,
        "train_samples": 100 * epoch,
        "probe_samples": 10 * epoch,
        "eval_samples": 0,
        **extra,
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

    backend = (
        make_storage(storage, heartbeat_interval=None) if isinstance(storage, str) else storage
    )
    return optuna.create_study(direction=direction, storage=backend, pruner=NeVePruner())


@pytest.mark.parametrize("direction, sign", [("minimize", 1.0), ("maximize", -1.0)])
def test_reports_the_training_loss_oriented_by_direction(direction, sign, storage) -> None:
    study = _create(direction, storage)
    trial = study.ask()
    assert report_epoch(trial, _metrics(1, 0.25, train_loss=1.5)) == sign * 1.5
    assert report_epoch(trial, _metrics(2, 0.125, train_loss=0.75)) == sign * 0.75
    frozen = study.trials[0]
    assert frozen.intermediate_values == {1: sign * 1.5, 2: sign * 0.75}
    # the raw series, with every metric name, is in the user attributes (JSON, string keys)
    hist = trial_history(frozen)
    assert [m["epoch"] for m in hist] == [1, 2]
    assert [m["velocity"] for m in hist] == [0.25, 0.125]
    assert (
        hist[1]["train_samples"] == 200
        and hist[1]["lr"] == 0.1
        and hist[0]["velocity_change"] is None
    )


def test_non_finite_values_become_nan_and_null(storage) -> None:
    study = _create("minimize", storage)
    trial = study.ask()
    assert math.isnan(report_epoch(trial, _metrics(1, None, float("nan"), diverged=True)))
    assert math.isnan(report_epoch(trial, _metrics(2, float("inf"))))
    frozen = study.trials[0]
    assert math.isnan(frozen.intermediate_values[1]) and math.isnan(frozen.intermediate_values[2])
    hist = trial_history(frozen)
    assert (
        hist[0]["train_loss"] is None and hist[1]["velocity"] is None
    )  # JSON-safe for every storage
    assert hist[0]["diverged"] is True


def test_array_and_tensor_metrics_are_stored_as_lists(storage) -> None:
    """An objective may add a per-class array or tensor to the epoch: it is stored as a JSON
    list (non-finite entries null), not refused with NumPy's or torch's own message."""
    import numpy as np
    import torch

    study = _create("minimize", storage)
    trial = study.ask()
    extra = {"per_class": np.array([0.5, math.nan]), "counts": torch.tensor([[1, 2], [3, 4]])}
    assert report_epoch(trial, _metrics(1, 0.25, **extra)) == 1.0
    hist = trial_history(study.trials[0])
    assert hist[0]["per_class"] == [0.5, None] and hist[0]["counts"] == [[1, 2], [3, 4]]


def test_the_same_epoch_twice_in_a_row_is_refused_and_the_first_report_stays() -> None:
    """A loop that reports each epoch twice (a callback and the loop itself) is a bug:
    refused, not skipped in silence."""
    study = optuna.create_study()
    trial = study.ask()
    report_epoch(trial, _metrics(1, 0.3, train_loss=0.5))
    with pytest.raises(
        ValueError,
        match=r"metrics\['epoch'\] 1 was just reported for trial 0: report each epoch once",
    ):
        report_epoch(trial, _metrics(1, 0.9, train_loss=0.25))
    assert study.trials[0].intermediate_values == {1: 0.5}
    assert trial_history(study.trials[0])[0]["velocity"] == 0.3


def test_a_replayed_history_is_skipped_without_warning() -> None:
    """A resumed or restarted trial replays its history from the first epoch: the steps
    the trial holds are skipped, nothing is written twice, no Optuna warning."""
    study = optuna.create_study()
    trial = study.ask()
    for epoch in (1, 2):
        report_epoch(trial, _metrics(epoch, 0.3, train_loss=0.5))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for epoch in (1, 2):
            assert (
                report_epoch(trial, _metrics(epoch, 0.9, train_loss=0.25)) == 0.25
            )  # what would be reported...
    assert study.trials[0].intermediate_values == {1: 0.5, 2: 0.5}  # ...but the first reports stay
    assert trial_history(study.trials[0])[0]["velocity"] == 0.3


@pytest.mark.parametrize(
    "signal, value", [("val_loss", 0.9), ("train_loss", 0.7), ("velocity", 0.3)]
)
def test_other_signals(signal, value) -> None:
    study = optuna.create_study(direction="maximize")
    trial = study.ask()
    report_epoch(trial, _metrics(1, 0.3, train_loss=0.7, val_loss=0.9), signal=signal)
    assert study.trials[0].intermediate_values[1] == -value


@pytest.mark.parametrize("kind", ["python", "float32", "float64", "tensor"])
@pytest.mark.parametrize("direction, sign", [("minimize", 1.0), ("maximize", -1.0)])
def test_numpy_and_tensor_scalars_are_numbers(kind, direction, sign) -> None:
    """Regression: a NumPy float32 or a 0-d tensor velocity was reported as NaN (and the
    trial pruned as diverged)."""
    np = pytest.importorskip("numpy")
    torch = pytest.importorskip("torch")
    cast = {"python": float, "float32": np.float32, "float64": np.float64, "tensor": torch.tensor}[
        kind
    ]
    study = optuna.create_study(direction=direction, pruner=NeVePruner(min_resource=100))
    trial = study.ask()
    epoch = np.int64(1) if kind != "python" else 1
    metrics = {
        **_metrics(1, cast(0.3), train_loss=cast(1.25), lr=cast(0.1), diverged=np.bool_(False)),
        "epoch": epoch,
    }
    assert report_epoch(trial, metrics) == pytest.approx(sign * 1.25)
    assert trial.should_prune() is False
    frozen = study.trials[0]
    assert frozen.intermediate_values == {1: pytest.approx(sign * 1.25)}
    stored = trial_history(frozen)[0]
    assert (
        stored["velocity"] == pytest.approx(0.3)
        and stored["train_loss"] == 1.25
        and stored["epoch"] == 1
    )
    assert all(
        type(stored[k]) in (int, float, bool)
        for k in ("velocity", "train_loss", "lr", "epoch", "diverged")
    )


@pytest.mark.parametrize(
    "metrics, signal, error, message",
    [
        ({"epoch": 1, "train_loss": 1.0}, "velocity", ValueError, "no 'velocity'"),
        (
            {"epoch": 1, "velocity": 0.1},
            "train_loss",
            ValueError,
            r"no 'train_loss' \(the signal reported to Optuna\)",
        ),
        (
            {"epoch": 1, "velocity": 0.1, "train_los": 0.5},
            "train_loss",
            ValueError,
            r"metrics has 'train_los': did you mean 'train_loss'\? \(a metric NeVe reads\)",
        ),
        # a misspelled extra key: not the signal, but the pruner or a reader would miss it
        (
            {"epoch": 1, "velocity": 0.1, "train_loss": 0.5, "neve_stpo": True},
            "train_loss",
            ValueError,
            r"metrics has 'neve_stpo': did you mean 'neve_stop'\?",
        ),
        (
            {"epoch": 1, "velocity": -0.1, "train_loss": 0.5},
            "train_loss",
            ValueError,
            r"metrics\['velocity'\] must be >= 0 \(a velocity is a mean absolute change",
        ),
        (
            {"epoch": 1, "velocity": 0.1, "train_loss": 0.5, "diverged": "no"},
            "train_loss",
            TypeError,
            r"metrics\['diverged'\] must be a bool, got 'no'",
        ),
        (
            {"epoch": 1, "velocity": "fast", "train_loss": 0.5},
            "train_loss",
            TypeError,
            r"metrics\['velocity'\] must be a number",
        ),
        (
            {"epoch": 1, "velocty": 0.1, "train_loss": 1.0},
            "velocity",
            ValueError,
            r"'velocty': did you mean 'velocity'\?",
        ),
        ({"epoch": 1, "velocity": 0.1}, "val_loss", ValueError, "no 'val_loss'"),
        ({"velocity": 0.1}, "velocity", ValueError, "no 'epoch'"),
        (
            {"epoch": 1.7, "velocity": 0.1},
            "velocity",
            TypeError,
            r"metrics\['epoch'\] must be an int >= 0, got 1.7",
        ),
        (
            {"epoch": "x", "velocity": 0.1},
            "velocity",
            TypeError,
            r"metrics\['epoch'\] must be an int",
        ),
        (
            {"epoch": -1, "velocity": 0.1},
            "velocity",
            ValueError,
            r"metrics\['epoch'\] must be an int >= 0",
        ),
        ({"epoch": True, "velocity": 0.1}, "velocity", TypeError, r"metrics\['epoch'\]"),
        (
            {"epoch": 1, "velocity": "fast"},
            "velocity",
            TypeError,
            r"metrics\['velocity'\] must be a number",
        ),
        (
            {"epoch": 1, "velocity": 0.1, "train_loss": "low"},
            "velocity",
            TypeError,
            r"metrics\['train_loss'\]",
        ),
        (  # the pick reads the encoded string only: a tensor of classes would be ignored
            {"epoch": 1, "velocity": 0.1, "train_loss": 0.5, "subset_pred": torch.tensor([1, 0])},
            "train_loss",
            TypeError,
            r"metrics\['subset_pred'\] must be the string SelectionSubset.predict\(model\)",
        ),
        (
            {"epoch": 1, "velocity": 0.1, "train_loss": 0.5, "subset_fit": "high"},
            "train_loss",
            TypeError,
            r"metrics\['subset_fit'\] must be a number",
        ),
        (
            {"epoch": 1, "velocity": None},
            "velocity",
            ValueError,
            "None on an epoch not flagged 'diverged'",
        ),
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
    assert (
        study.trials[0].intermediate_values == {} and study.trials[0].user_attrs == {}
    )  # nothing written


@pytest.mark.parametrize("inherit", [True, False])
def test_retried_trial_reports_each_step_once(inherit, tmp_path) -> None:
    """A retry inherits its predecessor's epoch attributes (and its intermediate values
    only with ``inherit_intermediate_values``); replaying the history reports exactly the
    steps the retry lacks, read through public API."""
    from neve_tune.optuna import make_storage

    study = optuna.create_study(
        storage=make_storage(f"sqlite:///{tmp_path / 's.db'}", heartbeat_interval=None)
    )
    trial = study.ask()
    for e in (1, 2):
        report_epoch(trial, _metrics(e, 0.5, train_loss=0.1 * e))
    trial.set_user_attr(
        epoch_key(3), _metrics(3, 0.5, train_loss=0.3)
    )  # killed between the attribute and the report
    study.tell(trial, state=TrialState.FAIL)
    with pytest.warns(optuna.exceptions.ExperimentalWarning):
        retry = optuna.storages.RetryHeartbeatStaleTrialCallback(
            inherit_intermediate_values=inherit
        )
    retry(study, study.trials[0])
    again = study.ask()
    assert again.number == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Optuna warns when a step is reported twice
        for e in (1, 2, 3, 4):
            report_epoch(again, _metrics(e, 0.5, train_loss=0.1 * e))
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
    assert report_epoch(trial, _metrics(1, 0.2, train_loss=0.6)) == 0.6
    assert trial.user_attrs[epoch_key(1)]["velocity"] == 0.2


def test_history_is_in_epoch_order_past_padding() -> None:
    trial = optuna.trial.create_trial(
        state=TrialState.COMPLETE,
        value=1.0,
        user_attrs={epoch_key(e): {"epoch": e} for e in (10000, 2, 9999, 1)}
        | {"epoch_x": 1, "test_acc": 0.9},
    )
    assert [m["epoch"] for m in trial_history(trial)] == [1, 2, 9999, 10000]


@pytest.mark.parametrize("direction", ["minimize", "maximize"])
def test_a_pruned_trial_has_the_value_of_a_complete_one_and_ranks_by_it_for_tpe(direction) -> None:
    """A pruned trial's value is its training loss at the epoch it was pruned, the same
    quantity a complete trial returns; TPE ranks pruned trials by deepest step, then that
    loss in the study's direction, a diverged (NaN) trial last."""
    study = optuna.create_study(direction=direction)
    losses = {"fits": 0.2, "fits_less": 0.8, "diverged": None}
    for name, loss in losses.items():
        trial = study.ask()
        trial.set_user_attr("name", name)
        report_epoch(trial, _metrics(1, 0.9, train_loss=2.0))
        report_epoch(
            trial,
            _metrics(
                2,
                None if loss is None else 0.01,
                diverged=loss is None,
                train_loss=float("nan") if loss is None else loss,
            ),
        )
        study.tell(trial, state=TrialState.PRUNED)
    shallow = study.ask()
    shallow.set_user_attr("name", "shallow")
    report_epoch(shallow, _metrics(1, 0.001, train_loss=0.05))
    study.tell(shallow, state=TrialState.PRUNED)
    done = study.ask()
    report_epoch(done, _metrics(1, 0.9, train_loss=2.0))
    study.tell(
        done, 0.3 if direction == "minimize" else -0.3
    )  # a complete trial returns its training loss

    pruned = [t for t in study.trials if t.state == TrialState.PRUNED]
    ranked = sorted(pruned, key=lambda t: _get_pruned_trial_score(t, study))
    assert [t.user_attrs["name"] for t in ranked] == ["fits", "fits_less", "diverged", "shallow"]
    sign = 1.0 if direction == "minimize" else -1.0
    assert ranked[0].value == pytest.approx(sign * 0.2) and ranked[1].value == pytest.approx(
        sign * 0.8
    )
    assert ranked[2].value is None  # Optuna keeps no value for a NaN last report
    # one quantity on one axis: every value is a training loss (in the study's orientation)
    values = {t.number: sign * t.value for t in study.trials if t.value is not None}
    assert values == pytest.approx({0: 0.2, 1: 0.8, 3: 0.05, 4: 0.3})


def test_the_pruner_reads_the_velocity_from_the_stored_epoch() -> None:
    """The reported value is the training loss; NeVePruner's velocity rules read the
    velocity from the epoch report_epoch stored, so they still judge the velocity."""
    study = optuna.create_study(pruner=NeVePruner("velocity", min_resource=1, reduction_factor=2))
    settled, unsettled = study.ask(), study.ask()
    report_epoch(settled, _metrics(1, 0.1, train_loss=0.9))
    assert settled.should_prune() is False
    report_epoch(unsettled, _metrics(1, 0.5, train_loss=0.1))  # the lower loss, but less settled
    assert unsettled.should_prune() is True
    bound = optuna.create_study(
        pruner=NeVePruner(min_resource=100, unsettled_bound=0.6, unsettled_patience=2)
    )
    trial = bound.ask()
    report_epoch(trial, _metrics(1, 0.9, train_loss=0.1))
    assert trial.should_prune() is False
    report_epoch(
        trial, _metrics(2, 0.9, train_loss=0.05)
    )  # unsettled for 2 epochs, whatever its loss
    assert trial.should_prune() is True
