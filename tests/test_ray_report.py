"""neve_tune.ray.report_epoch (a trainable of your own reporting to Tune) and the stall
rule NeVeStopper applies to raw-velocity results, on fake results and on a real Tune run."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

pytest.importorskip("ray.tune")

import neve_tune.ray._report as report_module  # noqa: E402
from neve_tune import NeuralVelocity, NeVe, gaussian_probe  # noqa: E402
from neve_tune.ray import NeVeStopper, report_epoch  # noqa: E402


@pytest.fixture
def reported(monkeypatch):
    """What reaches ray.tune.report (no Tune session needed for the checks)."""
    calls: list[tuple[dict, object]] = []
    from ray import tune

    monkeypatch.setattr(
        tune, "report", lambda metrics, *, checkpoint=None: calls.append((metrics, checkpoint))
    )
    return calls


def _neve_metrics() -> dict:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    neve = NeVe(
        torch.optim.SGD(model.parameters(), lr=0.1), NeuralVelocity(model, gaussian_probe((4,), 16))
    )
    neve.start()
    return neve.step(train_loss=torch.tensor(0.7))


def test_the_output_of_neve_step_is_reported_as_it_is(reported, tmp_path):
    from ray import tune

    metrics = _neve_metrics()
    checkpoint = tune.Checkpoint.from_directory(tmp_path)
    out = report_epoch(metrics, checkpoint=checkpoint)
    assert reported == [(out, checkpoint)]
    assert out == metrics and out["train_loss"] == pytest.approx(0.7) and out["neve_stop"] is False


def test_numpy_and_tensor_scalars_become_python_numbers(reported):
    out = report_epoch(
        {
            "epoch": np.int64(2),
            "velocity": np.float32(0.25),
            "train_loss": torch.tensor(0.5),
            "stalled": np.bool_(False),
            "train_acc": torch.tensor([0.75]),
            "note": "x",
        }
    )
    assert out == {
        "epoch": 2,
        "velocity": 0.25,
        "train_loss": 0.5,
        "stalled": False,
        "train_acc": 0.75,
        "note": "x",
    }
    assert [type(out[k]) for k in ("epoch", "velocity", "train_loss", "stalled")] == [
        int,
        float,
        float,
        bool,
    ]
    assert reported[0][0] == out


@pytest.mark.parametrize(
    "metrics, error, message",
    [
        (
            {"velocty": 0.1, "train_loss": 0.5},
            ValueError,
            r"has 'velocty': did you mean 'velocity'\?",
        ),
        (
            {"velocity": 0.1, "train_los": 0.5},
            ValueError,
            r"has 'train_los': did you mean 'train_loss'\?",
        ),
        (
            {"velocity": 0.1, "train_loss": 0.5, "neve_stopped": True},
            ValueError,
            "did you mean 'neve_stop'",
        ),
        (
            {"train_loss": 0.5},
            ValueError,
            r"metrics has no 'velocity' .*its keys: \['train_loss'\]",
        ),
        ({"velocity": 0.1, "loss": 0.5}, ValueError, r"metrics has no 'train_loss'"),
        (
            {"velocity": 0.1, "train_loss": 0.5, "training_iteration": 3},
            ValueError,
            "must not set 'training_iteration'",
        ),
        (
            {"velocity": torch.ones(3), "train_loss": 0.5},
            TypeError,
            r"metrics\['velocity'\] must be a scalar, got an array of shape \(3,\)",
        ),
        (
            {"velocity": None, "train_loss": 0.5},
            ValueError,
            r"metrics\['velocity'\] is None on an epoch not flagged 'diverged'",
        ),
        (
            {"velocity": "fast", "train_loss": 0.5},
            TypeError,
            r"metrics\['velocity'\] must be a number",
        ),
        (
            {"velocity": 0.1, "train_loss": 0.5, "neve_stop": 1.0},
            TypeError,
            r"metrics\['neve_stop'\] must be a bool",
        ),
        ([("velocity", 0.1)], TypeError, "metrics must be a mapping"),
    ],
)
def test_bad_metrics_are_refused_naming_the_key_and_nothing_is_reported(
    reported, metrics, error, message
):
    with pytest.raises(error, match=message):
        report_epoch(metrics)
    assert reported == []


def test_every_name_neve_reports_passes_and_a_typo_of_one_is_refused(reported):
    """A trainable of your own may report what ``neve_trainable`` reports (``best_epoch`` is
    no typo of ``kept_epoch``, ``epochs`` none of ``epoch``); a typo of a name the pick or
    the scheduler's callback reads (``stopped_by``, ``subset_fit``, ``objective``) is refused."""
    from neve_tune.ray import reported_metrics

    names = [k for k in reported_metrics("asha") if k not in ("velocity", "train_loss")]
    flags, text = ("neve_stop", "stalled", "diverged"), ("stopped_by", "node_id")
    values = {k: False if k in flags else "velocity" if k in text else 1.0 for k in names}
    metrics = {"velocity": 0.1, "train_loss": 0.5, **values}
    assert set(report_epoch(metrics)) == set(metrics)
    last = {"velocity": 0.1, "train_loss": 0.5, "best_epoch": 3, "epochs": 4}  # no kept_epoch
    assert report_epoch(last) == last
    for typo, name in (
        ("stoped_by", "stopped_by"),
        ("subset_fitt", "subset_fit"),
        ("subset_prd", "subset_pred"),
        ("objectve", "objective"),
    ):
        with pytest.raises(ValueError, match=rf"has '{typo}': did you mean '{name}'\?"):
            report_epoch({"velocity": 0.1, "train_loss": 0.5, typo: 1.0})
    assert len(reported) == 2


