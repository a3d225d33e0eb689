"""The objective builder, the worker and its CLI: storages, retries, plots, bad input."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import optuna
import pytest
import torch
from optuna.trial import TrialState

import neve_tune.optuna._objective as objective_module
from neve_tune import Choice, IntUniform, LogUniform, Study, Uniform, load_study, run_trial
from neve_tune.cli import main
from neve_tune.optuna import (
    SETTINGS_ATTR,
    NeVePruner,
    RecoveryConfig,
    StorageError,
    checkpoint_path_for,
    epoch_key,
    make_objective,
    make_storage,
    plot_study,
    redact_url,
    run_worker,
    suggest_config,
    trial_history,
)
from neve_tune.optuna._storage import SQLiteRDBStorage, normalize_url, storage_kind

optuna.logging.set_verbosity(optuna.logging.WARNING)

TINY = """
from neve_tune import Choice, LogUniform, Study

STUDY = Study(
    name="tiny",
    data="digits",
    model="small_cnn",
    search_space={{
        "lr": LogUniform({low}, {high}),
        "threshold": LogUniform(1e-4, 1e-2),
        "batch_size": Choice([64, 128]),
    }},
    max_epochs={epochs},
)
"""


def _study_file(
    tmp_path: Path, epochs: int = 2, low: float = 0.01, high: float = 0.2, name: str = "tiny"
) -> str:
    path = tmp_path / f"{name}.py"
    path.write_text(TINY.format(epochs=epochs, low=low, high=high))
    return str(path)


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """One CPU thread: the 2 cores are shared, and oversubscribed torch threads crawl."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def digits():
    study = load_study("digits").replace(max_epochs=3)
    return study, study.load_data()


# ------------------------------------------------------------------ storage helpers
def test_redact_url() -> None:
    assert redact_url("postgresql://neve:hunter2@db:5432/s") == "postgresql://neve:***@db:5432/s"
    assert (
        redact_url("postgresql+psycopg2://neve:p%40ss@db/s")
        == "postgresql+psycopg2://neve:***@db/s"
    )
    assert redact_url("mysql://root@db/s") == "mysql://root@db/s"
    assert redact_url("sqlite:///a.db") == "sqlite:///a.db"
    assert redact_url(None) == "<in-memory>"
    url = "postgresql://neve:hunter2@db/s"
    assert "hunter2" not in redact_url(url, f"failed: {url} (password hunter2)")


def test_normalize_and_kind() -> None:
    assert normalize_url("sqlite:///a.db") == "sqlite:///a.db"
    assert normalize_url("postgres://u:p@h/d").split("://")[0] in (
        "postgresql",
        "postgresql+psycopg2",
    )
    assert storage_kind(None) == storage_kind(":memory:") == "memory"
    assert storage_kind("sqlite:///a.db") == "rdb"
    assert storage_kind("journal:x") == storage_kind("search.log") == "journal"
    with pytest.raises(ValueError, match="neither"):
        storage_kind("not-a-storage")


def test_unreachable_storage_is_a_clear_error() -> None:
    with pytest.raises(StorageError) as e:
        make_storage("postgresql://neve:hunter2@127.0.0.1:1/nothing")
    assert "cannot reach storage" in str(e.value) and "hunter2" not in str(e.value)
    assert make_storage(None) is None


def _pop_concurrently(url: str, workers: int = 3, each: int = 20) -> list[int]:
    """Enqueue ``workers * each`` trials, then let ``workers`` threads (each with its own
    storage, i.e. its own SQLite connections, as separate worker processes have) ask for
    ``each`` trials at once; the trial numbers they got."""
    study = optuna.create_study(
        study_name="queue", storage=make_storage(url, heartbeat_interval=None)
    )
    for i in range(workers * each):
        study.enqueue_trial({"x": float(i)})
    barrier = threading.Barrier(workers)
    popped: list[int] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            s = optuna.load_study(
                study_name="queue", storage=make_storage(url, heartbeat_interval=None)
            )
            barrier.wait()
            for _ in range(each):
                popped.append(s.ask().number)
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    return popped


