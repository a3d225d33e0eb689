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

import math
import numbers
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

from ._checks import check_choice, check_float, check_int

__all__ = [
    "HYPERPARAMETERS",
    "Choice",
    "Distribution",
    "IntUniform",
    "LogUniform",
    "Uniform",
    "check_hyperparameter",
    "default_space",
    "validate_space",
]

FLOAT32_MAX = 3.4028234663852886e38  # weights are float32: a larger step overflows in the optimizer


@dataclass(frozen=True)
class LogUniform:
    """A float between ``low`` and ``high``, sampled uniformly in log scale."""

    low: float
    high: float

    def validate(self, name: str) -> None:
        _finite_bounds(name, self)
        if not (0 < self.low < self.high):
            raise ValueError(f"search space {name!r}: LogUniform needs 0 < low < high, got [{self.low}, {self.high}]")


@dataclass(frozen=True)
class Uniform:
    """A float between ``low`` and ``high``."""

    low: float
    high: float

    def validate(self, name: str) -> None:
        _finite_bounds(name, self)
        if not self.low < self.high:
            raise ValueError(f"search space {name!r}: Uniform needs low < high, got [{self.low}, {self.high}]")


@dataclass(frozen=True)
class IntUniform:
    """An int in ``[low, high]`` (both included), in log scale when ``log``."""

    low: int
    high: int
    log: bool = False

    def validate(self, name: str) -> None:
        for bound in ("low", "high"):
            value = getattr(self, bound)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                raise TypeError(f"search space {name!r}: IntUniform {bound} must be an int, got {value!r}")
        if not self.low < self.high or (self.log and self.low < 1):
            raise ValueError(f"search space {name!r}: IntUniform needs low < high (low >= 1 if log), got [{self.low}, {self.high}]")


@dataclass(frozen=True)
class Choice:
    """One of ``values``."""

    values: tuple

    def __init__(self, values: Sequence) -> None:
        object.__setattr__(self, "values", tuple(values))

    def validate(self, name: str) -> None:
        if not self.values:
            raise ValueError(f"search space {name!r}: Choice needs at least one value, got none")


Distribution = LogUniform | Uniform | IntUniform | Choice


def _finite_bounds(name: str, dist: Any) -> None:
    for bound in ("low", "high"):
        value = getattr(dist, bound)
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
            raise ValueError(f"search space {name!r}: {type(dist).__name__} {bound} must be a finite number, got {value!r}")


# What each known hyperparameter may be: the one check a study's defaults, the bounds and
# choices of its search space and the command-line flags all go through.
HYPERPARAMETERS: dict[str, Callable[[str, Any], Any]] = {
    "lr": lambda n, v: check_float(n, v, positive=True, high=FLOAT32_MAX),
    "threshold": lambda n, v: check_float(n, v, positive=True),
    "batch_size": lambda n, v: check_int(n, v, minimum=1),
    "momentum": lambda n, v: check_float(n, v, low=0.0, high=1.0, high_open=True),
    "weight_decay": lambda n, v: check_float(n, v, low=0.0),
    "optimizer": lambda n, v: check_choice(n, v.lower() if isinstance(v, str) else v, ("sgd", "adam", "adamw")),
}


def check_hyperparameter(name: str, value: Any, label: str | None = None) -> Any:
    """``value`` if hyperparameter ``name`` may take it (:data:`HYPERPARAMETERS`; other
    names pass unchecked); else the error of that check, naming ``label`` (default ``name``).

    >>> check_hyperparameter("batch_size", 0, "--batch-size")
    Traceback (most recent call last):
    ...
    ValueError: --batch-size must be an int >= 1, got 0
    """
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


def validate_space(space: Mapping[str, Any]) -> None:
    """Raise naming the first entry of ``space`` that is not a valid distribution, or whose
    bounds or choices a known hyperparameter may not take (:func:`check_hyperparameter`).

    >>> validate_space({"batch_size": Choice([0, -5])})
    Traceback (most recent call last):
    ...
    ValueError: search space 'batch_size': Choice value 0: batch_size must be an int >= 1, got 0
    """
    if not space:
        raise ValueError("search_space is empty")
    for name, dist in space.items():
        if not isinstance(dist, (LogUniform, Uniform, IntUniform, Choice)):
            raise TypeError(f"search space {name!r}: expected LogUniform/Uniform/IntUniform/Choice, got {dist!r}")
        dist.validate(name)
        for where, value in _space_values(dist):
            try:
                check_hyperparameter(name, value)
            except (TypeError, ValueError) as e:
                raise type(e)(f"search space {name!r}: {where}: {e}") from None
