"""Checkpoints that prove themselves: every checkpoint carries the SHA-256 of its bytes; a
damaged one (bytes changed in the middle, or cut short) is never resumed from: one line
names it and the trial starts over, ending with the uninterrupted run's series. A write
that fails (disk full) is one line naming the file; a worker re-queues its trial."""

from __future__ import annotations

import errno
import logging
import os
from pathlib import Path

import optuna
import pytest
import torch
from optuna.trial import TrialState

import neve_tune.checkpoint as checkpoint_module
from neve_tune import load_study, run_trial
from neve_tune.checkpoint import (
    CheckpointError,
    CheckpointWriteError,
    DamagedCheckpointError,
    load_checkpoint,
    load_state_file,
    save_checkpoint,
)
from neve_tune.cli import main
from neve_tune.optuna import checkpoint_path_for, report_epoch
from tests._studies import assert_resumed_like_uninterrupted

optuna.logging.set_verbosity(optuna.logging.WARNING)

PARAMS = {"lr": 0.05, "threshold": 1e-3, "batch_size": 128}
STUDY_FILE = """
from neve_tune import Choice, LogUniform, Study

STUDY = Study(name="tiny", data="digits", model="small_cnn", max_epochs=4,
              search_space={"lr": LogUniform(0.01, 0.2), "threshold": LogUniform(1e-4, 1e-2),
                            "batch_size": Choice([64, 128])})
"""


class Killed(BaseException):
    """Stands in for a killed process: escapes every ``except Exception``."""


@pytest.fixture(autouse=True)
def one_torch_thread():
    """One thread, as the workers train (and the reference runs of _studies)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def damage(path: Path, how: str) -> None:
    """``middle``: 4 KB of random bytes written over the middle of the file;
    ``truncated``: the second half cut off; ``header``: cut inside the checksum header."""
    data = bytearray(path.read_bytes())
    if how == "middle":
        start = len(data) // 2
        data[start : start + 4096] = os.urandom(min(4096, len(data) - start))
    elif how == "truncated":
        data = data[: len(data) // 2]
    else:
        data = data[:10]
    path.write_bytes(bytes(data))


def _killed_after(epoch: int, also: object = None):
    def on_epoch(metrics: dict) -> None:
        if callable(also):
            also(metrics)
        if metrics["epoch"] == epoch:  # after the epoch's checkpoint was written
            raise Killed()

    return on_epoch


# ------------------------------------------------------------------ the file format
@pytest.mark.parametrize("how", ["middle", "truncated", "header"])
def test_a_damaged_checkpoint_fails_its_checksum(tmp_path: Path, how: str) -> None:
    path = tmp_path / "c.pt"
    save_checkpoint(path, {"epoch": 3, "weights": torch.arange(5000.0)})
    assert load_state_file(path, ("epoch",), "state")["epoch"] == 3
    damage(path, how)
    with pytest.raises(DamagedCheckpointError) as caught:
        load_state_file(path, ("epoch",), "state")
    text = str(caught.value)
    assert text.startswith(f"checkpoint_path {str(path)!r} is damaged") and "\n" not in text


def test_a_checkpoint_without_a_checksum_is_refused(tmp_path: Path) -> None:
    """A checkpoint as neve_tune wrote it before 0.1.0: nothing vouches for its bytes."""
    path = tmp_path / "old.pt"
    run_trial(
        load_study("digits").replace(data="synthetic", max_epochs=1),
        {},
        checkpoint_path=path,
        evaluate_test=False,
    )
    torch.save(load_checkpoint(path), path)
    with pytest.raises(
        CheckpointError,
        match=r"has no checksum \(a neve_tune checkpoint of a neve_tune before 0.1.0",
    ):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="has no checksum"):
        run_trial(
            load_study("digits").replace(data="synthetic", max_epochs=2),
            {},
            checkpoint_path=path,
            evaluate_test=False,
        )


def test_a_failed_write_names_the_file_and_keeps_the_previous_checkpoint(
    tmp_path: Path, monkeypatch
) -> None:
    path = tmp_path / "c.pt"
    save_checkpoint(path, {"epoch": 1})

    def disk_full(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(checkpoint_module.os, "fsync", disk_full)
    with pytest.raises(CheckpointWriteError) as caught:
        save_checkpoint(path, {"epoch": 2})
    assert (
        str(caught.value)
        == f"cannot write checkpoint {str(path)!r}: No space left on device (ENOSPC)"
    )
    assert caught.value.errno == errno.ENOSPC
    assert load_state_file(path, ("epoch",), "state") == {"epoch": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"], "no temporary file left behind"


# ------------------------------------------------------------------ run_trial
@pytest.mark.parametrize("how", ["middle", "truncated"])
def test_run_trial_starts_over_from_a_damaged_checkpoint(tmp_path: Path, how: str, caplog) -> None:
    study = load_study("digits").replace(max_epochs=4)
    reference = run_trial(study, PARAMS, evaluate_test=False)
    path = tmp_path / "trial.pt"
    with pytest.raises(Killed):
        run_trial(
            study, PARAMS, checkpoint_path=path, on_epoch=_killed_after(2), evaluate_test=False
        )
    damage(path, how)
    with caplog.at_level(logging.WARNING, logger="neve_tune"):
        resumed = run_trial(study, PARAMS, checkpoint_path=path, evaluate_test=False)
    lines = [r.getMessage() for r in caplog.records if r.name == "neve_tune"]
    assert (
        len(lines) == 1
        and f"checkpoint {str(path)!r} is damaged" in lines[0]
        and "starts over" in lines[0]
    )
    assert [m["velocity"] for m in resumed.history] == [m["velocity"] for m in reference.history]
    assert [m["train_loss"] for m in resumed.history] == [
        m["train_loss"] for m in reference.history
    ]
    assert resumed.objective == reference.objective
    assert load_checkpoint(path)["epoch"] == reference.epochs, (
        "the damaged file was replaced by good ones"
    )


def _train_argv(path: Path, max_epochs: int = 2) -> list[str]:
    """`neve-tune train` on the synthetic data, checkpointed at ``path``."""
    return [
        "train",
        "--data",
        "synthetic",
        "--max-epochs",
        str(max_epochs),
        "--device",
        "cpu",
        "--quiet",
        "--checkpoint",
        str(path),
    ]


def test_train_cli_starts_over_from_a_damaged_checkpoint(tmp_path: Path, capsys) -> None:
    path = tmp_path / "run.pt"
    assert main(_train_argv(path)) == 0
    damage(path, "middle")
    capsys.readouterr()
    assert main(_train_argv(path, max_epochs=3)) == 0
    out, err = capsys.readouterr()
    assert f"checkpoint {str(path)!r} is damaged" in err and len(err.strip().splitlines()) == 1
    assert "epochs=3" in out and load_checkpoint(path)["epoch"] == 3


# ------------------------------------------------------------------ the Optuna worker
def _failed_trial_with_checkpoint(tmp_path: Path, url: str, study_file: str) -> Path:
    """Trial 0 of study 'tiny' ran 3 epochs (checkpointed), reported 2, and its worker died;
    it is re-queued as trial 1, as the heartbeat does. Its checkpoint's path."""
    search = optuna.create_study(study_name="tiny", storage=url)
    search.enqueue_trial(PARAMS)
    trial = search.ask()
    ckpt = checkpoint_path_for(tmp_path / "ckpt", trial)
    with pytest.raises(Killed):
        run_trial(
            load_study(study_file),
            PARAMS,
            checkpoint_path=ckpt,
            evaluate_test=False,
            on_epoch=_killed_after(3, lambda m: m["epoch"] < 3 and report_epoch(trial, m)),
        )
    search.tell(trial, state=TrialState.FAIL)
    with pytest.warns(optuna.exceptions.ExperimentalWarning):
        retry = optuna.storages.RetryHeartbeatStaleTrialCallback(inherit_intermediate_values=True)
    retry(search, search.trials[0])
    return ckpt


