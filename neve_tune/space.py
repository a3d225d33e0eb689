"""Search-space distributions of a study: what every backend samples from.

Each backend converts them to its own kind: Optuna's ``trial.suggest_*``
(:func:`neve_tune.optuna.suggest_config`), Ray Tune's ``tune.loguniform``/...
(:func:`neve_tune.ray.to_ray_space`).

    >>> from neve_tune.space import Choice, LogUniform
    >>> space = {"lr": LogUniform(1e-3, 0.5), "batch_size": Choice([32, 64, 128])}
    >>> validate_space(space)
    >>> LogUniform(0.5, 1e-3).validate("lr")
    Traceback (most recent call last):
    ...
    ValueError: search space 'lr': LogUniform needs 0 < low < high, got [0.5, 0.001]
"""

from __future__ import annotations

import difflib
import math
import numbers
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ._checks import check_choice, check_float, check_int, unwrap_scalar
from ._rules import FLOAT32_MAX, check_threshold  # re-exported: the rule is NeVe's own

__all__ = [
    "HYPERPARAMETERS",
    "INT_HYPERPARAMETERS",
    "Choice",
    "Distribution",
    "IntUniform",
    "LogUniform",
    "Uniform",
    "check_hyperparameter",
    "check_hyperparameter_name",
    "check_threshold",
    "default_space",
    "validate_space",
]

FLOAT32_TINY = 1.1754943508222875e-38  # smallest normal float32: a smaller lr is 0 or subnormal


def _plain_bounds(dist: Any) -> None:
    """A distribution's bounds as plain Python numbers: NumPy and 0-d tensor scalars are
    unwrapped (what Optuna and Ray take; a tensor bound is a number like any other)."""
    for bound in ("low", "high"):
        object.__setattr__(dist, bound, unwrap_scalar(getattr(dist, bound)))


@dataclass(frozen=True)
class LogUniform:
    """A float between ``low`` and ``high``, sampled uniformly in log scale."""

    low: float
    high: float

    __post_init__ = _plain_bounds

    def validate(self, name: str) -> None:
        _finite_bounds(name, self)
        if not (0 < self.low < self.high):
            raise ValueError(
                f"search space {name!r}: LogUniform needs 0 < low < high, got [{self.low}, "
                f"{self.high}]"
            )


@dataclass(frozen=True)
class Uniform:
    """A float between ``low`` and ``high``."""

    low: float
    high: float

    __post_init__ = _plain_bounds

    def validate(self, name: str) -> None:
        _finite_bounds(name, self)
        if not self.low < self.high:
            raise ValueError(
                f"search space {name!r}: Uniform needs low < high, got [{self.low}, {self.high}]"
            )


@dataclass(frozen=True)
class IntUniform:
    """An int in ``[low, high]`` (both included), in log scale when ``log``."""

    low: int
    high: int
    log: bool = False

    __post_init__ = _plain_bounds

    def validate(self, name: str) -> None:
        for bound in ("low", "high"):
            value = getattr(self, bound)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                raise TypeError(
                    f"search space {name!r}: IntUniform {bound} must be an int, got {value!r}"
                )
        if not self.low < self.high or (self.log and self.low < 1):
            raise ValueError(
                f"search space {name!r}: IntUniform needs low < high (low >= 1 if log), got "
                f"[{self.low}, {self.high}]"
            )


@dataclass(frozen=True)
class Choice:
    """One of ``values``."""

    values: tuple

    def __init__(self, values: Sequence) -> None:
        if isinstance(values, (str, bytes, Mapping)) or not isinstance(values, Iterable):
            raise TypeError(
                f"Choice values must be a list of values, like Choice([32, 64]), got {values!r}"
            )
        object.__setattr__(self, "values", tuple(values))

    def validate(self, name: str) -> None:
        if not self.values:
            raise ValueError(f"search space {name!r}: Choice needs at least one value, got none")
        for value in self.values:  # Optuna stores only these (CategoricalDistribution); Ray follows
            if value is not None and not isinstance(value, (bool, int, float, str)):
                raise TypeError(
                    f"search space {name!r}: Choice values must be None, bool, int, "
                    "float or str "
                    f"(what Optuna can store), got {value!r}"
                )


Distribution = LogUniform | Uniform | IntUniform | Choice


def _finite_bounds(name: str, dist: Any) -> None:
    for bound in ("low", "high"):
        value = getattr(dist, bound)
        if (
            isinstance(value, bool)
            or not isinstance(value, numbers.Real)
            or not math.isfinite(value)
        ):
            raise ValueError(
                f"search space {name!r}: {type(dist).__name__} {bound} must be a finite number, "
                f"got {value!r}"
            )


