"""A worker: runs trials of a study file against a shared Optuna study."""

from __future__ import annotations

import os
import time
from typing import Any, Callable, Sequence

import optuna
import torch
from optuna.pruners import BasePruner, SuccessiveHalvingPruner
from optuna.trial import FrozenTrial, TrialState

from .._checks import check_choice, check_float, check_int
from ..study import Study, load_study
from ..trial import resolve_device
from ._objective import OBJECTIVE_METHODS, make_objective
from ._pruner import NeVePruner
from ._storage import make_storage, redact_url, storage_kind

__all__ = ["run_worker", "open_study", "StudyNotFoundError", "METHOD_ATTR", "format_trial"]

METHOD_ATTR = "neve_method"  # study user attribute: the method every worker must run


class StudyNotFoundError(LookupError):
    """The study does not exist in the storage (and ``create`` was not asked)."""


def open_study(
    study_name: str,
    storage: str | None,
    *,
    create: bool = False,
    direction: str = "minimize",
    sampler: optuna.samplers.BaseSampler | None = None,
    pruner: BasePruner | None = None,
    heartbeat_interval: int | None = 60,
    grace_period: int | None = None,
    max_retry: int | None = 3,
) -> optuna.Study:
    """Load ``study_name`` from ``storage`` (a URL, see :func:`make_storage`); create it
    when ``create`` or when the storage is in-memory. Raises :class:`StorageError` for an
    unreachable storage and :class:`StudyNotFoundError` for a missing study, both with
    the password redacted."""
    backend = make_storage(storage, heartbeat_interval=heartbeat_interval, grace_period=grace_period, max_retry=max_retry)
    if backend is None or create:
        check_choice("direction", direction, ("minimize", "maximize"))
        return optuna.create_study(
            study_name=study_name,
            storage=backend,
            direction=direction,
            sampler=sampler,
            pruner=pruner,
            load_if_exists=True,
        )
    try:
        return optuna.load_study(study_name=study_name, storage=backend, sampler=sampler, pruner=pruner)
    except KeyError:
        try:
            known = [s.study_name for s in optuna.get_all_study_summaries(backend, include_best_trial=False)]
        except Exception:  # pragma: no cover - the listing is only a hint
            known = []
        raise StudyNotFoundError(
            f"study {study_name!r} does not exist in storage {redact_url(storage)!r} (studies there: {known}); "
            f"create it with `optuna create-study --study-name {study_name} --storage URL --direction minimize`, "
            "or pass --create"
        ) from None


def format_trial(trial: FrozenTrial) -> str:
    """One line per finished trial: number, state, value, epochs, test accuracy, params."""
    a = trial.user_attrs
    value = "-" if trial.value is None else f"{trial.value:.5g}"
    acc = a.get("test_acc")
    params = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in trial.params.items())
    dur = trial.duration.total_seconds() if trial.duration is not None else float("nan")
    return (
        f"trial {trial.number} {trial.state.name} value={value} epochs={a.get('epochs', '-')} "
        f"stopped_by={a.get('stopped_by', '-')} test_acc={'-' if acc is None else f'{acc:.4f}'} {params} [{dur:.1f}s]"
    )


def _check_method(study: optuna.Study, method: str) -> None:
    stored = study.user_attrs.get(METHOD_ATTR)
    if stored is None:
        study.set_user_attr(METHOD_ATTR, method)
        stored = study.user_attrs.get(METHOD_ATTR)
    if stored != method:
        raise ValueError(
            f"study {study.study_name!r} runs method {stored!r} (stored in its user attribute {METHOD_ATTR!r}); "
            f"this worker was started with method {method!r}: use --method {stored}"
        )


