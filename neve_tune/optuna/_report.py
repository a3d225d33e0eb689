"""Per-epoch reporting: what an objective tells Optuna after every epoch.

:func:`report_epoch` is the one call an objective makes per epoch. It

1. reports the **intermediate objective** with ``trial.report(value, step=epoch)``: by
   default the epoch's mean training loss (``signal="train_loss"``), the value a NeVe
   trial that completes returns (its validation-free objective); ``val_loss`` (or the
   validation error ``val_error = 1 - val_acc``) for the validation baselines, whose
   objective it is; ``velocity`` on request. The value is
   *oriented by the study's direction* (``-value`` in a ``maximize`` study) and NaN when
   it, the training loss or the velocity is not finite (the trial diverged);
2. stores the epoch's whole metric dict (velocity, losses, LR, cost counters, ...) as
   the trial user attribute ``epoch_0001``, ``epoch_0002``, ... (string step keys, JSON
   values, non-finite numbers as ``null``): :class:`~neve_tune.optuna.NeVePruner`,
   optuna-dashboard and :func:`neve_tune.optuna.plot_study` read the velocity there.

**One meaning per value.** Optuna stores a PRUNED trial's value as its last intermediate
value, and TPE ranks pruned trials (after every complete one) by deepest step, then that
value in the study's direction, NaN last. Reporting the objective's own quantity makes a
trial's value the training loss in every state (complete: at its last or restored
epoch; pruned: at the epoch it was pruned), so optuna-dashboard plots one quantity on
one axis, and TPE ranks a pruned trial that fits the training set worse as worse. With
``Study.objective="pc_min"`` the complete value is a prediction-change level while
pruned trials still carry their training loss (that level is undefined for the first
``pc_window`` epochs).

A resumed or retried trial must not report a step twice (Optuna ignores the repeat with
a warning): :func:`report_epoch` skips steps the trial already holds, so an objective can
replay a restored history through it.
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping
from typing import Any

from optuna.study import StudyDirection
from optuna.trial import BaseTrial, FrozenTrial, TrialState

from .._checks import check_choice, check_int, is_finite, to_float
from .._json import json_safe
from .._metrics import check_metric_keys

__all__ = [
    "EPOCH_ATTR_PREFIX",
    "REPORT_SIGNALS",
    "epoch_key",
    "report_epoch",
    "direction_sign",
    "trial_history",
]

EPOCH_ATTR_PREFIX = "epoch_"
REPORT_SIGNALS = ("velocity", "val_loss", "val_error", "train_loss")

# the epoch each live trial object last reported: the same epoch twice in a row is a loop
# that reports twice (a replayed or restarted history goes back, which is allowed)
_LAST_EPOCH: weakref.WeakKeyDictionary[BaseTrial, int] = weakref.WeakKeyDictionary()


def epoch_key(epoch: int) -> str:
    """User-attribute key of one epoch's metrics: ``epoch_0007`` (sorts as text).

    >>> epoch_key(7)
    'epoch_0007'
    """
    return f"{EPOCH_ATTR_PREFIX}{check_int('epoch', epoch, minimum=0):04d}"


def direction_sign(direction: StudyDirection) -> float:
    """``+1.0`` for a minimize study, ``-1.0`` for a maximize one.

    >>> direction_sign(StudyDirection.MAXIMIZE)
    -1.0
    """
    if direction == StudyDirection.MAXIMIZE:
        return -1.0
    if direction == StudyDirection.MINIMIZE:
        return 1.0
    raise ValueError(f"study direction must be MINIMIZE or MAXIMIZE, got {direction!r}")


def _study_direction(trial: BaseTrial) -> StudyDirection:
    study = getattr(trial, "study", None)
    if study is None:  # FixedTrial and friends
        return StudyDirection.MINIMIZE
    directions = study.directions
    if len(directions) != 1:
        raise ValueError(
            "report_epoch needs a single-objective study; Optuna cannot report intermediate "
            "values otherwise"
        )
    return directions[0]


def running_trial(trial: BaseTrial) -> FrozenTrial | None:
    """The stored state of the running ``trial`` (its intermediate values and system
    attributes, which :class:`optuna.Trial` does not expose), read through the public
    ``Study.get_trials``; ``None`` for a trial without a study (``FixedTrial``)."""
    study = getattr(trial, "study", None)
    if study is None:
        return None
    number = trial.number
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if t.number == number:
            return t
    return None


def _reported_steps(trial: BaseTrial) -> set[int]:
    frozen = running_trial(trial)
    return set(frozen.intermediate_values) if frozen is not None else set()


def report_epoch(
    trial: BaseTrial, metrics: Mapping[str, Any], *, signal: str = "train_loss"
) -> float:
    """Report one finished epoch of ``trial`` and return the reported value.

    ``metrics`` is the epoch's metric dict (``neve_tune.run_trial``'s ``on_epoch``
    argument: ``epoch``, ``velocity``, ``train_loss``, ``lr``, cost counters, ...).
    ``trial.report`` receives ``sign * metrics[signal]`` (``signal``: ``"train_loss"``,
    the default, ``"val_loss"``, ``"val_error"`` (``1 - metrics["val_acc"]`` unless given)
    or ``"velocity"``) at ``step = metrics["epoch"]``,
    ``sign`` being ``+1`` for a minimize and ``-1`` for a maximize study; NaN when that
    value, the training loss or the velocity is not finite, or when the epoch diverged. The whole
    dict goes into the user attribute :func:`epoch_key(epoch) <epoch_key>`. A step the trial
    already holds is skipped (nothing is written twice).

    The rule for the input, so that nothing turns into NaN silently:

    - numbers may be Python, NumPy or 0-d torch scalars;
    - ``epoch`` is required, an int >= 0 (``1.7`` is refused, not truncated);
    - ``metrics[signal]`` is required (the ``ValueError`` names it and the keys given);
      it may be ``None`` only on an epoch flagged ``diverged``;
    - ``train_loss`` and ``velocity`` are numbers or ``None``, the velocity not negative; a
      key one typo away from a metric name (``"velocty"``) is refused, flags are bools:
      the rule of :func:`neve_tune.ray.report_epoch` too (:mod:`neve_tune._metrics`);
    - ``trial`` is the running ``optuna.Trial`` (not a ``FrozenTrial``), and the same
      epoch is not reported twice in a row (a replayed, earlier history is skipped).

    Example::

        >>> import numpy as np
        >>> import optuna
        >>> from neve_tune.optuna import NeVePruner, report_epoch
        >>> optuna.logging.set_verbosity(optuna.logging.WARNING)
        >>> study = optuna.create_study(pruner=NeVePruner())
        >>> trial = study.ask()
        >>> report_epoch(trial, {"epoch": 1, "velocity": 0.25, "train_loss": 1.25, "lr": 0.1})
        1.25
        >>> report_epoch(trial, {"epoch": 2, "velocity": np.float32(0.125),
        ...                      "train_loss": np.float32(1.0)})
        1.0
        >>> trial.user_attrs["epoch_0001"]["velocity"]
        0.25
        >>> report_epoch(trial, {"epoch": 3, "train_los": 0.9})  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: metrics has 'train_los': did you mean 'train_loss'? (a metric NeVe reads); ...
    """
    step, raw, diverged = _checked_report(trial, metrics, signal)
    sign = direction_sign(_study_direction(trial))
    value = sign * raw if (raw is not None and is_finite(raw) and not diverged) else float("nan")

    _write_once(trial, step, metrics, value)
    _LAST_EPOCH[trial] = step
    return value


def _write_once(trial: BaseTrial, step: int, metrics: Mapping[str, Any], value: float) -> None:
    """The epoch's user attribute and its reported value, each written once."""
    # The epoch attribute is written before the report, so an epoch without it was never
    # reported. One with it may come from a predecessor this trial retries (user attributes
    # are inherited, intermediate values only on request): check the stored steps then.
    key = epoch_key(step)
    if key not in trial.user_attrs:
        trial.set_user_attr(key, json_safe(dict(metrics)))
        trial.report(value, step)
    elif step not in _reported_steps(trial):
        trial.report(value, step)


