"""Unit tests of the Ray Tune stopper, scheduler, search space and checks, in Ray's own
style: direct calls with fake results and trials, pickling round trips. No Ray cluster."""

from __future__ import annotations

import math
import pickle
from types import SimpleNamespace

import pytest

pytest.importorskip("ray.tune")

from ray.tune import Stopper  # noqa: E402
from ray.tune.schedulers import AsyncHyperBandScheduler, TrialScheduler  # noqa: E402
from ray.tune.search.sample import Categorical, Float, Integer  # noqa: E402
from ray.tune.stopper import CombinedStopper, MaximumIterationStopper  # noqa: E402

from neve_tune.ray import (  # noqa: E402
    NeVeASHAScheduler,
    NeVeStopper,
    check_resources,
    neve_trainable,
    reported_metrics,
    to_ray_space,
)
from neve_tune.ray._scheduler import STATE_FILE  # noqa: E402
from neve_tune import Choice, IntUniform, LogUniform, Uniform, load_study  # noqa: E402

CONTINUE, STOP = TrialScheduler.CONTINUE, TrialScheduler.STOP


def res(it: int, velocity: float | None, threshold: float | None = 0.01, **extra) -> dict:
    r = {"training_iteration": it, "epoch": it, "velocity": velocity, "train_loss": extra.pop("train_loss", 1.0)}
    if threshold is not None:
        r["config"] = {"threshold": threshold, "lr": 0.1}
    r.update(extra)
    return r


def fake_trial(tid: str, staging: str | None = None, status: str = "PENDING") -> SimpleNamespace:
    storage = SimpleNamespace(experiment_driver_staging_path=staging) if staging else None
    return SimpleNamespace(trial_id=tid, storage=storage, status=status)


# ------------------------------------------------------------------ NeVeStopper
class TestNeVeStopper:
    def test_is_a_ray_stopper(self):
        assert isinstance(NeVeStopper(), Stopper)

    def test_stops_under_the_trials_own_threshold(self):
        s = NeVeStopper()
        assert s("a", res(1, 0.5, threshold=0.1)) is False
        assert s("b", res(1, 0.05, threshold=0.01)) is False  # b's threshold is lower
        assert s("a", res(2, 0.05, threshold=0.1)) is True
        assert s("b", res(2, 0.009, threshold=0.01)) is True
        assert s.stopped_by("a") == s.stopped_by("b") == "converged"
        assert s.num_converged == 2 and s.stop_all() is False

    def test_threshold_from_result_before_config_before_default(self):
        s = NeVeStopper(threshold=0.5)
        assert s("a", res(1, 0.2, threshold=None)) is True  # default 0.5
        assert s("b", res(1, 0.2, threshold=0.1)) is False  # config 0.1
        assert s("c", {**res(1, 0.2, threshold=0.1), "threshold": 0.3}) is True  # result 0.3

    def test_threshold_from_a_flattened_result(self):
        # what schedulers get from Tune: {"config/threshold": ...}
        assert NeVeStopper()("a", {"training_iteration": 1, "velocity": 0.02, "config/threshold": 0.05}) is True

    def test_neve_stop_and_diverged(self):
        s = NeVeStopper()
        assert s("a", res(3, 0.5, neve_stop=True)) is True
        assert s.stopped_by("a") == "converged"
        assert s("b", res(2, None, diverged=True)) is True
        assert s("c", res(2, float("nan"))) is True
        assert s("d", res(2, math.inf)) is True
        assert s.stopped_by("b") == s.stopped_by("c") == s.stopped_by("d") == "diverged"
        assert (s.num_converged, s.num_diverged) == (1, 3)

    def test_velocity_none_is_not_a_decision(self):
        assert NeVeStopper()("a", res(1, None)) is False

    def test_grace_period(self):
        s = NeVeStopper(grace_period=3)
        assert s("a", res(2, 1e-6)) is False
        assert s("a", res(3, 1e-6)) is True
        assert NeVeStopper(grace_period=3)("b", res(1, 1e-6, neve_stop=True)) is True  # the controller decided

    def test_repeated_final_result_does_not_count_twice(self):
        s = NeVeStopper(max_converged_trials=2)
        final = res(4, 0.001)
        assert s("a", final) is True
        assert s("a", dict(final, done=True)) is True  # Tune's duplicate of the last result
        assert s.num_converged == 1 and s.stop_all() is False
        assert s("b", res(5, 0.001)) is True
        assert s.num_converged == 2 and s.stop_all() is True

    def test_experiment_level_stop_is_off_by_default(self):
        s = NeVeStopper()
        for i in range(5):
            s(f"t{i}", res(1, 1e-5))
        assert s.stop_all() is False

    def test_pickle_round_trip_keeps_per_trial_state(self):
        s = NeVeStopper(max_converged_trials=2)
        s("a", res(1, 0.5))
        s("b", res(2, 0.001))
        s2 = pickle.loads(pickle.dumps(s))
        assert s2.stopped_by("b") == "converged" and s2.stopped_by("a") is None
        assert s2("b", res(2, 0.001)) is True and s2.num_converged == 1
        assert s2("a", res(2, 0.001)) is True and s2.stop_all() is True

    def test_combined_with_ray_stoppers(self):
        s = CombinedStopper(NeVeStopper(), MaximumIterationStopper(max_iter=3))
        assert s("a", res(1, 0.5)) is False
        assert s("a", res(2, 0.001)) is True
        assert [s("b", res(i, 0.5)) for i in (1, 2, 3)] == [False, False, True]  # MaximumIterationStopper counts calls

    def test_user_trainable_with_only_velocity(self):
        s = NeVeStopper()
        assert s("a", {"training_iteration": 1, "velocity": 0.02, "config": {"threshold": 0.05}}) is True

    def test_bare_result_is_ignored(self):
        assert NeVeStopper()("a", {"training_iteration": 0, "done": True, "config": {}}) is False

    def test_unknown_metric_name_is_a_clear_error(self):
        s = NeVeStopper(metric="velocty")
        with pytest.raises(ValueError, match=r"metric 'velocty' is not in the trial's result; it reports \['epoch', 'train_loss', 'velocity'\]"):
            s("a", res(1, 0.5))

    def test_missing_threshold_is_a_clear_error(self):
        with pytest.raises(ValueError, match="no velocity threshold for this trial"):
            NeVeStopper()("a", res(1, 0.5, threshold=None))

    @pytest.mark.parametrize("bad", [0, -1e-3, float("nan"), float("inf")])
    def test_threshold_must_be_positive(self, bad):
        with pytest.raises(ValueError, match="threshold must be a positive finite float"):
            NeVeStopper(threshold=bad)
        with pytest.raises(ValueError, match="the trial's 'threshold' must be a positive finite float"):
            NeVeStopper()("a", res(1, 0.5, threshold=bad))

    def test_bad_arguments(self):
        with pytest.raises(TypeError, match="threshold must be a positive float, got '0.1'"):
            NeVeStopper(threshold="0.1")
        with pytest.raises(TypeError, match="metric must be a non-empty str"):
            NeVeStopper(metric="")
        with pytest.raises(ValueError, match="grace_period must be an int >= 0"):
            NeVeStopper(grace_period=-1)
        with pytest.raises(ValueError, match="max_converged_trials must be a positive int or None"):
            NeVeStopper(max_converged_trials=0)

    def test_non_numeric_velocity(self):
        with pytest.raises(TypeError, match="metric 'velocity' must be a number"):
            NeVeStopper()("a", res(1, "fast"))


