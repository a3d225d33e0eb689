"""Probe sets: the fixed inputs forwarded once per epoch to measure velocity, and how
they run through a model.

The probe must be the same every epoch, so each builder draws from its own seeded
``torch.Generator`` and never touches the global RNG that training uses; the forward
(:func:`probe_mode`) runs in eval mode, without gradients, on a forked RNG, so it
changes neither the model's modes nor the training's random draws.

Example::

    >>> from neve_tune.probe import gaussian_probe
    >>> gaussian_probe((1, 8, 8), num_samples=100, seed=0).shape
    torch.Size([100, 1, 8, 8])
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from torch import nn
from torch.utils.data import Dataset

from ._checks import check_int

__all__ = [
    "check_probe",
    "dataset_probe",
    "gaussian_probe",
    "module_device",
    "probe_inputs",
    "probe_mode",
]


def _check_count(num_samples: int) -> int:
    num_samples = check_int("num_samples", num_samples)  # type: ignore[assignment]
    if num_samples < 1:
        raise ValueError(
            f"num_samples must be at least 1, got {num_samples} (an empty probe measures nothing)"
        )
    return num_samples


def gaussian_probe(
    input_shape: Sequence[int],
    num_samples: int = 100,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """``num_samples`` draws of N(0, 1) noise, each shaped like one input (no batch dim)."""
    _check_count(num_samples)
    shape = tuple(int(s) for s in input_shape)
    if not shape or any(s < 1 for s in shape):
        raise ValueError(
            f"input_shape must be a non-empty shape of positive sizes, got {tuple(input_shape)}"
        )
    gen = torch.Generator().manual_seed(int(seed))
    return torch.randn((num_samples, *shape), generator=gen, dtype=dtype)


def dataset_probe(dataset: Dataset, num_samples: int = 100, seed: int = 0) -> torch.Tensor:
    """A fixed set of unlabeled inputs: the first element of ``num_samples`` items drawn
    without replacement (seeded) from ``dataset``."""
    _check_count(num_samples)
    n = len(dataset)  # type: ignore[arg-type]
    if n == 0:
        raise ValueError("dataset is empty; a probe needs at least one input")
    gen = torch.Generator().manual_seed(int(seed))
    idx = torch.randperm(n, generator=gen)[: min(num_samples, n)].tolist()
    xs = []
    for i in idx:
        item = dataset[i]
        x = item[0] if isinstance(item, (tuple, list)) else item
        xs.append(torch.as_tensor(x))
    return torch.stack(xs)


def check_probe(probe: object) -> None:
    """A probe is a non-empty tensor of finite inputs ``[N, ...]``; else one line naming
    ``probe``."""
    if not isinstance(probe, torch.Tensor):
        raise TypeError(f"probe must be a torch.Tensor, got {type(probe).__name__}")
    if probe.ndim == 0 or probe.shape[0] == 0:
        raise ValueError(
            f"probe is empty (shape {tuple(probe.shape)}); it needs at least one sample"
        )
    if probe.is_floating_point() and probe.device.type != "meta":  # a meta probe has no values
        bad = int((~torch.isfinite(probe.detach())).sum())
        if bad:
            raise ValueError(
                f"probe must be finite: {bad} of {probe.numel()} values are NaN or inf"
            )


def module_device(module: nn.Module) -> torch.device:
    """Where ``module`` lives: its first parameter's (or buffer's) device, else the CPU."""
    for p in module.parameters():
        return p.device
    for b in module.buffers():
        return b.device
    return torch.device("cpu")


def probe_inputs(probe: torch.Tensor, module: nn.Module) -> torch.Tensor:
    """``probe`` on ``module``'s device, floating inputs in its parameters' dtype."""
    probe = probe.to(module_device(module))
    if probe.is_floating_point():
        dtype = next((p.dtype for p in module.parameters() if p.is_floating_point()), torch.float32)
        probe = probe.to(dtype)
    return probe


@contextlib.contextmanager
def probe_mode(module: nn.Module, autocast_dtype: torch.dtype | None = None) -> Iterator[None]:
    """Eval mode, no grad, forked RNG (and ``torch.autocast`` to ``autocast_dtype``); every
    module's own training flag restored after.

        >>> model = torch.nn.Sequential(torch.nn.Dropout(0.5))
        >>> with probe_mode(model):
        ...     model.training
        False
        >>> model.training
        True
    """
    modes = [(m, m.training) for m in module.modules()]
    device = module_device(module)
    rng_devices = [device.index or 0] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(
            devices=rng_devices, device_type=device.type if device.type == "cuda" else "cuda"
        ):
            module.eval()
            with torch.no_grad():
                if autocast_dtype is not None:
                    with torch.autocast(device_type=device.type, dtype=autocast_dtype):
                        yield
                else:
                    yield
    finally:
        for m, mode in modes:
            m.training = mode
