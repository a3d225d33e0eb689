"""The data sets' registry and what their options may be: :class:`DataBundle` (what every
loader returns), ``DATASETS`` / :func:`register_dataset`, the options a data set takes
(:func:`check_data_options`), which read files (:func:`reads_files`) and a run's data identity
(:func:`data_identity`). The loaders live in :mod:`neve_tune.data`, which re-exports these."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import Dataset

from ._checks import check_bool, check_float, check_int, check_seed, check_shape

__all__ = [
    "DATASETS",
    "DataBundle",
    "OPTION_CHECKS",
    "check_data_options",
    "check_option",
    "data_identity",
    "file_datasets",
    "reads_files",
    "register_dataset",
]


@dataclass
class DataBundle:
    """A training set, a test set (read only for the final evaluation), one input's shape
    and the number of classes. ``flipped`` holds the training positions whose label
    :func:`symmetric_label_noise` changed (None: no noise added)."""

    name: str
    train: Dataset
    test: Dataset
    input_shape: tuple[int, ...]
    num_classes: int
    flipped: torch.Tensor | None = None


DATASETS: dict[str, Callable[..., DataBundle]] = {}


def register_dataset(name: str) -> Callable:
    def deco(fn: Callable[..., DataBundle]) -> Callable[..., DataBundle]:
        DATASETS[name] = fn
        return fn

    return deco


# options that say where the files lie or how they are checked, not what the data is
_LOCATION_OPTIONS = ("data_root", "verify")
# options every data set takes: the data changes, its location, the split seed
_COMMON_OPTIONS = ("train_fraction", "label_noise", "noise_seed", "data_root", "seed")


#: the bundled loaders' options, each checked by name: the loaders apply these checks, and a
#: study applies them when it is built (not at the first trial's load)
OPTION_CHECKS: dict[str, Callable[[str, Any], Any]] = {
    "seed": check_seed,
    "test_fraction": functools.partial(
        check_float, low=0.0, high=1.0, low_open=True, high_open=True
    ),
    "num_samples": functools.partial(check_int, minimum=100),
    "num_train": functools.partial(check_int, minimum=1),
    "num_test": functools.partial(check_int, minimum=1),
    "num_classes": functools.partial(check_int, minimum=2),
    "noise": functools.partial(check_float, low=0.0),
    "input_shape": check_shape,
    "augment": check_bool,  # a string "False" would be true
    "verify": check_bool,
    "image_size": functools.partial(check_int, minimum=1),
}


def check_option(key: str, value: Any, label: str | None = None) -> Any:
    """``value`` of the bundled loaders' option ``key``, checked (:data:`OPTION_CHECKS`); the
    error names ``label`` (default: ``key``).

    >>> check_option("test_fraction", 1.5, "data_options['test_fraction']")
    Traceback (most recent call last):
    ...
    ValueError: data_options['test_fraction'] must be a finite number > 0 and < 1, got 1.5
    """
    return OPTION_CHECKS[key](label or key, value)


def check_data_options(
    name: str, options: Any, label: str = "data_options", *, values: bool = True
) -> Mapping[str, Any]:
    """``options`` if data set ``name`` knows every key (its loader's parameters, the data
    changes, ``data_root`` and ``seed``); else one line naming the unknown key and the
    known ones. A loader of your own that takes ``**kwargs`` accepts any key; the bundled
    loaders' catch-all is named ``_`` (ignored), so a misspelled key is refused there. With
    ``values``, the bundled loaders' option values too (:data:`OPTION_CHECKS`), each named
    ``label[key]``; ``data_root`` only where the data set reads files.
    :func:`get_dataset` applies it to its own options too (the loader checks the values).

    >>> check_data_options("digits", {"label_nosie": 0.2})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: data_options has unknown key 'label_nosie' for data 'digits'; known: [...]
    """
    if not isinstance(options, Mapping):
        raise TypeError(f"{label} must be a dict, got {options!r}")
    if not isinstance(name, str) or name not in DATASETS:
        raise ValueError(f"data must be one of {sorted(DATASETS)}, got {name!r}")
    params = inspect.signature(DATASETS[name]).parameters.values()
    if _any_keyword(params):
        return options
    known = sorted({p.name for p in params if p.kind is not p.VAR_KEYWORD} | set(_COMMON_OPTIONS))
    for key in options:
        if key not in known:
            raise ValueError(f"{label} has unknown key {key!r} for data {name!r}; known: {known}")
    builtin = values and DATASETS[name].__module__ == "neve_tune.data"  # a user's: its own
    bundled = {p.name for p in params} & set(OPTION_CHECKS) if builtin else set()
    for key in sorted(bundled & set(options)):
        check_option(key, options[key], f"{label}[{key!r}]")
    if options.get("data_root") is not None and not reads_files(name):
        raise ValueError(
            f"{label}['data_root']: data {name!r} is not read from files (only "
            f"{file_datasets()} are), so the folder would be ignored"
        )
    return options


def reads_files(name: str) -> bool:
    """Whether data set ``name``'s loader reads files (it takes ``data_root``, or any
    keyword: a loader of your own)."""
    params = inspect.signature(DATASETS[name]).parameters.values()
    return _any_keyword(params) or any(p.name == "data_root" for p in params)


def _any_keyword(params: Any) -> bool:
    """Whether a loader takes any keyword (a ``**kwargs`` of its own; the bundled loaders'
    catch-all ``**_`` ignores what it gets, so it does not count)."""
    return any(p.kind is p.VAR_KEYWORD and p.name != "_" for p in params)


def file_datasets() -> list[str]:
    """The registered data sets whose loader takes ``data_root``."""
    return sorted(
        n for n, fn in DATASETS.items() if "data_root" in inspect.signature(fn).parameters
    )


def data_identity(name: str, options: dict[str, Any]) -> dict[str, Any]:
    """What makes a training set what it is: ``name`` and its options with the data
    changes' defaults filled in, without those that only say where the files lie
    (``data_root``, ``verify``): moving the data does not change a run."""
    opts = {"train_fraction": 1.0, "label_noise": 0.0, "noise_seed": 0, **options}
    return {"name": name, **{k: opts[k] for k in sorted(opts) if k not in _LOCATION_OPTIONS}}
