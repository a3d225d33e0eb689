"""Prediction changes: the signal of the memorisation guard (docs/design.md, "The memorisation
guard").

The count of training examples whose predicted class changed since the previous epoch,
measured in one of two ways:

- :class:`PredictionChanges` records the class each example got in the training pass
  itself (no extra forward); the batches must carry the examples' indices;
- :class:`SubsetPredictionChanges` forwards a fixed, seeded subset of K training inputs
  once per epoch in eval mode (no indices needed: what a Lightning or Hugging Face
  callback can do), at the cost of K forward-only samples per epoch.

Either count goes to ``NeVe.step(..., prediction_changes=)``.

    >>> import torch
    >>> from neve_tune import SubsetPredictionChanges
    >>> model = torch.nn.Linear(4, 3)
    >>> pc = SubsetPredictionChanges(torch.randn(50, 4))
    >>> pc.measure(model) is None       # the first call records the predictions
    True
    >>> pc.measure(model)               # nothing trained in between
    0
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from ._checks import check_int
from ._pc_inputs import (
    check_classes,
    check_inputs,
    check_labels,
    logit_classes,
    num_rows,
    pick_input,
    pick_label,
    rows,
    stack_items,
    to_model,
)
from .probe import probe_mode

__all__ = [
    "PREDICTION_CHANGES",
    "PredictionChanges",
    "SubsetPredictionChanges",
    "class_fit",
    "eval_forward",
]

#: where fit counts prediction changes: in the training pass, or on a fixed subset
PREDICTION_CHANGES = ("in_pass", "subset")

Forward = Callable[[nn.Module, Any], torch.Tensor]


class PredictionChanges:
    """Counts the training examples whose predicted class changed since the previous epoch,
    from the predictions the training pass already makes.

    During an epoch, call ``update(index, output, target)`` with each batch's example
    indices (into the training set), the model's outputs (logits, or class ids) and the
    batch's labels; after it, call ``epoch_end()`` once and pass its result to
    ``NeVe.step(..., prediction_changes=)`` and :attr:`unfit` (the examples whose
    predicted class is not their label, which the memorisation guard also needs) to
    ``NeVe.step(..., unfit=)``. The count is None on the first epoch (nothing to compare
    with) and while some example has not been seen yet; :attr:`unfit` is None until every
    example was seen with its label. Indices must be integers in ``[0, num_examples)``,
    class ids and labels integers ``>= 0``; anything else (floats, bool masks, -1) is
    refused naming the parameter.

        >>> import torch
        >>> pc = PredictionChanges(4)
        >>> t = torch.tensor
        >>> pc.update(t([0, 1, 2, 3]), t([0, 1, 1, 0]), t([0, 1, 1, 1]))
        >>> pc.epoch_end() is None, pc.unfit
        (True, 1)
        >>> pc.update(t([2, 0]), t([[0.1, 0.9], [0.8, 0.2]]), t([1, 0]))  # logits
        >>> pc.update(t([1, 3]), t([1, 1]), t([1, 1]))
        >>> pc.epoch_end(), pc.unfit         # example 3 changed from class 0 to 1, its label
        (1, 0)
    """

    def __init__(self, num_examples: int) -> None:
        n = check_int("num_examples", num_examples, minimum=1)
        self.predictions = torch.full(
            (n,), -1, dtype=torch.long
        )  # the last class seen per example; -1: unseen
        self._previous = self.predictions.clone()
        self.targets = torch.full((n,), -1, dtype=torch.long)  # each example's label; -1: not given
        self.unfit: int | None = (
            None  # examples whose predicted class is not their label, at epoch_end()
        )
        self.class_fit: list[float | None] | None = None  # per class, share fitted

    def update(
        self, index: torch.Tensor, output: torch.Tensor, target: torch.Tensor | None = None
    ) -> None:
        """Record the classes predicted for the examples ``index`` (logits ``[B, C]`` or ids
        ``[B]``) and, with ``target``, their labels."""
        if not isinstance(index, torch.Tensor):
            raise TypeError(
                f"index must be a tensor of example indices, got {type(index).__name__}"
            )
        if not isinstance(output, torch.Tensor):
            raise TypeError(
                f"output must be a tensor of logits or class ids, got {type(output).__name__}"
            )
        index = check_classes("index", index, "example indices")
        if output.is_floating_point():
            classes = logit_classes("output", output)
        else:
            classes = check_classes(
                "output", output.detach(), "class ids (or floating-point logits)"
            )
        if classes.shape != index.shape:
            raise ValueError(
                f"index has shape {tuple(index.shape)} but output gives classes of shape "
                f"{tuple(classes.shape)}: pass one index per example of the batch"
            )
        n = self.predictions.numel()
        if index.numel() and (
            int(index.min()) < 0 or int(index.max()) >= n
        ):  # a negative one would wrap silently
            raise IndexError(
                f"index must hold example indices in [0, {n}), got "
                f"{int(index.min())}..{int(index.max())}"
            )
        if (
            classes.numel() and int(classes.min()) < 0
        ):  # -1 marks "unseen": the count would stay None for good
            raise ValueError(f"output must hold class ids >= 0, got {int(classes.min())}")
        if target is not None:
            if not isinstance(target, torch.Tensor):
                raise TypeError(f"target must be a tensor of labels, got {type(target).__name__}")
            target = check_classes("target", target.detach(), "labels")
            if target.shape != index.shape:
                raise ValueError(
                    f"target has shape {tuple(target.shape)}, index {tuple(index.shape)}: one "
                    "label per example"
                )
            if target.numel() and int(target.min()) < 0:
                raise ValueError(f"target must hold labels >= 0, got {int(target.min())}")
            self.targets[index] = target
        self.predictions[index] = classes

    def epoch_end(self) -> int | None:
        """The count of changed predictions against the previous epoch (None if not comparable
        yet)."""
        seen = bool((self._previous >= 0).all())
        changes = int((self.predictions != self._previous).sum()) if seen else None
        labelled = bool((self.targets >= 0).all() and (self.predictions >= 0).all())
        self.unfit = int((self.predictions != self.targets).sum()) if labelled else None
        self.class_fit = class_fit(self.predictions, self.targets) if labelled else None
        self._previous = self.predictions.clone()
        return changes

    def state_dict(self) -> dict[str, Any]:
        return {"predictions": self.predictions.clone(), "targets": self.targets.clone()}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        predictions = state_dict["predictions"]
        if tuple(predictions.shape) != tuple(self.predictions.shape):
            raise ValueError(
                f"its training set had {predictions.numel()} examples, "
                f"this one has {self.predictions.numel()}"
            )
        self.predictions = predictions.clone()
        self._previous = predictions.clone()  # saved at an epoch's end
        self.targets = state_dict["targets"].clone()


def class_fit(predictions: torch.Tensor, labels: torch.Tensor) -> list[float | None]:
    """Per class present among ``labels`` (in class order), the share of its examples whose
    predicted class is their label: what the memorisation guard reads to tell a network that
    has not learned some class yet (fitted no better than chance) from one memorising.

    With K classes present, a class with fewer than K examples counted gets None: too few to
    tell chance (1/K) from a weak class (a 1,000-example subset of a 100-class set). Negative
    labels (unlabelled examples) are left out.

        >>> class_fit(torch.tensor([0, 0, 1, 2]), torch.tensor([0, 1, 1, 1]))
        [None, 0.3333333333333333]
    """
    for name, value in (("predictions", predictions), ("labels", labels)):
        if not isinstance(value, torch.Tensor) or value.dim() != 1 or value.is_floating_point():
            raise ValueError(f"{name} must be a 1-d tensor of class ids, got {value!r}")
    if predictions.shape != labels.shape:
        raise ValueError(
            f"predictions has shape {tuple(predictions.shape)}, labels {tuple(labels.shape)}: "
            "one predicted class per label"
        )
    known = labels >= 0
    labels, predictions = labels[known].cpu(), predictions[known].cpu()
    counts = torch.bincount(labels)
    fitted = torch.bincount(labels, weights=(predictions == labels).double())
    present = counts > 0
    shares, sizes = (fitted[present] / counts[present]).tolist(), counts[present].tolist()
    return [share if n >= len(sizes) else None for share, n in zip(shares, sizes)]


# a measuring forward: eval mode, no grad, forked RNG, every module's training flag restored
# after (in eval mode BatchNorm uses its running statistics and does not update them)
eval_forward = probe_mode


class SubsetPredictionChanges:
    """Prediction changes counted on a fixed subset of training inputs, forwarded once per
    epoch in eval mode: no example indices needed, so any loop or callback can use it.

    ``measure(model)`` forwards ``inputs`` in batches of ``batch_size`` in eval mode under
    ``no_grad`` (every module's training flag restored after, BatchNorm statistics not
    updated, training's RNG not advanced), on the model's device, takes the argmax class
    of each example and returns how many differ from the previous call: None on the
    first call. ``forward(model, batch) -> logits`` adapts a model whose input is not a
    single tensor (e.g. a dict of token ids; ``inputs`` may then be a dict of tensors with
    K rows each). Build the subset from a data set with :meth:`from_dataset`. Each call
    costs :attr:`num_examples` forward-only samples.

        >>> import torch
        >>> from torch.utils.data import TensorDataset
        >>> data = TensorDataset(torch.randn(3000, 4), torch.randint(0, 3, (3000,)))
        >>> pc = SubsetPredictionChanges.from_dataset(data, num_examples=1000, seed=0)
        >>> model = torch.nn.Linear(4, 3)
        >>> pc.num_examples, pc.measure(model), pc.measure(model)
        (1000, None, 0)
    """

    def __init__(
        self,
        inputs: Any,
        *,
        labels: torch.Tensor | None = None,
        batch_size: int = 256,
        forward: Forward | None = None,
    ) -> None:
        self.inputs = check_inputs(inputs)
        self.labels = None if labels is None else check_labels(labels, self.num_examples)
        self.unfit: int | None = (
            None  # examples whose predicted class is not their label, at measure()
        )
        self.class_fit: list[float | None] | None = None  # per class, share fitted
        self.batch_size = check_int("batch_size", batch_size, minimum=1)
        if forward is not None and not callable(forward):
            raise TypeError(
                f"forward must be a callable (model, batch) -> logits, got {type(forward).__name__}"
            )
        self.forward = forward
        self.predictions: torch.Tensor | None = None  # the classes of the last measure()

    @classmethod
    def from_dataset(
        cls,
        dataset: Dataset,
        num_examples: int = 1000,
        seed: int = 0,
        input_key: Any = 0,
        *,
        batch_size: int = 256,
        forward: Forward | None = None,
    ) -> SubsetPredictionChanges:
        """The inputs of ``num_examples`` items of ``dataset`` drawn without replacement
        with ``seed`` (all of them when it has fewer), in a fixed order. Each item is an
        ``(x, y)`` tuple (``input_key=0`` picks ``x``) or a dict (``input_key`` names the
        input, or ``None`` keeps every entry but ``"labels"``/``"label"`` and strings).
        The labels (``y``, or a dict's :data:`~neve_tune._pc_inputs.LABEL_KEYS`) are kept too, so
        :meth:`measure` also counts :attr:`unfit`."""
        k = check_int("num_examples", num_examples, minimum=1)
        n = len(dataset)  # type: ignore[arg-type]
        if n == 0:
            raise ValueError("dataset is empty; SubsetPredictionChanges needs at least one example")
        gen = torch.Generator().manual_seed(check_int("seed", seed, minimum=0))
        rows = torch.randperm(n, generator=gen)[: min(k, n)].sort().values.tolist()
        with torch.random.fork_rng(
            devices=[]
        ):  # an augmenting dataset must not advance training's RNG
            items = [dataset[i] for i in rows]
        inputs = stack_items([pick_input(item, input_key) for item in items], "dataset inputs")
        labels = [pick_label(item, input_key) for item in items]
        found = None if any(y is None for y in labels) else torch.as_tensor(labels)
        return cls(inputs, labels=found, batch_size=batch_size, forward=forward)

    @property
    def num_examples(self) -> int:
        """K: the examples forwarded by each :meth:`measure` (its cost in forward-only samples)."""
        return num_rows(self.inputs)

    def _classes(self, model: nn.Module) -> torch.Tensor:
        out = []
        with eval_forward(model):
            for start in range(0, self.num_examples, self.batch_size):
                batch = to_model(rows(self.inputs, start, start + self.batch_size), model)
                logits = self.forward(model, batch) if self.forward is not None else model(batch)
                if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
                    got = (
                        tuple(logits.shape)
                        if isinstance(logits, torch.Tensor)
                        else type(logits).__name__
                    )
                    raise ValueError(
                        f"forward must return logits [batch, classes] for each batch, got {got}"
                        " (pass forward=lambda model, batch: model(batch).logits or similar)"
                    )
                out.append(logit_classes("forward's logits", logits))
        return torch.cat(out)

    def fingerprint(self) -> float:
        """A checksum of the inputs (position-weighted sum), so a resumed run can tell
        that it measures the same subset."""
        values = (
            [self.inputs]
            if isinstance(self.inputs, torch.Tensor)
            else [self.inputs[k] for k in sorted(self.inputs, key=str)]
        )
        total = 0.0
        for v in values:
            flat = v.reshape(v.shape[0], -1)
            cols = (
                torch.arange(1, flat.shape[1] + 1, dtype=torch.float64, device=v.device)
                / flat.shape[1]
            )
            for start in range(
                0, flat.shape[0], self.batch_size
            ):  # in chunks: no float64 copy of everything
                rows = flat[start : start + self.batch_size].to(torch.float64)
                per_row = rows @ cols
                total += float(
                    (
                        per_row
                        * torch.arange(
                            start + 1,
                            start + 1 + per_row.numel(),
                            dtype=torch.float64,
                            device=v.device,
                        )
                    ).sum()
                )
        return total

    def measure(self, model: nn.Module) -> int | None:
        """Forward the subset; the count of examples whose predicted class changed since
        the previous call (None on the first)."""
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        classes = self._classes(model)
        changes = None if self.predictions is None else int((classes != self.predictions).sum())
        self.predictions = classes
        self.unfit = None if self.labels is None else int((classes != self.labels).sum())
        self.class_fit = None if self.labels is None else class_fit(classes, self.labels)
        return changes

    def state_dict(self) -> dict[str, Any]:
        """The last predictions (the inputs are rebuilt by the user: same data, same seed)."""
        return {
            "num_examples": self.num_examples,
            "fingerprint": self.fingerprint(),
            "predictions": None if self.predictions is None else self.predictions.clone(),
        }

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Continue the series of a saved run: the next :meth:`measure` compares with its last."""
        predictions = state_dict["predictions"]
        if int(state_dict["num_examples"]) != self.num_examples:
            raise ValueError(
                f"state_dict was measured on {int(state_dict['num_examples'])} examples, "
                f"this subset has {self.num_examples}"
            )
        stored = state_dict.get("fingerprint")
        if stored is not None and abs(float(stored) - self.fingerprint()) > 1e-6 * max(
            1.0, abs(float(stored))
        ):
            raise ValueError(
                "state_dict was measured on other inputs (another data set or seed): "
                "rebuild the subset as the saved run did"
            )
        self.predictions = (
            None if predictions is None else torch.as_tensor(predictions, dtype=torch.long).clone()
        )
