"""Which layers a :class:`~neve_tune.NeuralVelocity` monitors, where their neurons are,
and the per-layer bookkeeping of a measurement.

A neuron is one channel of a convolution or normalisation output (dim 1) or one unit of
a ``Linear``/``LayerNorm`` output (the last dim), over every sample and position of the
probe (docs/design.md, "Velocity").

    >>> from torch import nn
    >>> model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(36, 2))
    >>> sorted(select_layers(model)), neuron_axis(model[0]), neuron_axis(model[3])
    (['0', '3'], 1, -1)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

__all__ = ["DEFAULT_LAYER_TYPES", "LayerSpec", "neuron_axis", "select_layers", "unwrap_model"]

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

LayerSpec = Sequence[str | type] | Callable[[str, nn.Module], bool] | None


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
        # the model's own module is not one of its layers: a bare nn.Linear has none
        alone = " (a model that is itself one layer has none: wrap it in nn.Sequential)"
        raise ValueError(
            f"layers={layers!r} selects no layer to monitor in {type(model).__name__}; "
            f"default types are {[t.__name__ for t in DEFAULT_LAYER_TYPES]}"
            + (alone if not named else "")
        )
    return chosen


class HookError(RuntimeError):
    """An error raised by the measurement itself, never blamed on the probe's shape."""


def first_tensor(output: Any) -> torch.Tensor | None:
    """The first tensor of a layer's output (a tensor, or nested tuples, lists, dicts)."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, Mapping):
        output = list(output.values())
    if isinstance(output, (list, tuple)):
        for item in output:
            t = first_tensor(item)
            if t is not None:
                return t
    return None


class LayerState:
    """Reference outputs and running sums of one monitored layer."""

    __slots__ = (
        "axis",
        "refs",
        "ref_sq",
        "dot",
        "cur_sq",
        "calls",
        "velocity",
        "width",
        "row_shape",
        "rows",
        "ref_rows",
        "index",
        "signs",
        "sketch",
        "cur_sketch",
    )

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

    @property
    def nbytes(self) -> int:
        """Bytes held: reference outputs or sketch, per-neuron sums and velocities, signs."""
        held = [
            *self.refs,
            self.ref_sq,
            self.velocity,
            self.sketch,
            *(t for call in self.signs for t in call),
        ]
        return sum(t.numel() * t.element_size() for t in held if t is not None)

    def state_dict(self, *, sketch: bool) -> dict[str, Any]:
        """The layer's reference and velocities as host copies (``sketch``: with its sketch)."""
        state: dict[str, Any] = {
            "refs": [_cpu_copy(r) for r in self.refs],
            "ref_sq": _cpu_copy(self.ref_sq),
            "velocity": _cpu_copy(self.velocity),
        }
        if sketch:
            state.update(
                sketch=_cpu_copy(self.sketch),
                rows=self.ref_rows,
                width=self.width,
                row_shape=None if self.row_shape is None else list(self.row_shape),
            )
        return state

    def load_state_dict(
        self, d: Mapping[str, Any], *, device: Any, dtype: torch.dtype, sketch: bool
    ) -> None:
        """Restore :meth:`state_dict` onto ``device``, references in ``dtype``."""
        self.refs = [r.to(device=device, dtype=dtype, copy=True) for r in d["refs"]]
        self.ref_sq, self.velocity = (
            None if d[k] is None else d[k].to(device=device, copy=True)
            for k in ("ref_sq", "velocity")
        )
        if sketch:
            self.sketch = None if d["sketch"] is None else d["sketch"].to(device=device, copy=True)
            self.ref_rows, self.width = int(d["rows"]), d["width"]
            self.row_shape = (
                None if d["row_shape"] is None else tuple(int(x) for x in d["row_shape"])
            )


def _cpu_copy(t: torch.Tensor | None) -> torch.Tensor | None:
    """A detached host copy: the live buffers are updated in place by later measurements."""
    return None if t is None else t.detach().to("cpu", copy=True)