def _checked_report(
    trial: Any, metrics: Mapping[str, Any], signal: str
) -> tuple[int, float | None, bool]:
    """:func:`_checked_epoch` of a running trial, refusing the epoch it just reported."""
    _check_trial(trial)
    step, raw, diverged = _checked_epoch(metrics, signal)
    if _LAST_EPOCH.get(trial) == step:
        raise ValueError(
            f"metrics['epoch'] {step} was just reported for trial {trial.number}: "
            "report each epoch once"
        )
    return step, raw, diverged


def check_optuna_study(name: str, search: Any) -> Any:
    """``search`` if it is an ``optuna.Study``; else a ``TypeError`` naming ``name``."""
    import optuna

    if not isinstance(search, optuna.Study):
        raise TypeError(
            f"{name} must be an optuna.Study (optuna.create_study/load_study), got {search!r}"
        )
    return search


def _check_trial(trial: Any) -> None:
    if isinstance(trial, FrozenTrial):
        raise TypeError(
            "trial must be the running optuna.Trial the objective received, "
            "got a FrozenTrial "
            f"(trial {trial.number}'s stored record, which cannot report)"
        )
    if not isinstance(trial, BaseTrial):
        raise TypeError(f"trial must be an optuna.Trial (the objective's argument), got {trial!r}")


