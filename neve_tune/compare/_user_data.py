"""The data of :func:`~neve_tune.compare.compare_searches` (and a bundle given to
:func:`~neve_tune.compare.compare`), checked before any search: both
sets hold examples, every label is one integer class id in ``0..num_classes-1`` (test
labels too: a test label out of range would fail only after every search had run),
and the test inputs have the training inputs' shape.

    >>> import torch
    >>> from torch.utils.data import TensorDataset
    >>> train = TensorDataset(torch.zeros(6, 4), torch.tensor([0, 1, 2, 0, 1, 2]))
    >>> user_bundle(train, train, None).num_classes
    3
    >>> user_bundle(train, train, 2)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: num_classes=2, but train_set has label 2: labels must be class ids 0..num_classes-1
"""

from __future__ import annotations

import numbers
from typing import Any

import torch
from torch.utils.data import Dataset, TensorDataset

from .._checks import check_int, is_bool
from ..data import DataBundle

__all__ = ["check_bundle_labels", "class_ids", "user_bundle"]


def user_bundle(train_set: Dataset, test_set: Dataset, num_classes: Any) -> DataBundle:
    """The data as a bundle named ``user``: ``num_classes`` given (an int >= 2 above
    every label) or, when None, one more than the largest training label."""
    for name, ds in (("train_set", train_set), ("test_set", test_set)):
        if len(ds) == 0:  # type: ignore[arg-type]
            raise ValueError(f"{name} is empty")
    train_labels, test_labels = class_ids("train_set", train_set), class_ids("test_set", test_set)
    if num_classes is None:
        num_classes = int(train_labels.max()) + 1
        if num_classes < 2:
            raise ValueError(
                "train_set holds one class (label 0): a classifier needs at least 2 (or pass "
                "num_classes)"
            )
    else:
        num_classes = check_int("num_classes", num_classes, minimum=2)
    _check_range(num_classes, ("train_set", train_labels), ("test_set", test_labels))
    shape = _input_shape("train_set", train_set)
    if _input_shape("test_set", test_set) != shape:
        raise ValueError(
            f"test_set's inputs have shape {_input_shape('test_set', test_set)}, train_set's "
            f"{shape}: the final models are scored on inputs like those they trained on"
        )
    return DataBundle("user", train_set, test_set, shape, num_classes)


def check_bundle_labels(bundle: DataBundle) -> None:
    """A bundle of your own (``compare(data=...)``): every label of ``data.train`` and
    ``data.test`` a class id below ``data.num_classes`` (an int >= 2)."""
    num_classes = check_int("data.num_classes", bundle.num_classes, minimum=2)
    for name, ds in (("data.train", bundle.train), ("data.test", bundle.test)):
        if len(ds) == 0:  # type: ignore[arg-type]
            raise ValueError(f"{name} is empty")
        _check_range(num_classes, (name, class_ids(name, ds)), label="data.num_classes")


def _check_range(
    num_classes: int, *named: tuple[str, torch.Tensor], label: str = "num_classes"
) -> None:
    for name, labels in named:
        bad = labels[(labels < 0) | (labels >= num_classes)]
        if len(bad):
            raise ValueError(
                f"{label}={num_classes}, but {name} has label {int(bad[0])}: labels must be "
                f"class ids 0..{label}-1"
            )


def class_ids(name: str, dataset: Dataset) -> torch.Tensor:
    """Every label of ``dataset`` as int64, each one integer class id (not a float, a bool,
    a one-hot row or a one-element array, which training would batch as ``[N, 1]``); else an
    error naming ``name`` and the first bad label."""
    if isinstance(dataset, TensorDataset) and len(dataset.tensors) >= 2:
        return _id_tensor(name, dataset.tensors[1])
    targets = getattr(dataset, "targets", None)
    if targets is not None:
        return _id_tensor(name, torch.as_tensor(targets))
    return torch.tensor([_class_id(name, i, dataset[i][1]) for i in range(len(dataset))])  # type: ignore[arg-type]


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


def _input_shape(name: str, dataset: Dataset) -> tuple[int, ...]:
    x = dataset[0][0]
    try:
        return tuple(torch.as_tensor(x).shape)
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(
            f"{name}'s inputs must be tensors or arrays (a transform such as ToTensor makes "
            f"them), got {type(x).__name__}"
        ) from None
