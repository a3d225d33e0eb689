"""What the ``auto`` pick needs, recorded by the Lightning and Hugging Face callbacks: with
``selection_subset=`` (a :class:`neve_tune.selection.SelectionSubset`, the same for every
trial of a search), each measurement's metrics get ``subset_pred`` (the classes the model
predicts for the subset, encoded) and ``subset_fit`` (their agreement with the subset's
labels), as ``Study(selection_subset=...)`` does for ``neve-tune``'s trials. They reach the
Optuna trial with the epoch (:func:`neve_tune.optuna.report_epoch`), so
``pick_trial(study, "auto")`` decides on them. No third-party import here."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .._pc_inputs import logit_classes
from ..selection import SelectionSubset, encode_predictions

__all__ = ["call_model", "check_selection_subset", "record_subset"]

BATCH = 500  # subset inputs per forward pass


def check_selection_subset(value: Any, who: str) -> SelectionSubset | None:
    """``value`` if it is a :class:`~neve_tune.selection.SelectionSubset` (or None), else a
    ``TypeError`` saying how to build one."""
    if value is None or isinstance(value, SelectionSubset):
        return value
    raise TypeError(
        f"{who}(selection_subset=...) must be a neve_tune.selection.SelectionSubset or None, got "
        f"{type(value).__name__}; build it once for the whole search, e.g. "
        "SelectionSubset.from_dataset(train_set, 500, seed=0)"
    )


@torch.no_grad()
def record_subset(
    metrics: dict[str, Any],
    subset: SelectionSubset,
    model: nn.Module,
    forward: Callable[[nn.Module, torch.Tensor], Any],
) -> None:
    """Add ``subset_pred`` and (with labels) ``subset_fit`` to ``metrics``: the argmax of
    ``forward(model, inputs)`` (logits ``[batch, classes]``) over the subset, in eval mode;
    the model's mode is restored."""
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        out = []
        for i in range(0, subset.num_examples, BATCH):
            logits = forward(model, subset.inputs[i : i + BATCH].to(device))
            if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
                raise ValueError(
                    "selection_subset: the model's output for the subset must be logits "
                    f"[batch, classes], got {getattr(logits, 'shape', type(logits).__name__)}; "
                    "pass probe_fn= returning them"
                )
            out.append(logit_classes("selection_subset: the model's output", logits))
    finally:
        model.train(was_training)
    codes = encode_predictions(torch.cat(out))
    metrics["subset_pred"] = codes
    if subset.labels is not None:
        metrics["subset_fit"] = subset.fit(codes)


def call_model(model: nn.Module, inputs: torch.Tensor) -> Any:
    """The default forward of a Lightning module: ``model(inputs)``."""
    return model(inputs)
