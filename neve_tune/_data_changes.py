"""The changes a data set undergoes before training, and what they need: every label of a
set, a stratified fraction of it (``train_fraction``), symmetric label noise
(``label_noise``, seeded by ``noise_seed``) and the held-out validation split of the
baselines. :func:`neve_tune.data.get_dataset` applies them; they are re-exported there.

    >>> import torch
    >>> ds = TensorDataset(torch.zeros(10, 2), torch.arange(10) % 2)
    >>> train, val = validation_split(ds, 0.2, seed=0)
    >>> len(train), len(val)
    (8, 2)
"""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Subset, TensorDataset

from ._checks import check_float, check_int, is_bool

__all__ = [
    "NOISE_STREAM",
    "check_data_changes",
    "check_label_range",
    "dataset_labels",
    "stratified_subset",
    "symmetric_label_noise",
    "validation_split",
]


def check_data_changes(
    train_fraction: Any = 1.0, label_noise: Any = 0.0, noise_seed: Any = 0
) -> tuple[float, float, int]:
    """The data changes checked (``0 < train_fraction <= 1``, ``0 <= label_noise < 1``,
    an int ``noise_seed``) and converted; a ``ValueError``/``TypeError`` naming the bad one."""
    return (
        check_float("train_fraction", train_fraction, low=0.0, high=1.0, low_open=True),  # type: ignore[return-value]
        check_float("label_noise", label_noise, low=0.0, high=1.0, high_open=True),
        check_int("noise_seed", noise_seed, minimum=0),
    )


def dataset_labels(dataset: Dataset, name: str = "dataset") -> torch.Tensor:
    """Every label of ``dataset`` as a long tensor, without loading inputs where the
    dataset keeps its labels apart (tensor datasets, subsets, torchvision ``targets``).
    Each must be one integer class id: a float (which would be truncated), a bool, a one-hot
    row or a one-element array (batched as ``[N, 1]``) is an error naming ``name``."""
    if isinstance(dataset, TensorDataset) and len(dataset.tensors) >= 2:
        return _id_tensor(name, dataset.tensors[1])
    if isinstance(dataset, Subset):
        return dataset_labels(dataset.dataset, name)[
            torch.as_tensor(list(dataset.indices), dtype=torch.long)
        ]
    targets = getattr(dataset, "targets", None)
    if targets is not None:
        return _id_tensor(name, torch.as_tensor(targets))
    return torch.tensor(
        [_class_id(name, i, dataset[i][1]) for i in range(len(dataset))],  # type: ignore[arg-type]
        dtype=torch.long,
    )


def stratified_subset(dataset: Dataset, fraction: float, seed: int = 0) -> Subset:
    """``fraction`` of every class of ``dataset`` (at least one example each), seeded.

    >>> import torch
    >>> ds = TensorDataset(torch.zeros(100, 2), torch.arange(100) % 4)
    >>> sub = stratified_subset(ds, 0.25, seed=0)
    >>> len(sub), torch.bincount(dataset_labels(sub)).tolist()
    (24, [6, 6, 6, 6])
    """
    fraction = check_float("fraction", fraction, low=0.0, high=1.0, low_open=True)
    labels = dataset_labels(dataset)
    gen = torch.Generator().manual_seed(int(seed))
    keep: list[int] = []
    for c in torch.unique(labels).tolist():
        idx = torch.nonzero(labels == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=gen)]
        keep += idx[: max(1, int(round(fraction * len(idx))))].tolist()
    return Subset(dataset, sorted(keep))


class _Relabeled(Dataset):
    """``dataset`` with its labels replaced (inputs untouched)."""

    def __init__(self, dataset: Dataset, labels: torch.Tensor) -> None:
        self.dataset, self.labels = dataset, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[Any, torch.Tensor]:
        return self.dataset[i][0], self.labels[i]


#: keys the flips' NumPy stream apart from every torch-seeded draw of the package
NOISE_STREAM = 0x6E6F697365  # "noise"


