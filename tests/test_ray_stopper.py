"""Unit tests of the Ray Tune stopper, scheduler, search space and checks, in Ray's own
style: direct calls with fake results and trials, pickling round trips. No Ray cluster
(except the one test marked slow, which restores a real experiment)."""

from __future__ import annotations

import logging
import math
import os
import pickle
import random
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

pytest.importorskip("ray.tune")

from ray.tune import Callback  # noqa: E402
from ray.tune.schedulers import AsyncHyperBandScheduler, FIFOScheduler, TrialScheduler  # noqa: E402
from ray.tune.search.sample import Categorical, Float, Integer  # noqa: E402
from ray.tune.stopper import CombinedStopper, MaximumIterationStopper  # noqa: E402

from neve_tune import Choice, IntUniform, LogUniform, Uniform, load_study  # noqa: E402
from neve_tune.ray import (  # noqa: E402
    NeVeASHAScheduler,
    NeVeStopper,
    check_resources,
    neve_trainable,
    reported_metrics,
    to_ray_space,
)
from neve_tune.ray._halving import Rung  # noqa: E402
from neve_tune.ray._scheduler import NeVeASHAStateCallback  # noqa: E402

CONTINUE, STOP = TrialScheduler.CONTINUE, TrialScheduler.STOP


def res(it: int, velocity: float | None, threshold: float | None = 0.01, **extra) -> dict:
    """A result of iteration ``it``; by default the training loss halves each iteration
    (a trial that learns)."""
    r = {
        "training_iteration": it,
        "epoch": it,
        "velocity": velocity,
        "train_loss": extra.pop("train_loss", 1.0 / it),
    }
    if threshold is not None:
        r["config"] = {"threshold": threshold, "lr": 0.1}
    r.update(extra)
    return r


def fake_trial(tid: str, status: str = "PENDING") -> SimpleNamespace:
    return SimpleNamespace(trial_id=tid, status=status)


