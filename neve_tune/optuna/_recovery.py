"""How a worker's trials survive a dead worker: :class:`RecoveryConfig`, the settings
:func:`~neve_tune.optuna.run_worker` takes for checkpoints, heartbeats and retries (as Ray
Tune takes its ``FailureConfig`` and ``CheckpointConfig``), each checked as it is built.

    >>> RecoveryConfig(checkpoint_dir="ckpt", max_retry=1).heartbeat_interval
    60
    >>> RecoveryConfig(max_retry=-1)
    Traceback (most recent call last):
    ...
    ValueError: RecoveryConfig.max_retry must be an int >= 0 or None, got -1
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from .._checks import check_int, is_bool
from .._names import check_path_fits, shown

__all__ = ["RecoveryConfig"]


@dataclass(frozen=True)
class RecoveryConfig:
    """Checkpoints, heartbeats and retries of a worker's trials.

    - ``checkpoint_dir``: every epoch of a trial is checkpointed under it (a shared folder
      when workers run on several machines), so a retried trial resumes where its worker
      died; ``None``: no checkpoints, a retried trial restarts from epoch 0.
    - ``keep_checkpoints``: keep the checkpoints of finished trials (else deleted).
    - ``heartbeat_interval``: seconds between a running trial's heartbeats, RDB storages only
      (``None``: no heartbeats, so a dead worker's trial is not retried; a trial left by a
      polite stop, Ctrl-C or SIGTERM, still is).
    - ``heartbeat_grace_period``: seconds without a heartbeat before a trial counts as dead
      and is failed by the next worker that starts a trial (``None``: twice the interval).
    - ``max_retry``: retries of a trial whose worker died or was stopped politely, each a new
      trial with its parameters, intermediate values and checkpoint (``None``: always).

    A bad value raises ``TypeError``/``ValueError`` naming the field, when it is built.
    """

    checkpoint_dir: str | os.PathLike | None = None
    keep_checkpoints: bool = False
    heartbeat_interval: int | None = 60
    heartbeat_grace_period: int | None = None
    max_retry: int | None = 3

    def __post_init__(self) -> None:
        name = "RecoveryConfig."
        if self.checkpoint_dir is not None:
            if not isinstance(self.checkpoint_dir, (str, os.PathLike)):
                raise TypeError(
                    f"{name}checkpoint_dir must be a folder path or None, "
                    f"got {shown(self.checkpoint_dir)}"
                )
            if not os.fspath(self.checkpoint_dir):
                raise ValueError(f"{name}checkpoint_dir is empty; give a folder, or None")
            check_path_fits(f"{name}checkpoint_dir", self.checkpoint_dir)
        if not is_bool(self.keep_checkpoints):
            raise TypeError(
                f"{name}keep_checkpoints must be True or False, got {self.keep_checkpoints!r}"
            )
        # frozen: the checked values (NumPy scalars as ints) are set through object
        for field, minimum in (
            ("heartbeat_interval", 1),
            ("heartbeat_grace_period", 1),
            ("max_retry", 0),
        ):
            value = check_int(name + field, getattr(self, field), minimum=minimum, allow_none=True)
            object.__setattr__(self, field, value)
        object.__setattr__(self, "keep_checkpoints", bool(self.keep_checkpoints))
