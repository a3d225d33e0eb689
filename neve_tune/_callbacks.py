"""Shared by the Lightning and Hugging Face callbacks (no third-party import here)."""

from __future__ import annotations

import inspect
from typing import Any, Mapping

from .control import NeVe

__all__ = ["check_controller_options"]

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
