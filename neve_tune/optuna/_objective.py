"""The objective builder: a study file -> an Optuna objective (:func:`make_objective`).

Example: two trials of the digits study, each trained for two epochs::

    >>> import optuna
    >>> from neve_tune import load_study
    >>> from neve_tune.optuna import NeVePruner, make_objective
    >>> optuna.logging.set_verbosity(optuna.logging.WARNING)
    >>> study = load_study("digits").replace(max_epochs=2)
    >>> sampler = optuna.samplers.TPESampler(seed=0)
    >>> search = optuna.create_study(pruner=NeVePruner(), sampler=sampler)
    >>> search.optimize(make_objective(study), n_trials=2)
    >>> sorted(search.trials[0].user_attrs)[:3]
    ['best_epoch', 'cost', 'epoch_0001']
"""

from __future__ import annotations

import glob
import hashlib
import os
import re
import socket
import threading
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.trial import BaseTrial, FrozenTrial
from sqlalchemy.exc import SQLAlchemyError

from .._checks import check_choice, check_model_fn
from ..checkpoint import (
    CheckpointError,
    CheckpointWriteError,
    DamagedCheckpointError,
    first_line,
    load_checkpoint,
)
from ..data import DataBundle
from ..records import SEARCH_METHODS, SUBSET_SIGNALS, Cost, TrialResult
from ..space import Choice, IntUniform, LogUniform, Uniform
from ..study import Study, load_study
from ..train import warn_damaged
from ..trial import run_trial
from ._guard_noise import study_noise_estimate
from ._pruner import NeVePruner
from ._report import report_epoch, running_trial, trial_history
from ._stop import Abandon, PoliteStop

__all__ = ["make_objective", "suggest_config", "checkpoint_path_for", "SUMMARY_ATTRS"]

OBJECTIVE_METHODS = SEARCH_METHODS
# user attributes a finished (COMPLETE or PRUNED) trial carries besides its epoch series
# what a storage that takes no writes raises (Optuna wraps SQLAlchemy's errors on commit)
STORAGE_WRITE_ERRORS = (SQLAlchemyError, optuna.exceptions.StorageInternalError, OSError)
SUMMARY_ATTRS = (
    "method",
    "seed",
    "stopped_by",
    "epochs",
    "objective",
    "best_epoch",
    "test_acc",
    "test_loss",
    "cost",
    "unfit_share",
)


def suggest_config(trial: BaseTrial, study: Study) -> dict[str, Any]:
    """Sample ``study.search_space`` with ``trial.suggest_*`` and return the full config
    (the study's defaults overwritten by the sampled values)."""
    if not isinstance(trial, BaseTrial) or isinstance(trial, FrozenTrial):
        raise TypeError(f"trial must be an optuna.Trial (the objective's argument), got {trial!r}")
    if not isinstance(study, Study):
        raise TypeError(f"study must be a neve_tune.Study (load_study(...)), got {study!r}")
    sampled: dict[str, Any] = {}
    for name, dist in study.search_space.items():
        if isinstance(dist, LogUniform):
            sampled[name] = trial.suggest_float(name, dist.low, dist.high, log=True)
        elif isinstance(dist, Uniform):
            sampled[name] = trial.suggest_float(name, dist.low, dist.high)
        elif isinstance(dist, IntUniform):
            sampled[name] = trial.suggest_int(name, dist.low, dist.high, log=dist.log)
        elif isinstance(dist, Choice):
            sampled[name] = trial.suggest_categorical(name, list(dist.values))
        else:
            raise TypeError(
                f"search space {name!r}: expected LogUniform/Uniform/IntUniform/Choice, got "
                f"{dist!r}"
            )
    return study.config(sampled)


def _root_trial_number(trial: BaseTrial) -> int:
    """The number of the first trial of a retry chain
    (``RetryHeartbeatStaleTrialCallback.retried_trial_number``); the trial's own number
    otherwise."""
    frozen = running_trial(trial)
    if frozen is not None:
        with warnings.catch_warnings():  # "experimental" since Optuna 2.8
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            root = optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number(frozen)
        if root is not None:
            return int(root)
    return int(trial.number)


