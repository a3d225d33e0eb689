"""The Ray door records the selection subset where the Optuna door does: at the scheduler's
rung epochs and the trial's last, not every epoch (the consensus reads nothing else)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

pytest.importorskip("ray.tune")

import ray  # noqa: E402
from ray import tune  # noqa: E402
from ray.tune.schedulers import TrialScheduler  # noqa: E402

import neve_tune.ray._search as search_module  # noqa: E402
from neve_tune import load_study  # noqa: E402
from neve_tune.ray import NeVeASHAScheduler, neve_trainable, run_search  # noqa: E402
from neve_tune.ray._trainable import _check_subset_epochs  # noqa: E402


def test_rung_epochs_are_the_ceilings_of_every_brackets_milestones_and_max_t() -> None:
    assert NeVeASHAScheduler(max_t=60, reduction_factor=4).rung_epochs() == (1, 4, 16, 60)
    # Ray's milestones 1, 3.5, 12.25, 42.875: a result first meets each at its ceiling
    rf = NeVeASHAScheduler(max_t=60, reduction_factor=3.5)
    assert rf.rung_epochs() == (1, 4, 13, 43, 60)
    two = NeVeASHAScheduler(max_t=60, min_resource=2, reduction_factor=2, brackets=2)
    assert two.rung_epochs() == (2, 4, 8, 16, 32, 60)
    # trials go on past max_t: nothing is read there
    on = NeVeASHAScheduler(max_t=60, reduction_factor=4, stop_last_trials=False)
    assert on.rung_epochs() == (1, 4, 16)
    assert NeVeASHAScheduler(max_t=16, reduction_factor=4).rung_epochs() == (1, 4, 16)


@pytest.mark.parametrize(
    ("signal", "stop_last", "expected"),
    [
        ("consensus", True, (1, 4, 16, 60)),
        ("auto", True, (1, 4, 16, 60)),
        ("train_loss", True, (60,)),
        ("velocity", True, (60,)),
        ("consensus", False, (1, 4, 16)),
        # trials go on past max_t: no result there reads as finished, so nothing is owed
        ("train_loss", False, ()),
    ],
)
def test_subset_epochs_are_the_rungs_only_where_the_signal_ranks_on_the_subset(
    signal: str, stop_last: bool, expected: tuple[int, ...]
) -> None:
    sched = NeVeASHAScheduler(
        rung_signal=signal, max_t=60, reduction_factor=4, stop_last_trials=stop_last
    )
    assert sched.subset_epochs() == expected


def _result(epoch: int, **extra: Any) -> dict[str, Any]:
    r = {"training_iteration": epoch, "velocity": 0.5, "train_loss": 1 / epoch}
    return {**r, "neve_stop": False, **extra}


def test_auto_counts_the_fit_of_a_trial_stopped_at_max_t() -> None:
    """max_t below the trials' own budget: the scheduler ends them at max_t, and that
    result's subset_fit is what "auto" estimates the noise from (g, stopped by the
    memorisation guard, fits 99%: not noisy alone; with a's 50% the median says 25%)."""
    s = NeVeASHAScheduler(rung_signal="auto", max_t=10, reduction_factor=4)
    guarded = type("T", (), {"trial_id": "g", "status": "PENDING"})()
    s.on_trial_add(None, guarded)
    end = {"subset_pred": "0123", "subset_fit": 0.99, "stopped_by": "prediction_changes"}
    s.on_trial_complete(None, guarded, _result(1, **end))
    assert not s._votes.noisy()
    trial = type("T", (), {"trial_id": "a", "status": "PENDING"})()
    s.on_trial_add(None, trial)
    for epoch in range(1, 11):
        subset = {"subset_pred": "0123", "subset_fit": 0.5}  # what the trainable records
        last = _result(epoch, **(subset if epoch in s.rung_epochs() else {}))
        action = s.on_trial_result(None, trial, last)
    s.on_trial_complete(None, trial, last)
    assert (action, s.outcome("a")) == ("STOP", "max_t")
    assert s._votes.noisy()  # with a's fit of 0.5 the labels look noisy


