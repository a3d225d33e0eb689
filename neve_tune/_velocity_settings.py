"""A :class:`~neve_tune.velocity.NeuralVelocity`'s settings: their checks (one line naming the
bad one), the size of exact references that decides ``reference="auto"``, and whether a saved
state was made with the same reference settings and layers."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ._checks import check_choice, check_float, check_int
from ._layers import first_tensor
from .probe import check_probe, probe_inputs, probe_mode

__all__ = [
    "REFERENCES",
    "SKETCH_ABOVE",
    "check_arguments",
    "check_saved_settings",
    "exact_reference_bytes",
]


REFERENCES = ("exact", "sketch", "auto")


SKETCH_ABOVE = 1 << 30  # reference="auto": sketch when exact references would hold more bytes


def check_arguments(
    model: Any,
    probe: Any,
    momentum: Any,
    storage: Any,
    storage_dtype: Any,
    batch_size: Any,
    autocast_dtype: Any,
    reference: Any,
    sketch_dim: Any,
    sketch_seed: Any,
    sketch_above: Any,
) -> tuple:
    """:class:`NeuralVelocity`'s arguments checked, one line naming the bad one; returns
    ``(momentum, sketch_dim, sketch_seed, sketch_above, storage)`` as the checks convert them."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    check_probe(probe)
    momentum = check_float("momentum", momentum, low=0.0, high=1.0, high_open=True)
    if storage_dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"storage_dtype must be float32, float16 or bfloat16, got {storage_dtype}")
    if autocast_dtype not in (None, torch.float16, torch.bfloat16):
        raise ValueError(
            f"autocast_dtype must be None, torch.float16 or torch.bfloat16, got {autocast_dtype!r}"
        )
    if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
        raise ValueError(f"batch_size must be a positive int or None, got {batch_size!r}")
    check_choice("reference", reference, REFERENCES)
    sketch_dim = check_int("sketch_dim", sketch_dim, minimum=1)
    sketch_seed = check_int("sketch_seed", sketch_seed, minimum=0)
    sketch_above = check_int("sketch_above", sketch_above, minimum=0)
    if storage != "model" and not isinstance(storage, torch.device):
        try:
            storage = torch.device(storage)
        except (RuntimeError, TypeError) as e:
            raise ValueError(
                f"storage must be 'model', 'cpu' or a torch.device, got {storage!r}"
            ) from e
    return momentum, sketch_dim, sketch_seed, sketch_above, storage


def exact_reference_bytes(
    module: nn.Module,
    probe: torch.Tensor,
    layers: Mapping[str, nn.Module],
    autocast_dtype: torch.dtype | None,
    storage_dtype: torch.dtype,
) -> int:
    """Bytes that exact references of ``layers`` in ``storage_dtype`` would hold, from a
    forward of the first probe sample scaled to the whole probe (outputs are assumed to grow
    with the batch). 0 when that forward fails: the first measurement then reports the
    error."""
    sizes: list[int] = []

    def hook(module: nn.Module, inputs: Any, output: Any) -> None:
        y = first_tensor(output)
        if y is not None:
            sizes.append(y.numel())

    one = probe_inputs(probe[:1], module)
    handles = [m.register_forward_hook(hook) for m in layers.values()]
    try:
        with probe_mode(module, autocast_dtype):
            module(one)
    except (RuntimeError, ValueError, TypeError, IndexError):
        return 0
    finally:
        for h in handles:
            h.remove()
    item = torch.empty((), dtype=storage_dtype).element_size()
    return sum(sizes) * int(probe.shape[0]) * item


def check_saved_settings(
    state_dict: Mapping[str, Any], mine: tuple, layers: Mapping[str, Any]
) -> None:
    """Refuse a saved state whose reference settings (``(reference, sketch_dim, sketch_seed)``,
    the sketch's two None for exact references) or monitored layers differ from ``mine`` and
    ``layers``."""
    saved = (
        state_dict.get("reference", "exact"),
        state_dict.get("sketch_dim"),
        state_dict.get("sketch_seed"),
    )
    if saved != mine:
        raise ValueError(
            f"state_dict holds reference/sketch_dim/sketch_seed {saved}, this monitor uses "
            f"{mine}; build the NeuralVelocity with the same settings"
        )
    missing = set(layers) - set(state_dict["layers"])
    extra = set(state_dict["layers"]) - set(layers)
    if missing or extra:
        raise ValueError(
            f"state_dict layers do not match the monitored layers (missing {sorted(missing)}, "
            f"unexpected {sorted(extra)})"
        )
