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

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

__all__ = ["Choice", "Distribution", "IntUniform", "LogUniform", "Uniform", "default_space", "validate_space"]


@dataclass(frozen=True)
class LogUniform:
    """A float between ``low`` and ``high``, sampled uniformly in log scale."""

    low: float
    high: float

    def validate(self, name: str) -> None:
        if not (0 < self.low < self.high):
            raise ValueError(f"search space {name!r}: LogUniform needs 0 < low < high, got [{self.low}, {self.high}]")


@dataclass(frozen=True)
class Uniform:
    """A float between ``low`` and ``high``."""

    low: float
    high: float

    def validate(self, name: str) -> None:
        if not self.low < self.high:
            raise ValueError(f"search space {name!r}: Uniform needs low < high, got [{self.low}, {self.high}]")


@dataclass(frozen=True)
class IntUniform:
    """An int in ``[low, high]`` (both included), in log scale when ``log``."""

    low: int
    high: int
    log: bool = False

    def validate(self, name: str) -> None:
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


def default_space() -> dict[str, Distribution]:
    """What a search tunes when a study says nothing: initial LR, velocity threshold (a ratio to
    the run's peak velocity under the default ``threshold_mode="relative"``), batch size."""
    return {
        "lr": LogUniform(1e-3, 0.5),
        "threshold": LogUniform(1e-3, 1e-1),  # relative: V / peak V (Study.threshold_mode)
        "batch_size": Choice([32, 64, 128]),
    }


def validate_space(space: Mapping[str, Any]) -> None:
    """Raise naming the first entry of ``space`` that is not a valid distribution."""
    if not space:
        raise ValueError("search_space is empty")
    for name, dist in space.items():
        if not isinstance(dist, (LogUniform, Uniform, IntUniform, Choice)):
            raise TypeError(f"search space {name!r}: expected LogUniform/Uniform/IntUniform/Choice, got {dist!r}")
        dist.validate(name)
