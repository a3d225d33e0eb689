"""Neural velocity: how fast each neuron's input-output function still changes.

A fixed probe is forwarded through the model once per epoch. For each monitored
neuron ``i`` the output ``y_i^t`` over the whole probe is compared with the one of the
previous measurement (docs/design.md, "Velocity")::

    rho_i^t = clamp(cos(y_i^t, y_i^{t-1}), -1, 1)     (1 if both are zero, 0 if one is)
    v_i^t   = (1 - rho_i^t) - mu * v_i^{t-1}           (v^0 = 0, mu = 0.5)
    V^t     = mean_i |v_i^t|                           (over every monitored neuron)
    D^t     = mean_layers mean_i (v_i^t - v_i^{t-1})^2 (from t = 2)

Only three per-neuron sums are needed (``y.y_prev``, ``|y|^2``, ``|y_prev|^2``), so a
forward hook reduces each activation on the spot and keeps it as the next reference;
nothing is concatenated or normalised. An output is kept as it is when nothing modifies
it in place later in the forward (checked through its version counter; e.g. a following
``ReLU(inplace=True)`` does), and copied otherwise or when stored elsewhere or in half
precision.

With ``reference="sketch"`` (and with the default ``"auto"`` on models whose exact
references would exceed 1 GiB) the previous outputs are not kept. Each neuron keeps a
seeded linear sketch ``S y`` of ``sketch_dim`` numbers plus its exact norm, and

    1 - rho = |y/|y| - y'/|y'| |^2 / 2  is estimated as  |S y/|y| - S y'/|y'| |^2 / 2

(a squared distance, which a random projection keeps up to a relative error of about
``sqrt(2 / sketch_dim)`` per neuron; V averages it over every neuron). ``S`` gives each
coordinate a seeded random sign and adds it into one of ``sketch_dim`` buckets chosen by
its position, so every bucket mixes samples and positions. Layers whose per-neuron
output is no longer than ``sketch_dim`` keep exact references. See :class:`NeuralVelocity`.

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

import contextlib
import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence, Union

import torch
from torch import nn

from ._checks import check_choice, check_float, check_int

__all__ = [
    "DEFAULT_LAYER_TYPES",
    "REFERENCES",
    "NeuralVelocity",
    "VelocityReport",
    "neuron_axis",
    "register_neuron_axis",
    "select_layers",
    "unwrap_model",
]

DEFAULT_LAYER_TYPES: tuple[type[nn.Module], ...] = (
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.Linear,
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.LayerNorm,
    nn.GroupNorm,
)

REFERENCES = ("exact", "sketch", "auto")
SKETCH_ABOVE = 1 << 30  # reference="auto": sketch when exact references would hold more bytes

# Neuron axis by layer type; the first matching base class wins, anything else uses dim 1.
_NEURON_AXIS: dict[type[nn.Module], int] = {nn.Linear: -1, nn.LayerNorm: -1}

LayerSpec = Union[None, Sequence[Union[str, type]], Callable[[str, nn.Module], bool]]


def register_neuron_axis(layer_type: type[nn.Module], axis: int) -> None:
    """Declare which output dimension holds the neurons of ``layer_type``."""
    if not (isinstance(layer_type, type) and issubclass(layer_type, nn.Module)):
        raise TypeError(f"layer_type must be an nn.Module subclass, got {layer_type!r}")
    _NEURON_AXIS[layer_type] = int(axis)


def neuron_axis(module: nn.Module) -> int:
    """The output dimension indexing neurons: last for Linear/LayerNorm, else 1."""
    for layer_type in type(module).__mro__:
        if layer_type in _NEURON_AXIS:
            return _NEURON_AXIS[layer_type]
    return 1


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain module behind DataParallel, DistributedDataParallel or torch.compile."""
    while True:
        if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            return model


