"""``NeVeASHAScheduler``: asynchronous successive halving on a validation-free signal.

Its own rung bookkeeping (Ray's ``AsyncHyperBandScheduler`` rule) through Ray Tune's public
scheduler and callback interfaces only; the class doc says how its state survives a restore.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from ray.tune.experiment import Trial
from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from .._checks import check_bool, check_choice, to_float
from ..records import RUNG_SIGNALS, SUBSET_SIGNALS
from ._consensus import ConsensusRungs, check_predictions, ended_trial
from ._halving import Brackets
from ._losses import remember_first_loss
from ._outcomes import COMPLETED, MAX_T, PRUNED, Outcomes
from ._result import has_rung_keys
from ._scheduler_state import NeVeASHAStateCallback
from ._verdict import (
    CONVERGED,
    DIVERGED,
    STALLED,
    check_key,
    check_threshold,
    velocity_verdict,
)

if TYPE_CHECKING:
    from ray.tune.execution.tune_controller import TuneController

__all__ = ["NeVeASHAScheduler"]

logger = logging.getLogger(__name__)

_STATE_VERSION = 2


class NeVeASHAScheduler(FIFOScheduler):
    """ASHA on the training loss; the velocity decides when a trial has converged.

    For every result of a trial, in this order (the rule of :func:`velocity_verdict`,
    the same as :class:`~neve_tune.ray.NeVeStopper`):

    1. diverged (``diverged`` true, or the velocity NaN/inf): STOP; the trial is left out
       of every rung;
    2. stalled (``stalled`` true: the velocity fell but the training loss did not): STOP,
       outcome ``"stalled"``; never counted as converged and left out of every rung;
    3. converged (``neve_stop`` true; only when no ``neve_stop`` is reported,
       ``velocity <`` the trial's own threshold, from its result or config, from
       iteration 2, on a trial whose training loss fell from its first result's, else
       stalled): its
       rung value is recorded at the rung it reached, then STOP. A converged trial is
       finished, never counted as pruned;
    4. otherwise asynchronous successive halving, the rule of Ray's
       ``AsyncHyperBandScheduler``: rungs at ``min_resource * reduction_factor**k``
       (``time_attr`` units) up to ``max_t``. The first time a trial reaches a rung its
       ``rung_signal`` (default ``"train_loss"``, the epoch's mean training loss, or
       ``"velocity"``; lower is better) is recorded there, and the trial is stopped
       (pruned) if it is worse than the ``1 - 1/reduction_factor`` quantile of the values
       already recorded at that rung (the first trial at a rung always continues). At
       ``max_t`` the trial is stopped (``stop_last_trials``). No validation data is needed. With
       ``rung_signal="consensus"`` the value at a rung is instead the trial's agreement with
       the majority vote of the other trials at that rung, from each result's
       ``predictions_key`` (a :class:`~neve_tune.selection.SelectionSubset` prediction;
       :mod:`neve_tune.ray._consensus` gives the rule). ``rung_signal="auto"`` ranks on the
       consensus once the finished trials' ``subset_fit`` says the labels are noisy and the
       memorisation guard stopped one of them
       (:class:`~neve_tune.selection_policy.SelectionPolicy`), else on the training loss.

    A trial that a :class:`~neve_tune.ray.NeVeStopper` stopped (Tune asks the stopper
    first) reaches only ``on_trial_complete``; it is classified by the same rule and
    recorded unless it diverged or stalled. A result costs O(log n) for n trials at a rung
    on the training loss or velocity, O(n·K) on the consensus (K subset examples); nothing
    is written to disk.

    **Restoring** (``Tuner.restore``): Ray saves callbacks, not schedulers (ray issue #30838),
    in its experiment checkpoint. Pass the scheduler's :meth:`callback` in the run config and
    the rungs, outcomes and trial brackets come back with the experiment::

        sched = NeVeASHAScheduler(max_t=60)
        tune.Tuner(trainable, tune_config=tune.TuneConfig(scheduler=sched),
                   run_config=tune.RunConfig(callbacks=[sched.callback()]))

    (``tune.run(..., scheduler=sched, callbacks=[sched.callback()])`` likewise.) Without
    it a restored experiment starts with empty rungs, as with Ray's own schedulers, and
    a warning says so. The state matches the experiment snapshot it was saved with.

    Args:
        rung_signal: what rule 4 ranks on, as in :class:`~neve_tune.optuna.NeVePruner`:
            ``"train_loss"`` (default), ``"velocity"``, ``"consensus"`` or ``"auto"``.
        time_attr: the progress key (``"training_iteration"``, or ``"epoch"``).
        max_t: last rung; trials are stopped there (``stop_last_trials``).
        min_resource: the first rung (``grace_period`` of Ray's ASHA).
        reduction_factor, brackets, stop_last_trials: as in
            :class:`~ray.tune.schedulers.AsyncHyperBandScheduler`.
        velocity_metric, threshold_key, threshold: the convergence rule (see above).
        persist: whether :meth:`callback` saves the rung state (``False``: Ray's
            behaviour, fresh rungs after a restore).
        predictions_key: the result key of the encoded subset predictions (consensus).

    Example::

        >>> from types import SimpleNamespace
        >>> from neve_tune.ray import NeVeASHAScheduler
        >>> sched = NeVeASHAScheduler(max_t=16, min_resource=1, reduction_factor=2)
        >>> a = SimpleNamespace(trial_id="a", status="PENDING")
        >>> b = SimpleNamespace(trial_id="b", status="PENDING")
        >>> sched.on_trial_add(None, a), sched.on_trial_add(None, b)
        (None, None)
        >>> epoch1 = {"training_iteration": 1, "velocity": 0.2, "neve_stop": False}
        >>> sched.on_trial_result(None, a, {**epoch1, "train_loss": 0.5})
        'CONTINUE'
        >>> sched.on_trial_result(None, b, {**epoch1, "train_loss": 0.9})  # worse at rung 1
        'STOP'
        >>> sched.outcome("b"), sched.num_pruned
        ('pruned', 1)

        In a search::

            sched = NeVeASHAScheduler(max_t=60)
            tune.Tuner(neve_trainable("digits"), param_space=to_ray_space("digits"),
                       tune_config=tune.TuneConfig(scheduler=sched, num_samples=20),
                       run_config=tune.RunConfig(stop=NeVeStopper(),
                                                 callbacks=[sched.callback()])).fit()
    """

    def __init__(
        self,
        *,
        rung_signal: str = "train_loss",
        time_attr: str = "training_iteration",
        max_t: int = 100,
        min_resource: int = 1,
        reduction_factor: float = 4,
        brackets: int = 1,
        stop_last_trials: bool = True,
        velocity_metric: str = "velocity",
        threshold_key: str = "threshold",
        threshold: float | None = None,
        persist: bool = True,
        predictions_key: str = "subset_pred",
    ) -> None:
        super().__init__()
        self._signal = check_choice("rung_signal", rung_signal, RUNG_SIGNALS)
        # the reported value ranked at a rung: the consensus signals record the training loss
        # beside the votes ("auto" falls back to it)
        self._rung_metric = "velocity" if rung_signal == "velocity" else "train_loss"
        self._time_attr = check_key(time_attr, "time_attr")
        self._velocity_metric = check_key(velocity_metric, "velocity_metric")
        self._threshold_key = check_key(threshold_key, "threshold_key")
        self._mode = "min"  # a loss and a velocity: lower is better
        self._sign = -1.0
        self._brackets = Brackets(min_resource, max_t, reduction_factor, brackets)
        self._max_t, self._quantile = self._brackets.max_t, self._brackets.quantile
        self._stop_last_trials = check_bool("stop_last_trials", stop_last_trials)
        self._threshold = None if threshold is None else check_threshold(threshold)
        self._persist = check_bool("persist", persist)
        self._predictions_key = check_key(predictions_key, "predictions_key")
        self._votes = ConsensusRungs(self._brackets.milestones())
        self._outcomes = Outcomes()
        self._first_loss: dict[str, tuple[float, float]] = {}  # for the stall rule on raw velocity
        self._restored = False
        self._warned_unrestored = False

    # ------------------------------------------------------------------ properties
    @property
    def metric(self) -> str:
        return self._rung_metric

    @property
    def mode(self) -> str:
        return self._mode

    def set_search_properties(self, metric: str | None, mode: str | None, **spec: Any) -> bool:
        # metric and mode are set here already; Tune may still pass the TuneConfig's
        return not ((metric and metric != self._rung_metric) or (mode and mode != self._mode))

    def callback(self) -> NeVeASHAStateCallback:
        """A ``ray.tune.Callback`` that saves this scheduler's state with the experiment
        checkpoint and loads it back on ``Tuner.restore``: put it in
        ``RunConfig(callbacks=[...])`` (or ``tune.run(callbacks=[...])``)."""
        return NeVeASHAStateCallback(self)

    def rung_epochs(self) -> tuple[int, ...]:
        """The epochs (``time_attr`` values) where a result can meet a rung of any bracket, and
        ``max_t`` where ``stop_last_trials`` ends a trial."""
        return self._brackets.rung_epochs(self._stop_last_trials)

    def subset_epochs(self) -> tuple[int, ...]:
        """Where a trial reports the subset's predictions besides its own last epoch
        (``neve_trainable(subset_epochs=...)``): :meth:`rung_epochs` when the signal ranks on
        them (:data:`~neve_tune.records.SUBSET_SIGNALS`), else ``max_t`` alone, where a trial
        this scheduler ends reads as finished and its ``subset_fit`` counts for the pick."""
        if self._signal in SUBSET_SIGNALS:
            return self.rung_epochs()
        return (self._max_t,) if self._stop_last_trials else ()

    @property
    def persist(self) -> bool:
        """Whether :meth:`callback` saves the rung state."""
        return self._persist

    # ------------------------------------------------------------------ Tune hooks
    def on_trial_add(self, tune_controller: TuneController, trial: Trial) -> None:
        tid = trial.trial_id
        if tid in self._brackets.active:  # a retried trial, or one known from the restored state
            return
        # a finished trial re-added by a restore
        if getattr(trial, "status", None) == Trial.TERMINATED:
            if not self._restored and tid not in self._outcomes and not self._warned_unrestored:
                self._warned_unrestored = True
                logger.warning(
                    "NeVeASHAScheduler: a restored experiment, but no rung state was restored: its "
                    "rungs start empty. Pass RunConfig(callbacks=[scheduler.callback()]) to keep "
                    "them across Tuner.restore."
                )
            return
        self._brackets.add(tid)

    def on_trial_result(self, tune_controller: TuneController, trial: Trial, result: dict) -> str:
        tid = trial.trial_id
        verdict = self._verdict(tid, result)
        if verdict in (DIVERGED, STALLED):
            self._outcomes.finish(tid, verdict)
            return TrialScheduler.STOP
        if verdict == CONVERGED:
            self._record(tid, result)
            self._outcomes.finish(tid, CONVERGED)
            return TrialScheduler.STOP
        if not has_rung_keys(result, (self._time_attr, self._rung_metric), type(self).__name__):
            return TrialScheduler.CONTINUE
        t = to_float(self._time_attr, result[self._time_attr])
        if t >= self._max_t and self._stop_last_trials:
            action = TrialScheduler.STOP
        else:
            action = self._rung_decision(tid, t, result)
        if action == TrialScheduler.STOP:
            self._outcomes.stops += 1
            if tid not in self._outcomes:
                self._outcomes.set(tid, MAX_T if t >= self._max_t else PRUNED)
        return action

    def on_trial_complete(
        self, tune_controller: TuneController, trial: Trial, result: dict
    ) -> None:
        tid = trial.trial_id
        if tid not in self._brackets.active:
            return
        verdict = self._verdict(tid, result)
        if verdict is not None:
            self._outcomes.finish(tid, verdict)
        elif tid not in self._outcomes:
            self._outcomes.set(tid, COMPLETED)
        ended = self._outcomes.get(tid)
        if ended not in (DIVERGED, STALLED):
            self._record(tid, result)
        self._votes.add_outcome(ended_trial(tid, ended, result, self._rung_metric))
        del self._brackets.active[tid]

    def on_trial_remove(self, tune_controller: TuneController, trial: Trial) -> None:
        self._brackets.active.pop(trial.trial_id, None)

    def debug_string(self) -> str:
        c = self._outcomes.counts
        return (
            f"Using NeVeASHA on {self._rung_metric!r} ({self._mode}): pruned={c[PRUNED]} "
            f"converged={c[CONVERGED]} diverged={c[DIVERGED]} stalled={c[STALLED]}\n"
            + self._brackets.describe()
        )

    # ------------------------------------------------------------------ outcomes
    def outcome(self, trial_id: str) -> str | None:
        """How the trial ended: ``"converged"``, ``"diverged"``, ``"stalled"``,
        ``"pruned"`` (lost at a rung), ``"max_t"``, ``"completed"`` (ended by itself
        otherwise), or ``None``."""
        return self._outcomes.get(trial_id)

    @property
    def num_pruned(self) -> int:
        return self._outcomes.counts[PRUNED]

    def rung_values(self, bracket: int = 0) -> list[tuple[float, dict[str, float]]]:
        """The rungs of one bracket, highest first: ``(milestone, {trial_id: metric})``,
        in the metric's own units."""
        return [
            (r.milestone, {k: self._sign * v for k, v in r.values.items()})
            for r in self._brackets.rungs[bracket]
        ]

    # ------------------------------------------------------------------ internals
    def _verdict(self, trial_id: str, result: dict) -> str | None:
        return velocity_verdict(
            result,
            metric=self._velocity_metric,
            threshold_key=self._threshold_key,
            threshold=self._threshold,
            who=type(self).__name__,
            first_loss=remember_first_loss(self._first_loss, trial_id, result),
        )

    def _on_rung(self, trial_id: str, t: float, value: float | None) -> str:
        """Ray's asynchronous successive halving decision for one result."""
        rung = self._brackets.pending(trial_id, t, self._stop_last_trials)
        if rung is None:
            return TrialScheduler.CONTINUE
        if value is None:
            logger.warning("NeVeASHAScheduler: metric %r is None; not recorded", self._rung_metric)
            return TrialScheduler.CONTINUE
        reward = self._sign * value
        cutoff = rung.cutoff(self._quantile)
        rung.add(trial_id, reward)
        return (
            TrialScheduler.STOP
            if cutoff is not None and reward < cutoff
            else TrialScheduler.CONTINUE
        )

    def _metric(self, result: dict) -> float | None:
        return to_float(
            f"{type(self).__name__}: metric {self._rung_metric!r}",
            result[self._rung_metric],
            allow_none=True,
        )

    def _rung_decision(self, trial_id: str, t: float, result: dict) -> str:
        """Rule 4 on the metric, on the consensus, or (``"auto"``, which records both) on
        whichever of the two the class doc's ``"auto"`` rule names."""
        if self._signal in SUBSET_SIGNALS:
            bracket, stop = self._brackets.index(trial_id), False
            preds = result.get(self._predictions_key)
            if self._votes.owed(bracket, trial_id, t, self._stop_last_trials, preds):
                preds = check_predictions(preds, self._predictions_key, type(self).__name__)
                stop = self._votes.decide(
                    bracket, trial_id, t, preds, self._quantile, self._stop_last_trials
                )
            if self._signal == "consensus" or self._votes.noisy():
                if self._signal == "auto":
                    self._on_rung(trial_id, t, self._metric(result))  # recorded, not deciding
                return TrialScheduler.STOP if stop else TrialScheduler.CONTINUE
        return self._on_rung(trial_id, t, self._metric(result))

    def _record(self, trial_id: str, result: dict) -> None:
        """Put a finished trial's value in the rung it reached (no decision)."""
        preds = result.get(self._predictions_key)
        if (
            self._signal in SUBSET_SIGNALS
            and self._time_attr in result
            and isinstance(preds, str)
            and preds
        ):
            self._votes.record(
                self._brackets.index(trial_id),
                trial_id,
                to_float(self._time_attr, result[self._time_attr]),
                preds,
            )
        if (
            self._signal == "consensus"
            or self._time_attr not in result
            or self._rung_metric not in result
        ):
            return
        value = self._metric(result)
        if value is None:
            return
        t = to_float(self._time_attr, result[self._time_attr])
        self._brackets.record(trial_id, t, self._sign * value)

    # ------------------------------------------------------------------ persistence
    def state_dict(self) -> dict[str, Any]:
        """Rungs, trial brackets, outcomes and counters as plain picklable data."""
        return {
            "version": _STATE_VERSION,
            "rungs": self._brackets.state_dict(),
            "trial_bracket": dict(self._brackets.active),
            **self._outcomes.state_dict(),
            "first_loss": dict(self._first_loss),
            "votes": self._votes.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Load a :meth:`state_dict`; ``ValueError`` when it was made with other rungs
        (another ``max_t``, ``min_resource``, ``reduction_factor`` or ``brackets``)."""
        if state.get("version") != _STATE_VERSION:
            raise ValueError(
                f"NeVeASHAScheduler state version {state.get('version')!r} is not supported"
            )
        self._brackets.load_state_dict(state["rungs"])
        self._brackets.active = {str(k): int(v) for k, v in state["trial_bracket"].items()}
        self._outcomes.load_state_dict(state)
        self._first_loss = {
            str(k): (float(i), float(v)) for k, (i, v) in state["first_loss"].items()
        }
        self._votes.load_state_dict(state["votes"])
        self._restored = True