# ------------------------------------------------------------------ NeVeStopper
class TestNeVeStopper:
    def test_tune_keeps_it_as_a_stopper_with_stop_all(self):
        # Tune wraps a plain callable in a FunctionStopper whose stop_all is always False
        # (max_converged_trials would then be ignored); a Stopper it keeps as given
        from ray.tune import Experiment

        stopper = NeVeStopper(max_converged_trials=1)
        assert Experiment("neve", lambda config: None, stop=stopper).stopper is stopper

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
        assert s("a", res(2, 0.2, threshold=None)) is True  # default 0.5
        assert s("b", res(2, 0.2, threshold=0.1)) is False  # config 0.1
        assert s("c", {**res(2, 0.2, threshold=0.1), "threshold": 0.3}) is True  # result 0.3

    def test_threshold_from_a_flattened_result(self):
        # what schedulers get from Tune: {"config/threshold": ...}
        s = NeVeStopper()
        assert (
            s(
                "a",
                {
                    "training_iteration": 1,
                    "velocity": 0.5,
                    "train_loss": 1.0,
                    "config/threshold": 0.05,
                },
            )
            is False
        )
        assert (
            s(
                "a",
                {
                    "training_iteration": 2,
                    "velocity": 0.02,
                    "train_loss": 0.5,
                    "config/threshold": 0.05,
                },
            )
            is True
        )
        assert s.stopped_by("a") == "converged"

    def test_neve_stop_and_diverged(self):
        s = NeVeStopper()
        assert s("a", res(3, 0.5, neve_stop=True)) is True
        assert s.stopped_by("a") == "converged"
        assert s("b", res(2, None, diverged=True)) is True
        assert s("c", res(2, float("nan"))) is True
        assert (
            s("d", res(2, math.inf, neve_stop=False)) is True
        )  # a NaN/inf velocity is divergence, whatever neve_stop says
        assert s.stopped_by("b") == s.stopped_by("c") == s.stopped_by("d") == "diverged"
        assert (s.num_converged, s.num_diverged) == (1, 3)

    def test_a_reported_neve_stop_is_trusted(self):
        # the controller has min_epochs=3: velocity under the threshold at epochs 1-2 is not a stop
        s = NeVeStopper()
        assert s("a", res(1, 1e-6, neve_stop=False)) is False
        assert s("a", res(2, 1e-6, neve_stop=False)) is False
        assert s("a", res(3, 1e-6, neve_stop=True)) is True and s.stopped_by("a") == "converged"
        # and a controller's stop needs no threshold here, nor a velocity
        assert s("b", {"training_iteration": 4, "train_loss": 0.1, "neve_stop": True}) is True
        assert s("c", res(2, 0.5, threshold=None, neve_stop=False)) is False

    def test_stalled_stops_as_not_converged(self):
        s = NeVeStopper(max_converged_trials=1)
        assert s("a", res(4, 1e-6, neve_stop=False, stalled=True)) is True
        assert (
            s("b", res(4, 1e-6, stalled=np.bool_(True))) is True
        )  # no neve_stop: stalled still wins
        assert s.stopped_by("a") == s.stopped_by("b") == "stalled"
        assert (s.num_converged, s.num_stalled) == (0, 2) and s.stop_all() is False
        assert s("c", res(4, 0.5, stalled=False, neve_stop=False)) is False

    @pytest.mark.parametrize(
        "make",
        [
            float,
            np.float32,
            np.float64,
            lambda v: torch.tensor(v),
            lambda v: torch.tensor(v, dtype=torch.float16),
        ],
        ids=["python", "np.float32", "np.float64", "tensor", "tensor-fp16"],
    )
    def test_numpy_and_tensor_scalars(self, make):
        s = NeVeStopper()
        thr = {"threshold": make(0.01)}
        assert s("a", {**res(1, make(0.5), threshold=None), "config": thr}) is False
        assert s("a", {**res(2, make(0.005), threshold=None), "config": thr}) is True
        assert s("b", {**res(1, make(float("nan")))}) is True
        assert s("c", res(1, make(0.5), neve_stop=np.bool_(True))) is True
        assert s("d", res(1, make(0.5), neve_stop=torch.tensor(False))) is False
        assert (s.stopped_by("a"), s.stopped_by("b"), s.stopped_by("c")) == (
            "converged",
            "diverged",
            "converged",
        )

    def test_velocity_none_is_not_a_decision(self):
        assert NeVeStopper()("a", res(1, None)) is False

    def test_min_raw_epochs_applies_to_raw_velocity_only(self):
        s = NeVeStopper(min_raw_epochs=3)
        assert s("a", res(2, 1e-6)) is False
        assert s("a", res(3, 1e-6)) is True
        assert (
            NeVeStopper(min_raw_epochs=3)("b", res(1, 1e-6, neve_stop=True)) is True
        )  # the controller decided

    def test_repeated_final_result_does_not_count_twice(self):
        s = NeVeStopper(max_converged_trials=2)
        final = res(4, 0.001)
        assert s("a", res(1, 0.5)) is False
        assert s("a", final) is True
        assert s("a", dict(final, done=True)) is True  # Tune's duplicate of the last result
        assert s.num_converged == 1 and s.stop_all() is False
        assert s("b", res(1, 0.5)) is False and s("b", res(5, 0.001)) is True
        assert s.num_converged == 2 and s.stop_all() is True

    def test_a_later_stop_of_the_same_trial_is_counted_once(self):
        s = NeVeStopper()
        assert s("a", res(2, 0.001)) is True
        assert s("a", res(3, float("nan"))) is True  # a retried trial that then diverged
        assert (s.stopped_by("a"), s.num_converged, s.num_diverged) == ("diverged", 0, 1)

    def test_experiment_level_stop_is_off_by_default(self):
        s = NeVeStopper()
        for i in range(5):
            s(f"t{i}", res(1, 1e-5))
        assert s.stop_all() is False

    def test_pickle_round_trip_keeps_per_trial_state(self):
        s = NeVeStopper(max_converged_trials=2)
        s("a", res(1, 0.5))
        s("b", res(1, 0.5))
        s("b", res(2, 0.001))
        s2 = pickle.loads(pickle.dumps(s))
        assert s2.stopped_by("b") == "converged" and s2.stopped_by("a") is None
        assert s2("b", res(2, 0.001)) is True and s2.num_converged == 1
        assert s2("a", res(2, 0.001)) is True and s2.stop_all() is True

    def test_combined_with_ray_stoppers(self):
        s = CombinedStopper(NeVeStopper(), MaximumIterationStopper(max_iter=3))
        assert s("a", res(1, 0.5)) is False
        assert s("a", res(2, 0.001)) is True
        assert [s("b", res(i, 0.5)) for i in (1, 2, 3)] == [
            False,
            False,
            True,
        ]  # MaximumIterationStopper counts calls

    def test_user_trainable_with_only_velocity_is_told_to_report_its_loss(self):
        with pytest.raises(
            ValueError,
            match=(
                r"a result with a raw 'velocity' and no 'neve_stop' needs 'train_loss'"
                r".*reports \['velocity'\]"
            ),
        ):
            NeVeStopper()(
                "a", {"training_iteration": 1, "velocity": 0.02, "config": {"threshold": 0.05}}
            )
        with pytest.raises(ValueError, match=r"needs 'loss'.*reports \['train_loss', 'velocity'\]"):
            NeVeStopper(loss_metric="loss")(
                "a",
                {
                    "training_iteration": 1,
                    "velocity": 0.5,
                    "train_loss": 1.0,
                    "config": {"threshold": 0.05},
                },
            )

    def test_bare_result_is_ignored(self):
        assert NeVeStopper()("a", {"training_iteration": 0, "done": True, "config": {}}) is False

    def test_missing_velocity_is_a_clear_error(self):
        with pytest.raises(
            ValueError,
            match=(
                r"the trial's result has neither 'velocity' nor 'neve_stop'; "
                r"it reports \['train_loss'\]"
            ),
        ):
            NeVeStopper()(
                "a", {"training_iteration": 1, "train_loss": 0.3, "config": {"threshold": 0.1}}
            )
        with pytest.raises(
            ValueError,
            match=(
                r"has neither 'velocty' nor 'neve_stop'; "
                r"it reports \['epoch', 'train_loss', 'velocity'\]"
            ),
        ):
            NeVeStopper(metric="velocty")("a", res(1, 0.5))

    def test_missing_threshold_is_a_clear_error(self):
        with pytest.raises(ValueError, match="no velocity threshold for this trial"):
            NeVeStopper()("a", res(2, 0.5, threshold=None))
        # at the trial's first result, not only once the rule starts comparing (iteration 2)
        with pytest.raises(ValueError, match="no velocity threshold for this trial"):
            NeVeStopper()("b", res(1, 0.5, threshold=None))

    @pytest.mark.parametrize("bad", [0, -1e-3, float("nan"), float("inf")])
    def test_threshold_must_be_positive(self, bad):
        with pytest.raises(ValueError, match="threshold must be a finite number > 0"):
            NeVeStopper(threshold=bad)
        with pytest.raises(ValueError, match="the trial's 'threshold' must be a finite number > 0"):
            NeVeStopper()("a", res(2, 0.5, threshold=bad))

    def test_bad_arguments(self):
        with pytest.raises(TypeError, match="threshold must be a finite number > 0, got '0.1'"):
            NeVeStopper(threshold="0.1")
        with pytest.raises(TypeError, match="metric must be a non-empty str"):
            NeVeStopper(metric="")
        with pytest.raises(ValueError, match="min_raw_epochs must be an int >= 0, got -1"):
            NeVeStopper(min_raw_epochs=-1)
        with pytest.raises(TypeError, match="min_raw_epochs must be an int >= 0, got True"):
            NeVeStopper(min_raw_epochs=True)
        with pytest.raises(
            ValueError, match="max_converged_trials must be an int >= 1 or None, got 0"
        ):
            NeVeStopper(max_converged_trials=0)
        assert (
            NeVeStopper(min_raw_epochs=np.int64(2), max_converged_trials=torch.tensor(3)).stop_all()
            is False
        )

    def test_non_numeric_values(self):
        with pytest.raises(
            TypeError,
            match=(
                r"NeVeStopper: metric 'velocity' must be a number "
                r"\(Python, NumPy or 0-d tensor\), got 'fast'"
            ),
        ):
            NeVeStopper()("a", res(1, "fast"))
        with pytest.raises(
            TypeError, match=r"NeVeStopper: 'neve_stop' must be a bool \(or 0/1\), got 'yes'"
        ):
            NeVeStopper()("a", res(1, 0.5, neve_stop="yes"))
        with pytest.raises(
            TypeError, match=r"NeVeStopper: 'stalled' must be a bool \(or 0/1\), got 0.5"
        ):
            NeVeStopper()("a", res(1, 0.5, stalled=0.5))

    def test_flags_logged_as_floats_by_lightning(self):
        # Lightning's log() turns bools into float tensors: 1.0 / 0.0 are flags
        assert NeVeStopper()("a", res(1, 0.5, neve_stop=1.0, diverged=0.0)) is True
        assert NeVeStopper()("b", res(1, 0.5, neve_stop=torch.tensor(0.0), diverged=0.0)) is False


