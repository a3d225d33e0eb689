"""A trial's model, and whether it can train on the data set, asked before any training:
one forward of the first training examples, batched as training batches them. A model that
cannot take the data's inputs, or whose number of outputs is not the data's number of
classes (more outputs train silently; fewer fail mid-search), is refused in one line
naming it.

    >>> import torch
    >>> from torch.utils.data import TensorDataset
    >>> data = TensorDataset(torch.zeros(4, 3), torch.tensor([0, 1, 2, 0]))
    >>> check_model_fits(torch.nn.Linear(3, 3), data, 3)
    >>> check_model_fits(torch.nn.Linear(3, 5), data, 3)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: model gives 5 outputs per example, but the data has num_classes=3; ...
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import Dataset, default_collate

from .models import create_model

if TYPE_CHECKING:
    from .data import DataBundle
    from .study import Study

__all__ = ["check_model_fits", "trial_model"]

# what a forward raises on inputs it cannot take; out of memory is not the input's fault
_FORWARD_ERRORS = (RuntimeError, ValueError, TypeError, AssertionError, IndexError)


def trial_model(
    study: Study,
    bundle: DataBundle,
    seed: int,
    model_fn: Callable[[], torch.nn.Module] | None = None,
) -> torch.nn.Module:
    """The trial's model, initialised under its seed (``model_fn``'s, else the study's),
    checked against the data by :func:`check_model_fits`."""
    torch.manual_seed(seed)
    if model_fn is not None:
        model, name = model_fn(), "model_fn's model"
    else:
        model, name = (
            create_model(
                study.model, bundle.num_classes, bundle.input_shape, **study.model_options
            ),
            f"model {study.model!r}",
        )
    check_model_fits(model, bundle.train, bundle.num_classes, name, data=f"data {bundle.name!r}")
    return model


def check_model_fits(
    model: torch.nn.Module,
    dataset: Dataset,
    num_classes: int,
    name: str = "model",
    *,
    data: str = "the data",
) -> None:
    """Forward two examples of ``dataset`` (eval mode, no gradient, on the model's device)
    and require logits ``[batch, num_classes]``; else a ``ValueError``/``TypeError`` naming
    ``name`` (and the data set, ``data``). The random streams are left as they were (a
    training transform draws from them), so the run that follows is the run it would have
    been."""
    n = min(2, len(dataset))  # type: ignore[arg-type]
    if n == 0:
        raise ValueError("the training set is empty")
    with torch.random.fork_rng(devices=[]):
        inputs = default_collate([dataset[i] for i in range(n)])[0]
        out = _forward(model, inputs, name, data)
    if not isinstance(out, torch.Tensor):
        raise TypeError(
            f"{name} must return a logits tensor [batch, classes] (what the cross-entropy "
            f"loss reads), got {type(out).__name__}"
        )
    if out.dim() != 2 or out.shape[0] != n:
        raise ValueError(
            f"{name} must return logits [batch, classes]; for a batch of {n} it returned shape "
            f"{tuple(out.shape)}"
        )
    if out.shape[1] != num_classes:
        raise ValueError(
            f"{name} gives {out.shape[1]} outputs per example, but {data} has "
            f"num_classes={num_classes}; build it with one output per class"
        )


def _forward(model: torch.nn.Module, inputs: Any, name: str, data: str) -> Any:
    """``model(inputs)`` in eval mode without gradients, its training mode restored."""
    param = next(model.parameters(), None)
    if isinstance(inputs, torch.Tensor) and param is not None:
        inputs = inputs.to(param.device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return model(inputs)
    except torch.OutOfMemoryError:
        raise
    except _FORWARD_ERRORS as e:
        shape = tuple(inputs.shape[1:]) if isinstance(inputs, torch.Tensor) else "?"
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ValueError(
            f"{name} cannot take the inputs of {data} (one has shape {shape}): {first}"
        ) from e
    finally:
        model.train(was_training)