# ------------------------------------------------------------------ NeVeASHAScheduler
class TestNeVeASHAScheduler:
    def sched(self, **kw) -> NeVeASHAScheduler:
        kw.setdefault("max_t", 16)
        kw.setdefault("grace_period", 1)
        kw.setdefault("reduction_factor", 2)
        return NeVeASHAScheduler(**kw)

    def test_built_on_ray_asha(self):
        s = self.sched()
        assert isinstance(s, AsyncHyperBandScheduler)
        assert (s.metric, s._mode) == ("train_loss", "min")
        assert s.set_search_properties("train_loss", "min") is True
        assert s.set_search_properties("val_loss", "min") is False

    def test_prunes_on_training_loss_at_rungs(self):
        s = self.sched()
        trials = [fake_trial(f"t{i}") for i in range(4)]
        for t in trials:
            s.on_trial_add(None, t)
        # rung at t=1: the lower loss the better
        assert s.on_trial_result(None, trials[0], res(1, 0.5, train_loss=1.0)) == CONTINUE
        assert s.on_trial_result(None, trials[1], res(1, 0.5, train_loss=0.5)) == CONTINUE
        assert s.on_trial_result(None, trials[2], res(1, 0.5, train_loss=2.0)) == STOP
        assert s.on_trial_result(None, trials[3], res(1, 0.5, train_loss=0.4)) == CONTINUE
        assert s.outcome("t2") == "pruned" and s.num_pruned == 1

    def test_velocity_decides_convergence_before_rungs(self):
        s = self.sched()
        a, b = fake_trial("a"), fake_trial("b")
        s.on_trial_add(None, a)
        s.on_trial_add(None, b)
        assert s.on_trial_result(None, a, res(1, 0.5, train_loss=0.1)) == CONTINUE
        # b would lose at the rung, but its velocity is under its threshold: converged
        assert s.on_trial_result(None, b, res(1, 0.001, threshold=0.01, train_loss=5.0)) == STOP
        assert s.outcome("b") == "converged" and s.num_pruned == 0
        assert s._brackets[0]._rungs[-1][1]["b"] == -5.0  # recorded at rung 1

    def test_neve_stop_converges_and_diverged_stops_unrecorded(self):
        s = self.sched()
        a, b = fake_trial("a"), fake_trial("b")
        s.on_trial_add(None, a)
        s.on_trial_add(None, b)
        assert s.on_trial_result(None, a, res(2, 0.5, neve_stop=True)) == STOP
        assert s.on_trial_result(None, b, res(2, None, diverged=True, train_loss=float("nan"))) == STOP
        assert (s.outcome("a"), s.outcome("b")) == ("converged", "diverged")
        assert all("b" not in rec for _, rec in s._brackets[0]._rungs)
        s.on_trial_complete(None, b, res(2, None, diverged=True, train_loss=float("nan")))
        assert all("b" not in rec for _, rec in s._brackets[0]._rungs)
        assert "converged=1 diverged=1" in s.debug_string()

    def test_trials_stopped_by_the_stopper_are_classified_on_complete(self):
        # Tune calls a NeVeStopper before the scheduler: a converged trial then only
        # reaches on_trial_complete
        s = self.sched()
        a, b = fake_trial("a"), fake_trial("b")
        s.on_trial_add(None, a)
        s.on_trial_add(None, b)
        s.on_trial_result(None, a, res(1, 0.5, train_loss=0.8))
        s.on_trial_complete(None, a, res(2, 0.001, train_loss=0.6))
        s.on_trial_complete(None, b, res(1, 0.5, train_loss=0.7))
        assert (s.outcome("a"), s.outcome("b")) == ("converged", "completed")
        assert s._brackets[0]._rungs[-2][1] == {"a": -0.6}  # rung 2
        assert s._brackets[0]._rungs[-1][1] == {"a": -0.8, "b": -0.7}  # rung 1

    def test_stops_at_max_t(self):
        s = self.sched(max_t=4)
        t = fake_trial("a")
        s.on_trial_add(None, t)
        assert s.on_trial_result(None, t, res(4, 0.5)) == STOP
        assert s.outcome("a") == "max_t"

    def test_pickle_round_trip(self):
        s = self.sched()
        t = fake_trial("a")
        s.on_trial_add(None, t)
        s.on_trial_result(None, t, res(1, 0.5, train_loss=0.3))
        s2 = pickle.loads(pickle.dumps(s))
        assert s2._brackets[0]._rungs[-1][1] == {"a": -0.3}
        assert s2.on_trial_result(None, t, res(2, 0.5, train_loss=0.2)) == CONTINUE

    def test_state_survives_a_restore(self, tmp_path):
        staging = str(tmp_path / "driver_artifacts")
        s = self.sched()
        trials = [fake_trial(f"t{i}", staging) for i in range(3)]
        for t in trials:
            s.on_trial_add(None, t)
        s.on_trial_result(None, trials[0], res(1, 0.5, train_loss=0.5))
        s.on_trial_result(None, trials[1], res(1, 0.001, train_loss=0.4))  # converged
        s.on_trial_result(None, trials[2], res(1, 0.5, train_loss=0.9))  # pruned
        assert (tmp_path / "driver_artifacts" / STATE_FILE).is_file()
        # what Tuner.restore does: a fresh scheduler (from tuner.pkl), trials re-added
        fresh = self.sched()
        for t in trials:
            fresh.on_trial_add(None, fake_trial(t.trial_id, staging, status="TERMINATED" if t is not trials[0] else "PENDING"))
        assert fresh._brackets[0]._rungs == s._brackets[0]._rungs
        assert (fresh.outcome("t1"), fresh.outcome("t2"), fresh.num_pruned) == ("converged", "pruned", 1)
        assert fresh.on_trial_result(None, trials[0], res(2, 0.5, train_loss=0.3)) == CONTINUE

    def test_restore_without_state_starts_fresh_and_persist_off_writes_nothing(self, tmp_path):
        staging = str(tmp_path / "d")
        s = self.sched(persist=False)
        t = fake_trial("a", staging)
        s.on_trial_add(None, t)
        s.on_trial_result(None, t, res(1, 0.5))
        assert not (tmp_path / "d").exists()

    def test_state_of_other_rungs_is_rejected(self, tmp_path):
        staging = str(tmp_path / "d")
        s = self.sched(max_t=16)
        s.on_trial_add(None, fake_trial("a", staging))
        other = self.sched(max_t=64)
        other.on_trial_add(None, fake_trial("a", staging))  # warns, starts with empty rungs
        assert all(not rec for _, rec in other._brackets[0]._rungs)

    def test_unknown_velocity_metric_is_a_clear_error(self):
        s = self.sched(velocity_metric="vel")
        t = fake_trial("a")
        s.on_trial_add(None, t)
        with pytest.raises(ValueError, match="NeVeASHAScheduler: metric 'vel' is not in the trial's result"):
            s.on_trial_result(None, t, res(1, 0.5))

    def test_bad_arguments(self):
        with pytest.raises(ValueError, match="mode must be 'min' or 'max'"):
            NeVeASHAScheduler(mode="minimize")
        with pytest.raises(ValueError, match="grace_period must be <= max_t=4"):
            NeVeASHAScheduler(max_t=4, grace_period=5)
        with pytest.raises(ValueError, match="reduction_factor must be a number > 1"):
            NeVeASHAScheduler(reduction_factor=1)
        with pytest.raises(ValueError, match="threshold must be a positive finite float"):
            NeVeASHAScheduler(threshold=0.0)