def check_label_range(
    labels: torch.Tensor, num_classes: int, where: str, label: str = "num_classes"
) -> None:
    """Every one of ``labels`` (of ``where``) a class id in ``0..num_classes-1``, else a
    ``ValueError`` naming ``label`` (the parameter that set ``num_classes``) and a bad label.

        >>> check_label_range(torch.tensor([0, 3]), 3, "train_set")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: num_classes=3, but train_set has label 3: labels must be class ids 0...
    """
    bad = labels[(labels < 0) | (labels >= num_classes)]
    if len(bad):
        raise ValueError(
            f"{label}={num_classes}, but {where} has label {int(bad[0])}: labels must be "
            f"class ids 0..{label}-1"
        )


def symmetric_label_noise(
    dataset: Dataset, rate: float, num_classes: int, seed: int = 0
) -> tuple[Dataset, torch.Tensor]:
    """``dataset`` with exactly ``round(rate * len)`` labels flipped, each to one of the
    other ``num_classes - 1`` classes chosen uniformly; returns it and the flipped positions.

        >>> import torch
        >>> ds = TensorDataset(torch.zeros(50, 2), torch.arange(50) % 5)
        >>> noisy, flipped = symmetric_label_noise(ds, 0.2, 5, seed=1)
        >>> len(flipped), bool((dataset_labels(noisy) != dataset_labels(ds)).sum() == 10)
        (10, True)
    """
    rate = check_float("label_noise", rate, low=0.0, high=1.0, high_open=True)
    check_int("num_classes", num_classes, minimum=2)
    labels = dataset_labels(dataset)
    n = len(labels)
    check_label_range(labels, num_classes, "the data set")  # a flip modulo K would wrap them
    # a random stream of its own (NumPy's, keyed by NOISE_STREAM): a validation split,
    # selection subset or probe seeded alike draws torch.randperm(n) from torch's stream, and
    # with the flips drawn there too would hold exactly the flipped labels
    rng = np.random.default_rng([int(seed), NOISE_STREAM])
    drawn = rng.permutation(n)[: int(round(rate * n))]
    flipped = torch.as_tensor(drawn, dtype=torch.long).sort().values
    shift = torch.as_tensor(rng.integers(1, num_classes, size=len(flipped)), dtype=torch.long)
    noisy = labels.clone()
    noisy[flipped] = (labels[flipped] + shift) % num_classes
    source = dataset
    if isinstance(source, Subset) and isinstance(source.dataset, TensorDataset):
        source = TensorDataset(
            *(
                t[torch.as_tensor(list(source.indices), dtype=torch.long)]
                for t in source.dataset.tensors
            )
        )
    if isinstance(source, TensorDataset):
        return TensorDataset(source.tensors[0], noisy, *source.tensors[2:]), flipped
    return _Relabeled(dataset, noisy), flipped


def validation_split(
    dataset: Dataset, fraction: float = 0.1, seed: int = 0
) -> tuple[Subset, Subset]:
    """(train, validation) subsets, ``fraction`` of ``dataset`` held out, seeded."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    n = len(dataset)  # type: ignore[arg-type]
    n_val = max(1, int(round(n * fraction)))
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed))).tolist()
    return Subset(dataset, sorted(perm[n_val:])), Subset(dataset, sorted(perm[:n_val]))


def _id_tensor(name: str, labels: torch.Tensor) -> torch.Tensor:
    if labels.dim() != 1:
        raise ValueError(
            f"{name}'s labels must be one class id per example, got shape {tuple(labels.shape)} "
            "(one-hot rows? pass their argmax)"
        )
    if labels.dtype == torch.bool or labels.is_floating_point() or labels.is_complex():
        raise TypeError(
            f"{name}'s labels must be integer class ids, got a {labels.dtype} tensor "
            "(floats would be truncated)"
        )
    return labels.long()


def _class_id(name: str, i: int, label: Any) -> int:
    if getattr(label, "ndim", 0) != 0:  # a tensor or array of one id would batch as [N, 1]
        raise ValueError(
            f"{name}[{i}]'s label must be one class id, got shape {tuple(label.shape)} "
            "(one-hot rows? pass their argmax)"
        )
    value = label.item() if hasattr(label, "item") else label
    if is_bool(value) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}'s labels must be integer class ids, got {label!r} at {i}")
    return int(value)