def _worker(study_file: str, url: str, tmp_path: Path) -> list[str]:
    return [
        "optuna",
        "worker",
        study_file,
        "--storage",
        url,
        "--trials",
        "1",
        "--threads",
        "1",
        "--checkpoint-dir",
        str(tmp_path / "ckpt"),
        "--quiet",
    ]


@pytest.mark.parametrize("how", ["middle", "truncated"])
def test_a_worker_retries_a_trial_with_a_damaged_checkpoint_from_scratch(
    tmp_path: Path, how: str, capsys
) -> None:
    study_file = tmp_path / "tiny.py"
    study_file.write_text(STUDY_FILE)
    url = f"sqlite:///{tmp_path / 's.db'}"
    ckpt = _failed_trial_with_checkpoint(tmp_path, url, str(study_file))
    damage(ckpt, how)
    capsys.readouterr()
    assert main(_worker(str(study_file), url, tmp_path)) == 0
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert f"checkpoint {str(ckpt)!r} is damaged" in err and "starts over from epoch 0" in err
    retried = optuna.load_study(study_name="tiny", storage=url).trials[1]
    assert retried.state == TrialState.COMPLETE and retried.system_attrs["failed_trial"] == 0
    assert "resumed_from_epoch" not in retried.user_attrs, (
        "nothing was resumed from the damaged file"
    )
    assert_resumed_like_uninterrupted(retried, str(study_file), PARAMS)


