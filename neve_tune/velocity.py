"""Neural velocity: how fast each neuron's input-output function still changes.

A fixed probe is forwarded through the model once per epoch. For each monitored
neuron ``i`` the output ``y_i^t`` over the whole probe is compared with the one of the
previous measurement (docs/design.md, "Velocity")::

    rho_i^t = clamp(cos(y_i^t, y_i^{t-1}), -1, 1)     (1 if both are zero, 0 if one is)
    v_i^t   = (1 - rho_i^t) - mu * v_i^{t-1}           (v^0 = 0, mu = 0.5)
    V^t     = mean_i |v_i^t|                           (over every monitored neuron)
    D^t     = mean_layers mean_i (v_i^t - v_i^{t-1})^2 (from t = 2)

The cosine comes from exact references (:mod:`neve_tune._exact`: the previous outputs are
kept, and reduced by a forward hook to three per-neuron sums) or, with
``reference="sketch"`` (and with the default ``"auto"`` on models whose exact references
would exceed 1 GiB), from seeded sketches of ``sketch_dim`` numbers per neuron
(:mod:`neve_tune._sketch`). Which layers are monitored and where their neurons are:
:mod:`neve_tune._layers`. See :class:`NeuralVelocity`.

Example::

    >>> import torch
    >>> from neve_tune import NeuralVelocity, gaussian_probe
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    >>> nv = NeuralVelocity(model, probe=gaussian_probe((4,), num_samples=16, seed=0))
    >>> nv.measure().model_velocity is None      # epoch 0 only records the reference
    True
    >>> with torch.no_grad():
    ...     _ = model[0].weight.mul_(1.1).add_(0.05)
    >>> report = nv.measure()
    >>> report.epoch, report.model_velocity > 0
    (1, True)
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ._exact import reference_sq, similarity
from ._layers import (
    DEFAULT_LAYER_TYPES,
    LayerSpec,
    LayerState,
    neuron_axis,
    select_layers,
    unwrap_model,
)
from ._probe_forward import forward_probe
from ._sketch import keep_first_sketch, sketch_rho
from ._velocity_settings import (
    REFERENCES,
    SKETCH_ABOVE,
    check_arguments,
    check_saved_settings,
    exact_reference_bytes,
)
from .probe import module_device

__all__ = [
    "DEFAULT_LAYER_TYPES",
    "REFERENCES",
    "NeuralVelocity",
    "VelocityReport",
    "neuron_axis",
    "select_layers",
    "unwrap_model",
]


@dataclass
class VelocityReport:
    """One measurement. ``model_velocity`` is None at epoch 0 (reference only) and
    ``velocity_change`` is None before the second velocity; ``layers`` holds each
    monitored layer's per-neuron velocities."""

    epoch: int
    model_velocity: float | None
    velocity_change: float | None
    layers: dict[str, torch.Tensor] = field(default_factory=dict)
    probe_samples: int = 0


