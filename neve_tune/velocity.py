"""Neural velocity: how fast each neuron's input-output function still changes.

A fixed probe is forwarded through the model once per epoch. For each monitored
neuron ``i`` the output ``y_i^t`` over the whole probe is compared with the one of the
previous measurement (DESIGN section 1)::

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
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence, Union

import torch
from torch import nn

__all__ = [
    "DEFAULT_LAYER_TYPES",
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

    __slots__ = ("axis", "refs", "ref_sq", "dot", "cur_sq", "calls", "velocity", "prev_velocity")

    def __init__(self, axis: int) -> None:
        self.axis = axis
        self.refs: list[torch.Tensor] = []  # one per hook call (probe chunk / module reuse)
        self.ref_sq: torch.Tensor | None = None  # |y_prev|^2 per neuron
        self.dot: torch.Tensor | None = None
        self.cur_sq: torch.Tensor | None = None
        self.calls = 0
        self.velocity: torch.Tensor | None = None
        self.prev_velocity: torch.Tensor | None = None


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
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not isinstance(probe, torch.Tensor):
            raise TypeError(f"probe must be a torch.Tensor, got {type(probe).__name__}")
        if probe.ndim == 0 or probe.shape[0] == 0:
            raise ValueError(f"probe is empty (shape {tuple(probe.shape)}); it needs at least one sample")
        if isinstance(momentum, bool) or not isinstance(momentum, (int, float)):
            raise TypeError(f"momentum must be a float in [0, 1), got {momentum!r}")
        if not 0.0 <= float(momentum) < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        if storage_dtype not in (torch.float32, torch.float16, torch.bfloat16):
            raise ValueError(f"storage_dtype must be float32, float16 or bfloat16, got {storage_dtype}")
        if autocast_dtype not in (None, torch.float16, torch.bfloat16):
            raise ValueError(f"autocast_dtype must be None, torch.float16 or torch.bfloat16, got {autocast_dtype!r}")
        if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
            raise ValueError(f"batch_size must be a positive int or None, got {batch_size!r}")
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
        self.layers = select_layers(self.module, layers)
        self._default_layers = layers is None
        self._state = {n: _LayerState(neuron_axis(m)) for n, m in self.layers.items()}
        self._copied: set[str] = set()  # layers whose outputs are modified in place downstream
        self._watch: list[tuple[str, torch.Tensor, int]] = []
        self.epoch = -1  # epoch of the last measurement
        self.last_report: VelocityReport | None = None

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
        for s in self._state.values():
            s.calls, s.dot, s.cur_sq = 0, None, None
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
                s.ref_sq = self._ref_sq(s)
            self.epoch = 0
            self.last_report = VelocityReport(0, None, None, {}, int(self.probe.shape[0]))
            return self.last_report

        mu = self.momentum
        layer_v: dict[str, torch.Tensor] = {}
        abs_sum = 0.0
        count = 0
        changes = []
        for name, s in self._state.items():
            if s.calls != len(s.refs):
                raise RuntimeError(f"layer {name!r} was called {s.calls} times, {len(s.refs)} in the reference")
            rho = _similarity(s.dot, s.cur_sq, s.ref_sq.to(s.dot.device))
            prev = s.velocity if s.velocity is not None else torch.zeros_like(rho)
            prev = prev.to(rho.device)
            v = (1.0 - rho) - mu * prev
            if s.velocity is not None:
                changes.append((v - prev).square().mean())
            s.prev_velocity = s.velocity
            s.velocity = v
            s.ref_sq = s.cur_sq if self.storage_dtype == torch.float32 else self._ref_sq(s)
            s.ref_sq = s.ref_sq.to(s.refs[0].device)
            layer_v[name] = v
            abs_sum = abs_sum + v.abs().sum()
            count += v.numel()
        self.epoch += 1
        model_v = float(abs_sum / count)
        change = float(torch.stack([c.to(layer_v[next(iter(layer_v))].device) for c in changes]).mean()) if changes else None
        self.last_report = VelocityReport(self.epoch, model_v, change, layer_v, int(self.probe.shape[0]))
        return self.last_report

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
        """Bytes held: reference outputs plus per-neuron sums and velocities."""
        total = 0
        for s in self._state.values():
            for t in [*s.refs, s.ref_sq, s.velocity, s.prev_velocity]:
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
                "prev_velocity": _cpu_copy(s.prev_velocity),
            }
        return {"epoch": self.epoch, "momentum": self.momentum, "layers": layers}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
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
            s.ref_sq, s.velocity, s.prev_velocity = (
                None if d[k] is None else d[k].to(device=device, copy=True) for k in ("ref_sq", "velocity", "prev_velocity")
            )
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


def _cpu_copy(t: torch.Tensor | None) -> torch.Tensor | None:
    """A detached host copy: the live buffers are updated in place by later measurements."""
    return None if t is None else t.detach().to("cpu", copy=True)


def _similarity(dot: torch.Tensor, sq: torch.Tensor, ref_sq: torch.Tensor) -> torch.Tensor:
    """Per-neuron cosine with the zero-vector conventions of DESIGN section 1."""
    zero_cur = sq == 0
    zero_ref = ref_sq == 0
    denom = sq.sqrt() * ref_sq.sqrt()
    rho = (dot / torch.where(denom > 0, denom, torch.ones_like(denom))).clamp(-1.0, 1.0)
    rho = torch.where(zero_cur & zero_ref, torch.ones_like(rho), rho)
    rho = torch.where(zero_cur ^ zero_ref, torch.zeros_like(rho), rho)
    return rho