def _safe(name: str) -> str:
    """A folder name for a study name: other characters than letters, digits, ``._-``
    become ``_``; a long one keeps its first 80 and a hash of the whole (a study name may
    have 512 characters, a folder name 255 bytes)."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "study"
    if len(safe) > 100:
        safe = f"{safe[:80]}-{hashlib.sha256(name.encode()).hexdigest()[:16]}"
    return safe


def checkpoint_path_for(checkpoint_dir: str | os.PathLike, trial: BaseTrial) -> Path:
    """Where ``trial`` checkpoints: ``checkpoint_dir/<study name>/trial_<n>.pt``, ``n``
    being the number of the trial it retries (if any), so a retry resumes from its
    checkpoint. The study name becomes one folder name, whatever it holds (``/``, ``..``,
    512 characters: see ``_safe``). Workers on several machines need ``checkpoint_dir``
    on shared storage."""
    study = getattr(trial, "study", None)
    name = _safe(study.study_name) if study is not None else "study"
    return Path(checkpoint_dir) / name / f"trial_{_root_trial_number(trial):06d}.pt"


def _summary(result: TrialResult) -> dict[str, Any]:
    summary = result.summary()
    return {k: summary.get(k) for k in SUMMARY_ATTRS}


def make_objective(
    study: Study | str | os.PathLike,
    *,
    method: str = "neve",
    seed: int = 0,
    device: str | torch.device | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    data: DataBundle | None = None,
    evaluate_test: bool = True,
    keep_checkpoints: bool = False,
    model_fn: Callable[[], torch.nn.Module] | None = None,
    stop: PoliteStop | None = None,
) -> Callable[[optuna.Trial], float]:
    """An Optuna objective that trains one sampled configuration of ``study``.

    Each call samples the study's search space (``trial.suggest_*``), trains with
    :func:`neve_tune.run_trial` and, after every epoch, calls
    :func:`~neve_tune.optuna.report_epoch` (training loss for ``method="neve"``; validation
    loss for the validation baselines ``"asha"``/``"asha_es"``, or their validation error
    ``1 - val_acc`` with ``study.val_metric="acc"``, so the study still minimises) and
    ``trial.should_prune()``, raising :class:`optuna.TrialPruned` when told to. It returns
    the record's objective (NeVe: by default the training loss of the kept epoch, the guard's
    restored one or the last; the baselines: validation loss or error, last or best) and
    stores the summary (``test_acc``, ``stopped_by``, ``epochs``, ``cost``, ...) in the
    trial's user attributes, as a pruned trial does (``stopped_by="pruned"``,
    ``test_acc=None``). A trial that diverges is pruned, never failed.

    With ``checkpoint_dir``, every epoch is checkpointed to
    :func:`checkpoint_path_for`; a trial retried after its worker died
    (``RetryHeartbeatStaleTrialCallback``) resumes from that checkpoint and reports only
    the epochs its predecessor had not, so its velocity series is the uninterrupted one.
    A damaged checkpoint (it fails its checksum) is logged in one line and removed, and the
    trial starts over from epoch 0 (the same series again). A checkpoint that cannot be
    written, or one of another run, makes the trial leave (:class:`~neve_tune.optuna.
    _stop.TrialLeft` from :func:`~neve_tune.optuna.run_worker`, the trial re-queued).
    Temporary files a killed save left beside that checkpoint are removed first. The
    checkpoint is deleted when the trial finishes unless ``keep_checkpoints``.

    The data set is loaded once, on the first trial (or pass ``data``); ``model_fn``
    replaces the study's model (a factory of fresh models, for your own architecture).
    ``stop`` (used by :func:`~neve_tune.optuna.run_worker`) lets SIGINT/SIGTERM leave
    a trial between epochs or mid-epoch without failing it (``neve_tune.optuna._stop``).
    """
    study = load_study(study)
    check_choice("method", method, OBJECTIVE_METHODS)
    check_model_fn(model_fn)
    run = _TrialRun(
        study,
        method,
        seed,
        device,
        checkpoint_dir,
        evaluate_test,
        keep_checkpoints,
        model_fn,
        stop or PoliteStop(),
    )
    if data is not None:
        run.cache["data"] = data
    return run


class _TrialRun:
    """The objective :func:`make_objective` returns: one call trains one trial."""

    def __init__(
        self,
        study: Study,
        method: str,
        seed: int,
        device: Any,
        checkpoint_dir: Any,
        evaluate_test: bool,
        keep: bool,
        model_fn: Any,
        stop: PoliteStop,
    ) -> None:
        self.study, self.method, self.seed, self.device = study, method, seed, device
        self.checkpoint_dir, self.evaluate_test, self.keep, self.model_fn = (
            checkpoint_dir,
            evaluate_test,
            keep,
            model_fn,
        )
        self.stop = stop
        # what the trial's objective measures: the pruner ranks on it, lower is better
        val_signal = {"loss": "val_loss", "acc": "val_error"}[study.val_metric]
        self.signal = "train_loss" if method == "neve" else val_signal
        self.lock = threading.Lock()
        self.cache: dict[str, DataBundle] = {}
        self.worker = f"{socket.gethostname()}:{os.getpid()}"
        self.current_trial: int | None = None  # the trial a polite stop left (None once it ended)
        self.left: BaseException | None = None  # why the worker left current_trial, if not a signal

    def data(self) -> DataBundle:
        with self.lock:
            if "data" not in self.cache:
                self.cache["data"] = self.study.load_data()
            return self.cache["data"]

    def __call__(self, trial: optuna.Trial) -> float:
        self.current_trial = trial.number
        try:
            value = self._train(trial)
        except Abandon:
            raise
        except (CheckpointError, CheckpointWriteError, *STORAGE_WRITE_ERRORS) as e:
            # its checkpoint or the storage cannot be written, or the checkpoint is no run's
            # of this trial: failing it here (a traceback, a lost trial; Optuna's own FAIL
            # write fails too on a full disk) would not help; the worker re-queues it
            ours = isinstance(e, (CheckpointError, CheckpointWriteError))
            self.left = e if ours else _storage_error(e)
            raise Abandon() from None
        except BaseException:
            self.current_trial = None
            raise
        self.current_trial = None
        return value

    def _train(self, trial: optuna.Trial) -> float:
        with self.stop.writing():
            config = suggest_config(trial, self.study)
            trial.set_user_attr("worker", self.worker)
        bundle = self.data()
        ckpt = self._checkpoint(trial)
        last: dict[str, Any] = {}
        with self.stop.writing():
            self._replay(trial, ckpt, last, len(bundle.train))  # type: ignore[arg-type]

        def on_epoch(metrics: dict[str, Any]) -> None:
            with self.stop.writing():
                last.clear()
                last.update(metrics)
                report_epoch(trial, metrics, signal=self.signal)
                if trial.should_prune():
                    raise optuna.TrialPruned(f"pruned at epoch {metrics['epoch']}")

        try:
            with self.stop.abandonable():
                record = run_trial(
                    self.study,
                    config,
                    method=self.method,
                    seed=self.seed,
                    device=self.device,
                    checkpoint_path=ckpt,
                    on_epoch=on_epoch,
                    data=bundle,
                    evaluate_test=self.evaluate_test,
                    model_fn=self.model_fn,
                    subset_epochs=self._rung_epochs(trial),
                    noise_estimate=study_noise_estimate(trial, self.method),
                )
        except optuna.TrialPruned:
            with self.stop.writing(then_stop=False):
                _finish_pruned(
                    trial, self.method, self.seed, last, ckpt, self.keep, len(bundle.train)
                )  # type: ignore[arg-type]
            raise
        with self.stop.writing(then_stop=False):
            return self._finish(trial, record, ckpt, len(bundle.train))  # type: ignore[arg-type]

    def _rung_epochs(self, trial: BaseTrial) -> tuple[int, ...] | None:
        """Under a :class:`NeVePruner`, its rung epochs when it ranks on the subset, else none
        (the end, which the pick reads, is always recorded); under another pruner, every epoch."""
        pruner = getattr(getattr(trial, "study", None), "pruner", None)
        if not isinstance(pruner, NeVePruner):
            return None
        if pruner.rung_signal in SUBSET_SIGNALS:
            return pruner.rung_epochs(self.study.max_epochs)
        return ()

    def _checkpoint(self, trial: BaseTrial) -> Path | None:
        """The trial's checkpoint path; temporary files a killed save left there are removed
        (this trial is the only writer: its previous worker is dead or stopped)."""
        if self.checkpoint_dir is None:
            return None
        ckpt = checkpoint_path_for(self.checkpoint_dir, trial)
        if ckpt.parent.is_dir():
            for stale in ckpt.parent.glob(glob.escape(ckpt.name) + ".tmp*"):
                stale.unlink(missing_ok=True)
        return ckpt

    def _replay(
        self, trial: BaseTrial, ckpt: Path | None, last: dict[str, Any], train_size: int
    ) -> None:
        """A retry: report the epochs the checkpoint holds that this trial does not
        (report_epoch skips the others), then judge them once."""
        if ckpt is None or not ckpt.exists():
            return
        try:
            history = list(load_checkpoint(ckpt).get("history", []))
        except DamagedCheckpointError as e:  # never resumed from: the trial starts over
            warn_damaged(e)
            ckpt.unlink(missing_ok=True)
            return
        for m in history:
            report_epoch(trial, m, signal=self.signal)
        if history:
            last.update(history[-1])
            trial.set_user_attr("resumed_from_epoch", int(history[-1]["epoch"]))
            if trial.should_prune():
                _finish_pruned(trial, self.method, self.seed, last, ckpt, self.keep, train_size)
                raise optuna.TrialPruned(f"pruned at epoch {last['epoch']} (restored)")

    def _finish(
        self, trial: BaseTrial, record: TrialResult, ckpt: Path | None, train_size: int
    ) -> float:
        """A diverged or stalled trial is pruned; a finished one stores its summary."""
        if record.stopped_by in ("diverged", "stalled"):
            final = record.history[-1] if record.history else {}
            _finish_pruned(
                trial, self.method, self.seed, final, ckpt, self.keep, train_size, record.stopped_by
            )
            raise optuna.TrialPruned(f"{record.stopped_by} at epoch {record.epochs}")
        for key, value in _summary(record).items():
            trial.set_user_attr(key, value)
        _drop(ckpt, self.keep)
        return float(record.objective)


def _storage_error(error: BaseException) -> RuntimeError:
    """A storage error mid-trial in one line (SQLAlchemy's own text spans several)."""
    cause = first_line(error.__cause__ or error, 200)
    return RuntimeError(f"the storage failed mid-trial ({cause})")


def _drop(ckpt: Path | None, keep: bool) -> None:
    if ckpt is not None and not keep:
        ckpt.unlink(missing_ok=True)


def _finish_pruned(
    trial: BaseTrial,
    method: str,
    seed: int,
    last: Mapping[str, Any],
    ckpt: Path | None,
    keep: bool,
    full_train_size: int,
    stopped_by: str = "pruned",
) -> None:
    """Summary attributes of a pruned trial, from its last epoch's metrics."""
    spent = Cost.from_dict(last)
    spent.wall_s = float(sum((m.get("epoch_time_s") or 0.0) for m in trial_history(trial)))
    summary = dict.fromkeys(SUMMARY_ATTRS)  # None: the objective, test scores, ... it lacks
    why = "diverged" if last.get("diverged") else "stalled" if last.get("stalled") else stopped_by
    summary.update(method=method, seed=seed, stopped_by=why, epochs=int(last.get("epoch", 0)))
    summary["cost"] = spent.as_dict(full_train_size)
    for key, value in summary.items():
        trial.set_user_attr(key, value)
    _drop(ckpt, keep)