def select_layers(model: nn.Module, layers: LayerSpec = None) -> dict[str, nn.Module]:
    """Monitored layers by name: default types, a list of names and/or types, or a predicate."""
    named = [(n, m) for n, m in model.named_modules() if n]
    if layers is None:
        chosen = {n: m for n, m in named if isinstance(m, DEFAULT_LAYER_TYPES)}
    elif callable(layers) and not isinstance(layers, type):
        chosen = {n: m for n, m in named if layers(n, m)}
    elif isinstance(layers, (list, tuple, set)):
        names = {x for x in layers if isinstance(x, str)}
        types = tuple(x for x in layers if isinstance(x, type))
        bad = [x for x in layers if not isinstance(x, (str, type))]
        if bad:
            raise TypeError(f"layers must hold module names or module types, got {bad[0]!r}")
        known = {n for n, _ in named}
        missing = sorted(names - known)
        if missing:
            raise ValueError(f"layers names {missing} are not modules of the model")
        chosen = {n: m for n, m in named if n in names or (types and isinstance(m, types))}
    else:
        raise TypeError(
            "layers must be None, a list of module names/types or a predicate "
            f"(name, module) -> bool, got {type(layers).__name__}"
        )
    if not chosen:
        raise ValueError(
            f"layers={layers!r} selects no layer to monitor in {type(model).__name__}; "
            f"default types are {[t.__name__ for t in DEFAULT_LAYER_TYPES]}"
        )
    return chosen


class _HookError(RuntimeError):
    """An error raised by the measurement itself, never blamed on the probe's shape."""


@dataclass
class VelocityReport:
    """One measurement. ``model_velocity`` is None at epoch 0 (reference only) and
    ``velocity_change`` is None before the second velocity."""

    epoch: int
    model_velocity: float | None
    velocity_change: float | None
    layers: dict[str, torch.Tensor] = field(default_factory=dict)
    probe_samples: int = 0

    def layer_velocity(self) -> dict[str, float]:
        """Mean |v| per layer."""
        return {n: float(v.abs().mean()) for n, v in self.layers.items()}


def _first_tensor(output: Any) -> torch.Tensor | None:
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, Mapping):
        output = list(output.values())
    if isinstance(output, (list, tuple)):
        for item in output:
            t = _first_tensor(item)
            if t is not None:
                return t
    return None


