"""Datasets, by name: ``digits`` (bundled with scikit-learn, the offline default),
``mnist1d`` (1-D signals generated offline by the ``mnist1d`` package), ``cifar10``/``cifar100`` and
``imagefolder`` (torchvision loaders over files already on disk; nothing is downloaded at run time)
and ``synthetic`` (for tests).

Every loader returns a :class:`DataBundle` with a train and a test set; the test set is
only for the final evaluation. :func:`validation_split` carves the held-out part that the
validation-based baselines need out of the training set.

Example::

    >>> from neve_tune.data import get_dataset
    >>> bundle = get_dataset("digits", seed=0)
    >>> len(bundle.train), len(bundle.test), bundle.input_shape, bundle.num_classes
    (1437, 360, (1, 8, 8), 10)
"""

from __future__ import annotations

import functools
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import TensorDataset

from ._checks import check_seed
from ._data_changes import (  # re-exported: the data changes' own module
    NOISE_STREAM,
    check_data_changes,
    dataset_labels,
    stratified_subset,
    symmetric_label_noise,
    validation_split,
)
from ._data_registry import (  # re-exported: the registry's own module
    DATASETS,
    OPTION_CHECKS,
    DataBundle,
    check_data_options,
    check_option,
    data_identity,
    file_datasets,
    reads_files,
    register_dataset,
)

__all__ = [
    "DATASETS",
    "NOISE_STREAM",
    "OPTION_CHECKS",
    "DataBundle",
    "check_data_changes",
    "check_data_options",
    "check_option",
    "data_identity",
    "dataset_labels",
    "file_datasets",
    "get_dataset",
    "reads_files",
    "register_dataset",
    "stratified_subset",
    "symmetric_label_noise",
    "validation_split",
]

CIFAR_MEAN = {"cifar10": (0.4914, 0.4822, 0.4465), "cifar100": (0.5071, 0.4865, 0.4409)}
CIFAR_STD = {"cifar10": (0.2470, 0.2435, 0.2616), "cifar100": (0.2673, 0.2564, 0.2762)}
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def get_dataset(
    name: str,
    *,
    train_fraction: float = 1.0,
    label_noise: float = 0.0,
    noise_seed: int = 0,
    **options: Any,
) -> DataBundle:
    """The data set registered as ``name``, built with ``options``.

    ``train_fraction`` keeps a stratified, seeded (``options["seed"]``) fraction of the
    training set; ``label_noise`` then flips that fraction of its labels to another class
    (:func:`symmetric_label_noise`, seeded by ``noise_seed``). The test set is never changed;
    it only scores the final models.
    """
    # a misspelled option would otherwise fall into a bundled loader's ``**_`` unread
    check_data_options(name, options, values=False)  # the loader checks the values by name
    train_fraction, label_noise, noise_seed = check_data_changes(
        train_fraction, label_noise, noise_seed
    )
    seed = check_seed("seed", options.get("seed", 0))
    bundle = DATASETS[name](**options)
    if train_fraction < 1.0:
        bundle = replace(bundle, train=stratified_subset(bundle.train, train_fraction, seed=seed))
    if label_noise > 0.0:
        train, flipped = symmetric_label_noise(
            bundle.train, label_noise, bundle.num_classes, seed=noise_seed
        )
        bundle = replace(bundle, train=train, flipped=flipped)
    return bundle


@functools.lru_cache(maxsize=8)
def _digits_arrays(seed: int, test_fraction: float):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, y, test_size=test_fraction, random_state=seed, stratify=y
    )
    return x_tr, x_te, y_tr, y_te


@register_dataset("digits")
def digits(seed: int = 0, test_fraction: float = 0.2, **_: object) -> DataBundle:
    """The 1,797 8x8 handwritten digits of scikit-learn: 1,437 train / 360 test images
    (stratified, split by ``seed``), scaled to [0, 1] and standardised with the training
    mean and std."""
    seed, test_fraction = _split_options(seed, test_fraction)
    x_tr, x_te, y_tr, y_te = _digits_arrays(seed, test_fraction)
    xt = torch.tensor(x_tr, dtype=torch.float32).view(-1, 1, 8, 8) / 16.0
    xe = torch.tensor(x_te, dtype=torch.float32).view(-1, 1, 8, 8) / 16.0
    return _standardised("digits", xt, xe, y_tr, y_te)


