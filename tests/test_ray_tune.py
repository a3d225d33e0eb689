"""End-to-end Ray Tune tests on one local Ray (``ray.init(num_cpus=2)``, shared by the
module): ``tune.run`` and ``Tuner`` searches of a small digits study in which NeVe stops
trials before ``max_epochs``, the validation baseline, the CLI, a crash retried from its
checkpoint, and ``Tuner.restore`` of an interrupted experiment."""

from __future__ import annotations

import json
import os
import pickle
import sys
from pathlib import Path

import pytest

pytest.importorskip("ray.tune")

import ray  # noqa: E402
import ray.cloudpickle  # noqa: E402
import torch  # noqa: E402
from ray import tune  # noqa: E402
from ray.tune.search.basic_variant import BasicVariantGenerator  # noqa: E402
from torch.utils.data import Dataset  # noqa: E402

from neve_tune import Choice, LogUniform, load_study, run_trial  # noqa: E402
from neve_tune.cli import main as cli_main  # noqa: E402
from neve_tune.data import DataBundle  # noqa: E402
from neve_tune.ray import (  # noqa: E402
    NeVeASHAScheduler,
    NeVeStopper,
    asha_scheduler,
    neve_trainable,
    reported_metrics,
    run_search,
    to_ray_space,
)
from neve_tune.records import METRIC_NAMES
from neve_tune.train import load_checkpoint  # noqa: E402

pytestmark = pytest.mark.ray

# classes below travel to Ray workers, which cannot import this test module
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

MAX_EPOCHS = 8


@pytest.fixture(scope="module")
def ray_2cpus():
    if ray.is_initialized():  # a Ray left by an earlier test module would have other resources
        ray.shutdown()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def study():
    # thresholds the digits velocity crosses after 3-5 epochs: NeVe stops before MAX_EPOCHS
    return load_study("digits").replace(
        max_epochs=MAX_EPOCHS,
        search_space={
            "lr": LogUniform(0.03, 0.08),
            "threshold": LogUniform(0.09, 0.2),
            "batch_size": Choice([64, 128]),
        },
    )


def _assert_stopped_by_neve(metrics: dict) -> None:
    assert metrics["stopped_by"] == "velocity", metrics
    assert metrics["neve_stop"] is True and metrics["done"] is True
    assert metrics["epoch"] < MAX_EPOCHS
    assert metrics["velocity"] < metrics["config"]["threshold"]
    assert 0.5 < metrics["test_acc"] <= 1.0
    assert metrics["epochs"] == metrics["epoch"] == metrics["training_iteration"]


def test_tune_run_with_neve_stopper(ray_2cpus, study, tmp_path):
    stopper = NeVeStopper()
    analysis = tune.run(
        neve_trainable(study),
        config=to_ray_space(study),
        stop=stopper,
        num_samples=3,
        search_alg=BasicVariantGenerator(random_state=0),
        storage_path=str(tmp_path),
        reuse_actors=True,  # a fresh trial process spends seconds importing torch
        verbose=0,
    )
    assert len(analysis.trials) == 3
    for trial in analysis.trials:
        assert trial.status == "TERMINATED"
        _assert_stopped_by_neve(trial.last_result)
        assert stopper.stopped_by(trial.trial_id) == "converged"
    assert stopper.num_converged == 3


def test_tuner_with_scheduler_and_stopper(ray_2cpus, study, tmp_path):
    scheduler = NeVeASHAScheduler(max_t=MAX_EPOCHS, min_resource=1, reduction_factor=2)
    tuner = tune.Tuner(
        neve_trainable(study),
        param_space=to_ray_space(study),
        tune_config=tune.TuneConfig(
            num_samples=4,
            scheduler=scheduler,
            search_alg=BasicVariantGenerator(random_state=1),
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name="tuner", storage_path=str(tmp_path), stop=NeVeStopper(), verbose=0
        ),
    )
    grid = tuner.fit()
    assert len(grid) == 4 and not grid.errors
    finished = 0
    for result in grid:
        m = result.metrics
        assert set(METRIC_NAMES) <= set(m)
        assert m["epoch"] < MAX_EPOCHS  # converged or pruned, never the cap
        if "stopped_by" in m:  # the trial's own last epoch (Tune sets done=True on any stop)
            _assert_stopped_by_neve(m)
            finished += 1
        else:  # pruned at a rung on its training loss: no test score
            assert "test_acc" not in m and m["neve_stop"] is False
        history = result.metrics_dataframe
        assert list(history["epoch"]) == list(range(1, m["epoch"] + 1))
        # a full trial state every epoch, loadable with weights_only=True
        with result.checkpoint.as_directory() as d:
            state = load_checkpoint(Path(d, "neve_trial.pt"))
        assert state["epoch"] == m["epoch"] and state["controller"]["velocity"]
    assert finished >= 1
    assert len(scheduler.state_dict()["outcome"]) == 4  # the scheduler saw every trial end