def test_a_rung_passed_while_the_state_was_lost_is_passed_over() -> None:
    """An experiment restored without its rung state: a trial resumed at epoch 7 reported
    the subset at 4, which this scheduler never saw; it is decided at the next rung."""
    s = NeVeASHAScheduler(rung_signal="consensus", max_t=64, reduction_factor=4)
    for tid in ("a", "b"):
        s.on_trial_add(None, type("T", (), {"trial_id": tid, "status": "PENDING"})())
    resumed = type("T", (), {"trial_id": "a", "status": "RUNNING"})()
    for epoch in range(7, 16):
        assert s.on_trial_result(None, resumed, _result(epoch)) == TrialScheduler.CONTINUE
    fresh = type("T", (), {"trial_id": "b", "status": "RUNNING"})()
    with pytest.raises(ValueError, match="needs each result's 'subset_pred'"):
        s.on_trial_result(None, fresh, _result(1))  # a rung met here: still owed
    assert s.on_trial_result(None, resumed, _result(16, subset_pred="0123")) == "CONTINUE"
    assert s.on_trial_result(None, resumed, _result(17)) == "CONTINUE"  # 4 and 1 passed over
    rungs = dict(s.state_dict()["votes"]["rungs"][0])
    assert {m: sorted(p) for m, p in rungs.items()} == {64: [], 16: ["a"], 4: [], 1: []}


def test_the_consensus_reads_predictions_only_where_a_rung_is_met() -> None:
    s = NeVeASHAScheduler(rung_signal="consensus", max_t=16, reduction_factor=4)
    trial = type("T", (), {"trial_id": "a", "status": "PENDING"})()
    s.on_trial_add(None, trial)

    assert s.on_trial_result(None, trial, _result(1, subset_pred="0123")) == "CONTINUE"
    for epoch in (2, 3):  # between rungs: no predictions needed, none read
        assert s.on_trial_result(None, trial, _result(epoch)) == TrialScheduler.CONTINUE
    with pytest.raises(ValueError, match="needs each result's 'subset_pred'"):
        s.on_trial_result(None, trial, _result(4))  # the rung at 4 cannot be decided without


@pytest.mark.parametrize(
    "bad, error",
    [("1,4", TypeError), (5, TypeError), ([0, 4], ValueError), ([1.5], TypeError)],
)
def test_bad_subset_epochs_name_the_parameter(bad: Any, error: type) -> None:
    with pytest.raises(error, match="subset_epochs"):
        neve_trainable("digits", subset_epochs=bad)


def test_numpy_epochs_are_accepted() -> None:
    assert _check_subset_epochs(np.array([4, 1, 4], dtype=np.int64)) == (1, 4)
    neve_trainable("digits", subset_epochs=np.array([4, 1, 4], dtype=np.int64))


def test_run_search_passes_the_schedulers_rung_epochs(monkeypatch) -> None:
    """Ray is not started: the trainable's arguments are what is checked."""
    made: list[Any] = []

    def trainable(study: Any, **kw: Any) -> Any:
        made.append(kw["subset_epochs"])
        return neve_trainable(study, **kw)

    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    monkeypatch.setattr(ray, "nodes", lambda: [{"Alive": True, "Resources": {"CPU": 2.0}}])
    monkeypatch.setattr(search_module, "neve_trainable", trainable)
    monkeypatch.setattr(search_module, "_tuner_api", lambda *a, **k: None)
    run_search("digits", num_samples=1)
    run_search("digits", num_samples=1, reduction_factor=8)
    run_search("digits", num_samples=1, method="asha")  # Ray's own ASHA: no subset at all
    run_search("digits", num_samples=1, rung_signal="train_loss")  # rungs read no predictions
    # digits: max_epochs=60, max_t; a trial's own last epoch records them in every case
    assert made == [(1, 4, 16, 60), (1, 8, 60), None, (60,)]


@pytest.mark.ray
def test_a_real_trial_reports_the_subset_at_its_rung_epochs_and_last(tmp_path) -> None:
    if ray.is_initialized():
        ray.shutdown()
    ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        study = load_study("digits").replace(max_epochs=4, selection_subset=40)
        grid = tune.Tuner(
            neve_trainable(study, subset_epochs=(2,)),
            param_space={"lr": 0.05, "threshold": 1e-9, "batch_size": 128},
            run_config=tune.RunConfig(storage_path=str(tmp_path), verbose=0),
        ).fit()
    finally:
        ray.shutdown()
    (result,) = grid
    frame = result.metrics_dataframe.sort_values("epoch")
    has = {
        int(e): isinstance(p, str) and len(p) == 40 for e, p in zip(frame.epoch, frame.subset_pred)
    }
    assert has == {1: False, 2: True, 3: False, 4: True}
    assert result.metrics["stopped_by"] == "max_epochs"
