"""A test-only stand-in for ``neve_tune.SubsetPredictionChanges`` (its published API),
installed only where this neve_tune does not have the real one yet."""

from __future__ import annotations

import torch

import neve_tune


class SubsetStub:
    def __init__(self, inputs, *, batch_size=256, forward=None):
        self.inputs, self.forward, self.predictions = inputs, forward, None

    @classmethod
    def from_dataset(cls, dataset, num_examples=1000, seed=0, input_key=0, *, batch_size=256, forward=None):
        n = len(dataset)
        rows = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[: min(num_examples, n)].sort().values
        items = [dataset[int(i)] for i in rows]
        picked = [it[input_key] if isinstance(it, (dict, tuple, list)) else it for it in items]
        return cls(torch.stack([torch.as_tensor(x) for x in picked]), forward=forward)

    @property
    def num_examples(self):
        return len(self.inputs)

    def measure(self, model):
        modes = [(m, m.training) for m in model.modules()]
        model.eval()
        try:
            with torch.no_grad():
                out = self.forward(model, self.inputs) if self.forward else model(self.inputs)
        finally:
            for m, mode in modes:
                m.training = mode
        classes = out.argmax(-1)
        changes = None if self.predictions is None else int((classes != self.predictions).sum())
        self.predictions = classes
        return changes

    def state_dict(self):
        return {"num_examples": self.num_examples, "predictions": self.predictions}

    def load_state_dict(self, state):
        self.predictions = state["predictions"]


def install(monkeypatch) -> None:
    if not hasattr(neve_tune, "SubsetPredictionChanges"):
        monkeypatch.setattr(neve_tune, "SubsetPredictionChanges", SubsetStub, raising=False)
