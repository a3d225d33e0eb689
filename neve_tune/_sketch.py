"""Sketched references: velocity without keeping the previous outputs.

With ``reference="sketch"`` each neuron keeps a seeded linear sketch ``S y`` of
``sketch_dim`` numbers plus its exact norm, and

    1 - rho = |y/|y| - y'/|y'| |^2 / 2  is estimated as  |S y/|y| - S y'/|y'| |^2 / 2

(a squared distance, which a random projection keeps up to a relative error of about
``sqrt(2 / sketch_dim)`` per neuron; V averages it over every neuron). ``S`` gives each
coordinate a seeded random sign and adds it into one of ``sketch_dim`` buckets chosen by
its position, so every bucket mixes samples and positions (:func:`sketch`). Layers whose
per-neuron output is no longer than ``sketch_dim`` keep exact references
(:mod:`neve_tune._exact`). Used by :class:`~neve_tune.NeuralVelocity`.

    >>> import torch
    >>> y = torch.randn(64, 8, 1)                     # 64 rows, 8 neurons, 1 position
    >>> gen = torch.Generator().manual_seed(0)
    >>> s, u = random_signs((64,), gen).float(), random_signs((1, 8), gen).float()
    >>> sketch(y, s, u, None, row0=0, width=64).shape  # as many buckets as rows: exact up to signs
    torch.Size([64, 8])
"""

from __future__ import annotations

import math

import torch

from ._layers import HookError, LayerState

__all__ = [
    "call_signs",
    "keep_first_sketch",
    "random_signs",
    "sketch",
    "sketch_call",
    "sketch_rho",
    "sketch_similarity",
]