def test_sqlite_workers_never_pop_the_same_enqueued_trial(tmp_path) -> None:
    """Regression: on SQLite two workers could both take the same WAITING trial (the state
    check ran outside the write transaction), train it twice, and the second one's tell
    failed with "Cannot tell a COMPLETE trial" (benchmarks/optuna_workers.py, 2 workers).
    With plain RDBStorage this popped 11 to 15 of 60 trials twice; SQLiteRDBStorage opens
    every transaction with BEGIN IMMEDIATE (no SQL on Optuna's tables)."""
    url = f"sqlite:///{tmp_path / 'q.db'}"
    assert isinstance(make_storage(url, heartbeat_interval=None), SQLiteRDBStorage)
    popped = _pop_concurrently(url)
    assert len(popped) == 60 and len(set(popped)) == 60, sorted(popped)

    # refused state changes (a finished trial; a running one asked to start) release the
    # write lock: another connection that waits at most 1 s can still write
    storage = make_storage(url, heartbeat_interval=None)
    study_id = storage.get_study_id_from_name("queue")
    first, second = (storage.get_trial_id_from_study_id_trial_number(study_id, n) for n in (0, 1))
    assert storage.set_trial_state_values(first, TrialState.COMPLETE, [1.0]) is True
    with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):
        storage.set_trial_state_values(first, TrialState.FAIL)
    assert storage.set_trial_state_values(second, TrialState.RUNNING) is False
    impatient = SQLiteRDBStorage(url, engine_kwargs={"connect_args": {"timeout": 1}})
    assert impatient.set_trial_state_values(second, TrialState.COMPLETE, [2.0]) is True
    assert storage.get_trial(second).value == 2.0


STALE = 10


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used:UserWarning")
def test_sqlite_workers_retry_a_dead_workers_trial_once(tmp_path) -> None:
    """Workers that check for stale trials at the same moment fail each dead worker's
    trial once and retry it once (the kill-and-resume guarantee on SQLite). The
    interleaving that could retry a trial twice is rare here: this test did not catch it
    with plain RDBStorage either; the pop test above does catch its twin."""
    url = f"sqlite:///{tmp_path / 'h.db'}"
    storage = make_storage(url, heartbeat_interval=1, heartbeat_grace_period=1, max_retry=3)
    study = optuna.create_study(study_name="stale", storage=storage)
    study_id = storage.get_study_id_from_name("stale")
    for _ in range(STALE):  # trials whose worker died right after its first heartbeat
        storage.record_heartbeat(
            storage.get_trial_id_from_study_id_trial_number(study_id, study.ask().number)
        )
    time.sleep(2.5)  # past the grace period
    workers = 3
    barrier = threading.Barrier(workers)
    errors: list[BaseException] = []

    def check() -> None:
        try:
            s = optuna.load_study(
                study_name="stale",
                storage=make_storage(url, heartbeat_interval=1, heartbeat_grace_period=1),
            )
            barrier.wait()
            optuna.storages.fail_stale_trials(s)
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=check) for _ in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    states = [t.state for t in study.trials]
    assert states[:STALE] == [TrialState.FAIL] * STALE
    assert states[STALE:] == [TrialState.WAITING] * STALE, states  # one retry each


# ------------------------------------------------------------------ search space
def test_suggest_config_every_distribution() -> None:
    study = Study(
        name="space",
        search_space={
            "lr": LogUniform(1e-3, 1e-1),
            "momentum": Uniform(0.5, 0.99),
            "width": IntUniform(8, 64, log=True),
            "batch_size": Choice([32, 64]),
        },
    )
    search = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    trial = search.ask()
    cfg = suggest_config(trial, study)
    assert 1e-3 <= cfg["lr"] <= 1e-1 and 0.5 <= cfg["momentum"] <= 0.99
    assert isinstance(cfg["width"], int) and 8 <= cfg["width"] <= 64
    assert cfg["batch_size"] in (32, 64) and cfg["threshold"] == study.defaults["threshold"]
    dists = trial.distributions
    assert dists["lr"].log and dists["width"].log and not dists["momentum"].log


