"""``NeVeASHAStateCallback``: a scheduler's state in Ray Tune's experiment checkpoint.

Ray saves callbacks, not schedulers, in its experiment checkpoint (ray issue #30838), so
:class:`~neve_tune.ray.NeVeASHAScheduler`'s rungs travel through this callback. It works
with any scheduler that has ``state_dict``/``load_state_dict`` (and, optionally, a
``persist`` flag).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from ray.tune import Callback

if TYPE_CHECKING:
    from ._scheduler import NeVeASHAScheduler

__all__ = ["NeVeASHAStateCallback"]

logger = logging.getLogger(__name__)

_STATE_KEY = "neve_asha_scheduler"
#: ``stopped_by`` of a trial Tune stopped without the scheduler (a stopper, a ``stop`` criterion)
STOPPED_BY_TUNE = "tune"


class NeVeASHAStateCallback(Callback):
    """Carries a :class:`~neve_tune.ray.NeVeASHAScheduler`'s state in Ray Tune's experiment
    checkpoint, and records in a stopped trial's last result why it stopped (``stopped_by``).

    Tune calls ``get_state`` when it checkpoints the experiment (periodically, not on
    every result) and ``set_state`` on ``Tuner.restore`` before the restored trials are
    added back, so the scheduler resumes with the rungs of the snapshot. Get it from
    :meth:`~neve_tune.ray.NeVeASHAScheduler.callback`; the scheduler and its callback are pickled
    together in the ``Tuner``'s own state, so the restored callback fills the restored
    scheduler.

        >>> from neve_tune.ray import NeVeASHAScheduler
        >>> sched = NeVeASHAScheduler(max_t=16, min_resource=1, reduction_factor=2)
        >>> cb = sched.callback()
        >>> fresh = NeVeASHAScheduler(max_t=16, min_resource=1, reduction_factor=2)
        >>> fresh.callback().set_state(cb.get_state())
        >>> fresh.state_dict() == sched.state_dict()
        True
    """

    def __init__(self, scheduler: NeVeASHAScheduler) -> None:
        if not all(
            callable(getattr(scheduler, m, None)) for m in ("state_dict", "load_state_dict")
        ):
            raise TypeError(
                "NeVeASHAStateCallback: the callback needs a NeVeASHAScheduler, got "
                f"{type(scheduler).__name__}"
            )
        self.scheduler = scheduler

    def on_trial_result(
        self, iteration: int, trials: list, trial: Any, result: dict, **info: Any
    ) -> None:
        """A result Tune stopped (``done``: the scheduler or a stopper decided) that names no
        ``stopped_by`` gets one: the scheduler's outcome (``"pruned"``, ``"converged"``,
        ``"stalled"``, ``"diverged"``, ``"max_t"``), else ``"tune"`` (a stopper or a
        ``stop`` criterion). Tune lets callbacks amend a result in place before its loggers
        write it, so the trial's last recorded result says why it ended."""
        if result.get("done") and result.get("stopped_by") is None:
            outcome = getattr(self.scheduler, "outcome", None)
            why = outcome(trial.trial_id) if callable(outcome) else None
            result["stopped_by"] = why or STOPPED_BY_TUNE

    def get_state(self) -> dict[str, Any] | None:
        if not getattr(self.scheduler, "persist", True):
            return None
        return {_STATE_KEY: self.scheduler.state_dict()}

    def set_state(self, state: dict[str, Any]) -> None:
        saved = state.get(_STATE_KEY) if isinstance(state, dict) else None
        if saved is None:
            return
        self.scheduler.load_state_dict(saved)
        logger.info(
            "NeVeASHAScheduler: restored its rung state: %d trials ended, %d still in a bracket",
            len(saved["outcome"]),
            len(saved["trial_bracket"]),
        )
