"""Probe sets: the fixed inputs forwarded once per epoch to measure velocity.

The probe must be the same every epoch, so each builder draws from its own seeded
``torch.Generator`` and never touches the global RNG that training uses.

Example::

    >>> from neve_tune.probe import gaussian_probe
    >>> gaussian_probe((1, 8, 8), num_samples=100, seed=0).shape
    torch.Size([100, 1, 8, 8])
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch.utils.data import Dataset

from ._checks import check_int

__all__ = ["gaussian_probe", "dataset_probe"]


def _check_count(num_samples: int) -> int:
    num_samples = check_int("num_samples", num_samples)  # type: ignore[assignment]
    if num_samples < 1:
        raise ValueError(f"num_samples must be at least 1, got {num_samples} (an empty probe measures nothing)")
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
        raise ValueError(f"input_shape must be a non-empty shape of positive sizes, got {tuple(input_shape)}")
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
