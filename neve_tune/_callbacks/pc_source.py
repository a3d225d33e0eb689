"""Where a callback's prediction changes (the memorisation guard's signal) come from.

A callback sees batches, not example indices, so by default (``"subset"``) it counts them
on a fixed seeded subset of training inputs forwarded once per measurement in eval mode
(:class:`neve_tune.SubsetPredictionChanges`, 1,000 inputs or all when fewer). Users
whose batches carry example indices can count them in the training pass instead
(``"batch"`` in Lightning, or a :class:`neve_tune.PredictionChanges` they update
themselves); a ``SubsetPredictionChanges`` they built is used as given.

    >>> import torch
    >>> from neve_tune import PredictionChanges
    >>> pc = PredictionChanges(2)
    >>> source = PCSource(pc)
    >>> pc.update(torch.tensor([0, 1]), torch.tensor([1, 0]), torch.tensor([1, 1]))
    >>> source.measure(torch.nn.Identity()) is None, source.unfit  # nothing to compare with yet
    (True, 1)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .._pc_inputs import LABEL_KEYS
from ..prediction_changes import PredictionChanges, SubsetPredictionChanges, eval_forward

__all__ = ["PCSource", "SUBSET_SIZE", "batch_labels"]

SUBSET_SIZE = 1000


class PCSource:
    """One run's prediction-change counter: ``measure(model)`` after each measurement
    point gives ``prediction_changes`` for :meth:`neve_tune.NeVe.step`."""

    def __init__(self, counter: Any) -> None:
        self.counter = counter

    @classmethod
    def subset(
        cls,
        dataset: Any,
        *,
        seed: int,
        input_key: Any,
        who: str,
        forward: Callable[[nn.Module, Any], torch.Tensor] | None = None,
    ) -> PCSource:
        """The default: ``SUBSET_SIZE`` inputs of ``dataset`` drawn with ``seed``."""
        if (
            dataset is None
            or not hasattr(dataset, "__getitem__")
            or not hasattr(dataset, "__len__")
        ):
            raise ValueError(
                f"{who}(prediction_changes='subset') draws its subset from the training set, which "
                f"is not an indexable data set here ({type(dataset).__name__}); pass a "
                "SubsetPredictionChanges you built, or pc_patience=None to turn the guard off"
            )
        try:
            counter = SubsetPredictionChanges.from_dataset(
                dataset, num_examples=SUBSET_SIZE, seed=seed, input_key=input_key, forward=forward
            )
        except (KeyError, IndexError, ValueError, TypeError) as e:
            raise ValueError(
                f"{who}(prediction_changes='subset') cannot draw its subset of training inputs "
                f"with input_key={input_key!r} ({e}); pass input_key= naming the examples' model "
                "input, or pc_patience=None to turn the guard off"
            ) from e
        return cls(counter)

    @property
    def examples(self) -> int:
        """How many examples the counts are taken on (the subset, or the whole set in the pass)."""
        if isinstance(self.counter, PredictionChanges):
            return int(self.counter.predictions.numel())
        return int(self.counter.num_examples)

    @property
    def forward_samples(self) -> int:
        """Forward-only samples one :meth:`measure` costs (0 when counted in the training pass)."""
        return 0 if isinstance(self.counter, PredictionChanges) else int(self.counter.num_examples)

    def measure(self, model: nn.Module) -> int | None:
        if isinstance(self.counter, PredictionChanges):
            return self.counter.epoch_end()
        return self.counter.measure(model)

    @property
    def unfit(self) -> int | None:
        """The examples of the last :meth:`measure` whose predicted class is not their label
        (None where the labels are unknown)."""
        return self.counter.unfit

    @property
    def class_fit(self) -> list[float | None] | None:
        """Per class, the share of the last :meth:`measure`'s examples fitted (None where
        the labels are unknown)."""
        return self.counter.class_fit

    def counts(self) -> dict[str, Any]:
        """What the guard reads of the last :meth:`measure` besides the count:
        ``NeVe.step``'s ``unfit`` and ``class_fit``."""
        return {"unfit": self.unfit, "class_fit": self.class_fit}

    def state_dict(self) -> dict[str, Any]:
        return self.counter.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.counter.load_state_dict(state)


def batch_labels(batch: Any) -> torch.Tensor | None:
    """The labels of a training batch: a tuple's second entry, a dict's ``LABEL_KEYS``
    entry; None where the batch holds none (the guard then says what to pass).

    >>> batch_labels((torch.zeros(2, 3), torch.tensor([1, 0]), torch.tensor([5, 6]))).tolist()
    [1, 0]
    """
    if isinstance(batch, dict):
        found = next((batch[k] for k in LABEL_KEYS if k in batch), None)
    elif isinstance(batch, (tuple, list)) and len(batch) >= 2:
        found = batch[1]
    else:
        found = None
    return found if isinstance(found, torch.Tensor) else None


def batch_logits(outputs: Any, who: str) -> torch.Tensor:
    """The ``logits`` a ``training_step`` returned (``{"loss": loss, "logits": logits}``)."""
    logits = outputs.get("logits") if isinstance(outputs, dict) else None
    if not isinstance(logits, torch.Tensor):
        got = sorted(outputs) if isinstance(outputs, dict) else type(outputs).__name__
        raise ValueError(
            f"{who}(prediction_changes='batch') counts the training pass's predictions: return "
            f"{{'loss': loss, 'logits': logits}} from training_step (it returned {got})"
        )
    return logits


def check_classes(
    forward: Callable[[nn.Module, Any], Any],
    model: nn.Module,
    dataset: Any,
    input_key: Any,
    who: str,
) -> None:
    """Refuse, when training starts, a model whose outputs are not class logits
    ``[batch, classes]``: prediction changes count changed argmax classes per example.
    One training input goes through ``forward`` in eval mode under ``no_grad``."""
    item = dataset[0]
    x = torch.as_tensor(
        item[input_key] if isinstance(item, (dict, tuple, list)) else item
    ).unsqueeze(0)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    with eval_forward(model):
        out = forward(model, x.to(device))
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(
            f"{who}'s memorisation guard counts changed class predictions, but the model's output "
            f"for one example is {got}, not logits [1, classes]; pass pc_patience=None to turn the "
            "guard off, or a SubsetPredictionChanges with forward= giving logits"
        )