def test_a_worker_that_cannot_write_a_checkpoint_requeues_its_trial(
    tmp_path: Path, capsys, monkeypatch
) -> None:
    """Disk full at epoch 2's checkpoint: one line naming the file, exit 1, the trial
    failed and re-queued (no Optuna traceback, nothing RUNNING); the next worker resumes
    it from epoch 1 and ends with the uninterrupted series."""
    study_file = tmp_path / "tiny.py"
    study_file.write_text(STUDY_FILE)
    url = f"sqlite:///{tmp_path / 's.db'}"
    optuna.create_study(study_name="tiny", storage=url).enqueue_trial(PARAMS)
    real_fsync, writes = os.fsync, []

    def full_at_the_second_write(fd: int) -> None:
        writes.append(fd)
        if len(writes) == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    monkeypatch.setattr(checkpoint_module.os, "fsync", full_at_the_second_write)
    capsys.readouterr()
    assert main(_worker(str(study_file), url, tmp_path)) == 1
    monkeypatch.undo()
    err = capsys.readouterr().err
    ckpt = tmp_path / "ckpt" / "tiny" / "trial_000000.pt"
    assert err.strip().splitlines() == [
        f"neve-tune optuna: error: cannot write checkpoint {str(ckpt)!r}: No space left on device "
        "(ENOSPC); trial 0 re-queued as trial 1, checkpoint kept at epoch 1"
    ]
    states = [t.state for t in optuna.load_study(study_name="tiny", storage=url).trials]
    assert states == [TrialState.FAIL, TrialState.WAITING]

    assert main(_worker(str(study_file), url, tmp_path)) == 0
    assert capsys.readouterr().err == ""
    retried = optuna.load_study(study_name="tiny", storage=url).trials[1]
    assert retried.state == TrialState.COMPLETE and retried.user_attrs["resumed_from_epoch"] == 1
    assert_resumed_like_uninterrupted(retried, str(study_file), PARAMS)


def test_a_read_only_database_is_refused_before_any_trial(tmp_path: Path, capsys) -> None:
    """SQLite opened read-only (``mode=ro``: what a read-only mount gives): one line naming
    the storage, exit 2, no trial, no checkpoint, no Optuna traceback."""
    study_file = tmp_path / "tiny.py"
    study_file.write_text(STUDY_FILE)
    db = tmp_path / "s.db"
    optuna.create_study(study_name="tiny", storage=f"sqlite:///{db}")
    url = f"sqlite:///file:{db}?mode=ro&uri=true"
    capsys.readouterr()
    assert main(_worker(str(study_file), url, tmp_path)) == 2
    out, err = capsys.readouterr()
    assert err.strip().splitlines() == [
        f"neve-tune optuna: error: storage {url!r} cannot be written: "
        "OperationalError: (sqlite3.OperationalError) attempt to write a readonly database"
    ], err
    assert out == "" and not (tmp_path / "ckpt").exists()
    assert optuna.load_study(study_name="tiny", storage=f"sqlite:///{db}").trials == []


def test_a_worker_refuses_a_checkpoint_without_checksum_and_requeues_the_trial(
    tmp_path: Path, capsys
) -> None:
    """A retried trial whose checkpoint was written before 0.1.0: refused in one line
    naming it (exit 1, no traceback), the trial re-queued rather than failed for good."""
    study_file = tmp_path / "tiny.py"
    study_file.write_text(STUDY_FILE)
    url = f"sqlite:///{tmp_path / 's.db'}"
    ckpt = _failed_trial_with_checkpoint(tmp_path, url, str(study_file))
    torch.save(load_checkpoint(ckpt), ckpt)  # the same state, as neve_tune wrote it before 0.1.0
    capsys.readouterr()
    assert main(_worker(str(study_file), url, tmp_path)) == 1
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [
        f"neve-tune optuna: error: checkpoint_path {str(ckpt)!r} has no checksum (a neve_tune "
        "checkpoint of a neve_tune before 0.1.0?), so nothing vouches for its bytes; delete it to "
        "start over, or pass another path; trial 1 re-queued as trial 2, checkpoint kept at epoch 2"
    ]
    states = [t.state for t in optuna.load_study(study_name="tiny", storage=url).trials]
    assert states == [TrialState.FAIL, TrialState.FAIL, TrialState.WAITING]


