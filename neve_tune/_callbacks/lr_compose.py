"""NeVe's LR decay on top of a user's LR scheduler (Lightning and Hugging Face callbacks).

NeVe decays the LR by multiplying each param group's ``lr`` by ``lr_factor``
(``ReduceLROnPlateau``). A torch scheduler that recomputes the LR from its ``base_lrs``
(``LambdaLR``, and the closed forms of ``StepLR``, ``CosineAnnealingLR``, ...) would undo
that at its next step. The rule (docs/design.md, "The callbacks"): after every NeVe decay
the scheduler's ``base_lrs`` are scaled by the same ratio as the groups' ``lr``, so the LR
is always ``schedule(t) x NeVe's decay``. Chainable schedulers (``StepLR``,
``ExponentialLR``, ``ReduceLROnPlateau``, ...) multiply the group's current ``lr`` and
compose by themselves; scaling their ``base_lrs`` keeps their closed form consistent.

Schedulers that set the LR from values of their own (``OneCycleLR``, ``CyclicLR``) or hold
other schedulers (``SequentialLR``, ``ChainedScheduler``) cannot compose this way and are
refused when training starts, in one line naming the fix.

    >>> import torch
    >>> opt = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=8.0)
    >>> sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda e: 1.0)
    >>> check_composable([sched], "NeVeCallback")
    >>> before = lrs(opt); opt.param_groups[0]["lr"] = 4.0   # NeVe halves the LR
    >>> follow_decay([sched], opt, before)
    >>> sched.step(); opt.param_groups[0]["lr"]
    4.0
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch.optim import lr_scheduler as torch_sched

__all__ = ["check_composable", "follow_decay", "lrs"]

# they set the LR from values of their own, or drive sub-schedulers whose base_lrs NeVe would miss
_REFUSED = (
    torch_sched.OneCycleLR,
    torch_sched.CyclicLR,
    torch_sched.SequentialLR,
    torch_sched.ChainedScheduler,
)


def lrs(optimizer: torch.optim.Optimizer) -> list[float]:
    """The ``lr`` of every param group."""
    return [float(g["lr"]) for g in optimizer.param_groups]


def check_composable(schedulers: Iterable[Any], who: str) -> None:
    """Raise ``ValueError`` (one line, naming the fix) for a scheduler NeVe cannot compose with."""
    for s in schedulers:
        if isinstance(s, _REFUSED):
            name = type(s).__name__
            raise ValueError(
                f"{who} cannot compose NeVe's LR decay with {name}, which sets the LR from values "
                f"of its own; remove the {name} (NeVe decays the LR), or use a "
                "LambdaLR/StepLR/CosineAnnealingLR schedule"
            )
        if not isinstance(s, torch_sched.LRScheduler) or not isinstance(
            getattr(s, "base_lrs", []), list
        ):
            raise ValueError(
                f"{who} cannot compose NeVe's LR decay with a {type(s).__name__} (not a "
                "torch.optim.lr_scheduler scheduler with base_lrs); remove it, or use a "
                "LambdaLR/StepLR/CosineAnnealingLR schedule"
            )


def follow_decay(
    schedulers: Iterable[Any], optimizer: torch.optim.Optimizer, before: list[float]
) -> None:
    """Scale ``base_lrs`` of the schedulers of ``optimizer`` by the ratio of each group's
    ``lr`` now to ``before`` (the LRs before NeVe's step), so their next step keeps the decay."""
    after = lrs(optimizer)
    ratios = [new / old if old > 0 else 1.0 for old, new in zip(before, after)]
    if all(r == 1.0 for r in ratios):
        return
    for s in schedulers:
        base_lrs = getattr(s, "base_lrs", None)
        if getattr(s, "optimizer", None) is not optimizer or not isinstance(base_lrs, list):
            continue
        for i, ratio in enumerate(ratios[: len(base_lrs)]):
            base_lrs[i] = base_lrs[i] * ratio