def _checked_epoch(metrics: Mapping[str, Any], signal: str) -> tuple[int, float | None, bool]:
    """(step, the signal's value, diverged) of one epoch's metrics, checked by the rule of
    :func:`report_epoch`; a non-finite training loss or velocity counts as divergence."""
    check_choice("signal", signal, REPORT_SIGNALS)
    check_metric_keys(metrics)  # the rule both backends share: names, velocity, flags
    pred = metrics.get("subset_pred")
    if pred is not None and not isinstance(pred, str):  # the pick reads that string only
        raise TypeError(
            "metrics['subset_pred'] must be the string SelectionSubset.predict(model) returns, "
            f"got {type(pred).__name__}"
        )
    to_float("metrics['subset_fit']", metrics.get("subset_fit"), allow_none=True)
    if "epoch" not in metrics:
        raise ValueError(
            f"metrics has no 'epoch' (the step); its keys: {sorted(map(str, metrics))}"
        )
    step = check_int("metrics['epoch']", metrics["epoch"], minimum=0)
    if signal == "val_error" and signal not in metrics and "val_acc" in metrics:
        # the validation error of an accuracy: lower is better, like every other signal
        acc = to_float("metrics['val_acc']", metrics["val_acc"], allow_none=True)
        metrics = {**metrics, "val_error": None if acc is None else 1.0 - acc}
    if signal not in metrics:
        raise ValueError(
            f"metrics has no {signal!r} (the signal reported to Optuna); its keys: "
            f"{sorted(map(str, metrics))}"
        )
    raw = to_float(f"metrics[{signal!r}]", metrics[signal], allow_none=True)
    train_loss = to_float("metrics['train_loss']", metrics.get("train_loss"), allow_none=True)
    velocity = to_float("metrics['velocity']", metrics.get("velocity"), allow_none=True)
    diverged = bool(metrics.get("diverged", False))
    if raw is None and not diverged:
        raise ValueError(
            f"metrics[{signal!r}] is None on an epoch not flagged 'diverged' (epoch {step})"
        )
    diverged = diverged or ("train_loss" in metrics and not is_finite(train_loss))
    diverged = diverged or (velocity is not None and not is_finite(velocity))
    return step, raw, diverged  # type: ignore[return-value]


def trial_history(trial: FrozenTrial | BaseTrial) -> list[dict[str, Any]]:
    """The per-epoch metric dicts stored by :func:`report_epoch`, in epoch order."""
    if not isinstance(trial, (FrozenTrial, BaseTrial)):
        raise TypeError(f"trial must be an optuna trial (Trial or FrozenTrial), got {trial!r}")
    attrs = trial.user_attrs
    keys = [
        k
        for k in attrs
        if k.startswith(EPOCH_ATTR_PREFIX) and k[len(EPOCH_ATTR_PREFIX) :].isdigit()
    ]
    return [dict(attrs[k]) for k in sorted(keys, key=lambda k: int(k[len(EPOCH_ATTR_PREFIX) :]))]