# ------------------------------------------------------------------ NeVeASHAScheduler
def go(it: int, train_loss: float, **extra) -> dict:
    """A result the trial's controller says to go on with (neve_stop false)."""
    return res(it, 0.5, train_loss=train_loss, neve_stop=False, **extra)


def _first_rung_as_ours(kw: dict) -> dict:
    """Ray's ASHA arguments as NeVeASHAScheduler's: ``grace_period`` is ``min_resource``,
    ``metric`` the ``rung_signal``."""
    ours = {k: v for k, v in kw.items() if k not in ("grace_period", "metric")}
    return {
        **ours,
        "min_resource": kw["grace_period"],
        "rung_signal": kw.get("metric", "train_loss"),
    }


class TestNeVeASHAScheduler:
    def sched(self, **kw) -> NeVeASHAScheduler:
        kw.setdefault("max_t", 16)
        kw.setdefault("min_resource", 1)
        kw.setdefault("reduction_factor", 2)
        return NeVeASHAScheduler(**kw)

    def test_is_a_ray_trial_scheduler(self):
        s = self.sched()
        assert isinstance(s, FIFOScheduler) and not isinstance(s, AsyncHyperBandScheduler)
        assert (s.metric, s.mode) == ("train_loss", "min")
        assert s.set_search_properties("train_loss", "min") is True
        assert s.set_search_properties(None, None) is True
        assert s.set_search_properties("val_loss", "min") is False
        assert s.set_search_properties("train_loss", "max") is False

    def test_a_result_without_what_the_rungs_need_is_refused_not_left_unranked(self):
        """A trainable reporting its loss as "loss", or a time_attr it never reports: the
        trial would never meet a rung. Tune's own keys alone (a bare result) rank nothing."""
        s = self.sched()
        trial = SimpleNamespace(trial_id="a", status="PENDING")
        s.on_trial_add(None, trial)
        epoch = {"training_iteration": 1, "velocity": 0.2, "neve_stop": False}
        with pytest.raises(ValueError, match=r"no 'train_loss', which its rungs need.*'loss'"):
            s.on_trial_result(None, trial, {**epoch, "loss": 0.5})
        by_epoch = self.sched(time_attr="epoch")
        by_epoch.on_trial_add(None, trial)
        with pytest.raises(ValueError, match="no 'epoch', which its rungs need"):
            by_epoch.on_trial_result(None, trial, {**epoch, "train_loss": 0.5})
        assert s.on_trial_result(None, trial, {"training_iteration": 1, "done": False}) == (
            "CONTINUE"
        )

    @staticmethod
    def rungs(scheduler) -> list[str]:
        """The bracket lines of ``debug_string()``: every rung's milestone and cutoff, in
        Ray's format (public output, no private attribute)."""
        return [
            line for line in scheduler.debug_string().splitlines() if line.startswith("Bracket:")
        ]

    def test_same_rungs_as_rays_asha(self):
        for kw in (
            {"max_t": 16, "grace_period": 1, "reduction_factor": 2},
            {"max_t": 60, "grace_period": 1, "reduction_factor": 4},
            {"max_t": 100, "grace_period": 3, "reduction_factor": 3, "brackets": 3},
            {"max_t": 81, "grace_period": 1, "reduction_factor": 3},
        ):
            ours = self.rungs(NeVeASHAScheduler(**_first_rung_as_ours(kw)))
            assert ours == self.rungs(AsyncHyperBandScheduler(metric="x", mode="min", **kw)), kw
            assert len(ours) == kw.get("brackets", 1) and ours[0].startswith("Bracket: Iter ")

    def test_cutoff_is_numpys_nanpercentile(self):
        rng = random.Random(0)
        for rf in (2, 3, 4, 1.5, 2.7):
            q = ((1 - 1 / rf) * 100) / 100
            for n in (1, 2, 3, 5, 17, 100):
                rung = Rung(1)
                values = [
                    rng.choice([rng.gauss(0, 1), float(rng.randint(-3, 3)), math.nan])
                    for _ in range(n)
                ]
                for i, v in enumerate(values):
                    rung.add(str(i), v)
                expected = (
                    np.nanpercentile(values, (1 - 1 / rf) * 100)
                    if not all(map(math.isnan, values))
                    else math.nan
                )
                got = rung.cutoff(q)
                assert (math.isnan(got) and math.isnan(expected)) or got == expected, (
                    rf,
                    n,
                    values,
                )
        assert Rung(1).cutoff(0.5) is None

    @pytest.mark.parametrize(
        "kw",
        [
            {"reduction_factor": 2},
            {"reduction_factor": 3, "max_t": 27},
            {"reduction_factor": 2, "stop_last_trials": False},
            {"reduction_factor": 4, "metric": "velocity"},
        ],
    )
    def test_same_decisions_as_rays_asha(self, kw):
        # with no velocity decision (neve_stop false), the scheduler is ASHA: on a random
        # asynchronous stream it takes Ray's decision for every result
        kw = {"max_t": 16, "grace_period": 1, "metric": "train_loss", **kw}
        ours = NeVeASHAScheduler(**_first_rung_as_ours(kw))
        ray_asha = AsyncHyperBandScheduler(**{"mode": "min", **kw})
        rng = random.Random(1)
        trials = [fake_trial(f"t{i}") for i in range(60)]
        for t in trials:
            ours.on_trial_add(None, t)
            ray_asha.on_trial_add(None, t)
        epoch = {t.trial_id: 0 for t in trials}
        live = list(trials)
        decisions = {CONTINUE: 0, STOP: 0}
        while live:
            t = rng.choice(live)
            epoch[t.trial_id] += 1
            value = round(rng.uniform(0, 2), 1)  # rounded: ties happen
            r = go(epoch[t.trial_id], value)
            r["velocity"] = value if kw["metric"] == "velocity" else 0.5
            a, b = (
                ours.on_trial_result(None, t, dict(r)),
                ray_asha.on_trial_result(None, t, dict(r)),
            )
            assert a == b, (t.trial_id, r)
            decisions[a] += 1
            if a == STOP or epoch[t.trial_id] >= kw["max_t"]:
                ours.on_trial_complete(None, t, dict(r))
                ray_asha.on_trial_complete(None, t, dict(r))
                live.remove(t)
        assert decisions[CONTINUE] > 100 and decisions[STOP] > 20, decisions
        assert self.rungs(ours) == self.rungs(ray_asha)  # the same cutoff at every rung
        assert "None" not in self.rungs(ours)[0]

    def test_prunes_on_training_loss_at_rungs(self):
        s = self.sched()
        trials = [fake_trial(f"t{i}") for i in range(4)]
        for t in trials:
            s.on_trial_add(None, t)
        # rung at t=1: the lower loss the better
        assert s.on_trial_result(None, trials[0], go(1, 1.0)) == CONTINUE
        assert s.on_trial_result(None, trials[1], go(1, 0.5)) == CONTINUE
        assert s.on_trial_result(None, trials[2], go(1, 2.0)) == STOP
        assert s.on_trial_result(None, trials[3], go(1, np.float32(0.25))) == CONTINUE
        assert s.outcome("t2") == "pruned" and s.num_pruned == 1

    def test_velocity_decides_convergence_before_rungs(self):
        s = self.sched()
        a, b = fake_trial("a"), fake_trial("b")
        s.on_trial_add(None, a)
        s.on_trial_add(None, b)
        assert s.on_trial_result(None, a, res(1, 0.5, train_loss=0.1)) == CONTINUE
        assert s.on_trial_result(None, b, res(1, 0.5, train_loss=0.05)) == CONTINUE
        assert s.on_trial_result(None, a, res(2, 0.5, train_loss=0.01)) == CONTINUE
        # b would lose at rung 2, but its velocity is under its threshold and its loss fell:
        # converged
        assert s.on_trial_result(None, b, res(2, 0.001, threshold=0.01, train_loss=0.04)) == STOP
        assert s.outcome("b") == "converged" and s.num_pruned == 0
        assert s.rung_values()[-2][1]["b"] == 0.04  # recorded at rung 2

    def test_a_raw_velocity_stop_without_learning_is_stalled(self):
        s = self.sched()
        a = fake_trial("a")
        s.on_trial_add(None, a)
        assert (
            s.on_trial_result(None, a, res(1, 1e-6, train_loss=0.73)) == CONTINUE
        )  # too early to judge
        assert s.on_trial_result(None, a, res(2, 1e-6, train_loss=0.70)) == STOP
        assert s.outcome("a") == "stalled" and all(
            "a" not in rec for _, rec in s.rung_values()[:-1]
        )

    def test_a_reported_neve_stop_is_trusted(self):
        s = self.sched()
        a = fake_trial("a")
        s.on_trial_add(None, a)
        assert (
            s.on_trial_result(None, a, res(1, 1e-6, train_loss=0.3, neve_stop=False)) == CONTINUE
        )  # min_epochs not reached
        assert (
            s.on_trial_result(None, a, res(2, 1e-6, threshold=None, train_loss=0.2, neve_stop=True))
            == STOP
        )
        assert s.outcome("a") == "converged"

    def test_neve_stop_converges_and_diverged_stops_unrecorded(self):
        s = self.sched()
        a, b = fake_trial("a"), fake_trial("b")
        s.on_trial_add(None, a)
        s.on_trial_add(None, b)
        assert s.on_trial_result(None, a, res(2, 0.5, neve_stop=True)) == STOP
        assert (
            s.on_trial_result(None, b, res(2, None, diverged=True, train_loss=float("nan"))) == STOP
        )
        assert (s.outcome("a"), s.outcome("b")) == ("converged", "diverged")
        assert all("b" not in rec for _, rec in s.rung_values())
        s.on_trial_complete(None, b, res(2, None, diverged=True, train_loss=float("nan")))
        assert all("b" not in rec for _, rec in s.rung_values())
        assert "converged=1 diverged=1 stalled=0" in s.debug_string()

    def test_stalled_stops_unrecorded_and_not_converged(self):
        s = self.sched()
        a, b = fake_trial("a"), fake_trial("b")
        s.on_trial_add(None, a)
        s.on_trial_add(None, b)
        assert s.on_trial_result(None, a, go(1, 2.3)) == CONTINUE
        assert (
            s.on_trial_result(None, a, res(2, 1e-6, train_loss=2.3, neve_stop=False, stalled=True))
            == STOP
        )
        s.on_trial_complete(None, a, res(2, 1e-6, train_loss=2.3, neve_stop=False, stalled=True))
        # b stalled and was stopped by a NeVeStopper: the scheduler only sees it complete
        s.on_trial_complete(None, b, res(2, 1e-6, train_loss=2.2, stalled=torch.tensor(True)))
        assert (s.outcome("a"), s.outcome("b")) == ("stalled", "stalled")
        assert s.rung_values()[-1][1] == {"a": 2.3}  # a's rung-1 value, from before it stalled
        assert all(not rec for _, rec in s.rung_values()[:-1])
        assert "converged=0 diverged=0 stalled=2" in s.debug_string()

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
        assert s.rung_values()[-2][1] == {"a": 0.6}  # rung 2
        assert s.rung_values()[-1][1] == {"a": 0.8, "b": 0.7}  # rung 1

    def test_stops_at_max_t(self):
        s = self.sched(max_t=4)
        t = fake_trial("a")
        s.on_trial_add(None, t)
        assert s.on_trial_result(None, t, go(4, 0.5)) == STOP
        assert s.outcome("a") == "max_t"

    def test_missing_velocity_is_a_clear_error(self):
        s = self.sched(velocity_metric="vel")
        t = fake_trial("a")
        s.on_trial_add(None, t)
        with pytest.raises(
            ValueError,
            match="NeVeASHAScheduler: the trial's result has neither 'vel' nor 'neve_stop'",
        ):
            s.on_trial_result(None, t, res(1, 0.5))

    def test_pickle_round_trip(self):
        s = self.sched()
        t = fake_trial("a")
        s.on_trial_add(None, t)
        s.on_trial_result(None, t, go(1, 0.3))
        s2 = pickle.loads(pickle.dumps(s))
        assert s2.rung_values()[-1][1] == {"a": 0.3}
        assert s2.on_trial_result(None, t, go(2, 0.2)) == CONTINUE

    def _run_three(self, s: NeVeASHAScheduler) -> list:
        trials = [fake_trial(f"t{i}") for i in range(3)]
        for t in trials:
            s.on_trial_add(None, t)
        s.on_trial_result(None, trials[0], go(1, 0.5))
        s.on_trial_result(None, trials[1], res(1, 0.5, train_loss=0.45))
        s.on_trial_result(None, trials[1], res(2, 0.001, train_loss=0.4))  # converged
        s.on_trial_complete(None, trials[1], res(2, 0.001, train_loss=0.4))
        s.on_trial_result(None, trials[2], go(1, 0.9))  # pruned
        s.on_trial_complete(None, trials[2], go(1, 0.9))
        return trials

    def test_state_survives_a_restore_through_its_callback(self):
        s = self.sched()
        cb = s.callback()
        assert isinstance(cb, NeVeASHAStateCallback) and cb.scheduler is s
        trials = self._run_three(s)
        # what the Tuner does: scheduler and callbacks pickled together in tuner.pkl, the
        # callback's get_state in the experiment checkpoint, set_state before the trials
        # are added back (finished ones as TERMINATED)
        saved = pickle.dumps(cb.get_state())
        tuner_state = pickle.loads(pickle.dumps({"scheduler": s, "callbacks": [cb]}))
        assert tuner_state["callbacks"][0].scheduler is tuner_state["scheduler"]
        fresh = self.sched()  # tuner.pkl holds the scheduler as it was before fit()
        fresh_cb = fresh.callback()
        fresh_cb.set_state(pickle.loads(saved))
        for t in trials:
            fresh.on_trial_add(
                None,
                fake_trial(t.trial_id, status="TERMINATED" if t is not trials[0] else "PENDING"),
            )
        assert fresh.state_dict() == s.state_dict()
        assert (fresh.outcome("t1"), fresh.outcome("t2"), fresh.num_pruned) == (
            "converged",
            "pruned",
            1,
        )
        assert fresh.on_trial_result(None, trials[0], go(2, 0.3)) == CONTINUE
        assert fresh.rung_values() == s.rung_values()[:-2] + [
            (2, {"t1": 0.4, "t0": 0.3}),
            s.rung_values()[-1],
        ]

    def test_restore_without_state_warns_and_starts_fresh(self, caplog):
        s = self.sched()
        with caplog.at_level(logging.WARNING, logger="neve_tune.ray._scheduler"):
            s.on_trial_add(None, fake_trial("a", status="TERMINATED"))
            s.on_trial_add(None, fake_trial("b", status="TERMINATED"))
        assert [r.getMessage() for r in caplog.records] == [
            "NeVeASHAScheduler: a restored experiment, but no rung state was restored: "
            "its rungs start empty. "
            "Pass RunConfig(callbacks=[scheduler.callback()]) to keep them across Tuner.restore."
        ]
        assert all(not rec for _, rec in s.rung_values())

    def test_persist_off_saves_nothing(self):
        s = self.sched(persist=False)
        self._run_three(s)
        assert s.callback().get_state() is None

    def test_state_of_other_rungs_is_rejected(self):
        s = self.sched(max_t=16)
        self._run_three(s)
        other = self.sched(max_t=64)
        with pytest.raises(ValueError, match="state has other rungs than this scheduler"):
            other.callback().set_state(s.callback().get_state())
        with pytest.raises(ValueError, match="state version 7 is not supported"):
            other.load_state_dict({**s.state_dict(), "version": 7})

    def test_bad_arguments(self):
        with pytest.raises(ValueError, match=r"rung_signal must be one of .*, got 'metric'"):
            NeVeASHAScheduler(rung_signal="metric")
        with pytest.raises(ValueError, match="min_resource must be <= max_t=4, got 5"):
            NeVeASHAScheduler(max_t=4, min_resource=5)
        with pytest.raises(ValueError, match="reduction_factor must be a finite number > 1"):
            NeVeASHAScheduler(reduction_factor=1)
        with pytest.raises(TypeError, match="max_t must be an int >= 1, got 10.5"):
            NeVeASHAScheduler(max_t=10.5)
        with pytest.raises(TypeError, match="brackets must be an int >= 1, got True"):
            NeVeASHAScheduler(brackets=True)
        with pytest.raises(ValueError, match="threshold must be a finite number > 0"):
            NeVeASHAScheduler(threshold=0.0)
        with pytest.raises(TypeError, match="velocity_metric must be a non-empty str"):
            NeVeASHAScheduler(velocity_metric="")
        with pytest.raises(TypeError, match="callback needs a NeVeASHAScheduler"):
            NeVeASHAStateCallback(AsyncHyperBandScheduler())


