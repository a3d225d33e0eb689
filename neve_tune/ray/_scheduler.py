"""``NeVeASHAScheduler``: asynchronous successive halving on a validation-free signal.

Ray's :class:`~ray.tune.schedulers.AsyncHyperBandScheduler` does the rung bookkeeping;
this subclass changes what it looks at (the epoch's mean training loss instead of a
validation loss), lets the velocity decide convergence and divergence before any rung
comparison, and keeps its rung state across ``Tuner.restore`` (which Ray does not do for
schedulers, ray issue #30838).
"""

from __future__ import annotations

import logging
import os
import pickle
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ray.tune.schedulers import AsyncHyperBandScheduler, TrialScheduler

from ._stopper import CONVERGED, DIVERGED, check_threshold, velocity_verdict

if TYPE_CHECKING:
    from ray.tune.execution.tune_controller import TuneController
    from ray.tune.experiment import Trial

__all__ = ["NeVeASHAScheduler", "STATE_FILE"]

logger = logging.getLogger(__name__)

STATE_FILE = "neve_asha_scheduler_state.pkl"
_STATE_VERSION = 1


class NeVeASHAScheduler(AsyncHyperBandScheduler):
    """ASHA on the training loss; the velocity decides when a trial has converged.

    For every result of a trial, in this order:

    1. diverged (``diverged`` true, or the velocity NaN/inf): STOP; the trial is left out
       of every rung;
    2. converged (``neve_stop`` true, or ``velocity < `` the trial's own threshold, read
       from its result or config like :class:`~neve_tune.ray.NeVeStopper` does): its
       ``metric`` is recorded at the rungs it reached, then STOP. A converged trial is
       finished, never counted as pruned;
    3. otherwise Ray's asynchronous successive halving: at each rung
       (``grace_period * reduction_factor**k`` in ``time_attr`` units, up to ``max_t``)
       a trial whose ``metric`` (default ``"train_loss"``, the epoch's mean training loss,
       ``mode="min"``) is not in the best ``1/reduction_factor`` of the trials recorded
       at that rung is stopped (pruned). No validation data is needed.

    Rung state (``Tuner.restore``): Ray does not restore scheduler state. This scheduler
    writes it (rungs, trial -> bracket, counters) to ``neve_asha_scheduler_state.pkl``
    in the experiment's driver staging folder after every change; Tune uploads that
    folder with its experiment state and downloads ``*.pkl`` before re-adding trials, so
    the restored scheduler reloads it when the first trial is added. Rung records may be
    slightly ahead of the restored trials (they are written at once, the experiment state
    periodically); a resumed trial then just finds its rungs already decided. Pass
    ``persist=False`` to keep Ray's behaviour (fresh rungs after a restore).

    Args:
        metric: the rung metric (``"train_loss"``; any reported key works).
        mode: ``"min"`` or ``"max"`` for ``metric``.
        time_attr: the progress key (``"training_iteration"``, or ``"epoch"``).
        max_t: last rung; trials are stopped there (``stop_last_trials``).
        grace_period, reduction_factor, brackets, stop_last_trials: as in
            :class:`~ray.tune.schedulers.AsyncHyperBandScheduler`.
        velocity_metric, threshold_key, threshold: the convergence rule (see above).
        persist: write the rung state for ``Tuner.restore``.

    Example::

        >>> from neve_tune.ray import NeVeASHAScheduler
        >>> sched = NeVeASHAScheduler(max_t=60, grace_period=2, reduction_factor=3)
        >>> sched.metric, sched._mode
        ('train_loss', 'min')

        In a search::

            tune.Tuner(neve_trainable("digits"), param_space=to_ray_space("digits"),
                       tune_config=tune.TuneConfig(scheduler=NeVeASHAScheduler(max_t=60),
                                                   num_samples=20)).fit()
    """

    def __init__(
        self,
        *,
        metric: str = "train_loss",
        mode: str = "min",
        time_attr: str = "training_iteration",
        max_t: int = 100,
        grace_period: int = 1,
        reduction_factor: float = 4,
        brackets: int = 1,
        stop_last_trials: bool = True,
        velocity_metric: str = "velocity",
        threshold_key: str = "threshold",
        threshold: float | None = None,
        persist: bool = True,
    ) -> None:
        for name, value in (("metric", metric), ("time_attr", time_attr), ("velocity_metric", velocity_metric), ("threshold_key", threshold_key)):
            if not isinstance(value, str) or not value:
                raise TypeError(f"{name} must be a non-empty str, got {value!r}")
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
        for name, value in (("max_t", max_t), ("grace_period", grace_period), ("brackets", brackets)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if grace_period > max_t:
            raise ValueError(f"grace_period must be <= max_t={max_t}, got {grace_period}")
        if isinstance(reduction_factor, bool) or not isinstance(reduction_factor, (int, float)) or not reduction_factor > 1:
            raise ValueError(f"reduction_factor must be a number > 1, got {reduction_factor!r}")
        super().__init__(
            time_attr=time_attr,
            metric=metric,
            mode=mode,
            max_t=max_t,
            grace_period=grace_period,
            reduction_factor=reduction_factor,
            brackets=brackets,
            stop_last_trials=stop_last_trials,
        )
        self._velocity_metric = velocity_metric
        self._threshold_key = threshold_key
        self._threshold = None if threshold is None else check_threshold(threshold)
        self._persist = bool(persist)
        self._state_dir: str | None = None
        self._state_loaded = False
        self._num_converged = 0
        self._num_diverged = 0
        self._outcome: dict[str, str] = {}  # trial_id -> "converged" | "diverged" | "pruned"

    # ------------------------------------------------------------------ Tune hooks
    def set_search_properties(self, metric: str | None, mode: str | None, **spec: Any) -> bool:
        # metric and mode are always set here; Tune may still pass the TuneConfig's
        if (metric and metric != self._metric) or (mode and mode != self._mode):
            return False
        return True

    def on_trial_add(self, tune_controller: "TuneController", trial: "Trial") -> None:
        if self._persist and not self._state_loaded:
            self._state_loaded = True
            staging = getattr(getattr(trial, "storage", None), "experiment_driver_staging_path", None)
            if staging:
                self._state_dir = str(staging)
                self._load_state()
        if trial.trial_id in self._trial_info:  # a retried trial, or known from the restored state
            return
        if getattr(trial, "status", None) == "TERMINATED":  # a finished trial re-added by a restore
            return
        super().on_trial_add(tune_controller, trial)
        self._save_state()

    def on_trial_result(self, tune_controller: "TuneController", trial: "Trial", result: dict) -> str:
        verdict = velocity_verdict(
            result,
            metric=self._velocity_metric,
            threshold_key=self._threshold_key,
            threshold=self._threshold,
            who=type(self).__name__,
        )
        if verdict == DIVERGED:
            self._finish(trial.trial_id, DIVERGED)
            return TrialScheduler.STOP
        if verdict == CONVERGED:
            self._record(trial, result)
            self._finish(trial.trial_id, CONVERGED)
            return TrialScheduler.STOP
        action = super().on_trial_result(tune_controller, trial, result)
        if action == TrialScheduler.STOP and trial.trial_id not in self._outcome:
            at_max = result.get(self._time_attr, 0) >= self._max_t
            self._outcome[trial.trial_id] = "max_t" if at_max else "pruned"
        self._save_state()
        return action

    def on_trial_complete(self, tune_controller: "TuneController", trial: "Trial", result: dict) -> None:
        # A trial stopped by a NeVeStopper (which runs before any scheduler) or by itself
        # ends here without a decision of ours: classify it by the same rule.
        if trial.trial_id not in self._trial_info:
            return
        verdict = velocity_verdict(
            result, metric=self._velocity_metric, threshold_key=self._threshold_key,
            threshold=self._threshold, who=type(self).__name__,
        )
        if verdict is not None:
            self._finish(trial.trial_id, verdict)
        elif trial.trial_id not in self._outcome:
            self._outcome[trial.trial_id] = "completed"
        if self._outcome.get(trial.trial_id) != DIVERGED:
            self._record(trial, result)
        del self._trial_info[trial.trial_id]
        self._save_state()

    def on_trial_remove(self, tune_controller: "TuneController", trial: "Trial") -> None:
        self._trial_info.pop(trial.trial_id, None)
        self._save_state()

    def debug_string(self) -> str:
        pruned = sum(1 for v in self._outcome.values() if v == "pruned")
        return (
            f"Using NeVeASHA on {self._metric!r} ({self._mode}): pruned={pruned} converged={self._num_converged} "
            f"diverged={self._num_diverged}\n" + "\n".join(b.debug_str() for b in self._brackets)
        )

    # ------------------------------------------------------------------ outcomes
    def outcome(self, trial_id: str) -> str | None:
        """How the trial ended: ``"converged"``, ``"diverged"``, ``"pruned"`` (lost at a
        rung), ``"max_t"``, ``"completed"`` (ended by itself otherwise), or ``None``."""
        return self._outcome.get(trial_id)

    @property
    def num_pruned(self) -> int:
        return sum(1 for v in self._outcome.values() if v == "pruned")

    def _record(self, trial: "Trial", result: dict) -> None:
        """Put a finished trial's value in the rungs it reached (no decision)."""
        bracket = self._trial_info.get(trial.trial_id)
        if bracket is None or self._time_attr not in result or self._metric not in result:
            return
        value = result[self._metric]
        if value is None:
            return
        t = result[self._time_attr]
        for milestone, recorded in bracket._rungs:
            if t >= milestone and trial.trial_id not in recorded:
                recorded[trial.trial_id] = self._metric_op * value
                break

    def _finish(self, trial_id: str, why: str) -> None:
        if self._outcome.get(trial_id) in (CONVERGED, DIVERGED):
            return  # the repeated final result
        self._outcome[trial_id] = why
        if why == CONVERGED:
            self._num_converged += 1
        else:
            self._num_diverged += 1
        self._num_stopped += 1
        self._save_state()

    # ------------------------------------------------------------------ persistence
    def state_dict(self) -> dict[str, Any]:
        index = {id(b): i for i, b in enumerate(self._brackets)}
        return {
            "version": _STATE_VERSION,
            "rungs": [[(m, dict(rec)) for m, rec in b._rungs] for b in self._brackets],
            "trial_bracket": {tid: index[id(b)] for tid, b in self._trial_info.items()},
            "outcome": dict(self._outcome),
            "num_converged": self._num_converged,
            "num_diverged": self._num_diverged,
            "num_stopped": self._num_stopped,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("version") != _STATE_VERSION or len(state["rungs"]) != len(self._brackets):
            raise ValueError("scheduler state does not match this NeVeASHAScheduler's brackets")
        for bracket, rungs in zip(self._brackets, state["rungs"]):
            if [m for m, _ in rungs] != [m for m, _ in bracket._rungs]:
                raise ValueError("scheduler state has other rungs than this NeVeASHAScheduler (max_t, grace_period, reduction_factor changed?)")
            bracket._rungs = [(m, dict(rec)) for m, rec in rungs]
        self._trial_info = {tid: self._brackets[i] for tid, i in state["trial_bracket"].items()}
        self._outcome = dict(state["outcome"])
        self._num_converged = int(state["num_converged"])
        self._num_diverged = int(state["num_diverged"])
        self._num_stopped = int(state["num_stopped"])

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.state_dict(), f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            self.load_state_dict(pickle.load(f))

    def _save_state(self) -> None:
        if not (self._persist and self._state_dir):
            return
        try:
            os.makedirs(self._state_dir, exist_ok=True)
            path = Path(self._state_dir, STATE_FILE)
            tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
            self.save(str(tmp))
            os.replace(tmp, path)
        except OSError as e:  # never fail a search for a bookkeeping file
            logger.warning("NeVeASHAScheduler: could not write its state to %s: %s", self._state_dir, e)

    def _load_state(self) -> None:
        path = Path(self._state_dir or "", STATE_FILE)
        if not path.is_file():
            return
        try:
            self.restore(str(path))
        except (OSError, pickle.UnpicklingError, EOFError, KeyError, ValueError) as e:
            logger.warning("NeVeASHAScheduler: ignoring unreadable state %s (%s); rungs start empty", path, e)
            return
        logger.info("NeVeASHAScheduler: restored rung state of %d trials from %s", len(self._outcome) + len(self._trial_info), path)