def _split_options(seed: Any, test_fraction: Any) -> tuple[int, float]:
    """The train/test split's ``seed`` and ``test_fraction`` (in (0, 1)), checked by name:
    a string or a fraction of a seed is refused, not read as another split."""
    return check_option("seed", seed), check_option("test_fraction", test_fraction)


def _standardised(
    name: str, xt: torch.Tensor, xe: torch.Tensor, y_tr: Any, y_te: Any
) -> DataBundle:
    """Train and test inputs standardised with the training mean and std, as a 10-class bundle."""
    mean, std = xt.mean(), xt.std()
    xt, xe = (xt - mean) / std, (xe - mean) / std
    return DataBundle(
        name,
        TensorDataset(xt, torch.tensor(y_tr, dtype=torch.long)),
        TensorDataset(xe, torch.tensor(y_te, dtype=torch.long)),
        tuple(xt.shape[1:]),
        10,
    )


@functools.lru_cache(maxsize=1)
def _mnist1d_pool(num_samples: int) -> tuple[Any, Any]:
    """The MNIST-1D examples (inputs, labels) as its paper generates them: from the ten
    templates with the package's own transforms and generation seed (42), with no download.
    ``make_dataset`` reseeds numpy's and Python's global generators; their states are
    restored so a caller's random streams do not change."""
    import random

    import numpy as np
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples = num_samples
    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        d = make_dataset(args)
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
    return np.concatenate([d["x"], d["x_test"]]), np.concatenate([d["y"], d["y_test"]])


@register_dataset("mnist1d")
def mnist1d(
    seed: int = 0, test_fraction: float = 0.2, num_samples: int = 5000, **_: object
) -> DataBundle:
    """MNIST-1D (Greydanus 2020): 40-sample 1-D signals of ten digit templates, padded,
    sheared, scaled, translated and noised. The 5,000 examples of the standard generation
    (about 1 s, offline, cached per process) are split 4,000 train / 1,000 test, stratified
    by ``seed`` as ``digits`` is, and standardised with the training mean and std.

        >>> bundle = get_dataset("mnist1d", seed=0)
        >>> len(bundle.train), len(bundle.test), bundle.input_shape, bundle.num_classes
        (4000, 1000, (1, 40), 10)
    """
    from sklearn.model_selection import train_test_split

    num_samples = check_option("num_samples", num_samples)
    seed, test_fraction = _split_options(seed, test_fraction)
    x, y = _mnist1d_pool(num_samples)
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, y, test_size=test_fraction, random_state=seed, stratify=y
    )
    xt = torch.tensor(x_tr, dtype=torch.float32).unsqueeze(1)
    xe = torch.tensor(x_te, dtype=torch.float32).unsqueeze(1)
    return _standardised("mnist1d", xt, xe, y_tr, y_te)


@register_dataset("synthetic")
def synthetic(
    seed: int = 0,
    num_train: int = 256,
    num_test: int = 128,
    input_shape: tuple[int, ...] = (1, 8, 8),
    num_classes: int = 4,
    noise: float = 1.0,
    **_: object,
) -> DataBundle:
    """Gaussian class clusters around seeded random centres: small, learnable, instant.
    Every option is checked by name (at least one example per set, two classes)."""
    seed = check_option("seed", seed)
    num_train = check_option("num_train", num_train)
    num_test = check_option("num_test", num_test)
    num_classes = check_option("num_classes", num_classes)
    noise = check_option("noise", noise)
    input_shape = check_option("input_shape", input_shape)
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn((num_classes, *input_shape), generator=gen) * 1.5

    def draw(n: int) -> TensorDataset:
        y = torch.randint(num_classes, (n,), generator=gen)
        x = centres[y] + noise * torch.randn((n, *input_shape), generator=gen)
        return TensorDataset(x, y)

    return DataBundle("synthetic", draw(num_train), draw(num_test), input_shape, num_classes)


def _missing(name: str, root: Path, expected: str) -> FileNotFoundError:
    return FileNotFoundError(
        f"{name} was not found under data_root={str(root)!r}: put {expected} there "
        "(nothing is downloaded at run time), or pass --data-root to where it lies"
    )