# ---------------------------------------------------------- space, resources, trainable args
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
    assert isinstance(space["batch_size"], Categorical) and space["batch_size"].categories == [
        32,
        64,
    ]
    assert isinstance(space["width"], Integer) and (space["width"].lower, space["width"].upper) == (
        8,
        65,
    )
    assert (space["depth"].lower, space["depth"].upper) == (1, 4)  # both ends included
    assert space["seed"] == 7
    samples = [space["depth"].sample() for _ in range(200)]
    assert set(samples) == {1, 2, 3}


@pytest.mark.parametrize(
    "seed, error", [("1", TypeError), (1.7, TypeError), (True, TypeError), (None, None)]
)
def test_to_ray_space_refuses_a_seed_that_is_no_int(seed, error):
    if error is None:
        assert "seed" not in to_ray_space("digits", seed=seed)
        assert to_ray_space("digits", seed=np.int64(3))["seed"] == 3
        return
    with pytest.raises(error, match="seed must be an int"):
        to_ray_space("digits", seed=seed)


def test_run_search_uses_a_given_stopper_and_refuses_what_is_none_before_ray():
    from neve_tune.ray._search import _stopper, check_search_args

    study = load_study("digits")
    given = CombinedStopper(NeVeStopper(), MaximumIterationStopper(5))
    assert _stopper("neve", given) is given  # not swapped for a fresh NeVeStopper
    assert isinstance(_stopper("neve", True), NeVeStopper) and _stopper("neve", False) is None
    assert _stopper("asha", True) is None and _stopper("asha", given) is given
    for bad in ("yes", 1, NeVeStopper):  # a truthy value, the class itself
        with pytest.raises(TypeError, match="stopper must be True"):
            check_search_args(study, stopper=bad)