def test_numpy_and_tensor_bounds_are_plain_numbers() -> None:
    """A bound may be a NumPy or 0-d tensor scalar, as numbers are everywhere else; it is
    stored as a Python number (a tensor bound was refused as "not a finite number")."""
    import numpy as np

    space = {
        "lr": LogUniform(torch.tensor(1e-3), np.float32(0.1)),
        "momentum": Uniform(torch.tensor(0.5), 0.99),
        "batch_size": IntUniform(torch.tensor(16), np.int64(64)),
    }
    study = Study(name="space", search_space=space)
    bounds = [getattr(d, b) for d in study.search_space.values() for b in ("low", "high")]
    assert all(type(v) in (int, float) for v in bounds), bounds
    cfg = suggest_config(optuna.create_study().ask(), study)
    assert 1e-3 <= cfg["lr"] <= 0.1 and isinstance(cfg["batch_size"], int)


# ------------------------------------------------------------------ objective
def test_objective_reports_velocity_and_summary(digits) -> None:
    study, data = digits
    search = optuna.create_study(pruner=NeVePruner(), sampler=optuna.samplers.TPESampler(seed=1))
    search.optimize(make_objective(study, data=data), n_trials=2)
    # the first trial has no rival at its rungs: it completes, so its summary is checked below
    assert search.trials[0].state == TrialState.COMPLETE
    for t in search.trials:
        assert t.state in (TrialState.COMPLETE, TrialState.PRUNED)
        hist = trial_history(t)
        assert [m["epoch"] for m in hist] == sorted(t.intermediate_values)
        assert [t.intermediate_values[m["epoch"]] for m in hist] == [m["train_loss"] for m in hist]
        assert t.user_attrs["epochs"] == len(hist) and t.user_attrs["method"] == "neve"
        assert t.user_attrs["cost"]["train_samples"] == hist[-1]["train_samples"]
        if t.state == TrialState.COMPLETE:
            assert t.value == pytest.approx(hist[-1]["train_loss"])
            assert 0.0 <= t.user_attrs["test_acc"] <= 1.0
            assert t.user_attrs["stopped_by"] in ("velocity", "max_epochs")


def test_objective_asha_reports_val_loss(digits) -> None:
    study, data = digits
    search = optuna.create_study(pruner=optuna.pruners.NopPruner())
    search.optimize(
        make_objective(study.replace(max_epochs=2), method="asha", data=data), n_trials=1
    )
    t = search.trials[0]
    hist = trial_history(t)
    assert [t.intermediate_values[m["epoch"]] for m in hist] == [m["val_loss"] for m in hist]
    assert t.value == pytest.approx(hist[-1]["val_loss"])


def test_objective_rejects_bad_method(digits) -> None:
    with pytest.raises(ValueError, match="method"):
        make_objective(digits[0], method="retrain")


def test_diverged_trial_is_pruned_not_failed(digits) -> None:
    study, data = digits
    space = {
        "lr": LogUniform(50.0, 100.0),
        "threshold": LogUniform(1e-4, 1e-3),
        "batch_size": Choice([32]),
    }
    search = optuna.create_study(pruner=optuna.pruners.NopPruner())  # even without NeVePruner
    search.optimize(make_objective(study.replace(search_space=space), data=data), n_trials=1)
    t = search.trials[0]
    assert t.state == TrialState.PRUNED and t.user_attrs["stopped_by"] == "diverged"


