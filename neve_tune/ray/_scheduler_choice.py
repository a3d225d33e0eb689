"""Which trial scheduler a Ray search runs: Ray's ASHA for the validation baseline,
:class:`~neve_tune.ray.NeVeASHAScheduler` for NeVe, none (FIFO); each scheduler checked against
the method it must decide for."""

from __future__ import annotations

import os
from typing import Any

from ..records import SCHEDULERS, SUBSET_SIGNALS, val_metric_key
from ..study import Study, load_study
from ._scheduler import NeVeASHAScheduler

__all__ = ["asha_scheduler", "pick_scheduler", "scheduler_kind"]


def asha_scheduler(study: Study | str | os.PathLike, **overrides: Any) -> Any:
    """The validation baseline's scheduler: Ray's ``ASHAScheduler`` on the study's
    validation metric (``val_loss``, mode ``min``; ``val_acc``, mode ``max``, with
    ``study.val_metric="acc"``; ``grace_period=1, reduction_factor=4,
    max_t=study.max_epochs``); use it with ``neve_trainable(study, method="asha")``."""
    from ray.tune.schedulers import ASHAScheduler

    study = load_study(study)
    metric, mode = val_metric_key(study.val_metric)
    kw: dict[str, Any] = dict(
        metric=metric, mode=mode, grace_period=1, reduction_factor=4, max_t=study.max_epochs
    )
    kw.update(overrides)
    return ASHAScheduler(**kw)


def scheduler_kind(kind: str, method: str) -> str:
    """The scheduler ``kind`` stands for with ``method``: ``"auto"`` is ``"neve_asha"`` for
    NeVe and ``"asha"`` for a validation baseline; any other kind is itself."""
    if kind == "auto":
        return "neve_asha" if method == "neve" else "asha"
    return kind


def pick_scheduler(
    kind: str,
    study: Study,
    method: str,
    min_resource: int,
    reduction_factor: float,
    rung_signal: str,
    build: bool = True,
) -> Any:
    """The trial scheduler ``kind`` names for ``method`` (``build=False``: only check
    that the pair fits)."""
    kind = scheduler_kind(kind, method)
    if kind == "fifo":
        return None
    if kind == "asha":
        if method == "neve":
            raise ValueError(
                "scheduler 'asha' decides on val_loss or val_acc, which method 'neve' does not "
                "report; use 'neve_asha'"
            )
        return (
            asha_scheduler(study, grace_period=min_resource, reduction_factor=reduction_factor)
            if build
            else None
        )
    if kind == "neve_asha":
        if method != "neve":
            raise ValueError(
                f"scheduler 'neve_asha' needs method 'neve', got {method!r}; use 'asha'"
            )
        if rung_signal in SUBSET_SIGNALS and not study.selection_subset:
            raise ValueError(
                f"rung_signal={rung_signal!r} needs a study with selection_subset > 0 (e.g. "
                "study.replace(selection_subset=500)): the predictions it compares"
            )
        return (
            NeVeASHAScheduler(
                rung_signal=rung_signal,
                max_t=study.max_epochs,
                min_resource=min_resource,
                reduction_factor=reduction_factor,
            )
            if build
            else None
        )
    raise ValueError(f"scheduler must be one of {SCHEDULERS}, got {kind!r}")