@pytest.mark.parametrize(
    "kwargs, error",
    [
        ({"device": "cdua"}, "device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got 'cdua'"),
        ({"reuse_actors": "no"}, "reuse_actors must be a bool"),
    ],
)
def test_run_search_refuses_a_bad_device_or_reuse_actors_before_ray_starts(
    monkeypatch, kwargs, error
):
    import neve_tune.ray._search as search

    def started(*args, **kw):
        raise AssertionError("Ray started before the arguments were checked")

    monkeypatch.setattr(search.ray, "is_initialized", lambda: False)
    monkeypatch.setattr(search.ray, "init", started)
    with pytest.raises((TypeError, ValueError), match=error):
        search.run_search("digits", **kwargs)
    with pytest.raises(ValueError, match="device must be"):
        neve_trainable("digits", device="cdua")  # else every trial fails on its node


def test_run_search_refuses_a_rung_signal_no_scheduler_of_it_reads():
    from neve_tune.ray._search import check_search_args

    study = load_study("digits")
    for kw in ({"method": "asha"}, {"method": "neve", "scheduler": "fifo"}):
        with pytest.raises(ValueError, match="rung_signal ranks the NeVe scheduler's rungs"):
            check_search_args(study, rung_signal="velocity", **kw)
        check_search_args(study, **kw)  # the study's own signal, unread there, is no error
    check_search_args(study, method="neve", rung_signal="velocity")


