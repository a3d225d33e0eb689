"""The weights a memorisation-guard stop restores (``NeVe(pc_restore=...)``).

Under label noise the held-out accuracy of consecutive epochs differs by several points
(docs/measurements.md, "The guard restores its window's mean"), so the weights of any one
epoch are one draw from that jitter. ``"mean"`` restores the mean of the weights of the
``pc_window`` epochs whose mean prediction-change count was the guard's minimum, as weight
averaging (SWA) does; ``"epoch"`` the weights of the minimum's epoch alone; None none.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from typing import Any

import torch

__all__ = ["RESTORES", "GuardWeights", "check_restore"]

#: what a guard stop restores (None: nothing, the run keeps its last weights)
RESTORES = ("mean", "epoch")


def check_restore(value: Any) -> str | None:
    """``pc_restore``: one of :data:`RESTORES` or None; anything else (a bool too) is refused.

    >>> check_restore("mean"), check_restore(None)
    ('mean', None)
    >>> check_restore(True)
    Traceback (most recent call last):
    ...
    TypeError: pc_restore must be 'mean', 'epoch' or None (no restore), got True
    """
    if value is None or (isinstance(value, str) and value in RESTORES):
        return value
    raise TypeError(f"pc_restore must be 'mean', 'epoch' or None (no restore), got {value!r}")


def _copy(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    # on the CPU: the window holds pc_window copies, which a large model on a GPU cannot spare
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}


def _mean(states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The entry-wise mean of ``states`` (floating-point entries, batch-norm statistics
    included); other entries (counters) are the last state's."""
    last = states[-1]
    return {
        k: torch.stack([s[k] for s in states]).mean(0) if v.is_floating_point() else v.clone()
        for k, v in last.items()
    }


class GuardWeights:
    """The weights a guard stop puts back: each epoch :meth:`observe` sees the module after
    training (and whether the guard kept that epoch as its new minimum); :meth:`restore`
    loads what was kept.

    >>> net = torch.nn.Linear(1, 1, bias=False)
    >>> weights = GuardWeights("mean", window=2)
    >>> for w, kept in ((1.0, False), (2.0, False), (4.0, True), (8.0, False)):
    ...     _ = net.weight.data.fill_(w)
    ...     weights.observe(net, kept)
    >>> weights.restore(net)
    True
    >>> net.weight.item()                           # the mean of epochs 2 and 3
    3.0
    """

    def __init__(self, restore: str | None, window: int) -> None:
        self.restore_mode = check_restore(restore)
        self.window = window
        self.recent: deque[dict[str, torch.Tensor]] = deque(maxlen=window)
        self.kept: dict[str, torch.Tensor] | None = None

    @property
    def holds(self) -> bool:
        """Whether a stop now would restore weights."""
        return self.kept is not None

    def observe(self, module: torch.nn.Module, kept: bool) -> None:
        """One epoch's weights; ``kept``: this epoch is the guard's new minimum."""
        if self.restore_mode == "mean":
            self.recent.append(_copy(module))
            if kept:
                self.kept = _mean(list(self.recent))
        elif self.restore_mode == "epoch" and kept:
            self.kept = _copy(module)

    def restore(self, module: torch.nn.Module) -> bool:
        """Load the kept weights into ``module``; False when there are none."""
        if self.kept is None:
            return False
        module.load_state_dict(self.kept)
        return True

    def state_dict(self) -> dict[str, Any]:
        return {
            "best_weights": None if self.kept is None else dict(self.kept),
            "recent_weights": [dict(s) for s in self.recent],
        }

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        best = state_dict.get("best_weights")
        self.kept = None if best is None else {k: v.clone() for k, v in best.items()}
        self.recent.clear()
        for s in state_dict.get("recent_weights", []):
            self.recent.append({k: v.clone() for k, v in s.items()})
