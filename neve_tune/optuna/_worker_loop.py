"""A worker's trials run and reported: ``optimize`` under the polite-stop handlers (a trial
left behind is failed and re-queued), the callbacks after each trial (its line, the study's
total, a stop between trials) and the worker's closing line."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence

import optuna
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState

from ._objective import STORAGE_WRITE_ERRORS
from ._selection import record_selection, select_trial
from ._stop import Abandon, PoliteStop, TrialLeft, WorkerInterrupted

__all__ = ["closing_line", "format_trial", "optimize", "requeue", "trial_callbacks"]


def format_trial(trial: FrozenTrial) -> str:
    """One line per finished trial: number, state, value, epochs, test accuracy, params."""
    a = trial.user_attrs
    value = "-" if trial.value is None else f"{trial.value:.5g}"
    acc = a.get("test_acc")
    params = " ".join(
        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in trial.params.items()
    )
    dur = trial.duration.total_seconds() if trial.duration is not None else float("nan")
    return (
        f"trial {trial.number} {trial.state.name} value={value} epochs={a.get('epochs', '-')} "
        f"stopped_by={a.get('stopped_by', '-')} test_acc={'-' if acc is None else f'{acc:.4f}'} "
        f"{params} [{dur:.1f}s]"
    )


def trial_callbacks(
    mine: list[int],
    log: Callable[[str], None] | None,
    extra: Sequence[Callable[..., None]],
    total_trials: int | None,
    n_trials: int | None,
    timeout: float | None,
    stop: PoliteStop,
    held: int = 0,
) -> tuple[list[Callable[[optuna.Study, FrozenTrial], None]], int | None]:
    """The callbacks after each trial (its line, the study's total, a polite stop) and
    the trial count ``optimize`` runs (none when the study already ``held`` ``total_trials``
    complete or pruned trials)."""

    def on_finish(s: optuna.Study, t: FrozenTrial) -> None:
        mine.append(t.number)
        if log:
            log(format_trial(t))

    def stop_between_trials(s: optuna.Study, t: FrozenTrial) -> None:
        if stop.requested:
            s.stop()

    cbs: list[Callable[[optuna.Study, FrozenTrial], None]] = [
        on_finish,
        *extra,
        stop_between_trials,
    ]
    if total_trials is not None:
        cbs.append(
            optuna.study.MaxTrialsCallback(
                total_trials, states=(TrialState.COMPLETE, TrialState.PRUNED)
            )
        )
        if held >= total_trials:  # the callback counts only after a trial: run none
            n_trials = 0
        elif n_trials is None and timeout is None:
            n_trials = total_trials
    return cbs, n_trials


def optimize(
    search: optuna.Study,
    objective: Callable[[optuna.Trial], float],
    stop: PoliteStop,
    *,
    n_trials: int | None,
    timeout: float | None,
    callbacks: list[Callable[..., None]],
    max_retry: int | None,
) -> None:
    """``search.optimize`` under SIGINT/SIGTERM handlers: a trial left by a polite stop is
    failed and re-queued at once with the heartbeat's retry callback (its checkpoint,
    intermediate values and rung state carry over), then :class:`WorkerInterrupted`."""
    with stop.installed():
        try:
            search.optimize(
                objective,
                n_trials=n_trials,
                timeout=timeout,
                callbacks=callbacks,
                gc_after_trial=False,
            )
        except Abandon:
            pass
    left = getattr(objective, "left", None)
    if not stop.requested and left is None:
        return
    number = getattr(objective, "current_trial", None)
    if number is None or search.get_trials(deepcopy=False)[number].state != TrialState.RUNNING:
        raise WorkerInterrupted(stop.signal_name or "a signal")
    try:
        retry, epochs = requeue(search, number, max_retry)
    except STORAGE_WRITE_ERRORS:  # the storage takes no writes (full disk)
        if left is None:
            raise
        raise TrialLeft(left, number, stored=False) from None
    if left is not None:
        raise TrialLeft(left, number, retry, epochs)
    raise WorkerInterrupted(stop.signal_name or "a signal", number, retry, epochs)


def requeue(search: optuna.Study, number: int, max_retry: int | None) -> tuple[int | None, int]:
    """Fail the running trial ``number`` and re-queue it with the heartbeat's retry
    callback; (the retry's number or None, the epochs it reported)."""
    search.tell(number, state=TrialState.FAIL)
    failed = search.get_trials(deepcopy=False)[number]
    before = {t.number for t in search.get_trials(deepcopy=False)}
    with warnings.catch_warnings():  # "experimental" since Optuna 2.8
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        RetryHeartbeatStaleTrialCallback(max_retry=max_retry, inherit_intermediate_values=True)(
            search, failed
        )
    added = sorted({t.number for t in search.get_trials(deepcopy=False)} - before)
    return (added[0] if added else None), max(failed.intermediate_values, default=0)


def closing_line(
    search: optuna.Study, ran: int, seconds: float, selection: str = "objective"
) -> str:
    """The worker's last line: its trials, the study's states, the winning trial
    (:func:`~neve_tune.optuna.select_trial` by the study's ``selection``) and the rule that
    picked it, also stored in the study user attribute ``neve_selection``."""
    counts = {
        s.name: 0
        for s in (
            TrialState.COMPLETE,
            TrialState.PRUNED,
            TrialState.FAIL,
            TrialState.RUNNING,
            TrialState.WAITING,
        )
    }
    for t in search.get_trials(deepcopy=False):
        counts[t.state.name] = counts.get(t.state.name, 0) + 1
    line = f"worker {os.getpid()}: ran {ran} trials in {seconds:.1f}s; study: " + ", ".join(
        f"{k.lower()}={v}" for k, v in counts.items() if v
    )
    best, decision = select_trial(search, selection)
    if best is not None:
        record_selection(search, best, decision, by="worker")
        line += (
            f"; best trial {best.number} ({decision.reason}) value={best.value:.5g} "
            f"params={best.params}"
        )
    return line