# What each known hyperparameter may be: the one check a study's defaults, the bounds and
# choices of its search space and the command-line flags all go through.
def _check_lr(name: str, value: Any) -> float:
    """A learning rate: positive, and a normal float32 (1e-320 is 0 in float32)."""
    lr = check_float(name, value, positive=True, high=FLOAT32_MAX)
    assert lr is not None
    if lr < FLOAT32_TINY:
        raise ValueError(
            f"{name} must be a normal float32 (>= {FLOAT32_TINY:g}; smaller is 0 "
            f"or subnormal in the float32 weights), got {lr!r}"
        )
    return lr


#: hyperparameters that are integers: they need IntUniform or a Choice of ints
INT_HYPERPARAMETERS = ("batch_size",)

HYPERPARAMETERS: dict[str, Callable[[str, Any], Any]] = {
    "lr": _check_lr,
    "threshold": lambda n, v: check_float(n, v, positive=True),
    "batch_size": lambda n, v: check_int(n, v, minimum=1),
    "momentum": lambda n, v: check_float(n, v, low=0.0, high=1.0, high_open=True),
    "weight_decay": lambda n, v: check_float(n, v, low=0.0),
    "optimizer": lambda n, v: check_choice(
        n, v.lower() if isinstance(v, str) else v, ("sgd", "adam", "adamw")
    ),
}


def check_hyperparameter_name(name: str, label: str | None = None) -> None:
    """Refuse a name one typo away from a hyperparameter a trial reads (``"treshold"``): a
    trial would sample it and train without it. Other unknown names pass.

    >>> check_hyperparameter_name("treshold")
    Traceback (most recent call last):
    ...
    ValueError: treshold is no hyperparameter a trial reads: did you mean 'threshold'?
    """
    if not isinstance(name, str) or name in HYPERPARAMETERS:
        return
    match = difflib.get_close_matches(name, HYPERPARAMETERS, n=1, cutoff=0.8)
    if match:
        raise ValueError(
            f"{label or name} is no hyperparameter a trial reads: did you mean {match[0]!r}?"
        )


def check_hyperparameter(
    name: str, value: Any, label: str | None = None, *, threshold_mode: str | None = None
) -> Any:
    """``value`` if hyperparameter ``name`` may take it (:data:`HYPERPARAMETERS`; other
    names pass unchecked, unless one typo away from one); else the error of that check, naming
    ``label`` (default ``name``).
    With ``threshold_mode``, a ``threshold`` is checked under that rule (:func:`check_threshold`).

    >>> check_hyperparameter("batch_size", 0, "--batch-size")
    Traceback (most recent call last):
    ...
    ValueError: --batch-size must be an int >= 1, got 0
    """
    check_hyperparameter_name(name, label)
    if name == "threshold" and threshold_mode is not None:
        return check_threshold(label or name, value, threshold_mode)
    check = HYPERPARAMETERS.get(name)
    return value if check is None else check(label or name, value)


def _space_values(dist: Distribution) -> list[tuple[str, Any]]:
    """The values of a distribution a trial can sample at the edges, with their names."""
    if isinstance(dist, Choice):
        return [(f"Choice value {v!r}", v) for v in dist.values]
    return [("low", dist.low), ("high", dist.high)]


def default_space() -> dict[str, Distribution]:
    """What a search tunes when a study says nothing: initial LR, velocity threshold (a ratio to
    the run's peak velocity under the default ``threshold_mode="relative"``), batch size."""
    return {
        "lr": LogUniform(1e-3, 0.5),
        "threshold": LogUniform(1e-3, 1e-1),  # relative: V / peak V (Study.threshold_mode)
        "batch_size": Choice([32, 64, 128]),
    }


def validate_space(space: Mapping[str, Any], threshold_mode: str | None = None) -> None:
    """Raise naming the first entry of ``space`` that is not a valid distribution, or whose
    bounds or choices a known hyperparameter may not take (:func:`check_hyperparameter`).

    >>> validate_space({"batch_size": Choice([0, -5])})
    Traceback (most recent call last):
    ...
    ValueError: search space 'batch_size': Choice value 0: batch_size must be an int >= 1, got 0
    """
    if not isinstance(space, Mapping):
        raise TypeError(f"search_space must be a dict of names to distributions, got {space!r}")
    if not space:
        raise ValueError("search_space is empty")
    for name, dist in space.items():
        check_hyperparameter_name(name, f"search space {name!r}")
        if not isinstance(dist, (LogUniform, Uniform, IntUniform, Choice)):
            raise TypeError(
                f"search space {name!r}: expected LogUniform/Uniform/IntUniform/Choice, got "
                f"{dist!r}"
            )
        dist.validate(name)
        if name in INT_HYPERPARAMETERS and isinstance(dist, (Uniform, LogUniform)):
            # a float search would train with batch_size=52.27
            raise TypeError(
                f"search space {name!r}: {name} is an int: use IntUniform("
                f"{dist.low}, {dist.high}) or a Choice of ints, got {dist!r}"
            )
        for where, value in _space_values(dist):
            try:
                check_hyperparameter(name, value, threshold_mode=threshold_mode)
            except (TypeError, ValueError) as e:
                raise type(e)(f"search space {name!r}: {where}: {e}") from None
