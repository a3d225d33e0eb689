"""The guard's veto in a Ray Tune search (docs/design.md, "The guard's veto").

Tune has no channel from one trial to another, so the search's label-noise estimate lives in
a small actor, a *board*: a trial the memorisation guard ended posts its ``unfit_share``, and
a trial whose guard would stop asks for the median of those posted so far (as
:func:`neve_tune.optuna.guard_noise_estimate` reads it from an Optuna study).
:func:`~neve_tune.ray.run_search` starts one per NeVe search and ends it after; a user's own
``Tuner`` passes one to :func:`~neve_tune.ray.neve_trainable` (``guard_noise=``). A search
restored after its driver ended starts a new, empty board.

    >>> import ray
    >>> _ = ray.init(address="local", include_dashboard=False, num_cpus=1)  # doctest: +SKIP
    >>> board = guard_noise_board()                                         # doctest: +SKIP
    >>> ray.get([board.add.remote(s) for s in (0.2, 0.3)])                  # doctest: +SKIP
    >>> board_estimate(board)()                                             # doctest: +SKIP
    0.25
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import ray
from ray.actor import ActorHandle

from .._trial_veto import guard_evidence, noise_from_shares
from ..records import TrialResult
from ..study import Study

__all__ = [
    "board_estimate",
    "check_board",
    "guard_noise_board",
    "post_result",
    "search_board",
]


@ray.remote(num_cpus=0)
class GuardNoiseBoard:
    """The unfit shares of a search's trials the guard ended; their median on request."""

    def __init__(self) -> None:
        self.shares: list[float] = []

    def add(self, share: float) -> None:
        self.shares.append(float(share))

    def estimate(self) -> float | None:
        return noise_from_shares(self.shares)


def guard_noise_board() -> ActorHandle:
    """A new, empty board on the connected Ray cluster (``ray.kill`` it after the search)."""
    return GuardNoiseBoard.remote()


def check_board(board: Any, study: Study, method: str) -> ActorHandle | None:
    """``board`` if it is an actor handle for a NeVe trial whose study has the veto on, or
    None; else an error naming ``guard_noise``."""
    if board is None:
        return None
    if not isinstance(board, ActorHandle):
        raise TypeError(
            f"guard_noise must be a board from neve_tune.ray.guard_noise_board() or None, got "
            f"{type(board).__name__}"
        )
    if method != "neve" or study.pc_veto_margin is None:
        raise ValueError(
            "guard_noise serves NeVe's guard veto: it needs method='neve' and the study's "
            f"pc_veto_margin (got method={method!r}, pc_veto_margin={study.pc_veto_margin!r})"
        )
    return board


def board_estimate(board: ActorHandle) -> Callable[[], float | None]:
    """The ``noise_estimate`` a trial passes to :func:`neve_tune.run_trial`."""
    return lambda: ray.get(board.estimate.remote())


def post_result(board: ActorHandle, result: TrialResult) -> None:
    """Post a finished trial's evidence: its unfit share, if the guard ended it."""
    share = guard_evidence(result.stopped_by, result.unfit_share)
    if share is not None:
        ray.get(board.add.remote(share))


@contextmanager
def search_board(study: Study, method: str) -> Iterator[ActorHandle | None]:
    """A board for one search while it runs: NeVe's, with the veto on
    (``study.pc_veto_margin``; a study refuses it with the guard off); None otherwise."""
    on = method == "neve" and study.pc_veto_margin is not None
    board = guard_noise_board() if on else None
    try:
        yield board
    finally:
        if board is not None:
            ray.kill(board)