def test_stalled_trial_is_pruned_and_says_stalled(digits) -> None:
    """A trial that settles without learning (here: an LR too small to move, cut at
    max_epochs) is pruned by NeVePruner on its stalled epoch, and its summary says why."""
    study, data = digits
    space = {
        "lr": LogUniform(1e-7, 2e-7),
        "threshold": LogUniform(1e-4, 1e-3),
        "batch_size": Choice([128]),
    }
    search = optuna.create_study(pruner=NeVePruner(min_resource=100))
    search.optimize(
        make_objective(study.replace(search_space=space, max_epochs=2), data=data), n_trials=1
    )
    t = search.trials[0]
    assert trial_history(t)[-1]["stalled"] is True
    assert (
        t.state == TrialState.PRUNED
        and t.user_attrs["stopped_by"] == "stalled"
        and t.last_step == 2
    )


class _Killed(BaseException):
    """Stands in for SIGKILL: escapes every ``except Exception``."""


@pytest.mark.parametrize("inherit", [True, False])
def test_retried_trial_resumes_from_checkpoint(digits, tmp_path, monkeypatch, inherit) -> None:
    study, data = digits
    study = study.replace(max_epochs=4)
    params = {"lr": 0.05, "threshold": 1e-3, "batch_size": 128}
    reference = run_trial(study, params, data=data, evaluate_test=False)
    ref_velocity = {m["epoch"]: m["velocity"] for m in reference.history}
    ref_loss = {m["epoch"]: m["train_loss"] for m in reference.history}

    search = optuna.create_study(
        storage=f"sqlite:///{tmp_path / 's.db'}", pruner=NeVePruner(min_resource=100)
    )
    search.enqueue_trial(params)
    ckpt_dir = tmp_path / "ckpt"
    objective = make_objective(study, data=data, checkpoint_dir=ckpt_dir, evaluate_test=False)

    real_report = objective_module.report_epoch

    def dies_at_epoch_3(trial, metrics, **kw):
        if metrics["epoch"] == 3:  # epoch 3 is checkpointed, not reported: the worst moment
            raise _Killed()
        return real_report(trial, metrics, **kw)

    monkeypatch.setattr(objective_module, "report_epoch", dies_at_epoch_3)
    trial = search.ask()
    with pytest.raises(_Killed):
        objective(trial)
    search.tell(
        trial, state=TrialState.FAIL
    )  # what the heartbeat check does to a dead worker's trial
    ckpt = checkpoint_path_for(ckpt_dir, trial)
    assert ckpt.exists()

    monkeypatch.setattr(objective_module, "report_epoch", real_report)
    with pytest.warns(optuna.exceptions.ExperimentalWarning):
        retry = optuna.storages.RetryHeartbeatStaleTrialCallback(
            inherit_intermediate_values=inherit
        )
    retry(search, search.trials[0])
    search.optimize(objective, n_trials=1)

    t = search.trials[1]
    assert t.state == TrialState.COMPLETE and t.system_attrs["failed_trial"] == 0
    assert t.user_attrs["resumed_from_epoch"] == 3
    assert t.intermediate_values == ref_loss  # the uninterrupted series, no step twice
    assert [m["velocity"] for m in trial_history(t)] == [ref_velocity[e] for e in (1, 2, 3, 4)]
    assert t.value == pytest.approx(reference.objective)
    assert not ckpt.exists()  # deleted once the trial finished


