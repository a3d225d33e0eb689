"""Ray Tune backend: NeVe-controlled trials, a velocity stopper and a validation-free scheduler.

- :class:`NeVeStopper` (a ``ray.tune.Stopper``): stops a trial when its velocity is under
  its own (searched) threshold, or when it diverged.
- :class:`NeVeASHAScheduler` (Ray's ``AsyncHyperBandScheduler``): rung pruning on the
  epoch's training loss, velocity deciding convergence; rung state survives
  ``Tuner.restore``.
- :func:`neve_trainable`: a function trainable over a study file, reporting the DESIGN
  metrics and a ``tune.Checkpoint`` every epoch, resuming from ``tune.get_checkpoint()``.
- :func:`to_ray_space`, :func:`run_search`, :func:`asha_scheduler` (the validation
  baseline), and ``neve-tune ray run`` (:func:`add_cli`).

Example::

    from ray import tune
    from neve_tune.ray import NeVeStopper, neve_trainable, to_ray_space
    tune.run(neve_trainable("studies/digits.py"), config=to_ray_space("digits"),
             stop=NeVeStopper(), num_samples=20)
"""

from ._cli import add_cli, asha_scheduler, run_search, summarize
from ._scheduler import NeVeASHAScheduler
from ._stopper import NeVeStopper, velocity_verdict
from ._trainable import check_resources, check_resources_available, neve_trainable, reported_metrics, to_ray_space

__all__ = [
    "NeVeASHAScheduler",
    "NeVeStopper",
    "add_cli",
    "asha_scheduler",
    "check_resources",
    "check_resources_available",
    "neve_trainable",
    "reported_metrics",
    "run_search",
    "summarize",
    "to_ray_space",
    "velocity_verdict",
]