def test_reported_metrics_use_the_design_names():
    names = reported_metrics("neve")
    for k in (
        "epoch",
        "velocity",
        "velocity_change",
        "train_loss",
        "train_acc",
        "lr",
        "neve_stop",
        "diverged",
        "epoch_time_s",
        "train_samples",
        "probe_samples",
        "eval_samples",
        "test_acc",
        "objective",
        "stopped_by",
    ):
        assert k in names
    assert "val_loss" not in names and "val_loss" in reported_metrics("asha")


def test_check_resources():
    assert check_resources({"cpu": 2, "gpu": 0.25}) == {"cpu": 2.0, "gpu": 0.25}
    assert check_resources({"GPU": 1}) == {"gpu": 1.0, "cpu": 1.0}
    with pytest.raises(
        ValueError,
        match=r"resources\['gpu'\] must be below 1 \(a shared GPU\) or a whole number, got 1.5",
    ):
        check_resources({"cpu": 1, "gpu": 1.5})
    with pytest.raises(
        ValueError, match=r"resources\['cpu'\] must be a finite number >= 0, got -1.0"
    ):
        check_resources({"cpu": -1})
    with pytest.raises(ValueError, match="must ask for some CPU or GPU"):
        check_resources({"cpu": 0, "gpu": 0})
    with pytest.raises(TypeError, match="resources must be a dict"):
        check_resources([1, 0])


