"""Workers on a shared PostgreSQL study: two at once, and one killed mid-trial.

The server comes from ``NEVE_TEST_POSTGRES_URL`` (``source .ci/postgres.sh``) or is
started by the ``postgres_url`` fixture (tests/_postgres.py).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from neve_tune.optuna import trial_history
from neve_tune.optuna._storage import normalize_url

try:
    from tests._postgres import postgres_url  # noqa: F401
except ImportError:  # tests/ is not a package: pytest puts it on sys.path
    from _postgres import postgres_url  # noqa: F401
try:
    from tests._studies import (
        assert_resumed_like_uninterrupted,
        signal_when_reported,
        slow_probe_study,
    )
except ImportError:  # tests/ is not a package: pytest puts it on sys.path
    from _studies import assert_resumed_like_uninterrupted, signal_when_reported, slow_probe_study

optuna.logging.set_verbosity(optuna.logging.WARNING)
pytestmark = pytest.mark.postgres

BIN = Path(sys.executable).parent
NEVE = (
    [str(BIN / "neve-tune")]
    if (BIN / "neve-tune").exists()
    else [sys.executable, "-m", "neve_tune.cli"]
)
OPTUNA = str(BIN / "optuna")

TINY = """
from neve_tune import Choice, LogUniform, Study

STUDY = Study(
    name="tiny",
    data="digits",
    search_space={
        "lr": LogUniform(0.01, 0.2),
        "threshold": LogUniform(1e-4, 1e-2),
        "batch_size": Choice([64, 128]),
    },
    max_epochs=2,
)
"""

SLOW = slow_probe_study(8)


def _create_study(url: str, name: str) -> None:
    """Exactly what a user runs first: ``optuna create-study``."""
    proc = subprocess.run(
        [
            OPTUNA,
            "create-study",
            "--study-name",
            name,
            "--storage",
            normalize_url(url),
            "--direction",
            "minimize",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]


PARAMS = {"lr": 0.05, "threshold": 1e-4, "batch_size": 128}


def _queued_slow_trial(
    url: str, tmp_path: Path, prefix: str
) -> tuple[str, Path, optuna.storages.RDBStorage]:
    """A fresh study with one queued trial (``PARAMS``) of the slow-probe study file."""
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    _create_study(url, name)
    study_file = tmp_path / "slow.py"
    study_file.write_text(SLOW)
    storage = _storage(url)
    optuna.load_study(study_name=name, storage=storage).enqueue_trial(PARAMS)
    return name, study_file, storage


def _reported(storage: optuna.storages.RDBStorage, name: str):
    """The epochs the study's first trial has reported, read from the storage."""

    def count() -> int:
        trials = storage.get_all_trials(storage.get_study_id_from_name(name))
        return len(trials[0].intermediate_values) if trials else 0

    return count


def _storage(url: str) -> optuna.storages.RDBStorage:
    return optuna.storages.RDBStorage(normalize_url(url))


def _worker_cmd(study_file: Path, name: str, url: str, tmp_path: Path, *extra: str) -> list[str]:
    return [
        *NEVE,
        "optuna",
        "worker",
        str(study_file),
        "--study-name",
        name,
        "--storage",
        url,
        "--threads",
        "1",
        "--checkpoint-dir",
        str(tmp_path / "ckpt"),
        *extra,
    ]