def test_run_worker_resumes_a_dead_workers_trial_from_its_checkpoint(tmp_path, monkeypatch) -> None:
    """``RecoveryConfig`` end to end: a worker dies in epoch 4, after epoch 3 was checkpointed
    and reported; the next worker, once the heartbeat grace period has passed, fails that
    trial, retries it and resumes the retry from epoch 3's checkpoint (then deletes it)."""
    study = load_study("digits").replace(max_epochs=4)
    url = f"sqlite:///{tmp_path / 's.db'}"
    ckpt_dir = tmp_path / "ckpt"
    recovery = RecoveryConfig(
        checkpoint_dir=ckpt_dir, heartbeat_interval=1, heartbeat_grace_period=1, max_retry=1
    )
    first = optuna.create_study(
        study_name=study.name, storage=make_storage(url, heartbeat_interval=None)
    )
    first.enqueue_trial({"lr": 0.05, "threshold": 1e-3, "batch_size": 128})
    worker = {"storage": url, "n_trials": 1, "recovery": recovery, "log": None, "device": "cpu"}
    worker["pruner"] = {"min_resource": 100}  # no rung inside 4 epochs
    real_report = objective_module.report_epoch

    def dies_after_epoch_3(trial, metrics, **kw):
        real_report(trial, metrics, **kw)
        if metrics["epoch"] == 3:
            raise _Killed()

    monkeypatch.setattr(objective_module, "report_epoch", dies_after_epoch_3)
    with pytest.raises(_Killed):
        run_worker(study, **worker)
    monkeypatch.setattr(objective_module, "report_epoch", real_report)
    dead = optuna.load_study(study_name=study.name, storage=url).trials[0]
    assert dead.state == TrialState.RUNNING and sorted(dead.intermediate_values) == [1, 2, 3]
    assert any(ckpt_dir.rglob("trial_000000.pt"))
    time.sleep(2.5)  # past the grace period: the trial's heartbeat is stale

    search = run_worker(study, **worker)
    assert [t.state for t in search.trials] == [TrialState.FAIL, TrialState.COMPLETE]
    retry = search.trials[1]
    assert retry.system_attrs["failed_trial"] == 0
    assert retry.user_attrs["resumed_from_epoch"] == 3
    assert sorted(retry.intermediate_values) == [1, 2, 3, 4]
    assert not any(ckpt_dir.rglob("*.pt"))  # deleted once the trial finished


def test_a_retried_trial_replays_its_rung_epoch_with_the_subset_predictions(
    tmp_path, monkeypatch
) -> None:
    """A worker dies after epoch 2 (a rung of the consensus pruner) was checkpointed but
    before it was reported: the retry reports that epoch from the checkpoint, with the
    selection subset's predictions the rung reads, and finishes."""
    study = load_study("digits").replace(max_epochs=3, selection_subset=50)
    url = f"sqlite:///{tmp_path / 's.db'}"
    recovery = RecoveryConfig(
        checkpoint_dir=tmp_path / "ckpt", heartbeat_interval=1, heartbeat_grace_period=1
    )
    first = optuna.create_study(
        study_name=study.name, storage=make_storage(url, heartbeat_interval=None)
    )
    first.enqueue_trial({"lr": 0.05, "threshold": 1e-3, "batch_size": 128})
    worker = {"storage": url, "n_trials": 1, "recovery": recovery, "log": None, "device": "cpu"}
    worker["pruner"] = {"rung_signal": "consensus", "min_resource": 2}
    real_report = objective_module.report_epoch

    def dies_before_reporting_epoch_2(trial, metrics, **kw):
        if metrics["epoch"] == 2:
            raise _Killed()
        real_report(trial, metrics, **kw)

    monkeypatch.setattr(objective_module, "report_epoch", dies_before_reporting_epoch_2)
    with pytest.raises(_Killed):
        run_worker(study, **worker)
    monkeypatch.setattr(objective_module, "report_epoch", real_report)
    time.sleep(2.5)  # past the grace period: the trial's heartbeat is stale

    search = run_worker(study, **worker)
    retry = search.trials[1]
    assert retry.state == TrialState.COMPLETE and retry.user_attrs["resumed_from_epoch"] == 2
    assert len(retry.user_attrs[epoch_key(2)]["subset_pred"]) == 50


