"""The conformance suite's model, data and runs (tests/test_conformance.py holds the table).

Every door trains the same thing: a 20-64-2 MLP (seed 0) with plain SGD, batch 64, on 512
Gaussian points labelled by the sign of their first two coordinates (the README's task),
clean or with 20 % of the labels flipped. The trial rules are the studies' in every door:
the relative velocity stop at 1e-2, ``lr_patience="auto"``, the memorisation guard
(``pc_patience=3``) fed by the whole training set's predictions in eval mode, the stall
check with ``num_classes=2``, a budget of :data:`MAX_EPOCHS` epochs.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.data import Sampler, TensorDataset

from neve_tune import NeuralVelocity, NeVe, SubsetPredictionChanges, gaussian_probe

N, DIM, HIDDEN, BATCH, CLASSES = 512, 20, 64, 64, 2
MAX_EPOCHS = 40
PICK_LRS = (1.0, 0.5, 0.2, 0.05)  # the searches of the `auto` pick cells
STOPPED_AT = 4  # a resumed run is interrupted after this epoch


@dataclass(frozen=True)
class Case:
    """One run's setting: the learning rate, the label noise, whether the guard is on."""

    lr: float
    noise: float = 0.0
    guard: bool = True


CASES = {
    "clean": Case(0.5),
    "dead": Case(1e-6),
    "noisy": Case(0.5, noise=0.2),
    "noisy_unguarded": Case(0.5, noise=0.2, guard=False),
}


@dataclass
class Outcome:
    """How a run ended in one door: its stop reason and its per-epoch metrics."""

    stopped_by: str | None
    history: list[dict[str, Any]]
    record: dict[str, Any] = field(default_factory=dict)  # where the door records the stop

    @property
    def velocities(self) -> list[float]:
        return [m["velocity"] for m in self.history]


def tensors(noise: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, DIM, generator=g)
    y = (x[:, :2].sum(1) > 0).long()
    if noise:
        flip = torch.rand(N, generator=torch.Generator().manual_seed(1)) < noise
        y = torch.where(flip, 1 - y, y)
    return x, y


def dataset(noise: float = 0.0) -> TensorDataset:
    return TensorDataset(*tensors(noise))


def mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(DIM, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, CLASSES))


def probe() -> torch.Tensor:
    return gaussian_probe((DIM,), 100, seed=0)


def rules(case: Case) -> dict[str, Any]:
    """The NeVe options every door runs ``case`` with (the callbacks' defaults otherwise)."""
    return {"num_classes": CLASSES, "pc_patience": 3 if case.guard else None}


def controller(model: nn.Module, optimizer: torch.optim.Optimizer, case: Case, **kw) -> NeVe:
    options = {"max_epochs": MAX_EPOCHS, **rules(case), **kw}
    return NeVe(optimizer, NeuralVelocity(model, probe()), **options)


class EpochSampler(Sampler[int]):
    """A seeded shuffle per epoch (``set_epoch``): a resumed run sees the same order."""

    def __init__(self, n: int, seed: int = 0) -> None:
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())

    def __len__(self) -> int:
        return self.n


# ---------------------------------------------------------------- your own loop
class OwnLoop:
    """The own-loop recipe (docs/own_loop.md) as a resumable object: ``epoch()`` trains one
    epoch and returns ``neve.step()``'s metrics; ``state()``/``load()`` checkpoint it."""

    def __init__(self, case: Case) -> None:
        self.case = case
        self.x, self.y = tensors(case.noise)
        self.model = mlp()
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=case.lr)
        self.neve = controller(self.model, self.optimizer, case)
        self.pc = SubsetPredictionChanges.from_dataset(TensorDataset(self.x, self.y), 1000)
        self.neve.start()

    def epoch(self) -> dict[str, Any]:
        g = torch.Generator().manual_seed(self.neve.epoch + 1)  # a seeded order per epoch
        total = 0.0
        for idx in torch.randperm(N, generator=g).split(BATCH):
            loss = nn.functional.cross_entropy(self.model(self.x[idx]), self.y[idx])
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
            total += loss.item() * len(idx)
        changes = self.pc.measure(self.model) if self.case.guard else None
        unfit = self.pc.unfit if self.case.guard else None
        return self.neve.step(train_loss=total / N, prediction_changes=changes, unfit=unfit)

    def state(self) -> dict[str, Any]:
        return {
            "model": {k: v.clone() for k, v in self.model.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "neve": self.neve.state_dict(),
            "pc": self.pc.state_dict(),
        }

    def load(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.neve.load_state_dict(state["neve"])
        self.pc.load_state_dict(state["pc"])
