"""Ray Tune backend: NeVe-controlled trials, a velocity stopper and a validation-free scheduler.

- :class:`NeVeStopper` (a ``ray.tune.Stopper``): stops a trial whose own controller reported
  convergence (``neve_stop``), or (without that key) whose velocity is under its own
  (searched) threshold, or that diverged or stalled.
- :class:`NeVeASHAScheduler`: asynchronous successive halving on the epoch's training loss
  (or the velocity, or the agreement with the other trials' vote: ``rung_signal``), velocity
  deciding convergence; its rung state survives ``Tuner.restore``
  when ``RunConfig(callbacks=[scheduler.callback()])`` carries it
  (:class:`NeVeASHAStateCallback`).
- :func:`neve_trainable`: a function trainable over a study file, reporting the
  metric names of docs/design.md and a ``tune.Checkpoint`` every epoch, resuming from
  ``tune.get_checkpoint()``.
- :func:`report_epoch`: what a trainable of your own reports each epoch (checked keys,
  plain numbers, ``ray.tune.report``), the sibling of :func:`neve_tune.optuna.report_epoch`.
- :func:`guard_noise_board`: the search's label-noise estimate for the guard's veto, an
  actor the trials post to and read (``run_search`` starts one per NeVe search).
- :func:`to_ray_space`, :func:`run_search`, :func:`asha_scheduler` (the validation
  baseline), :func:`search_trials` (the comparison's adapter); the command line
  ``neve-tune ray run`` lives in :mod:`neve_tune.cli.ray`.

Example::

    from ray import tune
    from neve_tune.ray import NeVeStopper, neve_trainable, to_ray_space
    tune.run(neve_trainable("digits"), config=to_ray_space("digits"),
             stop=NeVeStopper(), num_samples=20)
"""

from .._checks import check_resources
from ._guard_noise import guard_noise_board
from ._report import report_epoch
from ._scheduler import NeVeASHAScheduler
from ._scheduler_choice import asha_scheduler
from ._scheduler_state import NeVeASHAStateCallback
from ._search import CLUSTER_MAX_FAILURES, default_max_failures, run_search
from ._search_trials import search_trials
from ._stopper import NeVeStopper
from ._summary import summarize
from ._trainable import (
    check_resources_available,
    neve_trainable,
    reported_metrics,
    to_ray_space,
)
from ._verdict import velocity_verdict

__all__ = [
    "CLUSTER_MAX_FAILURES",
    "NeVeASHAScheduler",
    "NeVeASHAStateCallback",
    "NeVeStopper",
    "asha_scheduler",
    "check_resources",
    "check_resources_available",
    "default_max_failures",
    "guard_noise_board",
    "neve_trainable",
    "report_epoch",
    "reported_metrics",
    "run_search",
    "search_trials",
    "summarize",
    "to_ray_space",
    "velocity_verdict",
]