def test_train_cli_says_disk_full_in_one_line(tmp_path: Path, capsys, monkeypatch) -> None:
    def disk_full(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(checkpoint_module.os, "fsync", disk_full)
    path = tmp_path / "run.pt"
    capsys.readouterr()
    assert main(_train_argv(path)) == 1
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [
        f"neve-tune train: error: cannot write checkpoint {str(path)!r}: "
        "No space left on device (ENOSPC)"
    ]
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------ the Ray trainable
@pytest.mark.filterwarnings(
    "ignore:`get_trial_resources` is meant to only be called"
)  # no Tune session here
@pytest.mark.parametrize("how", ["intact", "middle", "truncated"])
def test_a_ray_trial_restored_from_a_damaged_checkpoint_reports_what_tune_lacks(
    tmp_path: Path, how: str, monkeypatch, caplog
) -> None:
    """Tune restores a trial from its checkpoint of epoch 2. Intact: it resumes at epoch 3.
    Damaged: it starts over, but reports only epochs 3 and 4 again (Tune has 1 and 2), with
    the values of an uninterrupted run. No Ray runs: Tune's calls are stand-ins."""
    pytest.importorskip("ray.tune")
    import ray
    from ray import tune

    from neve_tune.ray import neve_trainable
    from neve_tune.ray._trainable import CHECKPOINT_FILE, EPOCH_FILE

    study = load_study("digits").replace(max_epochs=4)
    reference = run_trial(study, PARAMS, evaluate_test=False)
    folder = tmp_path / "tune_checkpoint"
    folder.mkdir()
    with pytest.raises(Killed):
        run_trial(
            study,
            PARAMS,
            checkpoint_path=folder / CHECKPOINT_FILE,
            on_epoch=_killed_after(2),
            evaluate_test=False,
        )
    (folder / EPOCH_FILE).write_text('{"epoch": 2}')
    if how != "intact":
        damage(folder / CHECKPOINT_FILE, how)
    reports: list[dict] = []
    monkeypatch.setattr(tune, "get_checkpoint", lambda: tune.Checkpoint.from_directory(str(folder)))
    monkeypatch.setattr(
        tune, "report", lambda metrics, checkpoint=None: reports.append(dict(metrics))
    )
    monkeypatch.setattr(
        ray, "get_runtime_context", lambda: type("Context", (), {"get_node_id": lambda self: "n"})()
    )
    with caplog.at_level(logging.WARNING, logger="neve_tune"):
        neve_trainable(study)(dict(PARAMS))
    assert [r["epoch"] for r in reports] == [3, 4] and reports[-1]["done"]
    for r in reports:
        expected = reference.history[r["epoch"] - 1]
        assert (r["velocity"], r["train_loss"]) == (expected["velocity"], expected["train_loss"])
    warned = [r.getMessage() for r in caplog.records if r.name == "neve_tune"]
    assert len(warned) == (0 if how == "intact" else 1)


@pytest.mark.parametrize(
    "tell_fails", [False, True], ids=["requeued", "storage-refuses-the-fail-too"]
)
def test_a_storage_that_stops_taking_writes_mid_trial_is_one_line(
    tmp_path: Path, capsys, monkeypatch, tell_fails: bool
) -> None:
    """The database is full when epoch 2 is reported: one line, exit 1, never Optuna's
    ``AssertionError: Should not reach.``. The trial is re-queued; when the storage refuses
    even that, it stays RUNNING for the heartbeat to retry, and the line says so."""
    import sqlite3

    from sqlalchemy.exc import OperationalError

    import neve_tune.optuna._objective as objective_module

    study_file = tmp_path / "tiny.py"
    study_file.write_text(STUDY_FILE)
    url = f"sqlite:///{tmp_path / 's.db'}"
    optuna.create_study(study_name="tiny", storage=url).enqueue_trial(PARAMS)
    real_report = objective_module.report_epoch
    full = OperationalError(
        "UPDATE trials", {}, sqlite3.OperationalError("database or disk is full")
    )

    def full_at_epoch_2(trial, metrics, **kw):
        if metrics["epoch"] == 2:
            raise full
        return real_report(trial, metrics, **kw)

    monkeypatch.setattr(objective_module, "report_epoch", full_at_epoch_2)
    if tell_fails:
        monkeypatch.setattr(
            optuna.Study,
            "tell",
            lambda *a, **k: (_ for _ in ()).throw(
                optuna.exceptions.StorageInternalError("An exception is raised during the commit.")
            ),
        )
    capsys.readouterr()
    assert main(_worker(str(study_file), url, tmp_path)) == 1
    err = capsys.readouterr().err
    cause = (
        "the storage failed mid-trial (OperationalError: (sqlite3.OperationalError) "
        "database or disk is full)"
    )
    after = (
        "trial 0 left RUNNING (the storage takes no writes): a worker with heartbeats retries it "
        "once it does"
        if tell_fails
        else "trial 0 re-queued as trial 1, checkpoint kept at epoch 1"
    )
    assert err.strip().splitlines() == [f"neve-tune optuna: error: {cause}; {after}"], err
    monkeypatch.undo()
    states = [t.state for t in optuna.load_study(study_name="tiny", storage=url).trials]
    assert states == ([TrialState.RUNNING] if tell_fails else [TrialState.FAIL, TrialState.WAITING])
