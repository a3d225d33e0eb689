"""Argument checks shared by every module: one wording for every bad value.

Each check raises ``TypeError`` (wrong kind) or ``ValueError`` (out of range) naming the
parameter, the value and what is allowed, and returns the value converted to a plain
Python number, so NumPy scalars and 0-d tensors are accepted wherever a number is.

    >>> check_int("trials", 20, minimum=1)
    20
    >>> check_int("trials", 0, minimum=1)
    Traceback (most recent call last):
    ...
    ValueError: trials must be an int >= 1, got 0
    >>> check_float("threshold", 1e-3, positive=True)
    0.001
    >>> to_float("velocity", None, allow_none=True) is None
    True
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from typing import Any

__all__ = [
    "MAX_SEED",
    "RESOURCE_KEYS",
    "check_choice",
    "check_device",
    "check_float",
    "check_int",
    "check_mapping",
    "check_model_fn",
    "check_resources",
    "check_seed",
    "check_shape",
    "is_bool",
    "is_finite",
    "to_float",
    "unwrap_scalar",
]

MAX_SEED = 2**32 - 1  # NumPy and scikit-learn take seeds in [0, 2**32 - 1]; torch takes them too


def unwrap_scalar(value: Any) -> Any:
    """A NumPy scalar or a one-element tensor/array as a Python scalar; others unchanged."""
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    item = getattr(value, "item", None)
    if callable(item):
        size = getattr(value, "size", None)
        n = size() if callable(size) and not isinstance(size, int) else size
        numel = getattr(value, "numel", None)
        if callable(numel):
            n = numel()
        if n in (None, 1):
            try:
                return item()
            except (TypeError, ValueError):
                return value
    return value


def is_bool(value: Any) -> bool:
    """A Python or NumPy bool (a flag, never a number)."""
    return isinstance(value, bool) or type(value).__name__ in ("bool_", "bool")


def check_bool(name: str, value: Any) -> bool:
    """``value`` as a bool (a Python or NumPy bool), or a ``TypeError`` naming ``name``: a
    flag is never a number or a string."""
    if not is_bool(value):
        raise TypeError(f"{name} must be a bool, got {value!r}")
    return bool(value)


def check_int(
    name: str, value: Any, *, minimum: int | None = None, allow_none: bool = False
) -> int | None:
    """``value`` as an ``int`` (bools refused), at least ``minimum`` when given."""
    value = unwrap_scalar(value)
    if value is None and allow_none:
        return None
    allowed = (
        "an int"
        + (f" >= {minimum}" if minimum is not None else "")
        + (" or None" if allow_none else "")
    )
    if is_bool(value) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be {allowed}, got {value!r}")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be {allowed}, got {value!r}")
    return value


def check_shape(name: str, value: Any) -> tuple[int, ...]:
    """``value`` (one input's shape) as a non-empty tuple of positive ints, or an error
    naming ``name``.

    >>> check_shape("input_shape", [1, 8, 8])
    (1, 8, 8)
    """
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise TypeError(f"{name} must be a tuple of positive ints like (1, 8, 8), got {value!r}")
    dims = tuple(check_int(f"{name}[{i}]", d, minimum=1) for i, d in enumerate(value))
    if not dims:
        raise ValueError(f"{name} must be a tuple of positive ints like (1, 8, 8), got {value!r}")
    return dims  # type: ignore[return-value]


def check_seed(name: str, value: Any, *, allow_none: bool = False) -> int | None:
    """A seed: an int in ``[0, 2**32 - 1]`` (NumPy's range, which torch and scikit-learn
    accept too), so a bad seed is refused under its own name, not by whichever library
    meets it first.

    >>> check_seed("--seed", 2**32)
    Traceback (most recent call last):
    ...
    ValueError: --seed must be an int in [0, 4294967295], got 4294967296
    """
    value = unwrap_scalar(value)
    if value is None and allow_none:
        return None
    if is_bool(value) or not isinstance(value, numbers.Integral) or not 0 <= int(value) <= MAX_SEED:
        kind = (
            TypeError if is_bool(value) or not isinstance(value, numbers.Integral) else ValueError
        )
        raise kind(
            f"{name} must be an int in [0, {MAX_SEED}]{' or None' if allow_none else ''}, got "
            f"{value!r}"
        )
    return int(value)


def check_device(name: str, device: Any) -> str:
    """``device`` as a string if torch can train on it here: ``auto`` (None too), ``cpu``,
    ``cuda``/``cuda:N`` with that GPU present, ``mps`` where Apple's backend is available.
    Anything else (``meta``, a typo, an absent GPU) is refused in one line naming ``name``.
    """
    import torch

    if device is None or device == "auto":
        return "auto"
    text = str(device)
    forms = "'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'"
    try:
        dev = torch.device(text)
    except (RuntimeError, ValueError, TypeError):
        raise ValueError(f"{name} must be {forms}, got {text!r}") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"{name} {text}: CUDA is not available on this machine (use auto or cpu)"
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(
                f"{name} {text}: this machine has {torch.cuda.device_count()} CUDA device(s)"
            )
    elif dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise ValueError(
                f"{name} {text}: Apple's MPS backend is not available on this machine (use auto or "
                "cpu)"
            )
    elif dev.type != "cpu":
        raise ValueError(
            f"{name} must be {forms}, got {text!r} (torch cannot train on a {dev.type!r} device "
            "here)"
        )
    return text


def check_float(
    name: str,
    value: Any,
    *,
    positive: bool = False,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    allow_none: bool = False,
) -> float | None:
    """``value`` as a finite ``float`` (bools refused) inside the given bounds."""
    value = unwrap_scalar(value)
    if value is None and allow_none:
        return None
    if positive:
        low, low_open = 0.0, True
    parts = []
    if low is not None:
        parts.append(f"{'>' if low_open else '>='} {low:g}")
    if high is not None:
        parts.append(f"{'<' if high_open else '<='} {high:g}")
    allowed = (
        "a finite number"
        + (" " + " and ".join(parts) if parts else "")
        + (" or None" if allow_none else "")
    )
    if is_bool(value) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be {allowed}, got {value!r}")
    value = float(value)
    ok = math.isfinite(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        raise ValueError(f"{name} must be {allowed}, got {value!r}")
    return value


def check_choice(name: str, value: Any, choices: tuple | list) -> Any:
    """``value`` if it is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")
    return value


def to_float(name: str, value: Any, *, allow_none: bool = False) -> float | None:
    """A reported number (Python, NumPy or 0-d tensor) as a ``float``; NaN/inf kept.

    ``None`` is returned only when ``allow_none``; anything that is not a real number
    raises ``TypeError`` naming ``name``.
    """
    value = unwrap_scalar(value)
    if value is None:
        if allow_none:
            return None
        raise TypeError(f"{name} must be a number, got None")
    if is_bool(value) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number (Python, NumPy or 0-d tensor), got {value!r}")
    return float(value)


def is_finite(value: Any) -> bool:
    """True for a finite real number (Python, NumPy or 0-d tensor); False for None, NaN, inf."""
    value = unwrap_scalar(value)
    if value is None or is_bool(value) or not isinstance(value, numbers.Real):
        return False
    return math.isfinite(float(value))


def check_mapping(name: str, value: Any, what: str = "a dict") -> Mapping:
    """``value`` if it is a mapping (a ``dict``); else a ``TypeError`` naming ``name``."""
    if not isinstance(value, Mapping):
        raise TypeError(f"{name} must be {what}, got {value!r}")
    return value


# the resource names Ray spells in capitals; other keys are custom resources
RESOURCE_KEYS = {"cpu": "CPU", "gpu": "GPU", "memory": "memory"}


def check_resources(resources: Mapping[str, Any], *, name: str = "resources") -> dict[str, float]:
    """Per-trial resources as Tune wants them: ``{"cpu": c, "gpu": g, ...}``.

    ``cpu`` >= 0, ``gpu`` >= 0 and either below 1 (several trials share a GPU; Ray does
    not split its memory) or a whole number; other keys are custom Ray resources.
    """
    check_mapping(name, resources, "a dict like {'cpu': 1, 'gpu': 0.5}")
    out: dict[str, float] = {}
    for key, value in resources.items():
        if not isinstance(key, str) or not key:
            raise TypeError(f"{name}: keys must be resource names, got {key!r}")
        value = check_float(f"{name}[{key!r}]", value, low=0.0)
        out[key.lower() if key.lower() in RESOURCE_KEYS else key] = float(value)
    gpu = out.get("gpu", 0.0)
    if gpu > 1 and not float(gpu).is_integer():
        raise ValueError(
            f"{name}['gpu'] must be below 1 (a shared GPU) or a whole number, got {gpu}"
        )
    out.setdefault("cpu", 1.0)
    out.setdefault("gpu", 0.0)
    if out["cpu"] == 0 and out["gpu"] == 0 and len(out) == 2:
        raise ValueError(f"{name} must ask for some CPU or GPU, got {dict(resources)!r}")
    return out


def check_model_fn(model_fn: Any, name: str = "model_fn", *, optional: bool = True) -> None:
    """``model_fn`` is a factory of fresh models (or None when ``optional``); a model itself
    (callable too: each trial would call its ``forward()`` with no input) is a ``TypeError``
    naming ``name``."""
    import torch

    if model_fn is None and optional:
        return
    if isinstance(model_fn, torch.nn.Module) or not callable(model_fn):
        raise TypeError(
            f"{name} must be a function that builds a fresh model (e.g. lambda: Net()), "
            f"got {type(model_fn).__name__}"
        )