# ------------------------------------------------------------------ CLI worker
@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_cli_worker_runs_trials(tmp_path, capsys, kind) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}" if kind == "sqlite" else f"journal:{tmp_path / 's.log'}"
    args = [
        "optuna",
        "worker",
        _study_file(tmp_path),
        "--storage",
        url,
        "--create",
        "--trials",
        "2",
        "--sampler-seed",
        "0",
        "--threads",
        "1",
        "--checkpoint-dir",
        str(tmp_path / "ckpt"),
        "--out",
        str(tmp_path / "plots"),
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert out.count("trial ") >= 2 and "ran 2 trials" in out
    search = optuna.load_study(
        study_name="tiny", storage=make_storage(url, heartbeat_interval=None)
    )
    assert len(search.trials) == 2
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in search.trials)
    assert (
        search.user_attrs[SETTINGS_ATTR]["rung_signal"] == "auto"
    )  # the default: the study's rung signal
    assert (tmp_path / "plots" / "velocity_curves.png").stat().st_size > 1000
    assert (tmp_path / "plots" / "search_history.png").stat().st_size > 1000

    # a second worker with other pruner settings is refused, with what differs
    assert main([*args[:-2], "--rung-signal", "velocity"]) == 2
    err = capsys.readouterr().err
    assert "NeVePruner settings" in err and "rung_signal" in err and "Traceback" not in err
    # ... and one with another method too
    assert main([*args[:-2], "--method", "asha"]) == 2
    assert "method" in capsys.readouterr().err

    assert (
        main(
            [
                "optuna",
                "plot",
                "--study-name",
                "tiny",
                "--storage",
                url,
                "--out",
                str(tmp_path / "p2"),
            ]
        )
        == 0
    )
    assert (tmp_path / "p2" / "search_history.png").exists()


