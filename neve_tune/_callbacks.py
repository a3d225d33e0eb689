"""Shared by the Lightning and Hugging Face callbacks (no third-party import here)."""

from __future__ import annotations

import inspect
from typing import Any, Mapping

import torch

from ._checks import check_float, check_int
from .control import NeVe

__all__ = ["CallbackSettings", "check_controller_options"]

# set by the callback itself, never through **controller_options
_OWN = {"self", "optimizer", "velocity", "threshold"}


def check_controller_options(options: Mapping[str, Any], who: str) -> None:
    """Refuse, when the callback is built, keyword options that :class:`neve_tune.NeVe` does not take.

    >>> check_controller_options({"min_epochs": 3}, "NeVeCallback")
    >>> check_controller_options({"patients": 3}, "NeVeCallback")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    TypeError: unknown NeVeCallback options ['patients']; NeVe options are [..., 'patience'...]
    """
    params = inspect.signature(NeVe.__init__).parameters
    allowed = sorted(n for n, p in params.items() if n not in _OWN and p.kind is not p.VAR_KEYWORD)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise TypeError(f"unknown {who} options {unknown}; NeVe options are {allowed}")


class CallbackSettings:
    """The settings both callbacks take, checked once: the probe (given, or built from the
    first batch), the velocity threshold, an optional Optuna trial, the monitored layers and
    further :class:`neve_tune.NeVe` options; and the run's controller and history."""

    def _settings(self, who: str, probe: torch.Tensor | None, threshold: float, trial: Any, probe_samples: int,
                  probe_seed: int, layers: Any, controller_options: Mapping[str, Any]) -> None:
        if probe is not None and not isinstance(probe, torch.Tensor):
            raise TypeError(f"probe must be a torch.Tensor [N, ...] or None, got {type(probe).__name__}")
        check_controller_options(controller_options, who)
        self.threshold = check_float("threshold", threshold, positive=True)
        self.probe = probe
        self.trial = trial
        self.probe_samples = check_int("probe_samples", probe_samples, minimum=1)
        self.probe_seed = check_int("probe_seed", probe_seed)
        self.layers = layers
        self.controller_options = dict(controller_options)
        self.neve: NeVe | None = None
        self.history: list[dict[str, Any]] = []
