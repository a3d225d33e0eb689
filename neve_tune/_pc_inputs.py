"""The inputs prediction changes are counted on: a fixed subset's tensors checked, cut into
batches and moved to the model; a data set's items split into input and label; class ids
checked."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from .probe import probe_inputs

__all__ = [
    "LABEL_KEYS",
    "check_classes",
    "check_inputs",
    "check_labels",
    "class_id_pairs",
    "logit_classes",
    "num_rows",
    "pick_input",
    "pick_label",
    "rows",
    "stack_items",
    "to_model",
]


#: where a dict item or batch holds its labels (the unfit count needs them)
LABEL_KEYS = ("labels", "label", "y")


def logit_classes(name: str, logits: torch.Tensor) -> torch.Tensor:
    """The argmax class of each row of ``logits`` ``[..., classes]``, on the CPU. One logit
    per example (a binary model's ``[batch, 1]``) is refused: its argmax is always class 0,
    so no prediction would ever change.

    >>> logit_classes("output", torch.zeros(4, 1))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: output has one logit per example (shape (4, 1)): its argmax is always class 0; ...
    """
    if logits.dim() >= 2 and logits.shape[-1] == 1:
        raise ValueError(
            f"{name} has one logit per example (shape {tuple(logits.shape)}): its argmax is "
            "always class 0; give two logits, or class ids such as (logits[:, 0] > 0).long()"
        )
    return logits.detach().argmax(-1).cpu()


def check_classes(name: str, value: torch.Tensor, what: str) -> torch.Tensor:
    """``value`` as int64 on the CPU if it holds integers (not bools, not floats)."""
    if value.dtype == torch.bool:
        raise TypeError(
            f"{name} must hold integer {what}, got a bool tensor (a mask: pass the indices it "
            "selects, e.g. mask.nonzero().squeeze(1))"
        )
    if value.is_floating_point() or value.is_complex():
        raise TypeError(
            f"{name} must hold integer {what}, got a {value.dtype} tensor (floats would be "
            "truncated)"
        )
    return value.to("cpu", torch.long)


def to_model(batch: Any, model: nn.Module) -> Any:
    """Every tensor of ``batch`` on ``model``'s device, floating ones in its dtype."""
    if isinstance(batch, torch.Tensor):
        return probe_inputs(batch, model)
    if isinstance(batch, Mapping):
        return {k: to_model(v, model) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_model(v, model) for v in batch)
    return batch


def stack_items(items: list[Any], name: str) -> Any:
    """One batch from single inputs: tensors stacked, dicts stacked key by key."""
    first = items[0]
    if isinstance(first, Mapping):
        return {k: stack_items([it[k] for it in items], f"{name}[{k!r}]") for k in first}
    try:
        return torch.stack([torch.as_tensor(it) for it in items])
    except (TypeError, RuntimeError, ValueError) as e:
        raise TypeError(f"{name} must hold tensors of one shape (or dicts of them): {e}") from None


def num_rows(inputs: Any) -> int:
    if isinstance(inputs, torch.Tensor):
        return int(inputs.shape[0]) if inputs.dim() else 0
    return len(next(iter(inputs.values()))) if inputs else 0


def rows(inputs: Any, start: int, stop: int) -> Any:
    if isinstance(inputs, torch.Tensor):
        return inputs[start:stop]
    return {k: v[start:stop] for k, v in inputs.items()}


def check_inputs(inputs: Any) -> Any:
    if isinstance(inputs, torch.Tensor):
        if inputs.dim() == 0 or inputs.shape[0] == 0:
            raise ValueError(
                "inputs must be a batch [K, ...] of at least one example, got shape "
                f"{tuple(inputs.shape)}"
            )
        return inputs
    if isinstance(inputs, Mapping):
        if not inputs or not all(
            isinstance(v, torch.Tensor) and v.dim() >= 1 for v in inputs.values()
        ):
            raise TypeError(
                "inputs must be a tensor [K, ...] or a non-empty dict of tensors [K, ...]"
            )
        sizes = {k: int(v.shape[0]) for k, v in inputs.items()}
        if len(set(sizes.values())) != 1 or 0 in sizes.values():
            raise ValueError(
                f"inputs must hold one positive number of examples in every entry, got {sizes}"
            )
        return dict(inputs)
    raise TypeError(
        "inputs must be a tensor [K, ...] or a dict of tensors [K, ...], got "
        f"{type(inputs).__name__}"
    )


def check_labels(labels: Any, k: int) -> torch.Tensor:
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"labels must be a tensor of class ids, got {type(labels).__name__}")
    labels = check_classes("labels", labels, "class ids")
    if tuple(labels.shape) != (k,):
        raise ValueError(
            f"labels must hold one class id per input ({k}), got shape {tuple(labels.shape)}"
        )
    return labels


def class_id_pairs(items: list[Any], who: str) -> tuple[list[Any], torch.Tensor]:
    """The inputs and the labels of ``(input, label, ...)`` data set items, one label each
    (whether it is a class id is :class:`~neve_tune.selection.SelectionSubset`'s check); else
    a ``TypeError`` saying what ``who`` needs (a label broadcast would give a wrong fit without
    a word)."""
    labels = []
    for item in items:
        pair = isinstance(item, (tuple, list)) and len(item) >= 2
        try:
            label = torch.as_tensor(item[1]) if pair else None
        except (TypeError, ValueError, RuntimeError):
            label = None
        if label is None or label.numel() != 1 or label.dtype == torch.bool:
            what = f"a {type(item).__name__}" if not pair else f"the label {item[1]!r:.60}"
            raise TypeError(
                f"{who} needs (input, label) items, the label one class id, got {what}: "
                "build SelectionSubset(inputs, labels) instead"
            )
        labels.append(label.reshape(()))
    return [item[0] for item in items], torch.stack(labels)


def pick_label(item: Any, input_key: Any) -> Any:
    """The label of a data set item (a tuple's entry after the input, a dict's
    :data:`LABEL_KEYS`), as an int; None where it has none."""
    if isinstance(item, Mapping):
        label = next((item[k] for k in LABEL_KEYS if k in item), None)
    elif isinstance(item, (tuple, list)) and input_key == 0 and len(item) >= 2:
        label = item[1]
    else:
        return None
    try:
        return int(label)
    except (TypeError, ValueError):
        return None  # not a class id (a sequence label, a string): no unfit count


def pick_input(item: Any, input_key: Any) -> Any:
    if isinstance(item, Mapping):
        if input_key is None:
            return {
                k: v
                for k, v in item.items()
                if k not in ("labels", "label") and not isinstance(v, str)
            }
        if input_key not in item:
            raise KeyError(
                f"input_key {input_key!r} is not a key of the dataset's items (keys: "
                f"{sorted(item, key=str)})"
            )
        return item[input_key]
    if isinstance(item, (tuple, list)):
        if not isinstance(input_key, int) or not -len(item) <= input_key < len(item):
            raise ValueError(
                f"input_key must be a position in the dataset's items (of length {len(item)}), got "
                f"{input_key!r}"
            )
        return item[input_key]
    return item