# ------------------------------------------------------------------ space, resources, trainable args
def test_to_ray_space_converts_every_distribution():
    study = load_study("digits").replace(
        search_space={
            "lr": LogUniform(1e-3, 0.5),
            "momentum": Uniform(0.5, 0.99),
            "batch_size": Choice([32, 64]),
            "width": IntUniform(8, 64, log=True),
            "depth": IntUniform(1, 3),
        }
    )
    space = to_ray_space(study, seed=7)
    assert isinstance(space["lr"], Float) and space["lr"].lower == 1e-3 and space["lr"].upper == 0.5
    assert isinstance(space["momentum"], Float)
    assert isinstance(space["batch_size"], Categorical) and space["batch_size"].categories == [32, 64]
    assert isinstance(space["width"], Integer) and (space["width"].lower, space["width"].upper) == (8, 65)
    assert (space["depth"].lower, space["depth"].upper) == (1, 4)  # both ends included
    assert space["seed"] == 7
    samples = [space["depth"].sample() for _ in range(200)]
    assert set(samples) == {1, 2, 3}


def test_reported_metrics_use_the_design_names():
    names = reported_metrics("neve")
    for k in ("epoch", "velocity", "velocity_change", "train_loss", "train_acc", "lr", "neve_stop", "diverged",
              "epoch_time_s", "train_samples", "probe_samples", "eval_samples", "test_acc", "objective", "stopped_by"):
        assert k in names
    assert "val_loss" not in names and "val_loss" in reported_metrics("asha")


