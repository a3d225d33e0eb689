"""``NeVeStopper``: stop each Ray Tune trial on its own velocity threshold.

The decision rule lives in :func:`velocity_verdict` so that the stopper and the
scheduler (:mod:`neve_tune.ray._scheduler`) apply exactly the same rule.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

from ray.tune.stopper import Stopper

__all__ = ["NeVeStopper", "velocity_verdict", "CONVERGED", "DIVERGED"]

CONVERGED = "converged"
DIVERGED = "diverged"

# Keys Tune fills in by itself, or that a bare final result carries: a result holding only
# these carries no training metrics (e.g. a function trainable that returned early).
_AUTO_KEYS = frozenset(
    {
        "done",
        "training_iteration",
        "trial_id",
        "experiment_id",
        "date",
        "timestamp",
        "time_this_iter_s",
        "time_total_s",
        "pid",
        "hostname",
        "node_ip",
        "config",
        "time_since_restore",
        "iterations_since_restore",
        "checkpoint_dir_name",
        "should_checkpoint",
        "__duplicate__",
    }
)


def check_threshold(value: Any, name: str = "threshold") -> float:
    """``value`` as a positive finite float, else a ``TypeError``/``ValueError`` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a positive float, got {value!r}")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive finite float, got {value!r}")
    return float(value)


def _check_key(value: Any, name: str) -> str:
    if not isinstance(value, str) or not value:
        raise TypeError(f"{name} must be a non-empty str, got {value!r}")
    return value


def _bare(result: Mapping[str, Any]) -> bool:
    return all(k in _AUTO_KEYS for k in result)


def velocity_verdict(
    result: Mapping[str, Any],
    *,
    metric: str = "velocity",
    threshold_key: str = "threshold",
    threshold: float | None = None,
    grace_period: int = 0,
    who: str = "NeVeStopper",
) -> str | None:
    """``"diverged"``, ``"converged"`` or ``None`` (go on) for one Tune result.

    - diverged: ``result["diverged"]`` is true, or ``result[metric]`` is NaN or infinite;
    - converged: ``result["neve_stop"]`` is true (the trial's own NeVe controller stopped
      it), or ``result[metric] < threshold`` once ``training_iteration >= grace_period``.
      The threshold is ``result[threshold_key]``, else ``result["config"][threshold_key]``
      (``"config/<threshold_key>"`` in a flattened result; it is a searched hyperparameter,
      so each trial has its own), else ``threshold``.

    Raises ``ValueError`` when the result has training metrics but not ``metric``, when no
    threshold can be found, or when the trial's threshold is not a positive finite number.
    """
    if result.get("diverged") is True:
        return DIVERGED
    if metric not in result:
        if _bare(result):
            return None
        keys = sorted(k for k in result if k not in _AUTO_KEYS)
        raise ValueError(f"{who}: metric {metric!r} is not in the trial's result; it reports {keys}")
    value = result[metric]
    if value is None:  # not measured this iteration
        return CONVERGED if result.get("neve_stop") is True else None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{who}: metric {metric!r} must be a number, got {value!r}")
    if not math.isfinite(value):
        return DIVERGED
    if result.get("neve_stop") is True:
        return CONVERGED
    if result.get("training_iteration", math.inf) < grace_period:
        return None
    thr: Any = result.get(threshold_key)
    if thr is None:
        config = result.get("config")
        if isinstance(config, Mapping):
            thr = config.get(threshold_key)
        else:  # schedulers get flattened results
            thr = result.get(f"config/{threshold_key}")
    if thr is None:
        thr = threshold
    if thr is None:
        raise ValueError(
            f"{who}: no velocity threshold for this trial: put {threshold_key!r} in the trial's config "
            f"(it is searched) or in its result, or pass threshold= to {who}"
        )
    try:
        thr = check_threshold(thr, f"{who}: the trial's {threshold_key!r}")
    except TypeError as e:
        raise ValueError(str(e)) from None
    return CONVERGED if value < thr else None


