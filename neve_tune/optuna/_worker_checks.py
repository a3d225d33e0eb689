"""What a worker checks before it runs a trial: its own arguments, the study file's
name and model, and that the Optuna study it joins runs the same method on the same
study file, data and epoch budget (:func:`study_identity`, stored by its first worker).
Every check raises a ``ValueError``/``TypeError`` naming what is wrong; re-exported by
:mod:`neve_tune.optuna._worker`.

    >>> check_direction("direction", "minimize")
    'minimize'
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import optuna

from .._checks import check_choice, check_device, check_float, check_int, check_seed
from .._json import json_safe
from .._trial_inputs import resolve_device
from ..data import data_identity
from ..models import check_model_available
from ..study import Study
from ._objective import OBJECTIVE_METHODS

__all__ = [
    "IDENTITY_ATTR",
    "MAX_STUDY_NAME",
    "MAX_THREADS_PER_CPU",
    "METHOD_ATTR",
    "check_direction",
    "check_identity",
    "check_method",
    "check_pruner",
    "check_search",
    "check_study_file",
    "check_study_name",
    "check_threads",
    "check_worker_arguments",
    "study_identity",
]

METHOD_ATTR = "neve_method"  # study user attribute: the method every worker must run
IDENTITY_ATTR = "neve_study"  # study user attribute: study file, data, epoch budget of every trial
MAX_STUDY_NAME = 512  # Optuna's RDB schema holds study names of up to 512 characters
MAX_THREADS_PER_CPU = 4  # more torch threads per core only oversubscribe it (100000 crashed)


def study_identity(study: Study) -> dict[str, Any]:
    """What every trial of one Optuna study must share: the study file's name, its data
    (:func:`neve_tune.data.data_identity`: not where the files lie) and its epoch budget."""
    identity = {
        "study": study.name,
        "data": data_identity(study.data, study.data_options),
        "max_epochs": study.max_epochs,
    }
    return json.loads(json.dumps(json_safe(identity), default=str))  # as the storage gives it back


def check_identity(search: optuna.Study, identity: dict[str, Any]) -> None:
    """Refuse a worker whose study file, data or epoch budget differ from those the
    Optuna study was created with (its trials would not be comparable)."""
    stored = search.user_attrs.get(IDENTITY_ATTR)
    if stored is None or stored == identity:
        return
    names = {"study": "study file", "data": "data", "max_epochs": "max_epochs"}
    diffs = [
        f"{names.get(k, k)}: {stored.get(k)!r} in the storage, {identity.get(k)!r} here"
        for k in identity
        if stored.get(k) != identity.get(k)
    ]
    raise ValueError(
        f"study {search.study_name!r} was created from another study "
        f"({'; '.join(diffs)}); run its workers with the study file and settings it "
        "was created with, or use another --study-name"
    )


def check_threads(name: str, threads: Any) -> int | None:
    """torch CPU threads: None (torch's default), or 1 to 4 per CPU core of this machine
    (more only oversubscribe it; 100000 made torch crash)."""
    threads = check_int(name, threads, minimum=1, allow_none=True)
    most = MAX_THREADS_PER_CPU * (os.cpu_count() or 1)
    if threads is not None and threads > most:
        raise ValueError(
            f"{name} must be at most {most} ({MAX_THREADS_PER_CPU} per CPU core "
            f"here), got {threads}"
        )
    return threads


def check_study_name(name: Any, label: str = "study_name") -> str:
    """An Optuna study name: a non-empty string of at most 512 characters (what its
    storages hold), checked before any storage is opened."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"{label} must be a non-empty string, got {name!r}")
    if len(name) > MAX_STUDY_NAME:
        raise ValueError(
            f"{label} must be at most {MAX_STUDY_NAME} characters "
            "(what Optuna's storages hold), "
            f"got {len(name)}"
        )
    return name


def check_method(study: optuna.Study, method: str) -> None:
    """The Optuna study runs ``method`` (stored by its first worker), else one line naming
    the method it runs."""
    stored = study.user_attrs.get(METHOD_ATTR)
    if stored is None:
        study.set_user_attr(METHOD_ATTR, method)
        stored = study.user_attrs.get(METHOD_ATTR)
    if stored != method:
        raise ValueError(
            f"study {study.study_name!r} runs method {stored!r} (stored in its user attribute "
            f"{METHOD_ATTR!r}); this worker was started with method {method!r}: use --method "
            f"{stored}"
        )


def check_study_file(study: Study, study_name: str | None) -> None:
    """The Optuna study's name fits its storage, and the model exists (not a FAIL trial)."""
    default_name = "the study file's name (Study.name, the default study_name)"
    check_study_name(
        study_name if study_name is not None else study.name,
        "study_name" if study_name is not None else default_name,
    )
    check_model_available(study.model, f"study {study.name!r}: model")


def check_worker_arguments(**kw: Any) -> None:
    """The worker's own arguments, under their names, before any storage or data."""
    check_choice("method", kw["method"], OBJECTIVE_METHODS)
    check_int("n_trials", kw["n_trials"], minimum=1, allow_none=True)
    check_int("total_trials", kw["total_trials"], minimum=1, allow_none=True)
    check_threads("torch_threads", kw["torch_threads"])
    check_float("timeout", kw["timeout"], positive=True, allow_none=True)
    check_seed("seed", kw["seed"])
    check_seed("sampler_seed", kw["sampler_seed"], allow_none=True)
    check_pruner("pruner", kw["pruner"], kw["method"])
    resolve_device(
        check_device("device", kw["device"])
    )  # absent devices fail here, not as FAIL trials


def check_pruner(name: str, pruner: Any, method: str) -> None:
    """An Optuna ``BasePruner`` (used as it is), a mapping of :class:`NeVePruner` settings
    (for ``method="neve"`` only; the pruner checks their values), or None."""
    if pruner is None or isinstance(pruner, optuna.pruners.BasePruner):
        return
    if not isinstance(pruner, Mapping):
        raise TypeError(
            f"{name} must be an optuna BasePruner, a dict of NeVePruner settings or None, "
            f"got {type(pruner).__name__}"
        )
    if pruner and method != "neve":
        raise ValueError(
            f"{name} settings {sorted(map(str, pruner))} are NeVePruner's: they apply to "
            f"method 'neve' only, not {method!r}"
        )


def check_direction(name: str, direction: Any) -> str:
    """The objective of every method is a loss (training or validation), so a study
    must minimize it; ``maximize`` would search for the worst configuration."""
    check_choice(name, direction, ("minimize", "maximize"))
    if direction != "minimize":
        raise ValueError(
            f"{name} must be 'minimize': the objective is a loss (training loss for neve, "
            f"validation loss for the baselines), got {direction!r}"
        )
    return direction


def check_search(search: optuna.Study, method: str, identity: dict[str, Any] | None = None) -> None:
    """One objective, minimized, run with the method and the study identity stored in the
    study (both stored by its first worker, once every check passed)."""
    if len(search.directions) != 1:
        raise ValueError(
            f"study {search.study_name!r} has {len(search.directions)} objectives; "
            "a worker needs a single-objective study"
        )
    if search.direction != optuna.study.StudyDirection.MINIMIZE:
        raise ValueError(
            f"study {search.study_name!r} maximizes; its objective is a loss, so it must minimize "
            f"(create it with --direction minimize)"
        )
    if identity is not None:
        check_identity(search, identity)
    check_method(search, method)
    if identity is not None and IDENTITY_ATTR not in search.user_attrs:
        search.set_user_attr(IDENTITY_ATTR, identity)