def test_neve_trainable_rejects_bad_arguments():
    study = load_study("digits")
    with pytest.raises(
        ValueError,
        match=(
            r"method must be one of \('neve', 'asha', 'asha_es'\), got 'retrain' "
            r"\('retrain' is not a search method\)"
        ),
    ):
        neve_trainable(study, method="retrain")
    with pytest.raises(ValueError, match=r"study 'digits': resources\['gpu'\] must be below 1"):
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


# ------------------------------------------------------------------ a real Tuner.restore
def _synthetic_trainable(config: dict) -> None:
    """Eight epochs of made-up metrics, a checkpoint each epoch; ends itself on neve_stop."""
    import json
    import os
    import tempfile
    import time

    from ray import tune

    start = 0
    checkpoint = tune.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as d, open(os.path.join(d, "e.json")) as f:
            start = json.load(f)["epoch"]
    for epoch in range(start + 1, 9):
        time.sleep(0.3)
        velocity = 0.5 * 0.7**epoch
        metrics = {
            "epoch": epoch,
            "train_loss": config["loss"] * 0.9**epoch,
            "velocity": velocity,
            "neve_stop": bool(velocity < config["threshold"]),
            "diverged": False,
            "stalled": False,
        }
        with tempfile.TemporaryDirectory() as d:
            with open(os.path.join(d, "e.json"), "w") as f:
                json.dump({"epoch": epoch}, f)
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))
        if metrics["neve_stop"]:
            return