@pytest.mark.slow
def test_two_workers_share_a_study(postgres_url, tmp_path) -> None:
    name = f"two_workers_{uuid.uuid4().hex[:8]}"
    _create_study(postgres_url, name)
    study_file = tmp_path / "tiny.py"
    study_file.write_text(TINY)
    # one sampler seed for both: each trial's TPE is seeded from it and the trial number
    cmd = _worker_cmd(
        study_file,
        name,
        postgres_url,
        tmp_path,
        "--trials",
        "2",
        "--heartbeat-interval",
        "5",
        "--sampler-seed",
        "7",
    )
    procs = [
        subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
        password = re.match(r".*://[^:]*:([^@]*)@", postgres_url)
        if password:
            assert password.group(1) not in out + err  # never printed

    search = optuna.load_study(study_name=name, storage=_storage(postgres_url))
    trials = search.get_trials(deepcopy=False)
    assert len(trials) == 4  # none lost
    assert sorted(t.number for t in trials) == list(range(4))
    assert (
        len({tuple(sorted(t.params.items())) for t in trials}) == 4
    )  # no configuration trained twice
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
    # none run twice: each trial finished in exactly one worker, 2 each
    ran = [
        set(int(n) for n in re.findall(r"^trial (\d+) (?:COMPLETE|PRUNED)", out, re.M))
        for out, _ in outs
    ]
    assert [len(r) for r in ran] == [2, 2]
    assert ran[0].isdisjoint(ran[1]) and ran[0] | ran[1] == set(range(4))
    assert len({t.user_attrs["worker"] for t in trials}) == 2
    # both workers pruned by the one rule stored in the study
    assert (
        search.user_attrs["neve_pruner"]["rung_signal"] == "auto"
    )  # a new study takes the study file's rung signal
    for t in trials:
        assert len(trial_history(t)) == t.user_attrs["epochs"] == len(t.intermediate_values)


@pytest.mark.slow
def test_killed_worker_trial_is_retried_and_resumes(postgres_url, tmp_path) -> None:
    name, study_file, storage = _queued_slow_trial(postgres_url, tmp_path, "kill")

    recovery = ("--trials", "1", "--heartbeat-interval", "1", "--heartbeat-grace-period", "2")
    first = subprocess.Popen(
        _worker_cmd(study_file, name, postgres_url, tmp_path, *recovery),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    killed_after = None
    try:
        killed_after = signal_when_reported(
            first, _reported(storage, name), 3, signal.SIGKILL
        )  # mid-trial
    finally:
        if first.poll() is None and killed_after is None:
            first.kill()
        _, err = first.communicate(timeout=60)
    assert killed_after is not None, f"the worker ended before it could be killed: {err[-2000:]}"

    time.sleep(3)  # past the grace period: the killed trial's heartbeat is stale
    second = subprocess.run(
        _worker_cmd(study_file, name, postgres_url, tmp_path, *recovery),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert second.returncode == 0, second.stderr[-3000:]

    trials = optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE]
    killed, retried = trials
    assert retried.params == killed.params == PARAMS
    assert retried.system_attrs["failed_trial"] == 0
    resumed = retried.user_attrs["resumed_from_epoch"]
    assert resumed >= killed_after  # it continued from the checkpoint, not from epoch 0
    # the epochs before the kill were not trained again: their records are the killed trial's
    assert trial_history(retried)[:killed_after] == trial_history(killed)[:killed_after]

    # the series equal an uninterrupted trial's
    reference = assert_resumed_like_uninterrupted(retried, study_file, PARAMS)
    assert retried.value == pytest.approx(reference.objective)
    assert not any((tmp_path / "ckpt").rglob("*.pt"))  # checkpoint removed once finished
    assert os.path.isdir(tmp_path / "ckpt")


@pytest.mark.slow
def test_ctrl_c_on_a_worker_keeps_its_trial_for_the_next_worker(postgres_url, tmp_path) -> None:
    """SIGINT mid-epoch: one line, exit 130, the trial re-queued at once (no grace period to
    wait), and the next worker resumes it from its checkpoint with the uninterrupted series."""
    name, study_file, storage = _queued_slow_trial(postgres_url, tmp_path, "ctrl_c")
    recovery = ("--trials", "1", "--heartbeat-interval", "1", "--heartbeat-grace-period", "60")
    first = subprocess.Popen(
        _worker_cmd(study_file, name, postgres_url, tmp_path, *recovery),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        stopped_after = signal_when_reported(
            first, _reported(storage, name), 3, signal.SIGINT, pause=0.3
        )
        _, err = first.communicate(timeout=120)
    finally:
        if first.poll() is None:
            first.kill()
    assert stopped_after is not None, "the worker ended before it could be stopped"
    assert (
        first.returncode == 130 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    ), err
    assert "stopped by SIGINT: trial 0 re-queued as trial 1" in err

    # the grace period is 60 s: only the immediate re-queue lets this worker resume it now
    second = subprocess.run(
        _worker_cmd(study_file, name, postgres_url, tmp_path, *recovery),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert second.returncode == 0, second.stderr[-3000:]
    stopped, retried = optuna.load_study(study_name=name, storage=storage).get_trials(
        deepcopy=False
    )
    assert (stopped.state, retried.state) == (TrialState.FAIL, TrialState.COMPLETE)
    assert retried.params == PARAMS and retried.system_attrs["failed_trial"] == 0
    assert retried.user_attrs["resumed_from_epoch"] >= stopped_after
    assert_resumed_like_uninterrupted(retried, study_file, PARAMS)
