"""What the callbacks forward the probe through: the model itself, a named submodule of it
(``probe_module="encoder"``), or a user function (``probe_fn(model, inputs)``).

:class:`ProbeForward` holds the *whole* model as its submodule ``model``, so the velocity's
module state (what the memorisation guard snapshots and restores) is the whole model's,
while the probe runs through the part that has a forward. Monitored layer names stay
those of the user's model: :func:`prefixed_layers` maps a ``layers`` spec onto the wrapper.

    >>> import torch
    >>> class Net(torch.nn.Module):           # no forward(), as many LightningModules
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.encoder, self.head = torch.nn.Linear(3, 4), torch.nn.Linear(4, 2)
    >>> net = Net()
    >>> ProbeForward(net, module_name="encoder")(torch.zeros(5, 3)).shape
    torch.Size([5, 4])
    >>> ProbeForward(net, fn=lambda m, x: m.head(m.encoder(x)))(torch.zeros(5, 3)).shape
    torch.Size([5, 2])
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from .._layers import DEFAULT_LAYER_TYPES

__all__ = ["ProbeForward", "batch_inputs", "check_probe_target", "has_forward", "prefixed_layers"]

PREFIX = "model."


def has_forward(module: nn.Module, placeholders: tuple[Any, ...] = ()) -> bool:
    """Whether ``module`` defines its own ``forward``: not ``nn.Module``'s (it raises
    NotImplementedError) nor one of ``placeholders`` (e.g. ``LightningModule.forward``, which calls
    it)."""
    return type(module).forward not in (nn.Module.forward, *placeholders)


def check_probe_target(probe_module: Any, probe_fn: Any) -> None:
    """Refuse a bad ``probe_module`` / ``probe_fn`` when a callback is built."""
    if probe_module is not None and (not isinstance(probe_module, str) or not probe_module):
        raise TypeError(
            f"probe_module must be a submodule name (e.g. 'encoder') or None, got {probe_module!r}"
        )
    if probe_fn is not None and not callable(probe_fn):
        raise TypeError(
            f"probe_fn must be a function (model, inputs) -> outputs, or None, got {probe_fn!r}"
        )
    if probe_module is not None and probe_fn is not None:
        raise ValueError(
            "pass probe_module= or probe_fn=, not both: probe_fn decides the whole probe forward"
        )


class ProbeForward(nn.Module):
    """Forwards probe inputs through ``model`` (as the keyword ``key`` when given), its
    submodule ``module_name``, or ``fn(model, x)``."""

    def __init__(
        self,
        model: nn.Module,
        module_name: str | None = None,
        fn: Callable[[nn.Module, torch.Tensor], Any] | None = None,
        key: str | None = None,
    ) -> None:
        super().__init__()
        if module_name is not None:
            names = dict(model.named_modules())
            if module_name not in names or not module_name:
                children = sorted(n for n, _ in model.named_children())
                raise ValueError(
                    f"probe_module={module_name!r} is not a submodule of {type(model).__name__} "
                    f"(its children are {children})"
                )
            if not has_forward(names[module_name]):
                raise ValueError(f"probe_module={module_name!r} has no forward(); pass probe_fn=")
        self.model = model
        self.module_name = module_name
        self.fn = fn
        self.key = key  # pass the probe as this keyword argument (Hugging Face: input_ids=)

    def forward(self, x: torch.Tensor) -> Any:
        if self.fn is not None:
            return self.fn(self.model, x)
        target = self.model.get_submodule(self.module_name) if self.module_name else self.model
        return target(**{self.key: x}) if self.key else target(x)


def prefixed_layers(layers: Any, module_name: str | None) -> Any:
    """A ``layers`` spec written for the user's model, for a :class:`ProbeForward` around it:
    names get the ``model.`` prefix, predicates see the user's names; None with
    ``module_name`` selects the default layer types inside that submodule only."""
    if layers is None:
        if module_name is None:
            return None
        inside = PREFIX + module_name + "."
        return lambda n, m: (n + ".").startswith(inside) and isinstance(m, DEFAULT_LAYER_TYPES)
    if callable(layers) and not isinstance(layers, type):
        return lambda n, m: n.startswith(PREFIX) and bool(layers(n[len(PREFIX) :], m))
    if isinstance(layers, (list, tuple, set)):
        return [PREFIX + x if isinstance(x, str) else x for x in layers]
    return layers


def batch_inputs(batch: Any, input_key: str | int = 0) -> torch.Tensor:
    """The input tensor of one training batch: the batch itself, its ``input_key``-th
    element (tuple/list) or its ``input_key`` entry (dict).

    >>> import torch
    >>> batch_inputs((torch.zeros(8, 3), torch.zeros(8))).shape
    torch.Size([8, 3])
    >>> batch_inputs({"x": torch.zeros(4, 2), "y": torch.zeros(4)}, "x").shape
    torch.Size([4, 2])
    """
    if isinstance(batch, torch.Tensor):
        return batch
    if isinstance(batch, Mapping):
        if input_key not in batch:
            raise ValueError(
                f"input_key={input_key!r} is not in the training batch, which holds "
                f"{sorted(map(str, batch))}; pass input_key= naming the model's input, or probe="
            )
        x = batch[input_key]
    elif isinstance(batch, (tuple, list)):
        if not isinstance(input_key, int) or not -len(batch) <= input_key < len(batch):
            raise ValueError(
                f"input_key={input_key!r} does not index the training batch (a "
                f"{type(batch).__name__} of {len(batch)}); pass an int position, or probe="
            )
        x = batch[input_key]
    else:
        raise TypeError(
            f"cannot find the inputs in a training batch of type {type(batch).__name__}; pass "
            "probe= (a tensor [N, ...] of probe inputs)"
        )
    if not isinstance(x, torch.Tensor):
        raise TypeError(
            f"the training batch's input {input_key!r} is a {type(x).__name__}, not a tensor; pass "
            "probe="
        )
    return x