def run_worker(
    study_file: Study | str | os.PathLike,
    *,
    study_name: str | None = None,
    storage: str | None = None,
    n_trials: int | None = None,
    timeout: float | None = None,
    total_trials: int | None = None,
    method: str = "neve",
    seed: int = 0,
    device: str | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    keep_checkpoints: bool = False,
    pruner: BasePruner | None = None,
    pruner_options: dict[str, Any] | None = None,
    sampler_seed: int | None = None,
    create: bool = False,
    direction: str = "minimize",
    heartbeat_interval: int | None = 60,
    grace_period: int | None = None,
    max_retry: int | None = 3,
    torch_threads: int | None = None,
    changes: dict[str, Any] | None = None,
    log: Callable[[str], None] | None = print,
    callbacks: Sequence[Callable[[optuna.Study, FrozenTrial], None]] = (),
) -> optuna.Study:
    """Run trials of ``study_file`` against the Optuna study ``study_name`` in ``storage``.

    This is what ``neve-tune optuna worker`` runs on each machine. ``n_trials`` trials (or
    until ``timeout`` seconds; or until the study holds ``total_trials`` finished trials)
    are sampled by TPE and trained by :func:`make_objective`. The pruner is a
    :class:`NeVePruner` (``method="neve"``; settings from ``pruner_options``, else those
    stored in the study, else the defaults) or Optuna's ``SuccessiveHalvingPruner`` on
    validation loss (the ``"asha"`` baselines). With an RDB storage, trials send
    heartbeats and a trial whose worker died is retried and resumes from its checkpoint
    under ``checkpoint_dir`` (shared storage when the workers run on several machines).
    ``changes`` overrides fields of the study file (e.g. ``{"max_epochs": 5}``).

    Raises :class:`StorageError`, :class:`StudyNotFoundError`, ``ValueError`` (conflicting
    settings, bad arguments) and ``FileNotFoundError`` (unknown study file).

    Example::

        >>> from neve_tune.optuna import run_worker
        >>> search = run_worker("digits", n_trials=2, changes={"max_epochs": 2}, log=None)
        >>> len(search.trials)
        2
    """
    study = load_study(study_file)
    if changes:
        study = study.replace(**changes)
    study.validate()
    check_choice("method", method, OBJECTIVE_METHODS)
    n_trials = check_int("n_trials", n_trials, minimum=1, allow_none=True)
    total_trials = check_int("total_trials", total_trials, minimum=1, allow_none=True)
    torch_threads = check_int("torch_threads", torch_threads, minimum=1, allow_none=True)
    timeout = check_float("timeout", timeout, positive=True, allow_none=True)
    resolve_device(device)  # an unknown or absent device fails here, not as a FAIL trial
    if torch_threads is not None:
        torch.set_num_threads(torch_threads)
    data = study.load_data()  # fail here, not inside a trial, when the data set is missing
    study_name = study_name or study.name
    sampler = optuna.samplers.TPESampler(seed=sampler_seed)
    search = open_study(
        study_name,
        storage,
        create=create,
        direction=direction,
        sampler=sampler,
        heartbeat_interval=heartbeat_interval,
        grace_period=grace_period,
        max_retry=max_retry,
    )
    if len(search.directions) != 1:
        raise ValueError(f"study {study_name!r} has {len(search.directions)} objectives; a worker needs a single-objective study")
    _check_method(search, method)
    if pruner is None:
        if method == "neve":
            pruner = NeVePruner.from_study(search, **(pruner_options or {}))
        else:
            if pruner_options:
                raise ValueError(f"pruner options {sorted(pruner_options)} apply to method 'neve' only")
            pruner = SuccessiveHalvingPruner(min_resource=1, reduction_factor=4)
    if isinstance(pruner, NeVePruner):
        pruner.bind(search)  # refuse now, not in the middle of a trial
    search.pruner = pruner

    if checkpoint_dir is None and storage_kind(storage) == "rdb" and heartbeat_interval is not None:
        if log:
            log("note: no checkpoint directory, so a retried trial restarts from epoch 0 (pass --checkpoint-dir)")
    objective = make_objective(
        study,
        method=method,
        seed=seed,
        device=device,
        checkpoint_dir=checkpoint_dir,
        data=data,
        keep_checkpoints=keep_checkpoints,
    )
    mine: list[int] = []

    def on_finish(s: optuna.Study, t: FrozenTrial) -> None:
        mine.append(t.number)
        if log:
            log(format_trial(t))

    cbs: list[Callable[[optuna.Study, FrozenTrial], None]] = [on_finish, *callbacks]
    if total_trials is not None:
        cbs.append(optuna.study.MaxTrialsCallback(total_trials, states=(TrialState.COMPLETE, TrialState.PRUNED)))
        if n_trials is None and timeout is None:
            n_trials = total_trials
    if log:
        log(
            f"worker {os.getpid()}: study {study_name!r} in {redact_url(storage)}, method={method}, "
            f"pruner={pruner!r}, trials={n_trials if n_trials is not None else 'unbounded'}"
        )
    t0 = time.perf_counter()
    search.optimize(objective, n_trials=n_trials, timeout=timeout, callbacks=cbs, gc_after_trial=False)
    if log:
        counts = {s.name: 0 for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING, TrialState.WAITING)}
        for t in search.get_trials(deepcopy=False):
            counts[t.state.name] = counts.get(t.state.name, 0) + 1
        line = f"worker {os.getpid()}: ran {len(mine)} trials in {time.perf_counter() - t0:.1f}s; study: " + ", ".join(
            f"{k.lower()}={v}" for k, v in counts.items() if v
        )
        try:
            best = search.best_trial
            line += f"; best trial {best.number} value={best.value:.5g} params={best.params}"
        except ValueError:
            pass
        log(line)
    return search

