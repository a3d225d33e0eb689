"""The selection subset in a NeVe trial: with ``study.selection_subset``, the metrics of the
epochs where a reader needs them (every epoch, or the search's rung epochs and the last) get the
classes the model predicts for a fixed subset drawn with the trial's seed (the same
subset for every trial of a search, ``subset_pred``) and their agreement with the given
labels (``subset_fit``); the subset's forward samples count as probe samples."""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from .study import Study

__all__ = ["selection_measure"]


def selection_measure(
    study: Study,
    method: str,
    train_set: Any,
    seed: int,
    model: torch.nn.Module,
    epochs: Collection[int] | None = None,
) -> tuple[Callable[[dict[str, Any]], None] | None, Callable[[], int]]:
    """With ``study.selection_subset``, a ``measure`` for :func:`neve_tune.train.fit` that adds
    ``subset_pred`` (the classes the model predicts for a fixed subset drawn with ``seed``: the
    same for every trial of a search) and ``subset_fit`` (their agreement with the given
    labels) to an epoch's metrics, before its checkpoint is written, and counts its forward
    samples as probe samples; and the count of those samples so far. ``epochs``: record only at
    these epochs and at the run's last (``stopped_by`` set), the only ones the rungs and the
    pick read (None: every epoch)."""
    if not study.selection_subset or method != "neve":
        return None, lambda: 0
    from .selection import SelectionSubset

    subset = SelectionSubset.from_dataset(train_set, study.selection_subset, seed=seed)
    done = [0]

    def measure(metrics: dict[str, Any]) -> None:
        if epochs is None or metrics["epoch"] in epochs or metrics["stopped_by"] is not None:
            metrics["subset_pred"] = subset.predict(model)
            metrics["subset_fit"] = subset.fit(metrics["subset_pred"])
            done[0] += subset.num_examples
        metrics["probe_samples"] = int(metrics.get("probe_samples") or 0) + done[0]

    return measure, lambda: done[0]