def test_check_resources():
    assert check_resources({"cpu": 2, "gpu": 0.25}) == {"cpu": 2.0, "gpu": 0.25}
    assert check_resources({"GPU": 1}) == {"gpu": 1.0, "cpu": 1.0}
    with pytest.raises(ValueError, match=r"resources\['gpu'\] must be below 1 \(a shared GPU\) or a whole number, got 1.5"):
        check_resources({"cpu": 1, "gpu": 1.5})
    with pytest.raises(ValueError, match=r"resources\['cpu'\] must be a number >= 0, got -1"):
        check_resources({"cpu": -1})
    with pytest.raises(ValueError, match="must ask for some CPU or GPU"):
        check_resources({"cpu": 0, "gpu": 0})
    with pytest.raises(TypeError, match="resources must be a dict"):
        check_resources([1, 0])


def test_neve_trainable_rejects_bad_arguments():
    study = load_study("digits")
    with pytest.raises(ValueError, match=r"method must be one of \('neve', 'asha', 'asha_es'\), got 'retrain' \('retrain' is not a search method\)"):
        neve_trainable(study, method="retrain")
    with pytest.raises(ValueError, match=r"study 'digits' resources\['gpu'\] must be below 1"):
        neve_trainable(study.replace(resources={"cpu": 1, "gpu": 2.5}))
    with pytest.raises(TypeError, match="seed must be an int or None"):
        neve_trainable(study, seed="0")
    with pytest.raises(FileNotFoundError, match="study file 'nope' not found"):
        neve_trainable("nope")


def test_trainable_config_check():
    from neve_tune.ray._trainable import _check_config

    study = load_study("digits")
    cfg, seed = _check_config(study, {"lr": 0.2, "seed": 3})
    assert cfg["lr"] == 0.2 and cfg["batch_size"] == study.defaults["batch_size"] and seed == 3
    with pytest.raises(ValueError, match=r"config has unknown hyperparameters \['learning_rate'\]"):
        _check_config(study, {"learning_rate": 0.1})