class NeVeStopper(Stopper):
    """Stop a trial when its velocity is under its own threshold, or when it diverged.

    For every result a trial reports, the trial is stopped when

    - ``diverged`` is true or ``metric`` (default ``"velocity"``) is NaN/inf: diverged;
    - ``neve_stop`` is true (the NeVe controller inside the trial already stopped it), or
      ``metric < threshold`` and ``training_iteration >= grace_period``: converged.

    The threshold is searched, so each trial has its own: it is read from the result
    (``threshold_key``, default ``"threshold"``), else from the trial's config, else the
    ``threshold`` passed here. A trainable must report at least ``metric``; the results of
    :func:`neve_tune.ray.neve_trainable` carry every DESIGN metric.

    With ``max_converged_trials=N`` the whole experiment stops once ``N`` trials have
    converged (``stop_all``); otherwise ``stop_all`` is always false.

    State is per trial (plain dicts keyed by trial id), picklable, and restored by
    ``Tuner.restore``. It is keyed on ``training_iteration``: the last result of a function
    trainable, which Tune passes a second time, does not count twice.

    Args:
        threshold: fallback threshold for trials whose config/result has none.
        metric: the velocity key in the results.
        threshold_key: the threshold key in the trial's config or result.
        grace_period: no velocity stop before this ``training_iteration``.
        max_converged_trials: stop the experiment after this many converged trials.

    Example::

        >>> from ray import tune
        >>> from neve_tune.ray import NeVeStopper
        >>> stopper = NeVeStopper()
        >>> stopper("t1", {"training_iteration": 1, "velocity": 0.3, "config": {"threshold": 0.01}})
        False
        >>> stopper("t1", {"training_iteration": 2, "velocity": 0.005, "config": {"threshold": 0.01}})
        True
        >>> stopper.stopped_by("t1")
        'converged'

        In a search (``num_samples`` trials of the digits study, each stopped at its velocity)::

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
        grace_period: int = 0,
        max_converged_trials: int | None = None,
    ) -> None:
        self._threshold = None if threshold is None else check_threshold(threshold)
        self._metric = _check_key(metric, "metric")
        self._threshold_key = _check_key(threshold_key, "threshold_key")
        if isinstance(grace_period, bool) or not isinstance(grace_period, int) or grace_period < 0:
            raise ValueError(f"grace_period must be an int >= 0, got {grace_period!r}")
        self._grace_period = grace_period
        if max_converged_trials is not None and (
            isinstance(max_converged_trials, bool) or not isinstance(max_converged_trials, int) or max_converged_trials < 1
        ):
            raise ValueError(f"max_converged_trials must be a positive int or None, got {max_converged_trials!r}")
        self._max_converged = max_converged_trials
        # trial_id -> last training_iteration seen; trial_id -> (iteration, verdict) at stop
        self._last_iteration: dict[str, int] = {}
        self._stopped: dict[str, tuple[int, str]] = {}

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        iteration = int(result.get("training_iteration", 0))
        done = self._stopped.get(trial_id)
        if done is not None and iteration <= done[0]:
            return True  # the same (final) result again: decided already, count nothing
        verdict = velocity_verdict(
            result,
            metric=self._metric,
            threshold_key=self._threshold_key,
            threshold=self._threshold,
            grace_period=self._grace_period,
        )
        self._last_iteration[trial_id] = max(iteration, self._last_iteration.get(trial_id, 0))
        if verdict is None:
            return False
        self._stopped[trial_id] = (iteration, verdict)
        return True

    def stop_all(self) -> bool:
        return self._max_converged is not None and self.num_converged >= self._max_converged

    # ------------------------------------------------------------ introspection
    def stopped_by(self, trial_id: str) -> str | None:
        """``"converged"``, ``"diverged"`` or ``None`` (not stopped by this stopper)."""
        done = self._stopped.get(trial_id)
        return done[1] if done else None

    @property
    def num_converged(self) -> int:
        return sum(1 for _, v in self._stopped.values() if v == CONVERGED)

    @property
    def num_diverged(self) -> int:
        return sum(1 for _, v in self._stopped.values() if v == DIVERGED)

    def __repr__(self) -> str:
        return (
            f"NeVeStopper(threshold={self._threshold}, metric={self._metric!r}, threshold_key={self._threshold_key!r}, "
            f"grace_period={self._grace_period}, max_converged_trials={self._max_converged}; "
            f"converged={self.num_converged}, diverged={self.num_diverged})"
        )
