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


def test_rung_epochs_are_the_ceilings_of_every_brackets_milestones() -> None:
    assert NeVeASHAScheduler(max_t=60, reduction_factor=4).rung_epochs() == (1, 4, 16)
    # Ray's milestones 1, 3.5, 12.25, 42.875: a result first meets each at its ceiling
    assert NeVeASHAScheduler(max_t=60, reduction_factor=3.5).rung_epochs() == (1, 4, 13, 43)
    two = NeVeASHAScheduler(max_t=60, min_resource=2, reduction_factor=2, brackets=2)
    assert two.rung_epochs() == (2, 4, 8, 16, 32)


def test_the_consensus_reads_predictions_only_where_a_rung_is_met() -> None:
    s = NeVeASHAScheduler(rung_signal="consensus", max_t=16, reduction_factor=4)
    trial = type("T", (), {"trial_id": "a", "status": "PENDING"})()
    s.on_trial_add(None, trial)

    def result(epoch: int, **extra: Any) -> dict[str, Any]:
        r = {"training_iteration": epoch, "velocity": 0.5, "train_loss": 1 / epoch}
        return {**r, "neve_stop": False, **extra}

    assert s.on_trial_result(None, trial, result(1, subset_pred="0123")) == "CONTINUE"
    for epoch in (2, 3):  # between rungs: no predictions needed, none read
        assert s.on_trial_result(None, trial, result(epoch)) == TrialScheduler.CONTINUE
    with pytest.raises(ValueError, match="needs each result's 'subset_pred'"):
        s.on_trial_result(None, trial, result(4))  # the rung at 4 cannot be decided without


@pytest.mark.parametrize(
    "bad, error",
    [("1,4", TypeError), (5, TypeError), ([0, 4], ValueError), ([1.5], TypeError)],
)
def test_bad_subset_epochs_name_the_parameter(bad: Any, error: type) -> None:
    with pytest.raises(error, match="subset_epochs"):
        neve_trainable("digits", subset_epochs=bad)


def test_numpy_epochs_are_accepted() -> None:
    assert neve_trainable("digits", subset_epochs=np.array([4, 1, 4], dtype=np.int64))


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
    assert made == [(1, 4, 16), (1, 8), None]


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