def test_cli_worker_needs_existing_study(tmp_path, capsys) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    assert main(["optuna", "worker", _study_file(tmp_path), "--storage", url, "--trials", "1"]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and "optuna create-study" in err


@pytest.mark.parametrize(
    "case, message",
    [
        ("unknown_study", "not found"),
        ("empty_range", "LogUniform needs 0 < low < high"),
        ("unreachable", "cannot reach storage"),
        ("bad_storage", "neither an SQLAlchemy URL"),
        ("no_trials", "--trials"),
    ],
)
def test_cli_bad_input(tmp_path, capsys, case, message) -> None:
    good = _study_file(tmp_path)
    args = {
        "unknown_study": [str(tmp_path / "nope.py"), "--trials", "1"],
        "empty_range": [_study_file(tmp_path, low=0.1, high=0.1, name="empty"), "--trials", "1"],
        "unreachable": [
            good,
            "--storage",
            "postgresql://neve:hunter2@127.0.0.1:1/db",
            "--trials",
            "1",
        ],
        "bad_storage": [good, "--storage", "no-such-thing", "--trials", "1"],
        "no_trials": [good],
    }[case]
    assert main(["optuna", "worker", *args]) == 2
    captured = capsys.readouterr()
    assert message in captured.err and "Traceback" not in captured.err
    assert "hunter2" not in captured.err + captured.out


def test_cli_missing_dataset_fails_before_any_trial(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("NEVE_DATA", str(tmp_path / "no-data"))
    url = f"sqlite:///{tmp_path / 's.db'}"
    assert (
        main(
            ["optuna", "worker", "cifar10_resnet32", "--storage", url, "--create", "--trials", "1"]
        )
        == 2
    )
    assert "cifar10 was not found" in capsys.readouterr().err


def test_cli_bad_input_in_a_real_process(tmp_path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "neve_tune.cli",
            "optuna",
            "worker",
            "digits",
            "--trials",
            "1",
            "--storage",
            "postgresql://neve:hunter2@127.0.0.1:1/db",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert proc.returncode == 2
    assert "cannot reach storage" in proc.stderr and "Traceback" not in proc.stderr
    assert "hunter2" not in proc.stderr + proc.stdout


# ------------------------------------------------------------------ studies and plots
@pytest.mark.parametrize(
    "name, data, model",
    [
        ("digits", "digits", "small_cnn"),
        ("cifar10_resnet32", "cifar10", "resnet32"),
        ("cifar100_resnet32", "cifar100", "resnet32"),
        ("imagenet_folder_timm", "imagefolder", "timm:resnet18"),
    ],
)
def test_bundled_studies_load(name, data, model) -> None:
    study = load_study(name)
    study.validate()
    assert (study.name, study.data, study.model) == (name, data, model)
    assert {"lr", "threshold", "batch_size"} <= set(study.search_space)
    if name.startswith("cifar"):
        cfg = study.config()
        assert (cfg["lr"], cfg["momentum"], cfg["weight_decay"], cfg["batch_size"]) == (
            0.1,
            0.9,
            5e-4,
            100,
        )
        assert study.max_epochs == 250 and 0 < study.resources["gpu"] < 1
    # the search space maps onto Optuna distributions
    trial = optuna.create_study().ask()
    assert set(suggest_config(trial, study)) >= set(study.search_space)


def test_plot_study(tmp_path) -> None:
    search = optuna.create_study()
    for i in range(3):
        t = search.ask()
        for e in (1, 2):
            from neve_tune.optuna import report_epoch

            report_epoch(
                t, {"epoch": e, "velocity": 0.1 / (e + i), "train_loss": 1.0, "diverged": False}
            )
        search.tell(t, 1.0 - 0.1 * i) if i != 1 else search.tell(t, state=TrialState.PRUNED)
    paths = plot_study(search, tmp_path)
    assert all(p.stat().st_size > 1000 for p in paths.values())
    assert math.isfinite(torch.tensor(1.0).item())  # plots leave torch untouched
    assert os.path.basename(paths["velocity_curves"]) == "velocity_curves.png"


def test_plot_study_without_a_velocity_warns_nothing(tmp_path) -> None:
    """A validation search's trials record no velocity: the figure is written without
    matplotlib's "no artists with labels" warning reaching the user."""
    import warnings

    from neve_tune.optuna import report_epoch

    search = optuna.create_study()
    trial = search.ask()
    report_epoch(trial, {"epoch": 1, "val_loss": 0.5, "train_loss": 0.6}, signal="val_loss")
    search.tell(trial, 0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        path = plot_study(search, tmp_path)["velocity_curves"]
    assert path.stat().st_size > 1000


def test_importing_the_optuna_backend_leaves_the_matplotlib_backend_alone() -> None:
    code = (
        "import matplotlib; matplotlib.use('svg'); import neve_tune.optuna, neve_tune.cli.optuna; "
        "print(matplotlib.get_backend())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "svg"


def test_checkpoint_dir_defaults_to_the_environment(tmp_path, monkeypatch) -> None:
    """NEVE_CHECKPOINT_DIR (documented) is the worker's default checkpoint folder (filled in
    once the flags are parsed, so ``--no-checkpoints`` can tell a folder given from none)."""
    from neve_tune.cli import build_parser
    from neve_tune.cli.optuna import _recovery_flags

    def parsed(*flags: str):
        argv = ["optuna", "worker", "digits", "--trials", "1", *flags]
        args = build_parser(["optuna"]).parse_args(argv)
        _recovery_flags(args)
        return args

    monkeypatch.setenv("NEVE_CHECKPOINT_DIR", str(tmp_path / "shared"))
    assert parsed().checkpoint_dir == str(tmp_path / "shared")
    monkeypatch.delenv("NEVE_CHECKPOINT_DIR")
    assert parsed().checkpoint_dir == "neve_checkpoints"
    assert parsed("--checkpoint-dir", "x").checkpoint_dir == "x"
    assert (parsed().heartbeat_interval, parsed().max_retry) == (60, 3)


def test_a_retry_removes_the_temporary_files_a_killed_save_left(digits, tmp_path) -> None:
    """``trial_N.pt.tmp<PID>`` beside a trial's checkpoint: its previous worker died mid-save.
    The trial that takes the checkpoint over removes them; other trials' files stay."""
    study, data = digits
    search = optuna.create_study(
        storage=f"sqlite:///{tmp_path / 's.db'}", pruner=NeVePruner(min_resource=100)
    )
    search.enqueue_trial({"lr": 0.05, "threshold": 1e-3, "batch_size": 128})
    ckpt_dir = tmp_path / "ckpt"
    folder = ckpt_dir / search.study_name
    folder.mkdir(parents=True)
    (folder / "trial_000000.pt.tmp4242").write_bytes(b"half a save")
    (folder / "trial_000007.pt.tmp4242").write_bytes(b"another trial's")
    search.optimize(
        make_objective(
            study.replace(max_epochs=1), data=data, checkpoint_dir=ckpt_dir, evaluate_test=False
        ),
        n_trials=1,
    )
    assert sorted(p.name for p in folder.iterdir()) == ["trial_000007.pt.tmp4242"]


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///:memory:"])
def test_an_in_memory_sqlite_url_runs_as_an_in_memory_study(tmp_path, capsys, url) -> None:
    """Such a database lives in one connection (the heartbeat thread's own connection saw
    no tables and raised); it is run as Optuna's in-memory storage instead."""
    assert storage_kind(url) == "memory" and make_storage(url) is None
    assert (
        main(
            [
                "optuna",
                "worker",
                _study_file(tmp_path, epochs=1),
                "--storage",
                url,
                "--trials",
                "1",
                "--threads",
                "1",
                "--no-checkpoints",
            ]
        )
        == 0
    )
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err and "ran 1 trials" in captured.out


def test_worker_adopts_a_stored_signal_over_the_study_files(tmp_path) -> None:
    """A study created before the default became the study file's rung signal keeps its
    stored pruner settings: a new worker adopts them instead of refusing, and says in one
    line that its rungs and its pick (the study file's selection) follow two rules."""

    storage = f"sqlite:///{tmp_path / 'old.db'}"
    old = optuna.create_study(study_name="digits", storage=storage)
    NeVePruner(rung_signal="train_loss").bind(old)
    lines: list[str] = []
    one_epoch = load_study("digits").replace(max_epochs=1)
    search = run_worker(one_epoch, storage=storage, n_trials=1, log=lines.append)
    assert search.pruner.rung_signal == "train_loss"
    notes = [line for line in lines if "prunes on rung signal 'train_loss'" in line]
    assert len(notes) == 1 and "not 'auto'" in notes[0] and "--selection objective" in notes[0]
    assert "\n" not in notes[0]
    with pytest.warns(UserWarning, match="the rungs keep 'train_loss', the pick is by 'auto'"):
        run_worker(one_epoch, storage=storage, n_trials=1, log=None)
    # a worker whose study file agrees with the stored signal says nothing
    agreeing: list[str] = []
    run_worker(
        one_epoch.replace(selection="objective"), storage=storage, n_trials=1, log=agreeing.append
    )
    assert not [line for line in agreeing if "prunes on rung signal" in line]
    fresh = run_worker(
        one_epoch, storage=f"sqlite:///{tmp_path / 'new.db'}", create=True, n_trials=1, log=None
    )
    assert fresh.pruner.rung_signal == "auto"


def test_total_trials_already_reached_runs_no_trial(tmp_path) -> None:
    """``total_trials`` counts the study's complete and pruned trials: a worker joining a
    study that holds them all runs none (Optuna's MaxTrialsCallback counts only after a
    trial), and one joining a study one short runs one."""
    url = f"sqlite:///{tmp_path / 's.db'}"
    search = optuna.create_study(study_name="s", storage=url)
    for value in (0.5, 0.4):
        trial = search.ask()
        search.tell(trial, value)
    study = load_study("digits").replace(max_epochs=1)
    run_worker(study, study_name="s", storage=url, total_trials=2, log=None)
    assert len(search.get_trials(deepcopy=False)) == 2
    run_worker(study, study_name="s", storage=url, total_trials=3, log=None)
    states = [t.state for t in search.get_trials(deepcopy=False)]
    assert len(states) == 3 and states[2] in (TrialState.COMPLETE, TrialState.PRUNED)