@pytest.mark.parametrize("checkpoint", [{"model": 1}, "ckpt_dir"])
def test_a_checkpoint_that_is_no_tune_checkpoint_is_refused_before_reporting(reported, checkpoint):
    # Ray itself would fail the trial with "'dict' object has no attribute 'path'"
    with pytest.raises(TypeError, match="checkpoint must be a ray.tune.Checkpoint"):
        report_epoch({"velocity": 0.1, "train_loss": 0.5}, checkpoint)
    assert reported == []


def test_a_diverged_epoch_may_carry_no_velocity(reported):
    assert (
        report_epoch({"velocity": None, "train_loss": float("nan"), "diverged": True})["diverged"]
        is True
    )


def test_own_metric_names(reported):
    assert report_epoch({"vel": 0.1, "loss": 0.5}, metric="vel", loss_metric="loss") == {
        "vel": 0.1,
        "loss": 0.5,
    }
    assert report_module.check_epoch_metrics(
        {"velocity": 0.1, "train_loss": 0.5, "velocity_layer1": 0.2}
    )
    # names one typo away from NeVe's are the caller's own once it names them
    own = {"velocity_ema": 0.1, "train_loss_avg": 0.5}
    assert report_epoch(own, metric="velocity_ema", loss_metric="train_loss_avg") == own
    with pytest.raises(ValueError, match="did you mean 'velocity'"):
        report_epoch(own, loss_metric="train_loss_avg")  # velocity_ema is not named: a typo


# ---------------------------------------------------- the stopper's stall rule on raw velocity
def _raw(it: int, velocity: float, loss: float) -> dict:
    return {
        "training_iteration": it,
        "velocity": velocity,
        "train_loss": loss,
        "config": {"threshold": 1e-3},
    }


def test_the_binary_task_case_is_never_converged():
    # loss 0.73 on a binary task (chance log 2 = 0.69) with the velocity already under the threshold
    s = NeVeStopper(num_classes=2)
    assert s("t", _raw(1, 1e-5, 0.73)) is False  # one epoch cannot show learning: go on
    assert (
        s("t", _raw(2, 1e-5, 0.64)) is True
    )  # 12% below its first loss, but not 10% below chance (0.62)
    assert s.stopped_by("t") == "stalled" and s.num_converged == 0
    without_classes = (
        NeVeStopper()
    )  # the same trial without num_classes: it learned by its own first loss
    without_classes("t", _raw(1, 1e-5, 0.73))
    assert (
        without_classes("t", _raw(2, 1e-5, 0.64)) is True
        and without_classes.stopped_by("t") == "converged"
    )


def test_a_flat_loss_is_stalled_and_a_falling_one_converged():
    s = NeVeStopper()
    for it, loss in enumerate([2.30, 2.29, 2.28], start=1):
        s("flat", _raw(it, 0.5 if it < 3 else 1e-4, loss))
        s("fell", _raw(it, 0.5 if it < 3 else 1e-4, loss * 0.5 ** (it - 1)))
    assert (s.stopped_by("flat"), s.stopped_by("fell")) == ("stalled", "converged")
    assert (s.num_stalled, s.num_converged) == (1, 1)


