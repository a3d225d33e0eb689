"""A worker stopped politely keeps its trial; workers given one sampler seed sample apart.

Ctrl-C (SIGINT) or SIGTERM on ``neve-tune optuna worker`` mid-epoch: one line, exit 130,
the trial re-queued with its checkpoint, and the next worker resumes it with the velocity
series of an uninterrupted run (tested the way ``kill -9`` is, in test_optuna_postgres.py).
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from neve_tune.optuna import TrialSeededTPESampler, trial_history
from neve_tune.optuna._stop import Abandon, PoliteStop

try:
    from tests._studies import (
        assert_resumed_like_uninterrupted,
        signal_when_reported,
        slow_probe_study,
    )
except ImportError:  # tests/ is not a package: pytest puts it on sys.path
    from _studies import assert_resumed_like_uninterrupted, signal_when_reported, slow_probe_study

optuna.logging.set_verbosity(optuna.logging.WARNING)

BIN = Path(sys.executable).parent
NEVE = (
    [str(BIN / "neve-tune")]
    if (BIN / "neve-tune").exists()
    else [sys.executable, "-m", "neve_tune.cli"]
)

SLOW = slow_probe_study(6)


def _worker(study_file: Path, url: str, tmp_path: Path) -> list[str]:
    return [
        *NEVE,
        "optuna",
        "worker",
        str(study_file),
        "--storage",
        url,
        "--trials",
        "1",
        "--threads",
        "1",
        "--checkpoint-dir",
        str(tmp_path / "ckpt"),
        "--device",
        "cpu",
    ]


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_polite_stop_keeps_the_trial_and_the_next_worker_resumes_it(
    tmp_path: Path, signum: int
) -> None:
    study_file = tmp_path / "slow.py"
    study_file.write_text(SLOW)
    url = f"sqlite:///{tmp_path / 's.db'}"
    params = {"lr": 0.05, "threshold": 1e-4, "batch_size": 128}
    search = optuna.create_study(study_name="slow", storage=url)
    search.enqueue_trial(params)

    first = subprocess.Popen(
        _worker(study_file, url, tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )

    def reported() -> int:
        trials = search.get_trials(deepcopy=False)
        return len(trials[0].intermediate_values) if trials else 0

    try:
        stopped_after = signal_when_reported(
            first, reported, 2, signum, pause=0.3
        )  # into the next epoch's probe
        out, err = first.communicate(timeout=120)
    finally:
        if first.poll() is None:
            first.kill()
    assert stopped_after is not None, "the worker ended before it could be stopped"
    assert first.returncode == 130, err[-3000:]
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    assert f"stopped by {signal.Signals(signum).name}: trial 0 re-queued as trial 1" in err
    assert list((tmp_path / "ckpt").rglob("*.pt")), "the checkpoint is kept"
    assert not list((tmp_path / "ckpt").rglob("*.tmp*"))

    trials = search.get_trials(deepcopy=False)
    assert [t.state for t in trials] == [
        TrialState.FAIL,
        TrialState.WAITING,
    ]  # re-queued at once, no grace wait

    second = subprocess.run(
        _worker(study_file, url, tmp_path), capture_output=True, text=True, timeout=600
    )
    assert second.returncode == 0, second.stderr[-3000:]
    stopped, retried = search.get_trials(deepcopy=False)
    assert retried.state == TrialState.COMPLETE and retried.params == stopped.params == params
    assert retried.system_attrs["failed_trial"] == 0
    assert (
        retried.user_attrs["resumed_from_epoch"] >= stopped_after
    )  # from the checkpoint, not epoch 0
    assert trial_history(retried)[:stopped_after] == trial_history(stopped)[:stopped_after]

    reference = assert_resumed_like_uninterrupted(retried, study_file, params)
    assert retried.value == pytest.approx(reference.objective)
    assert not list((tmp_path / "ckpt").rglob("*.pt"))  # removed once the trial finished


def test_a_signal_while_writing_waits_for_the_write_then_stops() -> None:
    """Between the reports of an epoch nothing is left half-written."""
    stop = PoliteStop()
    written = []
    with stop.installed(), pytest.raises(Abandon):
        with stop.abandonable():
            with stop.writing():
                signal.raise_signal(signal.SIGINT)  # lands while writing: deferred
                written.append("rest of the write")
    assert written == ["rest of the write"] and stop.signal_name == "SIGINT"


def test_a_signal_while_training_abandons_at_once() -> None:
    stop = PoliteStop()
    reached = []
    before = {
        s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)
    }  # SIG_IGN in some CI shells
    with stop.installed(), pytest.raises(Abandon):
        with stop.abandonable():
            signal.raise_signal(signal.SIGTERM)
            reached.append("after the signal")
    assert reached == [] and stop.signal_name == "SIGTERM"
    assert {s: signal.getsignal(s) for s in before} == before  # handlers restored


def test_optimize_leaves_an_abandoned_trial_running() -> None:
    """Study.optimize catches Exception and KeyboardInterrupt only: a trial left by
    ``Abandon`` is neither failed nor logged by Optuna, so the worker re-queues it."""
    search = optuna.create_study()

    def objective(trial: optuna.Trial) -> float:
        raise Abandon()

    with pytest.raises(Abandon):
        search.optimize(objective, n_trials=1)
    assert search.trials[0].state == TrialState.RUNNING


# ------------------------------------------------------------------ distinct samples
def test_two_samplers_with_one_seed_sample_apart() -> None:
    storage = optuna.storages.InMemoryStorage()
    a = optuna.create_study(storage=storage, study_name="s", sampler=TrialSeededTPESampler(0))
    b = optuna.load_study(storage=storage, study_name="s", sampler=TrialSeededTPESampler(0))
    seen = []
    for _ in range(12):  # past TPE's 10 startup trials
        for study in (a, b):
            t = study.ask()
            x = (
                t.suggest_float("lr", 1e-3, 1.0, log=True),
                t.suggest_categorical("bs", [32, 64, 128]),
            )
            study.tell(t, x[0])
            seen.append(x)
    assert len(set(seen)) == len(seen) == 24


def test_one_seed_one_worker_is_reproducible() -> None:
    def run() -> list[float]:
        s = optuna.create_study(sampler=TrialSeededTPESampler(5))
        s.optimize(lambda t: t.suggest_float("x", -1, 1) ** 2, n_trials=12)
        return [t.params["x"] for t in s.trials]

    assert run() == run()


@pytest.mark.slow
def test_two_worker_processes_with_one_seed_train_distinct_configurations(tmp_path: Path) -> None:
    study_file = tmp_path / "tiny.py"
    study_file.write_text(
        SLOW.replace("max_epochs=6", "max_epochs=1").replace("time.sleep(0.2)", "pass")
    )
    url = f"sqlite:///{tmp_path / 's.db'}"
    optuna.create_study(study_name="slow", storage=url)
    cmd = [
        *NEVE,
        "optuna",
        "worker",
        str(study_file),
        "--storage",
        url,
        "--trials",
        "3",
        "--threads",
        "1",
        "--sampler-seed",
        "7",
        "--no-checkpoints",
        "--device",
        "cpu",
    ]
    procs = [
        subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-3000:]
    trials = optuna.load_study(study_name="slow", storage=url).get_trials(deepcopy=False)
    configs = {tuple(sorted(t.params.items())) for t in trials}
    assert len(trials) == 6 and len(configs) == 6