class _InterruptOnce(Callback):
    """Fails the driver once, when two trials have finished and another one has reported."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def on_step_begin(self, iteration, trials, **info):
        if os.path.exists(self.marker):
            return
        done = [t.trial_id for t in trials if t.status == "TERMINATED"]
        running = [
            t
            for t in trials
            if t.status == "RUNNING" and (t.last_result or {}).get("training_iteration", 0) >= 1
        ]
        if len(done) >= 2 and running:
            Path(self.marker).write_text(",".join(done))
            raise RuntimeError("injected driver interrupt")


class _DumpScheduler(Callback):
    """Writes the scheduler's state when the experiment ends (``before``, then ``after``)."""

    def __init__(self, scheduler: NeVeASHAScheduler, folder: str) -> None:
        self.scheduler, self.folder = scheduler, folder

    def on_experiment_end(self, trials, **info):
        name = "after" if os.path.exists(os.path.join(self.folder, "before")) else "before"
        Path(self.folder, name).write_bytes(pickle.dumps(self.scheduler.state_dict()))


@pytest.mark.slow
@pytest.mark.ray
def test_rungs_survive_a_real_tuner_restore(tmp_path, monkeypatch):
    """The public route the scheduler's state takes (checked on Ray 2.60): Tune saves
    ``Callback.get_state`` with each experiment snapshot, pickles scheduler and callbacks
    together in ``tuner.pkl``, and calls ``set_state`` before adding the restored trials
    back. Without ``sched.callback()`` the last assertion fails: finished trials are
    not run again, so only the restored state knows them."""
    import ray
    import ray.cloudpickle
    from ray import tune

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    monkeypatch.setenv("TUNE_GLOBAL_CHECKPOINT_S", "0")  # an experiment snapshot every step
    if ray.is_initialized():
        ray.shutdown()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        sched = NeVeASHAScheduler(max_t=8, min_resource=1, reduction_factor=2)
        space = {
            "loss": tune.grid_search([1.0, 0.5, 2.0]),
            "threshold": tune.grid_search([0.1, 0.03]),
        }
        marker = str(tmp_path / "interrupted")
        tuner = tune.Tuner(
            _synthetic_trainable,
            param_space=space,
            tune_config=tune.TuneConfig(scheduler=sched, max_concurrent_trials=2),
            run_config=tune.RunConfig(
                name="exp",
                storage_path=str(tmp_path),
                stop=NeVeStopper(),
                verbose=0,
                callbacks=[
                    sched.callback(),
                    _InterruptOnce(marker),
                    _DumpScheduler(sched, str(tmp_path)),
                ],
            ),
        )
        with pytest.raises(Exception, match="injected driver interrupt"):
            tuner.fit()
        finished_before = set(Path(marker).read_text().split(","))
        before = pickle.loads((tmp_path / "before").read_bytes())
        assert finished_before <= set(before["outcome"])

        grid = tune.Tuner.restore(
            str(tmp_path / "exp"), trainable=_synthetic_trainable, resume_unfinished=True
        ).fit()
        assert len(grid) == 6 and not grid.errors
        after = pickle.loads((tmp_path / "after").read_bytes())
    finally:
        ray.shutdown()
    ids = {r.metrics["trial_id"] for r in grid}
    # the trials that had finished are not run again: only the restored state knows them
    assert set(after["outcome"]) == ids
    for tid in finished_before:
        assert after["outcome"][tid] == before["outcome"][tid]
        for (_, rec_before), (_, rec_after) in zip(before["rungs"][0], after["rungs"][0]):
            assert rec_after.get(tid) == rec_before.get(tid)
    assert set(after["outcome"].values()) <= {"converged", "pruned", "completed", "max_t"}
