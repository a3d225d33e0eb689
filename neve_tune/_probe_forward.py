"""The probe's forward through a :class:`~neve_tune.velocity.NeuralVelocity`'s monitored layers:
the hook that records each call (exact sums or a sketch) and the check, after the forward,
that no kept output was modified in place downstream."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from torch import nn

from ._exact import exact_call, neuron_dot
from ._layers import HookError, first_tensor
from ._sketch import sketch_call
from .probe import probe_inputs, probe_mode

if TYPE_CHECKING:
    from .velocity import NeuralVelocity

__all__ = ["forward_probe", "layer_hook"]


def layer_hook(nv: NeuralVelocity, name: str) -> Callable:
    """The forward hook that records one call of monitored layer ``name``: per-neuron sums
    against the exact reference, or the call's sketch."""
    state = nv._state[name]
    first = nv.epoch < 0

    def hook(module: nn.Module, inputs: Any, output: Any) -> None:
        y = first_tensor(output)
        if y is None:
            raise HookError(f"layer {name!r} returned no tensor; it cannot be monitored")
        y = y.detach()
        axis = state.axis % y.ndim
        sq = neuron_dot(y, y, axis)
        if nv.reference == "sketch" and sketch_call(
            name,
            state,
            y,
            axis,
            sq,
            sketch_dim=nv.sketch_dim,
            sketch_seed=nv.sketch_seed,
            element_signs=nv._element_signs,
        ):
            return
        store_dev = y.device if nv.storage == "model" else nv.storage
        # a float32 output stored on its own device can be kept as it is, not copied, unless
        # something downstream modifies it in place (checked after the forward)
        keep = nv.storage == "model" and nv.storage_dtype == y.dtype and name not in nv._copied
        nv._watch.append((name, y, y._version))
        exact_call(
            name,
            state,
            y,
            axis,
            sq,
            first=first,
            store_device=store_dev,
            storage_dtype=nv.storage_dtype,
            keep=keep,
        )

    return hook


def forward_probe(nv: NeuralVelocity) -> None:
    """Forward the probe through the hooked layers (in chunks of ``batch_size``); a layer
    whose kept output was modified in place after its hook is copied from then on."""
    probe = probe_inputs(nv.probe, nv.module)
    chunks = [probe] if nv.batch_size is None else list(probe.split(nv.batch_size))
    handles = [m.register_forward_hook(layer_hook(nv, n)) for n, m in nv.layers.items()]
    nv._watch = []
    try:
        with probe_mode(nv.module, nv.autocast_dtype):
            for chunk in chunks:
                try:
                    nv.module(chunk)
                except (RuntimeError, ValueError, TypeError, IndexError) as e:
                    if nv.epoch < 0 and not isinstance(e, HookError):
                        raise ValueError(
                            f"probe of shape {tuple(nv.probe.shape)} does not fit the model "
                            f"{type(nv.module).__name__} (it expects a batch of inputs "
                            f"[N, ...] like one training batch): {e}"
                        ) from e
                    raise
    finally:
        for h in handles:
            h.remove()
    modified = {n for n, y, version in nv._watch if y._version != version}
    nv._watch = []
    if modified - nv._copied:
        if (
            nv.epoch >= 0
        ):  # kept outputs were changed after the hook: this epoch's references are off
            warnings.warn(
                f"layers {sorted(modified - nv._copied)} had their outputs modified in place after "
                "the hook; their references are copied from now on",
                stacklevel=3,
            )
        nv._copied |= modified