class NeuralVelocity:
    """Measures the neural velocity of ``model`` on a fixed ``probe``.

    Args:
        model: the network; DataParallel/DDP wrappers and ``torch.compile`` are unwrapped
            and the probe runs eagerly through the plain module. Layer names are those of
            the plain module's ``named_modules()``.
        probe: a tensor of probe inputs ``[N, ...]`` (see :mod:`neve_tune.probe`).
        momentum: ``mu`` in ``v = (1 - rho) - mu * v_prev``; in [0, 1).
        layers: None (every Conv/Linear/BatchNorm/LayerNorm/GroupNorm), a list of module
            names and/or types, or a predicate ``(name, module) -> bool``.
        storage: where reference outputs live: ``"model"`` (the model's device) or
            ``"cpu"`` / any ``torch.device``.
        storage_dtype: ``torch.float32`` (exact) or ``torch.bfloat16``/``torch.float16``
            to halve the memory; sums are always computed in float32. Prefer bfloat16:
            float16 overflows above 65504 and flushes outputs under ~6e-8 to zero.
        batch_size: probe samples per forward (None: the whole probe at once).
        autocast_dtype: run the probe forward under ``torch.autocast`` with this dtype,
            as an AMP training loop does; outputs are cast to float32 before use.
        reference: ``"exact"`` keeps every monitored output of the last measurement (the
            cosine of docs/design.md, "Velocity", exactly); ``"sketch"`` keeps a seeded sketch of
            ``sketch_dim`` float32 numbers and the exact norm per neuron instead (see
            :mod:`neve_tune._sketch`): far less memory, ``1 - rho`` estimated to about
            ``sqrt(2 / sketch_dim)`` relative per neuron. A layer whose per-neuron output
            (samples x positions of one call) has at most ``sketch_dim`` numbers stays exact.
            ``"auto"`` (default) is ``"exact"`` unless the exact references would hold more
            than ``sketch_above`` bytes (estimated once, before the first measurement, from
            a forward of one probe sample), then ``"sketch"``; ``reference`` then holds the
            choice. On the benchmarks (``benchmarks/sketch.py``) sketches of 512 numbers kept
            V within 1.5% of exact and stopped 10 of 10 digits runs on the same epoch, with
            1/32 (ResNet-32, CIFAR shape) to 1/36 (ViT-B/16 at 224 px: 0.23 GB instead of
            8.1 GB) of the memory; below 1 GiB (ResNet-32: 243 MB) exact references are
            affordable and stay exact.
        sketch_dim: numbers kept per neuron by sketched layers.
        sketch_seed: seed of the sketch's random signs; a resumed run reads it from
            :meth:`state_dict`.
        sketch_above: the ``"auto"`` threshold in bytes (default 1 GiB).

    ``storage_dtype`` applies to the layers that keep exact references; sketches are float32.

    With sketches, a layer must produce the same per-sample shape on every call of a
    forward (module reuse with other shapes needs ``reference="exact"``).

    Example::

        >>> import torch
        >>> from neve_tune import NeuralVelocity, gaussian_probe
        >>> model = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.Flatten(),
        ...                             torch.nn.Linear(8 * 16 * 16, 4))
        >>> probe = gaussian_probe((1, 16, 16), num_samples=64, seed=0)
        >>> exact = NeuralVelocity(model, probe)
        >>> sketch = NeuralVelocity(model, probe, reference="sketch", sketch_dim=256)
        >>> _ = exact.measure(), sketch.measure()
        >>> exact.nbytes > 5 * sketch.nbytes  # conv: 64 x 256 numbers per neuron -> 256, + signs
        True
        >>> with torch.no_grad():
        ...     _ = model[0].weight.mul_(1.1).add_(0.05)
        >>> a, b = exact.measure().model_velocity, sketch.measure().model_velocity
        >>> abs(b - a) / a < 0.05
        True
    """

    def __init__(
        self,
        model: nn.Module,
        probe: torch.Tensor,
        momentum: float = 0.5,
        layers: LayerSpec = None,
        *,
        storage: str | torch.device = "model",
        storage_dtype: torch.dtype = torch.float32,
        batch_size: int | None = None,
        autocast_dtype: torch.dtype | None = None,
        reference: str = "auto",
        sketch_dim: int = 512,
        sketch_seed: int = 0,
        sketch_above: int = SKETCH_ABOVE,
    ) -> None:
        momentum, sketch_dim, sketch_seed, sketch_above, storage = check_arguments(
            model,
            probe,
            momentum,
            storage,
            storage_dtype,
            batch_size,
            autocast_dtype,
            reference,
            sketch_dim,
            sketch_seed,
            sketch_above,
        )
        self.model = model
        self.module = unwrap_model(model)
        self.probe = probe.detach()
        self.momentum = float(momentum)
        self.storage = storage
        self.storage_dtype = storage_dtype
        self.batch_size = batch_size
        self.autocast_dtype = autocast_dtype
        self.reference = reference  # "auto" until the first measurement decides
        self.sketch_dim = sketch_dim
        self.sketch_seed = sketch_seed
        self.sketch_above = sketch_above
        self.layers = select_layers(self.module, layers)
        self._default_layers = layers is None
        self._state = {
            n: LayerState(neuron_axis(m), i) for i, (n, m) in enumerate(self.layers.items())
        }
        self._copied: set[str] = set()  # layers whose outputs are modified in place downstream
        self._watch: list[tuple[str, torch.Tensor, int]] = []
        self._element_signs: dict[
            tuple[int, torch.device], torch.Tensor
        ] = {}  # sketch signs s, by length
        self.epoch = -1  # epoch of the last measurement

    # ------------------------------------------------------------------ measurement
    def measure(self) -> VelocityReport:
        """Forward the probe once and update every neuron's velocity."""
        first = self.epoch < 0
        if self.reference == "auto":
            self.reference = (
                "sketch" if self.exact_reference_bytes() > self.sketch_above else "exact"
            )
        for s in self._state.values():
            s.calls, s.dot, s.cur_sq, s.rows, s.cur_sketch = 0, None, None, 0, None
            if first:
                s.refs = []
        forward_probe(self)
        if first:
            return self._first_measurement()
        mu = self.momentum
        layer_v: dict[str, torch.Tensor] = {}
        abs_sum = 0.0
        count = 0
        changes = []
        for name, s in self._state.items():
            rho = self._rho(name, s)
            prev = s.velocity if s.velocity is not None else torch.zeros_like(rho)
            prev = prev.to(rho.device)
            v = (1.0 - rho) - mu * prev
            if s.velocity is not None:
                changes.append((v - prev).square().mean())
            s.velocity = v
            if s.width:
                s.ref_sq = s.cur_sq.to(s.sketch.device)
            else:
                s.ref_sq = s.cur_sq if self.storage_dtype == torch.float32 else reference_sq(s)
                s.ref_sq = s.ref_sq.to(s.refs[0].device)
            layer_v[name] = v
            abs_sum = abs_sum + v.abs().sum()
            count += v.numel()
        self.epoch += 1
        model_v = float(abs_sum / count)
        change = (
            float(torch.stack([c.to(layer_v[next(iter(layer_v))].device) for c in changes]).mean())
            if changes
            else None
        )
        return VelocityReport(self.epoch, model_v, change, layer_v, int(self.probe.shape[0]))

    def _first_measurement(self) -> VelocityReport:
        """Epoch 0: drop the layers the probe never reached, keep the references."""
        silent = [n for n, s in self._state.items() if s.calls == 0]
        if silent and not self._default_layers:
            raise ValueError(f"monitored layers {silent} were not called by the probe forward")
        if silent:  # e.g. MultiheadAttention.out_proj (used through its weight), train-only heads
            warnings.warn(
                f"not monitoring {silent}: the probe forward never calls them", stacklevel=3
            )
            for n in silent:
                del self._state[n], self.layers[n]
            if not self._state:
                raise ValueError("no monitored layer was called by the probe forward")
        for s in self._state.values():
            if s.width:
                keep_first_sketch(s, self._store_device(s.cur_sketch.device))
            else:
                s.ref_sq = reference_sq(s)
        self.epoch = 0
        return VelocityReport(0, None, None, {}, int(self.probe.shape[0]))

    def _rho(self, name: str, s: LayerState) -> torch.Tensor:
        """Per-neuron cosine of this measurement against the layer's reference."""
        if s.width:
            return sketch_rho(name, s)
        if s.calls != len(s.refs):
            raise RuntimeError(
                f"layer {name!r} was called {s.calls} times, {len(s.refs)} in the reference"
            )
        return similarity(s.dot, s.cur_sq, s.ref_sq.to(s.dot.device))

    def _store_device(self, compute: torch.device) -> torch.device:
        return compute if self.storage == "model" else self.storage

    def exact_reference_bytes(self) -> int:
        """Bytes that exact references in ``storage_dtype`` would hold, from a forward of the
        first probe sample scaled to the whole probe (outputs are assumed to grow with the
        batch). 0 when that forward fails: the first measurement then reports the error."""
        return exact_reference_bytes(
            self.module, self.probe, self.layers, self.autocast_dtype, self.storage_dtype
        )

    # ------------------------------------------------------------------ bookkeeping
    @property
    def nbytes(self) -> int:
        """Bytes held: reference outputs or sketches, per-neuron sums and velocities, and the
        sketch's sign sequence."""
        signs = sum(t.numel() * t.element_size() for t in self._element_signs.values())
        return signs + sum(s.nbytes for s in self._state.values())

    @property
    def num_neurons(self) -> int:
        return sum(int(s.ref_sq.numel()) for s in self._state.values() if s.ref_sq is not None)

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue the same velocity series after a restart."""
        layers = {
            name: s.state_dict(sketch=self.reference == "sketch") for name, s in self._state.items()
        }
        state: dict[str, Any] = {"epoch": self.epoch, "momentum": self.momentum, "layers": layers}
        if self.reference == "sketch":
            state.update(
                reference="sketch", sketch_dim=self.sketch_dim, sketch_seed=self.sketch_seed
            )
        return state

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`; the reference kind (exact or sketch, with its size and
        seed) must match this monitor's (``"auto"`` takes the saved kind)."""
        saved = state_dict.get("reference", "exact")
        if self.reference == "auto" and saved in ("exact", "sketch"):
            self.reference = saved
        sketch = (self.sketch_dim, self.sketch_seed) if self.reference == "sketch" else (None, None)
        check_saved_settings(state_dict, (self.reference, *sketch), self._state)
        device = module_device(self.module) if self.storage == "model" else self.storage
        for name, s in self._state.items():
            s.load_state_dict(
                state_dict["layers"][name],
                device=device,
                dtype=self.storage_dtype,
                sketch=self.reference == "sketch",
            )
        self.epoch = int(state_dict["epoch"])
        self.momentum = float(state_dict["momentum"])
