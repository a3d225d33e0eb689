"""``NeVeStopper``: stop each Ray Tune trial on its own NeVe verdict.

The decision rule lives in :func:`~neve_tune.ray._verdict.velocity_verdict`, so that the
stopper and the scheduler (:mod:`neve_tune.ray._scheduler`) apply exactly the same rule.
"""

from __future__ import annotations

from typing import Any

from ray.tune.stopper import Stopper

from .._checks import check_float, check_int, check_mapping, to_float
from .._rules import STALL_PATIENCE
from ._losses import remember_best_loss, remember_first_loss
from ._verdict import (
    CONVERGED,
    DIVERGED,
    MIN_RAW_EPOCHS,
    STALLED,
    check_key,
    check_threshold,
    velocity_verdict,
)

__all__ = ["NeVeStopper"]


class NeVeStopper(Stopper):
    """Stop a trial when its NeVe controller converged, or when it diverged or stalled.

    For every result a trial reports, the trial is stopped when

    - ``diverged`` is true, or ``metric`` (default ``"velocity"``) is NaN/inf: diverged;
    - ``stalled`` is true (velocity under the threshold, training loss not dropping):
      stalled, not converged;
    - ``neve_stop`` is true: converged. When the result carries ``neve_stop`` the stopper
      trusts it and does not judge the velocity itself, so ``min_epochs`` is set once,
      in the trial's controller;
    - only when no ``neve_stop`` is reported (a raw velocity, e.g. from a trainable of
      your own): ``metric < threshold`` and ``training_iteration >= min_raw_epochs``
      (default 2, :data:`MIN_RAW_EPOCHS`) fire the velocity stop, and the controller's
      stall rule judges it: converged only if ``loss_metric`` (``"train_loss"``) fell
      below ``(1 - stall_margin)`` times the trial's first reported loss and, with
      ``num_classes``, below ``(1 - stall_margin) * log(num_classes)`` (chance);
      otherwise stalled. Such results must carry ``loss_metric``. With ``max_epochs``
      (the trials' budget) such a trial also ends stalled by the controller's early
      stall check, without waiting for a velocity stop (a dead learning rate).

    The threshold is searched, so each trial has its own: it is read from the result
    (``threshold_key``, default ``"threshold"``), else from the trial's config, else the
    ``threshold`` passed here. Numbers may be Python, NumPy or 0-d torch scalars. A
    result with training metrics but neither ``metric`` nor ``neve_stop`` raises a
    ``ValueError`` naming the key. The results of :func:`neve_tune.ray.neve_trainable`
    carry every metric this needs.

    With ``max_converged_trials=N`` the whole experiment stops once ``N`` trials have
    converged (``stop_all``); otherwise ``stop_all`` is always false.

    State is per trial (plain dicts keyed by trial id), picklable, and restored by
    ``Tuner.restore``. It is keyed on ``training_iteration``: the last result of a function
    trainable, which Tune passes a second time, does not count twice. Each call costs
    O(1), whatever the number of trials.

    Args:
        threshold: fallback threshold for trials whose config/result has none.
        metric: the velocity key in the results.
        threshold_key: the threshold key in the trial's config or result.
        min_raw_epochs: no raw-velocity stop before this ``training_iteration`` (a
            reported ``neve_stop`` is trusted at any iteration); at least 2 lets the
            stall rule see a loss drop.
        max_converged_trials: stop the experiment after this many converged trials.
        loss_metric: the training-loss key of raw-velocity results.
        num_classes: the task's number of classes: a raw-velocity trial whose loss
            stays near chance (``log(num_classes)``) ends stalled.
        stall_margin: the relative loss drop that counts as learning (the controller's).
        max_epochs: the trials' epoch budget: turns on the early stall check for raw
            velocity results (a reported ``stalled`` flag already carries it).
        stall_patience: epochs after the first before that check may fire (the controller's).

    Example::

        >>> import numpy as np
        >>> from neve_tune.ray import NeVeStopper
        >>> stopper = NeVeStopper(num_classes=2)
        >>> def epoch(i, velocity, loss):
        ...     return {"training_iteration": i, "velocity": velocity, "train_loss": loss,
        ...             "config": {"threshold": 0.01}}
        >>> stopper("t1", epoch(1, 0.3, 0.69))
        False
        >>> stopper("t1", epoch(2, np.float32(0.005), 0.3))
        True
        >>> stopper("t3", epoch(1, 1e-6, 0.73))  # too early
        False
        >>> stopper("t3", epoch(2, 1e-6, 0.72))
        True
        >>> stopper.stopped_by("t1"), stopper.stopped_by("t3")
        ('converged', 'stalled')
        >>> trusted = {"training_iteration": 2, "velocity": 0.005, "neve_stop": False}
        >>> stopper("t2", trusted)  # the trial's own controller decides
        False
        >>> stopper("t2", {"training_iteration": 3, "velocity": 0.004, "neve_stop": False,
        ...                "stalled": True})
        True
        >>> stopper.stopped_by("t2"), stopper.num_converged, stopper.num_stalled
        ('stalled', 1, 2)

        In a search (``num_samples`` trials of the digits study, each stopped at its velocity)::

            from ray import tune
            from neve_tune.ray import NeVeStopper, neve_trainable, to_ray_space
            tune.run(neve_trainable("digits"), config=to_ray_space("digits"),
                     stop=NeVeStopper(), num_samples=20)
    """

    def __init__(
        self,
        threshold: float | None = None,
        *,
        metric: str = "velocity",
        threshold_key: str = "threshold",
        min_raw_epochs: int = MIN_RAW_EPOCHS,
        max_converged_trials: int | None = None,
        loss_metric: str = "train_loss",
        num_classes: int | None = None,
        stall_margin: float = 0.1,
        max_epochs: int | None = None,
        stall_patience: int | None = STALL_PATIENCE,
    ) -> None:
        self._threshold = None if threshold is None else check_threshold(threshold)
        self._metric = check_key(metric, "metric")
        self._threshold_key = check_key(threshold_key, "threshold_key")
        self._min_raw_epochs = check_int("min_raw_epochs", min_raw_epochs, minimum=0)
        self._max_converged = check_int(
            "max_converged_trials", max_converged_trials, minimum=1, allow_none=True
        )
        self._loss_metric = check_key(loss_metric, "loss_metric")
        self._num_classes = check_int("num_classes", num_classes, minimum=2, allow_none=True)
        self._stall_margin = check_float(
            "stall_margin", stall_margin, low=0.0, high=1.0, high_open=True
        )
        # trial_id -> (iteration, verdict) at stop; counts by verdict (stop_all is called every
        # step)
        self._stopped: dict[str, tuple[int, str]] = {}
        self._counts: dict[str, int] = {CONVERGED: 0, DIVERGED: 0, STALLED: 0}
        self._first_loss: dict[
            str, tuple[float, float]
        ] = {}  # trial_id -> (iteration, loss) of its first result
        self._max_epochs = check_int("max_epochs", max_epochs, minimum=1, allow_none=True)
        self._stall_patience = check_int(
            "stall_patience", stall_patience, minimum=1, allow_none=True
        )
        self._best_loss: dict[str, float] = {}  # trial_id -> its lowest reported loss

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        check_mapping("result", result, "a dict of one epoch's reported metrics")
        iteration = int(to_float("training_iteration", result.get("training_iteration", 0)))
        done = self._stopped.get(trial_id)
        if done is not None and iteration <= done[0]:
            return True  # the same (final) result again: decided already, count nothing
        verdict = velocity_verdict(
            result,
            metric=self._metric,
            threshold_key=self._threshold_key,
            threshold=self._threshold,
            min_raw_epochs=self._min_raw_epochs,
            first_loss=remember_first_loss(self._first_loss, trial_id, result, self._loss_metric),
            loss_metric=self._loss_metric,
            num_classes=self._num_classes,
            stall_margin=self._stall_margin,
            best_loss=remember_best_loss(self._best_loss, trial_id, result, self._loss_metric),
            max_epochs=self._max_epochs,
            stall_patience=self._stall_patience,
        )
        if verdict is None:
            return False
        if done is not None:  # a later result of a trial stopped before (a retry): recount
            self._counts[done[1]] -= 1
        self._stopped[trial_id] = (iteration, verdict)
        self._counts[verdict] += 1
        return True

    def stop_all(self) -> bool:
        return self._max_converged is not None and self._counts[CONVERGED] >= self._max_converged

    # ------------------------------------------------------------ introspection
    def stopped_by(self, trial_id: str) -> str | None:
        """``"converged"``, ``"diverged"``, ``"stalled"`` or ``None`` (not stopped by this
        stopper)."""
        done = self._stopped.get(trial_id)
        return done[1] if done else None

    @property
    def num_converged(self) -> int:
        return self._counts[CONVERGED]

    @property
    def num_diverged(self) -> int:
        return self._counts[DIVERGED]

    @property
    def num_stalled(self) -> int:
        return self._counts[STALLED]

    def __repr__(self) -> str:
        return (
            f"NeVeStopper(threshold={self._threshold}, metric={self._metric!r}, "
            f"threshold_key={self._threshold_key!r}, min_raw_epochs={self._min_raw_epochs}, "
            f"max_converged_trials={self._max_converged}, loss_metric={self._loss_metric!r}, "
            f"num_classes={self._num_classes}, stall_margin={self._stall_margin}; "
            f"converged={self.num_converged}, diverged={self.num_diverged}, "
            f"stalled={self.num_stalled})"
        )
