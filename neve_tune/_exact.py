"""Exact references: each monitored output of the last measurement is kept, and the
cosine of docs/design.md, "Velocity" is computed from three per-neuron sums.

``y.y_prev``, ``|y|^2`` and ``|y_prev|^2`` are reduced on the spot by the forward hook
(:func:`exact_call`), which keeps ``y`` as the next reference; nothing is concatenated or
normalised. An output is kept as it is when nothing modifies it in place later in the
forward (checked through its version counter by the caller), and copied otherwise or when
stored elsewhere or in half precision. Used by :class:`~neve_tune.NeuralVelocity`.

    >>> import torch
    >>> y, ref = torch.tensor([[1.0, 0.0], [0.0, 2.0]]), torch.tensor([[1.0, 0.0], [0.0, -2.0]])
    >>> dot, sq, ref_sq = neuron_dot(y, ref, 1), neuron_dot(y, y, 1), neuron_dot(ref, ref, 1)
    >>> similarity(dot, sq, ref_sq).tolist()          # neuron 0 unchanged, neuron 1 reversed
    [1.0, -1.0]
"""

from __future__ import annotations

import torch

from ._layers import HookError, LayerState

__all__ = ["exact_call", "neuron_dot", "reference_sq", "similarity"]


def exact_call(
    name: str,
    state: LayerState,
    y: torch.Tensor,
    axis: int,
    sq: torch.Tensor,
    *,
    first: bool,
    store_device: torch.device,
    storage_dtype: torch.dtype,
    keep: bool,
) -> None:
    """Add one call's output to the layer's sums against its reference, which it replaces
    (``keep``: by ``y`` itself, else by a copy into the reference's buffer); on the first
    measurement ``y`` only becomes the reference."""
    k = state.calls
    state.calls += 1
    if first:
        state.refs.append(y.to(device=store_device, dtype=storage_dtype, copy=True))
        state.cur_sq = sq if state.cur_sq is None else state.cur_sq + sq
        return
    if k >= len(state.refs) or state.refs[k].shape != y.shape:
        raise HookError(
            f"layer {name!r} produced output {tuple(y.shape)} in call {k}, "
            "unlike the reference measurement; the probe or the model changed"
        )
    ref = state.refs[k]
    dot = neuron_dot(y, ref.to(device=y.device, non_blocking=True), axis)
    state.dot = dot if state.dot is None else state.dot + dot
    state.cur_sq = sq if state.cur_sq is None else state.cur_sq + sq
    if keep:
        state.refs[k] = y
    else:
        ref.copy_(y, non_blocking=True)


def reference_sq(state: LayerState) -> torch.Tensor:
    """|y_ref|^2 per neuron from the stored (possibly half-precision) reference."""
    total = None
    for ref in state.refs:
        sq = neuron_dot(ref, ref, state.axis % ref.ndim)
        total = sq if total is None else total + sq
    return total


def neuron_dot(a: torch.Tensor, b: torch.Tensor, axis: int) -> torch.Tensor:
    """Per-neuron ``sum(a * b)`` over every dim but ``axis``, in float32.

    For channel-first outputs ``[N, C, ...]`` each (sample, neuron) row is contiguous, so
    ``vecdot`` reduces along it, the fastest of the reductions measured on CPU.
    """
    a, b = a.float(), b.float()
    if a.ndim == 1:
        return a * b
    if axis == 1 and a.ndim >= 3 and a.is_contiguous() and b.is_contiguous():
        n, c = a.shape[0], a.shape[1]
        return torch.linalg.vecdot(a.view(n, c, -1), b.view(n, c, -1)).sum(0)
    return (a * b).sum(tuple(d for d in range(a.ndim) if d != axis))


def similarity(dot: torch.Tensor, sq: torch.Tensor, ref_sq: torch.Tensor) -> torch.Tensor:
    """Per-neuron cosine with the zero-vector conventions of docs/design.md, "Velocity"."""
    zero_cur = sq == 0
    zero_ref = ref_sq == 0
    denom = sq.sqrt() * ref_sq.sqrt()
    rho = (dot / torch.where(denom > 0, denom, torch.ones_like(denom))).clamp(-1.0, 1.0)
    rho = torch.where(zero_cur & zero_ref, torch.ones_like(rho), rho)
    rho = torch.where(zero_cur ^ zero_ref, torch.zeros_like(rho), rho)
    return rho
