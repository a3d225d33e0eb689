"""``Trainer.hyperparameter_search`` with NeVe's objective and no ``eval_dataset``.

:meth:`NeVeTrainerCallback.attach <neve_tune.hf.NeVeTrainerCallback.attach>` hands the
callback its Trainer. Then, in every search trial:

- at the end of training the trial's objective is the training loss of the measurement
  whose weights the model keeps (``kept_train_loss``: the last one, or the one a guard
  stop restored), set on the Trainer so that transformers does not evaluate
  (:mod:`neve_tune.hf._compat`);
- under ``backend="ray"`` every measurement is reported to Tune
  (:func:`neve_tune.ray.report_epoch`, with ``objective`` = its ``kept_train_loss``), so a
  scheduler (``NeVeASHAScheduler``) and a stopper see each trial's series and the search
  picks by NeVe's objective; under ``backend="optuna"`` the callback reports to the trial
  it learnt through :meth:`~neve_tune.hf.NeVeTrainerCallback.track_trial`, as before.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from . import _compat

__all__ = ["check_trainer", "report_to_search", "set_trial_objective"]


def check_trainer(trainer: Any, callback: Any) -> None:
    """A ``transformers.Trainer`` whose callbacks include ``callback``, else a clear error."""
    from transformers import Trainer

    if not isinstance(trainer, Trainer):
        raise TypeError(f"attach() needs a transformers.Trainer, got {type(trainer).__name__}")
    if callback not in trainer.callback_handler.callbacks:
        raise ValueError(
            "attach(): this NeVeTrainerCallback is not among the Trainer's callbacks; "
            "pass it in Trainer(callbacks=[...]) first"
        )


def report_to_search(trainer: Any, metrics: Mapping[str, Any], is_main: bool) -> None:
    """Under a Ray search, report one measurement to Tune, with ``objective``."""
    if trainer is None or not is_main or _compat.search_backend(trainer) != "ray":
        return
    from ..ray import report_epoch

    report_epoch({**metrics, "objective": metrics["kept_train_loss"]})


def set_trial_objective(trainer: Any, history: list[dict[str, Any]]) -> None:
    """At the end of a search trial's training: its objective is the kept measurement's loss."""
    if trainer is None or not history or _compat.search_backend(trainer) is None:
        return
    _compat.set_objective(trainer, history[-1]["kept_train_loss"])
