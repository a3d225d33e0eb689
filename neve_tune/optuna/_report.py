"""Per-epoch reporting: what an objective tells Optuna after every epoch.

:func:`report_epoch` is the one call an objective makes per epoch. It

1. reports the **intermediate objective** with ``trial.report(value, step=epoch)``: the
   epoch's NeVe velocity (``signal="velocity"``, the default; ``val_loss`` for the
   validation baselines), *oriented by the study's direction*: ``+velocity`` in a
   ``minimize`` study and ``-velocity`` in a ``maximize`` one, and NaN when the velocity
   or the loss is not finite (the trial diverged);
2. stores the epoch's whole metric dict (DESIGN names: velocity, losses, LR, cost
   counters, ...) as the trial user attribute ``epoch_0001``, ``epoch_0002``, ...
   (string step keys, JSON values, non-finite numbers as ``null``).

Why the orientation: Optuna stores a PRUNED trial's value as its last intermediate value
and TPE ranks pruned trials (after every complete one) by deepest step, then that value
"better first" in the study's direction, NaN last. A lower velocity means a more settled
trial, so the signed value makes "better in the study's direction" mean "more settled"
in both directions, and a diverged trial always ranks last. The raw velocity stays in the
user attributes, where the pruner, optuna-dashboard and :func:`neve_tune.optuna.plot_study`
read it.

A resumed or retried trial must not report a step twice (Optuna ignores the repeat with
a warning): :func:`report_epoch` skips steps the trial already holds, so an objective can
replay a restored history through it.
"""

from __future__ import annotations

import math
from typing import Any, Mapping


from optuna.study import StudyDirection
from optuna.trial import BaseTrial, FrozenTrial

from .._json import json_safe

__all__ = [
    "EPOCH_ATTR_PREFIX",
    "REPORT_SIGNALS",
    "epoch_key",
    "report_epoch",
    "direction_sign",
    "trial_history",
    "reported_to_raw",
]

EPOCH_ATTR_PREFIX = "epoch_"
REPORT_SIGNALS = ("velocity", "val_loss", "train_loss")


def epoch_key(epoch: int) -> str:
    """User-attribute key of one epoch's metrics: ``epoch_0007`` (sorts as text)."""
    return f"{EPOCH_ATTR_PREFIX}{int(epoch):04d}"


def direction_sign(direction: StudyDirection) -> float:
    """``+1.0`` for a minimize study, ``-1.0`` for a maximize one."""
    if direction == StudyDirection.MAXIMIZE:
        return -1.0
    if direction == StudyDirection.MINIMIZE:
        return 1.0
    raise ValueError(f"study direction must be MINIMIZE or MAXIMIZE, got {direction!r}")


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _study_direction(trial: BaseTrial) -> StudyDirection:
    study = getattr(trial, "study", None)
    if study is None:  # FixedTrial and friends
        return StudyDirection.MINIMIZE
    directions = study.directions
    if len(directions) != 1:
        raise ValueError("report_epoch needs a single-objective study; Optuna cannot report intermediate values otherwise")
    return directions[0]


def report_epoch(trial: BaseTrial, metrics: Mapping[str, Any], *, signal: str = "velocity") -> float:
    """Report one finished epoch of ``trial`` and return the reported value.

    ``metrics`` is the epoch's metric dict (``neve_tune.run_trial``'s ``on_epoch``
    argument: ``epoch``, ``velocity``, ``train_loss``, ``lr``, cost counters, ...).
    ``trial.report`` receives ``sign * metrics[signal]`` at ``step = metrics["epoch"]``,
    ``sign`` being ``+1`` for a minimize and ``-1`` for a maximize study; NaN when that
    value or the training loss is not finite, or when the epoch diverged. The whole dict
    goes into the user attribute :func:`epoch_key(epoch) <epoch_key>`. A step the trial
    already holds is skipped (nothing is written twice).

    Example::

        >>> import optuna
        >>> from neve_tune.optuna import NeVePruner, report_epoch
        >>> optuna.logging.set_verbosity(optuna.logging.WARNING)
        >>> study = optuna.create_study(direction="maximize", pruner=NeVePruner())
        >>> trial = study.ask()
        >>> report_epoch(trial, {"epoch": 1, "velocity": 0.25, "train_loss": 1.2, "lr": 0.1})
        -0.25
        >>> trial.user_attrs["epoch_0001"]["velocity"]
        0.25
    """
    if signal not in REPORT_SIGNALS:
        raise ValueError(f"signal must be one of {REPORT_SIGNALS}, got {signal!r}")
    if "epoch" not in metrics:
        raise ValueError(f"metrics must hold 'epoch' (the step), got keys {sorted(metrics)}")
    step = int(metrics["epoch"])
    if step < 0:
        raise ValueError(f"metrics['epoch'] must be >= 0, got {step}")
    sign = direction_sign(_study_direction(trial))
    raw = metrics.get(signal)
    diverged = bool(metrics.get("diverged", False)) or not _finite(metrics.get("train_loss", 0.0))
    value = sign * float(raw) if (_finite(raw) and not diverged) else float("nan")

    frozen = getattr(trial, "_cached_frozen_trial", None)
    known_steps = frozen.intermediate_values if frozen is not None else {}
    key = epoch_key(step)
    if key not in trial.user_attrs:
        trial.set_user_attr(key, json_safe(dict(metrics)))
    if step not in known_steps:
        trial.report(value, step)
    return value


def trial_history(trial: FrozenTrial | BaseTrial) -> list[dict[str, Any]]:
    """The per-epoch metric dicts stored by :func:`report_epoch`, in epoch order."""
    attrs = trial.user_attrs
    keys = [k for k in attrs if k.startswith(EPOCH_ATTR_PREFIX) and k[len(EPOCH_ATTR_PREFIX):].isdigit()]
    return [dict(attrs[k]) for k in sorted(keys, key=lambda k: int(k[len(EPOCH_ATTR_PREFIX):]))]


def reported_to_raw(value: float, direction: StudyDirection) -> float:
    """Undo the orientation of a reported value (``sign * value``)."""
    return direction_sign(direction) * value