def test_cli_ray_run_neve(ray_2cpus, study, tmp_path, capsys):
    study_file = tmp_path / "small_digits.py"
    study_file.write_text(
        "from neve_tune import Choice, LogUniform, Study\n"
        f"STUDY = Study(name='small_digits', max_epochs={MAX_EPOCHS}, "
        "search_space={'lr': LogUniform(0.03, 0.08), "
        "'threshold': LogUniform(0.09, 0.2), 'batch_size': Choice([64, 128])})\n"
    )
    out_json = tmp_path / "out.json"
    code = cli_main(
        [
            "ray",
            "run",
            str(study_file),
            "--trials",
            "2",
            "--storage-path",
            str(tmp_path / "runs"),
            "--name",
            "cli",
            "--json",
            str(out_json),
            "--seed",
            "3",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    assert out.count(" done: ") == 2 and "best: " in out
    data = json.loads(out_json.read_text())
    assert data["method"] == "neve" and len(data["trials"]) == 2 and data["errors"] == 0
    assert data["best"]["stopped_by"] == "velocity" and data["total_epochs_equiv"] > 0


class _Ended(tune.Callback):
    """Counts the trials that ended (the user's callback in a RunConfig)."""

    def __init__(self) -> None:
        self.ended = 0

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self.ended += 1


@pytest.mark.parametrize("api", ["run", "tuner"])
def test_run_search_takes_a_run_config_under_either_api(ray_2cpus, study, tmp_path, api):
    """The RunConfig's folder, callbacks and retries reach Tune under ``tune.run`` (its
    fields one by one) and under the ``Tuner``; the NeVeStopper is still the stop."""
    ended = _Ended()
    config = tune.RunConfig(
        name=f"exp-{api}",
        storage_path=str(tmp_path),
        callbacks=[ended],
        verbose=0,
        failure_config=tune.FailureConfig(max_failures=1),
    )
    results = run_search(study, num_samples=1, seed=1, api=api, run_config=config)
    metrics = (results.trials[0].last_result if api == "run" else results[0].metrics) or {}
    assert metrics["stopped_by"] == "velocity" and metrics["epoch"] < MAX_EPOCHS
    assert ended.ended == 1  # the given RunConfig keeps its callbacks, and no copy runs
    assert (tmp_path / f"exp-{api}").is_dir()
    if api == "run":  # tune.run got the FailureConfig's retries as max_failures
        assert results.trials[0].max_failures == 1


def test_run_search_resumes_the_experiment_its_run_config_names(ray_2cpus, study, tmp_path):
    """``resume=True`` restores ``storage_path/name`` of the RunConfig (a finished experiment
    comes back as it was); a RunConfig naming no experiment there is refused."""
    config = tune.RunConfig(name="again", storage_path=str(tmp_path), verbose=0)
    first = run_search(study, num_samples=1, seed=2, run_config=config)
    again = run_search(study, num_samples=1, seed=2, run_config=config, resume=True)
    assert [r.metrics["trial_id"] for r in again] == [r.metrics["trial_id"] for r in first]
    assert again[0].metrics["epoch"] == first[0].metrics["epoch"]
    elsewhere = tune.RunConfig(name="none", storage_path=str(tmp_path), verbose=0)
    with pytest.raises(FileNotFoundError, match="no Ray Tune experiment to restore at"):
        run_search(study, num_samples=1, run_config=elsewhere, resume=True)


def test_cli_ray_run_asha_baseline(ray_2cpus, tmp_path, capsys):
    code = cli_main(
        [
            "ray",
            "run",
            "digits",
            "--method",
            "asha",
            "--max-epochs",
            "3",
            "--num-samples",
            "2",
            "--storage-path",
            str(tmp_path),
            "--name",
            "asha",
            "--json",
            str(tmp_path / "a.json"),
        ]
    )
    assert code == 0, capsys.readouterr()
    data = json.loads((tmp_path / "a.json").read_text())
    for t in data["trials"]:
        assert "val_loss" in t and t["eval_samples"] > 0  # 10% held out, evaluated every epoch
        if "stopped_by" in t:
            assert (
                t["stopped_by"] == "max_epochs"
                and t["epoch"] == 3
                and t["objective"] == t["val_loss"]
            )


def test_asha_scheduler_is_rays_on_val_loss(study):
    from ray.tune.schedulers import ASHAScheduler

    s = asha_scheduler(study)
    assert isinstance(s, ASHAScheduler) and s.metric == "val_loss" and s._max_t == MAX_EPOCHS
    assert "val_loss" in reported_metrics("asha")


def test_resources_that_cannot_be_met(ray_2cpus, study, tmp_path, capsys):
    with pytest.raises(
        ValueError, match=r"resources per trial \{'cpu': 4.0, 'gpu': 0.0\} cannot be met: no node"
    ):
        run_search(
            study.replace(resources={"cpu": 4, "gpu": 0}),
            run_config=tune.RunConfig(storage_path=str(tmp_path)),
        )
    assert (
        cli_main(["ray", "run", "digits", "--gpus-per-trial", "1", "--storage-path", str(tmp_path)])
        == 2
    )
    assert "cannot be met" in capsys.readouterr().err
    assert cli_main(["ray", "run", "digits", "--gpus-per-trial", "1.5"]) == 2
    assert "must be below 1 (a shared GPU) or a whole number" in capsys.readouterr().err
    # a bad search space is refused when the study is made, before any search
    with pytest.raises(
        ValueError,
        match=r"search space 'threshold': Choice value 0.0: threshold must be a finite number > 0",
    ):
        study.replace(search_space={**study.search_space, "threshold": Choice([0.0, 0.1])})


def test_unknown_hyperparameter_fails_the_trial_clearly(ray_2cpus, study, tmp_path):
    grid = tune.Tuner(
        neve_trainable(study),
        param_space={"learning_rate": 0.1},
        run_config=tune.RunConfig(storage_path=str(tmp_path), verbose=0),
    ).fit()
    assert len(grid.errors) == 1 and "config has unknown hyperparameters ['learning_rate']" in str(
        grid.errors[0]
    )


# ------------------------------------------------------------------ faults
class CrashOnce(Dataset):
    """The digits training set, read item by item; raises once, mid-epoch, after
    ``crash_after`` items, unless ``marker`` exists (then it never crashes)."""

    def __init__(self, base, crash_after: int | None, marker: str) -> None:
        self.x, self.y = base.tensors
        self.crash_after, self.marker, self.calls = crash_after, marker, 0

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i):
        self.calls += 1
        if (
            self.crash_after is not None
            and self.calls == self.crash_after
            and not os.path.exists(self.marker)
        ):
            Path(self.marker).write_text(str(os.getpid()))
            raise RuntimeError("injected crash")
        return self.x[i], self.y[i]


class DumpScheduler(tune.Callback):
    """Writes the scheduler's state to ``path`` when the experiment ends."""

    def __init__(self, scheduler: NeVeASHAScheduler, path: str) -> None:
        self.scheduler, self.path = scheduler, path

    def on_experiment_end(self, trials, **info):
        Path(self.path).write_bytes(pickle.dumps(self.scheduler.state_dict()))


class InterruptOnce(tune.Callback):
    """Fails the driver once: after a trial finished and another one has reported."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def on_step_begin(self, iteration, trials, **info):
        if os.path.exists(self.marker):
            return
        done = [t for t in trials if t.status == "TERMINATED"]
        running = [
            t
            for t in trials
            if t.status == "RUNNING" and (t.last_result or {}).get("training_iteration", 0) >= 1
        ]
        if done and running:
            Path(self.marker).write_text(",".join(t.trial_id for t in done))
            raise RuntimeError("injected driver interrupt")


@pytest.mark.slow
def test_crashed_trial_resumes_with_the_same_velocity_series(ray_2cpus, study, tmp_path):
    bundle = study.load_data()
    marker = str(tmp_path / "crashed")
    n = len(bundle.train)
    crashing = DataBundle(
        bundle.name,
        CrashOnce(bundle.train, 2 * n + n // 2, marker),
        bundle.test,
        bundle.input_shape,
        bundle.num_classes,
    )
    config = {"lr": 0.05, "threshold": 0.09, "batch_size": 64, "seed": 5}
    grid = tune.Tuner(
        neve_trainable(study, data=crashing),
        param_space=config,
        run_config=tune.RunConfig(
            storage_path=str(tmp_path), failure_config=tune.FailureConfig(max_failures=2), verbose=0
        ),
    ).fit()
    assert not grid.errors and os.path.exists(
        marker
    )  # it crashed once, in epoch 3, and was retried
    result = grid[0]
    history = result.metrics_dataframe
    assert history["pid"].nunique() == 2  # two processes: the crashed one, the retry
    assert list(history["epoch"]) == list(
        range(1, len(history) + 1)
    )  # resumed after epoch 2, nothing repeated
    assert result.metrics["stopped_by"] == "velocity" and len(history) >= 3

    # the same trial, never interrupted, outside Ray (same seed, one thread like the trial)
    clean = DataBundle(
        bundle.name,
        CrashOnce(bundle.train, None, marker),
        bundle.test,
        bundle.input_shape,
        bundle.num_classes,
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ref = run_trial(
            study,
            {k: v for k, v in config.items() if k != "seed"},
            seed=5,
            data=clean,
            evaluate_test=False,
        )
    finally:
        torch.set_num_threads(threads)
    assert list(history["velocity"]) == [h["velocity"] for h in ref.history]
    assert list(history["train_loss"]) == [h["train_loss"] for h in ref.history]


@pytest.mark.slow
def test_tuner_restore_finishes_an_interrupted_experiment(ray_2cpus, study, tmp_path):
    marker = str(tmp_path / "interrupted")
    scheduler = NeVeASHAScheduler(max_t=MAX_EPOCHS, min_resource=1, reduction_factor=2)
    tuner = tune.Tuner(
        neve_trainable(study),
        param_space=to_ray_space(study),
        tune_config=tune.TuneConfig(
            num_samples=4,
            search_alg=BasicVariantGenerator(random_state=2, max_concurrent=2),
            scheduler=scheduler,
        ),
        run_config=tune.RunConfig(
            name="exp",
            storage_path=str(tmp_path),
            stop=NeVeStopper(),
            callbacks=[
                scheduler.callback(),
                InterruptOnce(marker),
                DumpScheduler(scheduler, str(tmp_path / "scheduler.pkl")),
            ],
            verbose=0,
        ),
    )
    with pytest.raises(Exception, match="injected driver interrupt"):
        tuner.fit()
    finished_before = Path(marker).read_text().split(",")
    path = str(tmp_path / "exp")
    assert tune.Tuner.can_restore(path)

    grid = tune.Tuner.restore(path, trainable=neve_trainable(study), resume_unfinished=True).fit()
    assert len(grid) == 4 and not grid.errors  # no trial lost
    ids = {r.metrics["trial_id"] for r in grid}
    assert set(finished_before) <= ids
    for r in grid:
        df = r.metrics_dataframe
        # epochs reported after the experiment's last snapshot are trained again after the
        # restore (from the last checkpoint the snapshot knows): same values, deterministic.
        # A rung decision the snapshot did not record is taken again on the rung as it is now
        # (asynchronous halving decides on arrival order, as Ray's ASHA does), so a trial
        # promoted before the interrupt may be stopped at that rung after it.
        epochs = sorted(set(df["epoch"]))
        assert epochs == list(range(1, epochs[-1] + 1)) and r.metrics["epoch"] in epochs
        assert (df.groupby("epoch")["velocity"].nunique() == 1).all()
        assert (df.groupby("epoch")["train_loss"].nunique() == 1).all()
        assert (
            r.metrics.get("stopped_by") == "velocity" or "test_acc" not in r.metrics
        )  # converged or pruned
    # the restored scheduler reloaded its rungs (through its callback): it knows the trials
    # finished before the interrupt, which are not run again
    state = pickle.loads((tmp_path / "scheduler.pkl").read_bytes())
    assert set(state["outcome"]) == ids


def test_the_guard_noise_board_holds_the_searchs_estimate(ray_2cpus, study, tmp_path):
    # docs/design.md, "The guard's veto": the shares of the trials the guard ended, their median
    from neve_tune.ray import guard_noise_board
    from neve_tune.ray._guard_noise import board_estimate, post_result
    from neve_tune.records import Cost, TrialResult

    def ended(stopped_by, share):
        return TrialResult({}, "neve", 0, stopped_by, 3, 0.1, 3, Cost(), [], 10, unfit_share=share)

    board = guard_noise_board()
    try:
        estimate = board_estimate(board)
        assert estimate() is None  # no trial ended by the guard yet: no veto
        post_result(board, ended("velocity", 0.02))  # memorised before it stopped: not evidence
        post_result(board, ended("prediction_changes", None))
        assert estimate() is None
        post_result(board, ended("prediction_changes", 0.2))
        post_result(board, ended("prediction_changes", 0.3))
        assert estimate() == pytest.approx(0.25)
        # the board travels to the trials' worker processes; two epochs end no trial by the
        # guard, so none posts (the veto and the posting are the library's, tested above)
        grid = tune.Tuner(
            neve_trainable(study.replace(max_epochs=2, pc_veto_margin=0.1), guard_noise=board),
            param_space=to_ray_space(study),
            tune_config=tune.TuneConfig(num_samples=2),
            run_config=tune.RunConfig(storage_path=str(tmp_path), verbose=0),
        ).fit()
        assert not grid.errors
        assert estimate() == pytest.approx(0.25)  # two epochs: no guard stop posted
    finally:
        ray.kill(board)
    with pytest.raises(TypeError, match="guard_noise must be a board"):
        neve_trainable(study, guard_noise=0.2)
    board = guard_noise_board()
    try:
        with pytest.raises(ValueError, match="guard_noise serves NeVe's guard veto"):
            neve_trainable(study, guard_noise=board)  # the study's veto is off
        with pytest.raises(ValueError, match="guard_noise serves NeVe's guard veto"):
            neve_trainable(study.replace(pc_veto_margin=0.1), method="asha", guard_noise=board)
    finally:
        ray.kill(board)
