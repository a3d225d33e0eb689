"""A worker: runs trials of a study file against a shared Optuna study.

The rules :func:`run_worker` follows (``neve-tune optuna worker`` on each machine):

- **Sampling**: TPE. With ``sampler_seed``, each trial's TPE is seeded from it and the
  trial number (:class:`~neve_tune.optuna.TrialSeededTPESampler`), so workers given one
  seed never sample alike; without, every worker seeds from the OS.
- **Training**: :func:`~neve_tune.optuna.make_objective` (NeVe, or the validation
  baselines ``"asha"``/``"asha_es"``). The objective is a loss, so a study must minimize.
- **Pruning**: a :class:`~neve_tune.optuna.NeVePruner` for ``method="neve"`` (settings
  from the ``pruner`` dict, else those stored in the study, else the defaults), Optuna's
  ``SuccessiveHalvingPruner`` on validation loss for the baselines; a ``BasePruner``
  given as ``pruner`` is used as it is.
- **Recovery** (:class:`~neve_tune.optuna.RecoveryConfig`): with an RDB storage, trials
  send heartbeats every ``heartbeat_interval`` s; a trial silent for
  ``heartbeat_grace_period`` s (its worker died) is retried and resumes from its
  checkpoint under ``checkpoint_dir`` (shared storage when the workers run on several
  machines).
- **Polite stops**: SIGINT/SIGTERM leave the running trial with its checkpoint and
  re-queue it at once (:mod:`neve_tune.optuna._stop`), then :class:`WorkerInterrupted`
  (a ``KeyboardInterrupt``) is raised.
- **Checkpoints that fail**: a checkpoint that cannot be written (disk full, read-only
  folder) or that is no run's of the trial stops the worker the same way: the trial is
  failed and re-queued, then :class:`~neve_tune.optuna._stop.TrialLeft` says why in one
  line. A damaged checkpoint (it fails its checksum) is not resumed from: the trial
  starts over from epoch 0.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import optuna
import torch
from optuna.pruners import BasePruner, SuccessiveHalvingPruner
from optuna.trial import FrozenTrial, TrialState

from ..checkpoint import first_line
from ..study import Study, load_study
from ._objective import STORAGE_WRITE_ERRORS, make_objective
from ._open import open_study
from ._pruner import NeVePruner
from ._pruner_settings import stored_signal_note
from ._recovery import RecoveryConfig
from ._sampler import TrialSeededTPESampler
from ._stop import PoliteStop
from ._storage import StorageError
from ._urls import redact_url, storage_kind
from ._worker_checks import (  # re-exported: the worker's checks, in their own module
    METHOD_ATTR,
    check_search,
    check_study_file,
    check_worker_arguments,
    study_identity,
)
from ._worker_loop import closing_line, optimize, trial_callbacks

__all__ = ["run_worker"]


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
    recovery: RecoveryConfig | None = None,
    pruner: BasePruner | Mapping[str, Any] | None = None,
    sampler_seed: int | None = None,
    create: bool = False,
    torch_threads: int | None = None,
    log: Callable[[str], None] | None = print,
    callbacks: Sequence[Callable[[optuna.Study, FrozenTrial], None]] = (),
) -> optuna.Study:
    """Run trials of ``study_file`` against the Optuna study ``study_name`` in ``storage``
    (what ``neve-tune optuna worker`` runs on each machine; the rules are in the module doc).

    ``n_trials`` trials, or until ``timeout`` seconds, or until the study holds
    ``total_trials`` finished ones. ``recovery``: checkpoints, heartbeats and retries
    (default ``RecoveryConfig()``: heartbeats every 60 s, 3 retries, no checkpoints).
    ``pruner``: a dict of :class:`NeVePruner` settings (``method="neve"`` only), or a
    pruner of your own. A study created here minimizes (every objective is a loss).
    Every argument is checked before any storage or data is touched. Raises :class:`StorageError`,
    :class:`StudyNotFoundError`, ``ValueError``, ``FileNotFoundError``; and
    :class:`WorkerInterrupted` after a polite stop, :class:`~neve_tune.optuna._stop.TrialLeft`
    when a checkpoint could not be written.

    Example::

        >>> from neve_tune.optuna import run_worker
        >>> from neve_tune import load_study
        >>> study = load_study("digits").replace(max_epochs=2)
        >>> search = run_worker(study, n_trials=2, log=None)
        >>> len(search.trials)
        2
    """
    study = load_study(study_file)
    recovery = _recovery(recovery)
    check_worker_arguments(
        n_trials=n_trials,
        total_trials=total_trials,
        torch_threads=torch_threads,
        timeout=timeout,
        method=method,
        seed=seed,
        device=device,
        sampler_seed=sampler_seed,
        pruner=pruner,
    )
    check_study_file(study, study_name)
    if torch_threads is not None:
        torch.set_num_threads(torch_threads)
    data = study.load_data()  # fail here, not inside a trial, when the data set is missing
    search = _writable_study(
        study_name or study.name,
        storage,
        method,
        study_identity(study),
        create=create,
        direction="minimize",
        sampler=_sampler(sampler_seed),
        heartbeat_interval=recovery.heartbeat_interval,
        heartbeat_grace_period=recovery.heartbeat_grace_period,
        max_retry=recovery.max_retry,
    )
    search.pruner = _pruner(search, method, pruner, study, log)
    rdb = storage_kind(storage) == "rdb"
    if recovery.checkpoint_dir is None and rdb and recovery.heartbeat_interval and log:
        log(
            "note: no checkpoint directory, so a retried trial restarts from epoch 0 (pass "
            "--checkpoint-dir)"
        )
    stop = PoliteStop()
    objective = make_objective(
        study,
        method=method,
        seed=seed,
        device=device,
        checkpoint_dir=recovery.checkpoint_dir,
        data=data,
        keep_checkpoints=recovery.keep_checkpoints,
        stop=stop,
    )
    mine: list[int] = []
    finished = (TrialState.COMPLETE, TrialState.PRUNED)  # what total_trials counts
    held = len(search.get_trials(deepcopy=False, states=finished)) if total_trials else 0
    cbs, n_trials = trial_callbacks(
        mine, log, callbacks, total_trials, n_trials, timeout, stop, held
    )
    if log:
        log(_opening_line(search, storage, method, n_trials))
    selection = study.selection if method == "neve" else "objective"
    run = dict(n_trials=n_trials, timeout=timeout, callbacks=cbs, max_retry=recovery.max_retry)
    _optimize_and_close(search, objective, stop, run, mine, selection, log)
    return search


def _optimize_and_close(
    search: optuna.Study,
    objective: Callable[[optuna.Trial], float],
    stop: PoliteStop,
    run: dict[str, Any],
    mine: list[int],
    selection: str,
    log: Callable[[str], None] | None,
) -> None:
    """Run the trials (``run``: :func:`optimize`'s options), then print the closing line:
    this worker's trials, its time, and the study's pick by ``selection``."""
    t0 = time.perf_counter()
    optimize(search, objective, stop, **run)
    if log:
        log(closing_line(search, len(mine), time.perf_counter() - t0, selection))


def _opening_line(
    search: optuna.Study, storage: str | None, method: str, n_trials: int | None
) -> str:
    """What a worker prints as it starts: its study, storage, method, pruner, sampler."""
    where = "<in-memory>" if storage_kind(storage) == "memory" else redact_url(storage)
    return (
        f"worker {os.getpid()}: study {search.study_name!r} in {where}, method={method}, "
        f"pruner={search.pruner!r}, sampler={search.sampler!r}, "
        f"trials={'unbounded' if n_trials is None else n_trials}"
    )


def _writable_study(
    name: str, storage: str | None, method: str, identity: dict[str, Any], **open_kwargs: Any
) -> optuna.Study:
    """:func:`open_study`, checked (:func:`~neve_tune.optuna._worker_checks.check_search`) and
    written to once, so a
    read-only or full database is a :class:`StorageError` before any trial."""
    try:
        search = open_study(name, storage, **open_kwargs)
        check_search(search, method, identity)
        search.set_user_attr(METHOD_ATTR, method)  # one write now: a read-only storage fails here
    except STORAGE_WRITE_ERRORS as e:  # read-only or full database file, unwritable journal
        raise StorageError(
            f"storage {redact_url(storage)!r} cannot be written: "
            f"{redact_url(storage, first_line(e.__cause__ or e, 200))}"
        ) from None
    return search


def _warn(line: str) -> None:
    warnings.warn(line, UserWarning, stacklevel=4)


def _sampler(sampler_seed: int | None) -> optuna.samplers.BaseSampler:
    """Seeded: TPE seeded per trial (workers sharing a seed sample apart); else TPE
    seeded from the OS (every worker its own stream)."""
    return (
        optuna.samplers.TPESampler()
        if sampler_seed is None
        else TrialSeededTPESampler(sampler_seed)
    )


def _recovery(recovery: Any) -> RecoveryConfig:
    """``recovery``, or the defaults when None; anything else is refused by name."""
    if recovery is None:
        return RecoveryConfig()
    if not isinstance(recovery, RecoveryConfig):
        raise TypeError(
            f"recovery must be a neve_tune.optuna.RecoveryConfig or None, "
            f"got {type(recovery).__name__}"
        )
    return recovery


def _pruner(
    search: optuna.Study,
    method: str,
    pruner: BasePruner | Mapping[str, Any] | None,
    study: Study | None = None,
    log: Callable[[str], None] | None = None,
) -> BasePruner:
    """A given ``BasePruner`` as it is, else NeVe's (settings: the ``pruner`` mapping, else
    those stored in the Optuna study, else the study file's rung signal; a stored signal
    that differs from the study file's is kept and announced in one line, on ``log`` or as
    a warning) or successive halving on validation loss for the baselines."""
    if not isinstance(pruner, BasePruner):
        options = pruner
        if method == "neve":
            options = dict(options or {})
            if study is not None and "rung_signal" not in options:
                # a stored signal is kept (one rule per study), and a differing one announced
                note = stored_signal_note(search, study.rung_signal, study.selection)
                if note:
                    (log or _warn)(note)
                else:
                    options["rung_signal"] = study.rung_signal
            pruner = NeVePruner.from_study(search, **options)
        else:  # settings for another method were refused by check_pruner
            pruner = SuccessiveHalvingPruner(min_resource=1, reduction_factor=4)
    if isinstance(pruner, NeVePruner):
        pruner.bind(search)  # refuse now, not in the middle of a trial
    return pruner