class _LayerState:
    """Reference outputs and running sums of one monitored layer."""

    __slots__ = ("axis", "refs", "ref_sq", "dot", "cur_sq", "calls", "velocity",
                 "width", "row_shape", "rows", "ref_rows", "index", "signs", "sketch", "cur_sketch")

    def __init__(self, axis: int, index: int = 0) -> None:
        self.axis = axis
        self.refs: list[torch.Tensor] = []  # one per hook call (probe chunk / module reuse)
        self.ref_sq: torch.Tensor | None = None  # |y_prev|^2 per neuron
        self.dot: torch.Tensor | None = None
        self.cur_sq: torch.Tensor | None = None
        self.calls = 0
        self.velocity: torch.Tensor | None = None
        # reference="sketch" only: width 0 means exact references for this layer
        self.width: int | None = None  # decided by the first call
        self.row_shape: tuple[int, int] | None = None  # (neurons C, positions R per row)
        self.rows = 0  # rows [A] seen in the current forward
        self.ref_rows = 0
        self.index = index  # position among the monitored layers: seeds its signs
        self.signs: list[tuple[torch.Tensor, ...]] = []  # +-1 (u[, v]) per call
        self.sketch: torch.Tensor | None = None  # [width, C] of the previous measurement
        self.cur_sketch: torch.Tensor | None = None


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
            ``sketch_dim`` float32 numbers and the exact norm per neuron instead (see the
            module docstring): far less memory, ``1 - rho`` estimated to about
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
        >>> exact.nbytes > 5 * sketch.nbytes   # conv: 64 x 256 numbers per neuron -> 256, plus the signs
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
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not isinstance(probe, torch.Tensor):
            raise TypeError(f"probe must be a torch.Tensor, got {type(probe).__name__}")
        if probe.ndim == 0 or probe.shape[0] == 0:
            raise ValueError(f"probe is empty (shape {tuple(probe.shape)}); it needs at least one sample")
        if probe.is_floating_point() and probe.device.type != "meta":  # a meta probe has no values
            bad = int((~torch.isfinite(probe.detach())).sum())
            if bad:
                raise ValueError(f"probe must be finite: {bad} of {probe.numel()} values are NaN or inf")
        momentum = check_float("momentum", momentum, low=0.0, high=1.0, high_open=True)
        if storage_dtype not in (torch.float32, torch.float16, torch.bfloat16):
            raise ValueError(f"storage_dtype must be float32, float16 or bfloat16, got {storage_dtype}")
        if autocast_dtype not in (None, torch.float16, torch.bfloat16):
            raise ValueError(f"autocast_dtype must be None, torch.float16 or torch.bfloat16, got {autocast_dtype!r}")
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
                raise ValueError(f"storage must be 'model', 'cpu' or a torch.device, got {storage!r}") from e
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
        self._state = {n: _LayerState(neuron_axis(m), i) for i, (n, m) in enumerate(self.layers.items())}
        self._copied: set[str] = set()  # layers whose outputs are modified in place downstream
        self._watch: list[tuple[str, torch.Tensor, int]] = []
        self._element_signs: dict[tuple[int, torch.device], torch.Tensor] = {}  # sketch signs s, by length
        self.epoch = -1  # epoch of the last measurement

    # ------------------------------------------------------------------ measurement
    def _device(self) -> torch.device:
        for p in self.module.parameters():
            return p.device
        for b in self.module.buffers():
            return b.device
        return torch.device("cpu")

    def _input_dtype(self) -> torch.dtype:
        for p in self.module.parameters():
            if p.is_floating_point():
                return p.dtype
        return torch.float32

    def _hook(self, name: str) -> Callable:
        state = self._state[name]
        first = self.epoch < 0

        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            y = _first_tensor(output)
            if y is None:
                raise _HookError(f"layer {name!r} returned no tensor; it cannot be monitored")
            y = y.detach()
            axis = state.axis % y.ndim
            sq = _neuron_dot(y, y, axis)
            if self.reference == "sketch" and self._sketch_call(name, state, y, axis, sq):
                return
            k = state.calls
            state.calls += 1
            store_dev = y.device if self.storage == "model" else self.storage
            # a float32 output stored on its own device can be kept as it is, not copied, unless
            # something downstream modifies it in place (checked after the forward)
            keep = self.storage == "model" and self.storage_dtype == y.dtype and name not in self._copied
            self._watch.append((name, y, y._version))
            if first:
                state.refs.append(y.to(device=store_dev, dtype=self.storage_dtype, copy=True))
                state.cur_sq = sq if state.cur_sq is None else state.cur_sq + sq
                return
            if k >= len(state.refs) or state.refs[k].shape != y.shape:
                raise _HookError(
                    f"layer {name!r} produced output {tuple(y.shape)} in call {k}, "
                    "unlike the reference measurement; the probe or the model changed"
                )
            ref = state.refs[k]
            dot = _neuron_dot(y, ref.to(device=y.device, non_blocking=True), axis)
            state.dot = dot if state.dot is None else state.dot + dot
            state.cur_sq = sq if state.cur_sq is None else state.cur_sq + sq
            if keep:
                state.refs[k] = y
            else:
                ref.copy_(y, non_blocking=True)

        return hook

    def _sketch_call(self, name: str, state: _LayerState, y: torch.Tensor, axis: int, sq: torch.Tensor) -> bool:
        """Add one call's output to the layer's sketch; False when the layer keeps exact references."""
        c = y.shape[axis]
        a = math.prod(y.shape[:axis])
        r = math.prod(y.shape[axis + 1:])
        if state.width is None:  # the first call of the first measurement decides
            if a * r <= self.sketch_dim:
                state.width = 0
            else:
                state.width = self.sketch_dim if r == 1 or r >= self.sketch_dim else (self.sketch_dim // r) * r
            state.row_shape = (c, r)
        if state.width == 0:
            return False
        if state.row_shape != (c, r):
            raise _HookError(
                f"layer {name!r} produced output {tuple(y.shape)} with (neurons, positions) {(c, r)} in call "
                f"{state.calls}, unlike {state.row_shape} in its first call; use reference='exact' for it"
            )
        sg, u, v = self._call_signs(state, (a, c, r), y.device)
        part = _sketch(y.reshape(a, c, r), sg, u, v, row0=state.rows, width=state.width)
        state.rows += a
        state.calls += 1
        state.cur_sq = sq if state.cur_sq is None else state.cur_sq + sq
        state.cur_sketch = part if state.cur_sketch is None else state.cur_sketch + part
        return True

    def _call_signs(
        self, state: _LayerState, shape: tuple[int, int, int], device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """The seeded random +-1 signs ``(s, u, v)`` of this call of the layer (see :func:`_sketch`),
        as float32 on ``device``, drawn on the CPU so that every device sees the same, and
        kept (converting them on every call costs more time than they take memory).

        ``u`` and ``v`` are the layer's and call's own: they decorrelate the estimation
        errors of neurons and of layers, which then average out in V. ``s`` only has to
        make each neuron's estimate unbiased, so every layer with as many elements per
        neuron shares one.
        """
        a, c, r = shape
        k = state.calls
        u_rows = -(-(state.rows % state.width + a) // state.width) if r == 1 else a
        if k == len(state.signs):
            gen = torch.Generator().manual_seed((self.sketch_seed * 1_000_003 + state.index) * 65_537 + k)
            sizes = [(u_rows, c)] + ([(c, r)] if r > state.width else [])
            state.signs.append(tuple(_random_signs(n, gen).to(device=device, dtype=torch.float32) for n in sizes))
        signs = state.signs[k]
        if signs[0].shape != (u_rows, c):
            raise _HookError(f"call {k} of a sketched layer produced {a} rows, unlike the reference; "
                             "the probe or the model changed")
        key = (a * r, device)
        if key not in self._element_signs:
            gen = torch.Generator().manual_seed(self.sketch_seed * 1_000_003 + 7_919 * a * r)
            self._element_signs[key] = _random_signs((a * r,), gen).to(device=device, dtype=torch.float32)
        return self._element_signs[key], signs[0], signs[1] if len(signs) > 1 else None

    @contextlib.contextmanager
    def _probe_mode(self):
        """Eval mode, no grad, forked RNG; every module's own training flag restored after."""
        modes = [(m, m.training) for m in self.module.modules()]
        device = self._device()
        rng_devices = [device.index or 0] if device.type == "cuda" else []
        try:
            with torch.random.fork_rng(devices=rng_devices, device_type=device.type if device.type == "cuda" else "cuda"):
                self.module.eval()
                with torch.no_grad():
                    if self.autocast_dtype is not None:
                        with torch.autocast(device_type=device.type, dtype=self.autocast_dtype):
                            yield
                    else:
                        yield
        finally:
            for m, mode in modes:
                m.training = mode

    def _forward_probe(self) -> None:
        device = self._device()
        probe = self.probe.to(device)
        if probe.is_floating_point():
            probe = probe.to(self._input_dtype())
        chunks = [probe] if self.batch_size is None else list(probe.split(self.batch_size))
        handles = [m.register_forward_hook(self._hook(n)) for n, m in self.layers.items()]
        self._watch = []
        try:
            with self._probe_mode():
                for chunk in chunks:
                    try:
                        self.module(chunk)
                    except (RuntimeError, ValueError, TypeError, IndexError) as e:
                        if self.epoch < 0 and not isinstance(e, _HookError):
                            raise ValueError(
                                f"probe of shape {tuple(self.probe.shape)} does not fit the model "
                                f"{type(self.module).__name__} (it expects a batch of inputs "
                                f"[N, ...] like one training batch): {e}"
                            ) from e
                        raise
        finally:
            for h in handles:
                h.remove()
        modified = {n for n, y, version in self._watch if y._version != version}
        self._watch = []
        if modified - self._copied:
            if self.epoch >= 0:  # kept outputs were changed after the hook: this epoch's references are off
                warnings.warn(f"layers {sorted(modified - self._copied)} had their outputs modified in place after "
                              "the hook; their references are copied from now on", stacklevel=3)
            self._copied |= modified

    def measure(self) -> VelocityReport:
        """Forward the probe once and update every neuron's velocity."""
        first = self.epoch < 0
        if self.reference == "auto":
            self.reference = "sketch" if self.exact_reference_bytes() > self.sketch_above else "exact"
        for s in self._state.values():
            s.calls, s.dot, s.cur_sq, s.rows, s.cur_sketch = 0, None, None, 0, None
            if first:
                s.refs = []
        self._forward_probe()
        if first:
            silent = [n for n, s in self._state.items() if s.calls == 0]
            if silent and not self._default_layers:
                raise ValueError(f"monitored layers {silent} were not called by the probe forward")
            if silent:  # e.g. MultiheadAttention.out_proj (used through its weight), train-only heads
                warnings.warn(f"not monitoring {silent}: the probe forward never calls them", stacklevel=2)
                for n in silent:
                    del self._state[n], self.layers[n]
                if not self._state:
                    raise ValueError("no monitored layer was called by the probe forward")
            for s in self._state.values():
                if s.width:
                    s.sketch = s.cur_sketch.to(self._store_device(s.cur_sketch.device))
                    s.ref_sq, s.ref_rows, s.cur_sketch = s.cur_sq.to(s.sketch.device), s.rows, None
                else:
                    s.ref_sq = self._ref_sq(s)
            self.epoch = 0
            return VelocityReport(0, None, None, {}, int(self.probe.shape[0]))

        mu = self.momentum
        layer_v: dict[str, torch.Tensor] = {}
        abs_sum = 0.0
        count = 0
        changes = []
        for name, s in self._state.items():
            if s.width:
                if s.rows != s.ref_rows:
                    raise RuntimeError(f"layer {name!r} produced {s.rows} rows, {s.ref_rows} in the reference")
                dev = s.cur_sketch.device
                rho = _sketch_similarity(s.cur_sketch, s.cur_sq, s.sketch.to(dev), s.ref_sq.to(dev))
                if s.sketch.device == dev:
                    s.sketch.copy_(s.cur_sketch)
                else:
                    s.sketch = s.cur_sketch.to(s.sketch.device)
                s.cur_sketch = None
            elif s.calls != len(s.refs):
                raise RuntimeError(f"layer {name!r} was called {s.calls} times, {len(s.refs)} in the reference")
            else:
                rho = _similarity(s.dot, s.cur_sq, s.ref_sq.to(s.dot.device))
            prev = s.velocity if s.velocity is not None else torch.zeros_like(rho)
            prev = prev.to(rho.device)
            v = (1.0 - rho) - mu * prev
            if s.velocity is not None:
                changes.append((v - prev).square().mean())
            s.velocity = v
            if s.width:
                s.ref_sq = s.cur_sq.to(s.sketch.device)
            else:
                s.ref_sq = s.cur_sq if self.storage_dtype == torch.float32 else self._ref_sq(s)
                s.ref_sq = s.ref_sq.to(s.refs[0].device)
            layer_v[name] = v
            abs_sum = abs_sum + v.abs().sum()
            count += v.numel()
        self.epoch += 1
        model_v = float(abs_sum / count)
        change = float(torch.stack([c.to(layer_v[next(iter(layer_v))].device) for c in changes]).mean()) if changes else None
        return VelocityReport(self.epoch, model_v, change, layer_v, int(self.probe.shape[0]))

    def _store_device(self, compute: torch.device) -> torch.device:
        return compute if self.storage == "model" else self.storage

    def exact_reference_bytes(self) -> int:
        """Bytes that exact references in ``storage_dtype`` would hold, from a forward of the
        first probe sample scaled to the whole probe (outputs are assumed to grow with the
        batch). 0 when that forward fails: the first measurement then reports the error."""
        sizes: list[int] = []

        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            y = _first_tensor(output)
            if y is not None:
                sizes.append(y.numel())

        device = self._device()
        one = self.probe[:1].to(device)
        if one.is_floating_point():
            one = one.to(self._input_dtype())
        handles = [m.register_forward_hook(hook) for m in self.layers.values()]
        try:
            with self._probe_mode():
                self.module(one)
        except (RuntimeError, ValueError, TypeError, IndexError):
            return 0
        finally:
            for h in handles:
                h.remove()
        item = torch.empty((), dtype=self.storage_dtype).element_size()
        return sum(sizes) * int(self.probe.shape[0]) * item

    def _ref_sq(self, s: _LayerState) -> torch.Tensor:
        """|y_ref|^2 per neuron from the stored (possibly half-precision) reference."""
        total = None
        for ref in s.refs:
            sq = _neuron_dot(ref, ref, s.axis % ref.ndim)
            total = sq if total is None else total + sq
        return total

    # ------------------------------------------------------------------ bookkeeping
    @property
    def nbytes(self) -> int:
        """Bytes held: reference outputs or sketches, per-neuron sums and velocities, and the
        sketch's sign sequence."""
        total = sum(t.numel() * t.element_size() for t in self._element_signs.values())
        for s in self._state.values():
            for t in [*s.refs, s.ref_sq, s.velocity, s.sketch, *(t for call in s.signs for t in call)]:
                if t is not None:
                    total += t.numel() * t.element_size()
        return total

    @property
    def num_neurons(self) -> int:
        return sum(int(s.ref_sq.numel()) for s in self._state.values() if s.ref_sq is not None)

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue the same velocity series after a restart."""
        layers = {}
        for name, s in self._state.items():
            layers[name] = {
                "refs": [_cpu_copy(r) for r in s.refs],
                "ref_sq": _cpu_copy(s.ref_sq),
                "velocity": _cpu_copy(s.velocity),
            }
            if self.reference == "sketch":
                layers[name].update(sketch=_cpu_copy(s.sketch), rows=s.ref_rows, width=s.width,
                                    row_shape=None if s.row_shape is None else list(s.row_shape))
        state: dict[str, Any] = {"epoch": self.epoch, "momentum": self.momentum, "layers": layers}
        if self.reference == "sketch":
            state.update(reference="sketch", sketch_dim=self.sketch_dim, sketch_seed=self.sketch_seed)
        return state

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`; the reference kind (exact or sketch, with its size and
        seed) must match this monitor's (``"auto"`` takes the saved kind)."""
        saved = (state_dict.get("reference", "exact"), state_dict.get("sketch_dim"), state_dict.get("sketch_seed"))
        if self.reference == "auto" and saved[0] in ("exact", "sketch"):
            self.reference = saved[0]
        mine = (self.reference, *((self.sketch_dim, self.sketch_seed) if self.reference == "sketch" else (None, None)))
        if saved != mine:
            raise ValueError(
                f"state_dict holds reference/sketch_dim/sketch_seed {saved}, this monitor uses {mine}; "
                "build the NeuralVelocity with the same settings"
            )
        missing = set(self._state) - set(state_dict["layers"])
        extra = set(state_dict["layers"]) - set(self._state)
        if missing or extra:
            raise ValueError(
                f"state_dict layers do not match the monitored layers (missing {sorted(missing)}, "
                f"unexpected {sorted(extra)})"
            )
        device = self._device() if self.storage == "model" else self.storage
        for name, s in self._state.items():
            d = state_dict["layers"][name]
            s.refs = [r.to(device=device, dtype=self.storage_dtype, copy=True) for r in d["refs"]]
            s.ref_sq, s.velocity = (
                None if d[k] is None else d[k].to(device=device, copy=True) for k in ("ref_sq", "velocity")
            )
            if self.reference == "sketch":
                s.sketch = None if d["sketch"] is None else d["sketch"].to(device=device, copy=True)
                s.ref_rows, s.width = int(d["rows"]), d["width"]
                s.row_shape = None if d["row_shape"] is None else tuple(int(x) for x in d["row_shape"])
        self.epoch = int(state_dict["epoch"])
        self.momentum = float(state_dict.get("momentum", self.momentum))


def _neuron_dot(a: torch.Tensor, b: torch.Tensor, axis: int) -> torch.Tensor:
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


def _random_signs(shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    return torch.randint(0, 2, shape, generator=gen, dtype=torch.int8) * 2 - 1


def _sketch(
    y: torch.Tensor, s: torch.Tensor, u: torch.Tensor, v: torch.Tensor | None, *, row0: int, width: int
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
    if r == 1:  # rows; u[j] signs the j-th block of width rows this call touches
        z = y.view(a, c).float() * s.view(a, 1)  # 2-D: a trailing size-1 dim makes the product slow
        out = z.new_zeros(width, c)
        start = row0 % width
        head = min(a, width - start) if start else 0
        if head:
            out[start:start + head] += z[:head] * u[0]
        rest = z[head:]
        j = 1 if head else 0
        q = rest.shape[0] // width
        if q:
            out += rest[: q * width].view(q, width, c).mul_(u[j:j + q].unsqueeze(1)).sum(0)
        tail = rest.shape[0] - q * width
        if tail:
            out[:tail] += rest[q * width:] * u[j + q]
        return out
    z = y.float() * s.view(a, 1, r)
    if r >= width:
        w = z.mul_(u.unsqueeze(2)).sum(0)  # [C, R]: sum over rows
        if v is None:
            return w.t()
        w = w * v
        q = r // width
        out = w[:, : q * width].reshape(c, q, width).sum(1)
        if r > q * width:
            out[:, : r - q * width] += w[:, q * width:]
        return out.t()
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


def _sketch_similarity(cur: torch.Tensor, sq: torch.Tensor, ref: torch.Tensor, ref_sq: torch.Tensor) -> torch.Tensor:
    """Per-neuron cosine from sketches ``[width, C]`` and exact squared norms ``[C]``:
    ``rho = 1 - |S y/|y| - S y'/|y'| |^2 / 2``, with the zero-vector conventions of docs/design.md, "Velocity"."""
    norm, ref_norm = sq.sqrt(), ref_sq.sqrt()
    one = torch.ones_like(norm)
    dist = (cur / torch.where(norm > 0, norm, one) - ref / torch.where(ref_norm > 0, ref_norm, one)).square().sum(0)
    rho = (1.0 - 0.5 * dist).clamp(-1.0, 1.0)
    zero_cur, zero_ref = sq == 0, ref_sq == 0
    rho = torch.where(zero_cur & zero_ref, torch.ones_like(rho), rho)
    return torch.where(zero_cur ^ zero_ref, torch.zeros_like(rho), rho)


def _cpu_copy(t: torch.Tensor | None) -> torch.Tensor | None:
    """A detached host copy: the live buffers are updated in place by later measurements."""
    return None if t is None else t.detach().to("cpu", copy=True)


def _similarity(dot: torch.Tensor, sq: torch.Tensor, ref_sq: torch.Tensor) -> torch.Tensor:
    """Per-neuron cosine with the zero-vector conventions of docs/design.md, "Velocity"."""
    zero_cur = sq == 0
    zero_ref = ref_sq == 0
    denom = sq.sqrt() * ref_sq.sqrt()
    rho = (dot / torch.where(denom > 0, denom, torch.ones_like(denom))).clamp(-1.0, 1.0)
    rho = torch.where(zero_cur & zero_ref, torch.ones_like(rho), rho)
    rho = torch.where(zero_cur ^ zero_ref, torch.zeros_like(rho), rho)
    return rho