def test_min_raw_epochs_and_stall_margin():
    s = NeVeStopper(min_raw_epochs=3, stall_margin=0.5)
    assert s("t", _raw(1, 1e-5, 1.0)) is False and s("t", _raw(2, 1e-5, 0.4)) is False
    assert (
        s("t", _raw(3, 1e-5, 0.6)) is True and s.stopped_by("t") == "stalled"
    )  # not 50% below 1.0
    assert (
        NeVeStopper(min_raw_epochs=1)("u", _raw(1, 1e-5, 0.1)) is True
    )  # iteration 1: cannot have learned


def test_the_first_loss_is_the_earliest_iteration_and_survives_pickling():
    import pickle

    s = NeVeStopper()
    s("t", _raw(2, 0.5, 0.5))  # a restored trial seen from iteration 2 first...
    s("t", _raw(1, 0.5, 1.0))  # ...then its earlier result (a retry from the start)
    s2 = pickle.loads(pickle.dumps(s))
    assert (
        s2("t", _raw(3, 1e-4, 0.85)) is True and s2.stopped_by("t") == "converged"
    )  # judged against 1.0


def test_a_non_finite_loss_is_divergence():
    s = NeVeStopper()
    assert s("t", _raw(1, 0.5, float("inf"))) is True and s.stopped_by("t") == "diverged"


@pytest.mark.parametrize(
    "kw, error, message",
    [
        ({"num_classes": 1}, ValueError, "num_classes must be an int >= 2 or None, got 1"),
        ({"stall_margin": 1.0}, ValueError, "stall_margin must be"),
        ({"loss_metric": ""}, TypeError, "loss_metric must be a non-empty str"),
    ],
)
def test_bad_options_name_the_parameter(kw, error, message):
    with pytest.raises(error, match=message):
        NeVeStopper(**kw)


# ------------------------------------------------------------ a real Tune run
def _raw_velocity_trainable(config: dict) -> None:
    """A trainable of your own with no controller: it measures the velocity itself and
    reports it with the training loss; only NeVeStopper ends it (or 30 epochs)."""
    from neve_tune.ray import report_epoch

    torch.set_num_threads(1)
    torch.manual_seed(0)
    x = torch.randn(512, 20)
    y = (x[:, :2].sum(1) > 0).long()
    model = torch.nn.Sequential(torch.nn.Linear(20, 64), torch.nn.ReLU(), torch.nn.Linear(64, 2))
    optimizer = torch.optim.SGD(model.parameters(), lr=config["lr"])
    velocity = NeuralVelocity(model, gaussian_probe((20,), 100, seed=0))
    velocity.measure()
    for _ in range(30):
        total = 0.0
        for xb, yb in zip(x.split(64), y.split(64)):
            loss = torch.nn.functional.cross_entropy(model(xb), yb)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item()
        report_epoch(
            {"velocity": velocity.measure().model_velocity, "train_loss": np.float32(total / 8)}
        )


@pytest.mark.ray
@pytest.mark.slow  # a local Ray: 20-120 s on a shared 2-core machine
def test_a_user_trainable_at_lr_1e_5_ends_stalled_never_converged(tmp_path):
    import ray
    import ray.cloudpickle
    from ray import tune

    ray.cloudpickle.register_pickle_by_value(
        sys.modules[__name__]
    )  # Ray workers cannot import this module
    if ray.is_initialized():
        ray.shutdown()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        stopper = NeVeStopper(num_classes=2)
        results = tune.Tuner(
            _raw_velocity_trainable,
            param_space={"lr": tune.grid_search([1e-5, 0.5]), "threshold": 1e-3},
            run_config=tune.RunConfig(storage_path=str(tmp_path), stop=stopper, verbose=0),
        ).fit()
    finally:
        ray.shutdown()
    assert not results.errors
    ended = {
        r.config["lr"]: (stopper.stopped_by(r.metrics["trial_id"]), r.metrics) for r in results
    }
    why, last = ended[1e-5]
    assert why == "stalled" and last["training_iteration"] == 2 and last["velocity"] < 1e-3
    assert last["train_loss"] > 0.9 * 0.69  # it really did not learn
    why, last = ended[0.5]
    assert why == "converged" and 2 <= last["training_iteration"] < 30 and last["train_loss"] < 0.3
    assert (stopper.num_converged, stopper.num_stalled) == (1, 1)