def sketch_call(
    name: str,
    state: LayerState,
    y: torch.Tensor,
    axis: int,
    sq: torch.Tensor,
    *,
    sketch_dim: int,
    sketch_seed: int,
    element_signs: dict,
) -> bool:
    """Add one call's output to the layer's sketch; False when the layer keeps exact references.

    ``element_signs`` is the monitor's cache of the shared signs ``s`` (:func:`call_signs`)."""
    c = y.shape[axis]
    a = math.prod(y.shape[:axis])
    r = math.prod(y.shape[axis + 1 :])
    if state.width is None:  # the first call of the first measurement decides
        if a * r <= sketch_dim:
            state.width = 0
        else:
            state.width = sketch_dim if r == 1 or r >= sketch_dim else (sketch_dim // r) * r
        state.row_shape = (c, r)
    if state.width == 0:
        return False
    if state.row_shape != (c, r):
        raise HookError(
            f"layer {name!r} produced output {tuple(y.shape)} with (neurons, positions) {(c, r)} "
            f"in call {state.calls}, unlike {state.row_shape} in its first call; use "
            "reference='exact' for it"
        )
    sg, u, v = call_signs(state, (a, c, r), y.device, sketch_seed, element_signs)
    part = sketch(y.reshape(a, c, r), sg, u, v, row0=state.rows, width=state.width)
    state.rows += a
    state.calls += 1
    state.cur_sq = sq if state.cur_sq is None else state.cur_sq + sq
    state.cur_sketch = part if state.cur_sketch is None else state.cur_sketch + part
    return True


def call_signs(
    state: LayerState,
    shape: tuple[int, int, int],
    device: torch.device,
    sketch_seed: int,
    element_signs: dict,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The seeded random +-1 signs ``(s, u, v)`` of this call of the layer (see :func:`sketch`),
    as float32 on ``device``, drawn on the CPU so that every device sees the same, and
    kept (converting them on every call costs more time than they take memory).

    ``u`` and ``v`` are the layer's and call's own: they decorrelate the estimation
    errors of neurons and of layers, which then average out in V. ``s`` only has to
    make each neuron's estimate unbiased, so every layer with as many elements per
    neuron shares one (kept in ``element_signs``).
    """
    a, c, r = shape
    k = state.calls
    u_rows = -(-(state.rows % state.width + a) // state.width) if r == 1 else a
    if k == len(state.signs):
        gen = torch.Generator().manual_seed((sketch_seed * 1_000_003 + state.index) * 65_537 + k)
        sizes = [(u_rows, c)] + ([(c, r)] if r > state.width else [])
        state.signs.append(
            tuple(random_signs(n, gen).to(device=device, dtype=torch.float32) for n in sizes)
        )
    signs = state.signs[k]
    if signs[0].shape != (u_rows, c):
        raise HookError(
            f"call {k} of a sketched layer produced {a} rows, unlike the reference; "
            "the probe or the model changed"
        )
    key = (a * r, device)
    if key not in element_signs:
        gen = torch.Generator().manual_seed(sketch_seed * 1_000_003 + 7_919 * a * r)
        element_signs[key] = random_signs((a * r,), gen).to(device=device, dtype=torch.float32)
    return element_signs[key], signs[0], signs[1] if len(signs) > 1 else None


def keep_first_sketch(state: LayerState, store_device: torch.device) -> None:
    """After the first measurement: its sketch and norms become the reference."""
    state.sketch = state.cur_sketch.to(store_device)
    state.ref_sq, state.ref_rows, state.cur_sketch = (
        state.cur_sq.to(state.sketch.device),
        state.rows,
        None,
    )


def sketch_rho(name: str, state: LayerState) -> torch.Tensor:
    """Per-neuron cosine of this measurement against the reference sketch, which it then
    replaces."""
    if state.rows != state.ref_rows:
        raise RuntimeError(
            f"layer {name!r} produced {state.rows} rows, {state.ref_rows} in the reference"
        )
    dev = state.cur_sketch.device
    rho = sketch_similarity(
        state.cur_sketch, state.cur_sq, state.sketch.to(dev), state.ref_sq.to(dev)
    )
    if state.sketch.device == dev:
        state.sketch.copy_(state.cur_sketch)
    else:
        state.sketch = state.cur_sketch.to(state.sketch.device)
    state.cur_sketch = None
    return rho


def random_signs(shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    return torch.randint(0, 2, shape, generator=gen, dtype=torch.int8) * 2 - 1


def sketch(
    y: torch.Tensor,
    s: torch.Tensor,
    u: torch.Tensor,
    v: torch.Tensor | None,
    *,
    row0: int,
    width: int,
) -> torch.Tensor:
    """Sketch ``[width, C]`` of one call's output ``y``, viewed as ``[A, C, R]`` (rows,
    neurons, positions), whose rows start at ``row0`` in the layer's forward.

    Buckets (each adds up ``A * R / width`` elements, a fixed interleave that mixes
    samples and positions, so the sums are strided reductions):

    - ``R == 1`` (Linear/LayerNorm outputs ``[..., C]``): row ``n`` goes to ``n mod width``;
    - ``R >= width``: ``(n, r)`` goes to ``r mod width``;
    - else ``(n mod G) * R + r`` with ``G = width // R``.

    Element ``(n, c, r)`` is multiplied by ``s[n * R + r]`` (which makes the estimate
    unbiased) times a per-neuron sign over the index that buckets add up: ``u[n, c]``, or
    ``u[block of n, c]`` when ``R == 1``, and ``v[c, r]`` when ``R > width``. Without the
    per-neuron signs every neuron of a layer would err the same way, and V would not
    average the errors out.
    """
    a, c, r = y.shape
    if r == 1:
        return _sketch_rows(y.view(a, c), s, u, row0=row0, width=width)
    z = y.float() * s.view(a, 1, r)
    if r >= width:
        return _sketch_positions(z, u, v, width)
    g = width // r
    z.mul_(u.unsqueeze(2))
    pre = row0 % g
    if pre:  # a chunk of the probe that starts inside a group
        z = torch.cat([z.new_zeros(pre, c, r), z])
        a += pre
    full = a - a % g
    w = z[:full].view(-1, g, c, r).sum(0) if full else z.new_zeros(g, c, r)
    if a > full:
        w[: a - full] += z[full:]
    return w.permute(0, 2, 1).reshape(g * r, c)


def _sketch_rows(
    y: torch.Tensor, s: torch.Tensor, u: torch.Tensor, *, row0: int, width: int
) -> torch.Tensor:
    """:func:`sketch` of an output ``[A, C]`` (``R == 1``): row ``n`` to bucket ``n mod
    width``, ``u[j]`` signing the j-th block of ``width`` rows this call touches."""
    a, c = y.shape
    z = y.float() * s.view(a, 1)  # 2-D: a trailing size-1 dim makes the product slow
    out = z.new_zeros(width, c)
    start = row0 % width
    head = min(a, width - start) if start else 0
    if head:
        out[start : start + head] += z[:head] * u[0]
    rest = z[head:]
    j = 1 if head else 0
    q = rest.shape[0] // width
    if q:
        out += rest[: q * width].view(q, width, c).mul_(u[j : j + q].unsqueeze(1)).sum(0)
    tail = rest.shape[0] - q * width
    if tail:
        out[:tail] += rest[q * width :] * u[j + q]
    return out


def _sketch_positions(
    z: torch.Tensor, u: torch.Tensor, v: torch.Tensor | None, width: int
) -> torch.Tensor:
    """:func:`sketch` of a signed output ``[A, C, R]`` with ``R >= width``: position ``r``
    to bucket ``r mod width`` (``v[c, r]`` signing positions when ``R > width``)."""
    c, r = z.shape[1], z.shape[2]
    w = z.mul_(u.unsqueeze(2)).sum(0)  # [C, R]: sum over rows
    if v is None:
        return w.t()
    w = w * v
    q = r // width
    out = w[:, : q * width].reshape(c, q, width).sum(1)
    if r > q * width:
        out[:, : r - q * width] += w[:, q * width :]
    return out.t()


def sketch_similarity(
    cur: torch.Tensor, sq: torch.Tensor, ref: torch.Tensor, ref_sq: torch.Tensor
) -> torch.Tensor:
    """Per-neuron cosine from sketches ``[width, C]`` and exact squared norms ``[C]``:
    ``rho = 1 - |S y/|y| - S y'/|y'| |^2 / 2``, with the zero-vector conventions of docs/design.md,
    "Velocity"."""
    norm, ref_norm = sq.sqrt(), ref_sq.sqrt()
    one = torch.ones_like(norm)
    dist = (
        (cur / torch.where(norm > 0, norm, one) - ref / torch.where(ref_norm > 0, ref_norm, one))
        .square()
        .sum(0)
    )
    rho = (1.0 - 0.5 * dist).clamp(-1.0, 1.0)
    zero_cur, zero_ref = sq == 0, ref_sq == 0
    rho = torch.where(zero_cur & zero_ref, torch.ones_like(rho), rho)
    return torch.where(zero_cur ^ zero_ref, torch.zeros_like(rho), rho)
