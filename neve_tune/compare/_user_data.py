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

from typing import Any

import torch
from torch.utils.data import Dataset

from .._checks import check_int
from .._data_changes import check_label_range
from ..data import DataBundle, dataset_labels

__all__ = ["check_bundle_labels", "user_bundle"]


def user_bundle(train_set: Dataset, test_set: Dataset, num_classes: Any) -> DataBundle:
    """The data as a bundle named ``user``: ``num_classes`` given (an int >= 2 above
    every label) or, when None, one more than the largest training label."""
    for name, ds in (("train_set", train_set), ("test_set", test_set)):
        if len(ds) == 0:  # type: ignore[arg-type]
            raise ValueError(f"{name} is empty")
    train_labels, test_labels = (
        dataset_labels(train_set, "train_set"),
        dataset_labels(test_set, "test_set"),
    )
    if num_classes is None:
        num_classes = int(train_labels.max()) + 1
        if num_classes < 2:
            raise ValueError(
                "train_set holds one class (label 0): a classifier needs at least 2 (or pass "
                "num_classes)"
            )
    else:
        num_classes = check_int("num_classes", num_classes, minimum=2)
    check_label_range(train_labels, num_classes, "train_set")
    check_label_range(test_labels, num_classes, "test_set")
    shape, test_shape = _input_shape("train_set", train_set), _input_shape("test_set", test_set)
    if test_shape != shape:
        raise ValueError(
            f"test_set's inputs have shape {test_shape}, train_set's {shape}: the final models "
            "are scored on inputs like those they trained on"
        )
    return DataBundle("user", train_set, test_set, shape, num_classes)


def check_bundle_labels(bundle: DataBundle) -> None:
    """A bundle of your own (``compare(data=...)``): every label of ``data.train`` and
    ``data.test`` a class id below ``data.num_classes`` (an int >= 2)."""
    num_classes = check_int("data.num_classes", bundle.num_classes, minimum=2)
    for name, ds in (("data.train", bundle.train), ("data.test", bundle.test)):
        if len(ds) == 0:  # type: ignore[arg-type]
            raise ValueError(f"{name} is empty")
        check_label_range(dataset_labels(ds, name), num_classes, name, label="data.num_classes")


def _input_shape(name: str, dataset: Dataset) -> tuple[int, ...]:
    x = dataset[0][0]
    try:
        return tuple(torch.as_tensor(x).shape)
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(
            f"{name}'s inputs must be tensors or arrays (a transform such as ToTensor makes "
            f"them), got {type(x).__name__}"
        ) from None