def _cifar(name: str, root: str | os.PathLike | None, augment: bool, verify: bool) -> DataBundle:
    from torchvision import datasets
    from torchvision import transforms as T

    augment, verify = check_option("augment", augment), check_option("verify", verify)
    root = Path(root or os.environ.get("NEVE_DATA", "data")).expanduser()
    cls = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
    if not verify:  # same parser, without the md5 check of the official archive files
        cls = type(
            cls.__name__,
            (cls,),
            {"_check_integrity": lambda self: True, "meta": {**cls.meta, "md5": None}},
        )
    norm = T.Normalize(CIFAR_MEAN[name], CIFAR_STD[name])
    train_tf = [T.RandomCrop(32, padding=4), T.RandomHorizontalFlip()] if augment else []
    folder = cls.base_folder
    try:
        train = cls(
            str(root),
            train=True,
            download=False,
            transform=T.Compose([*train_tf, T.ToTensor(), norm]),
        )
        test = cls(
            str(root), train=False, download=False, transform=T.Compose([T.ToTensor(), norm])
        )
    except RuntimeError as e:
        if (root / folder).is_dir():  # there, but a file is missing or differs from the official
            raise FileNotFoundError(
                f"{name} under data_root={str(root)!r}: {folder}/ is incomplete or not the "
                "official files (md5 check): put the python version of the data set there, or "
                "set data_options verify=False for a re-packed copy"
            ) from e
        raise _missing(
            name, root, f"the python version of the data set, unpacked as {folder}/"
        ) from e
    return DataBundle(name, train, test, (3, 32, 32), 100 if name == "cifar100" else 10)


@register_dataset("cifar10")
def cifar10(
    data_root: str | os.PathLike | None = None,
    augment: bool = True,
    verify: bool = True,
    **_: object,
) -> DataBundle:
    """CIFAR-10 from ``data_root/cifar-10-batches-py`` (torchvision format), with the
    usual random crop + flip on the training set. ``verify=False`` skips the md5 check of
    the official files (for re-packed copies)."""
    return _cifar("cifar10", data_root, augment, verify)


@register_dataset("cifar100")
def cifar100(
    data_root: str | os.PathLike | None = None,
    augment: bool = True,
    verify: bool = True,
    **_: object,
) -> DataBundle:
    """CIFAR-100 from ``data_root/cifar-100-python`` (torchvision format)."""
    return _cifar("cifar100", data_root, augment, verify)


@register_dataset("imagefolder")
def imagefolder(
    data_root: str | os.PathLike | None = None,
    image_size: int = 224,
    train_dir: str = "train",
    test_dir: str = "val",
    augment: bool = True,
    **_: object,
) -> DataBundle:
    """An ImageNet-style tree: ``data_root/train/<class>/*.jpg`` and
    ``data_root/val/<class>/*.jpg`` (torchvision ``ImageFolder``)."""
    from torchvision import datasets
    from torchvision import transforms as T

    augment = check_option("augment", augment)
    image_size = check_option("image_size", image_size)
    root = Path(data_root or os.environ.get("NEVE_DATA", "data")).expanduser()
    for sub in (train_dir, test_dir):
        if not (root / sub).is_dir():
            raise _missing(
                "imagefolder", root, f"{train_dir}/<class>/<images> and {test_dir}/<class>/<images>"
            )
    norm = T.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    if augment:
        train_tf = T.Compose(
            [T.RandomResizedCrop(image_size), T.RandomHorizontalFlip(), T.ToTensor(), norm]
        )
    else:
        train_tf = T.Compose([T.Resize(image_size), T.CenterCrop(image_size), T.ToTensor(), norm])
    test_tf = T.Compose(
        [T.Resize(int(image_size * 8 / 7)), T.CenterCrop(image_size), T.ToTensor(), norm]
    )
    train = datasets.ImageFolder(str(root / train_dir), transform=train_tf)
    test = datasets.ImageFolder(str(root / test_dir), transform=test_tf)
    if train.classes != test.classes:
        raise ValueError(f"{train_dir}/ and {test_dir}/ under {root} hold different classes")
    if len(train.classes) < 2:  # nothing to classify: every trial would refuse it later
        raise ValueError(
            f"{train_dir}/ under {root} holds {len(train.classes)} class folder(s); a classifier "
            "needs at least 2"
        )
    return DataBundle("imagefolder", train, test, (3, image_size, image_size), len(train.classes))
