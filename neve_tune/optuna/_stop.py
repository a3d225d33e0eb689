"""Polite stops of a worker: SIGINT (Ctrl-C) or SIGTERM keeps the running trial.

Rule: the first signal abandons the running epoch at once, unless the trial is writing
to the storage (reporting an epoch, storing its summary) or between trials; there the
stop waits for that write to end. Training state on disk is always whole: a trial's
checkpoint holds its last finished epoch (``save_checkpoint`` writes it atomically).
The worker then marks the trial FAIL and re-queues it with Optuna's own
:class:`~optuna.storages.RetryHeartbeatStaleTrialCallback` (what the heartbeat does
for a killed worker, only at once), so the next worker resumes it from its
checkpoint with the same velocity series. :class:`WorkerInterrupted` (a
``KeyboardInterrupt``) then leaves :func:`~neve_tune.optuna.run_worker`; the command
line prints one line and exits with status 130. A second signal stops at once.

Example::

    >>> stop = PoliteStop()
    >>> with stop.installed():
    ...     stop.requested
    False
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any

__all__ = ["PoliteStop", "WorkerInterrupted", "Abandon", "TrialLeft"]

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class WorkerInterrupted(KeyboardInterrupt):
    """A worker stopped by SIGINT/SIGTERM; its running trial (if any) was re-queued.

    ``signal_name`` is ``"SIGINT"`` or ``"SIGTERM"``; ``trial`` the number of the trial
    that was running (None between trials); ``retry`` the number of the trial that
    resumes it (None when it was not re-queued); ``epochs`` the epochs its checkpoint
    holds."""

    def __init__(
        self, signal_name: str, trial: int | None = None, retry: int | None = None, epochs: int = 0
    ) -> None:
        super().__init__(signal_name)
        self.signal_name, self.trial, self.retry, self.epochs = signal_name, trial, retry, epochs

    def __str__(self) -> str:
        if self.trial is None:
            return f"stopped by {self.signal_name} between trials"
        kept = f"checkpoint kept at epoch {self.epochs}" if self.epochs else "no epoch finished"
        where = (
            f"re-queued as trial {self.retry}"
            if self.retry is not None
            else "not re-queued (retries used up)"
        )
        return f"stopped by {self.signal_name}: trial {self.trial} {where}, {kept}"


class TrialLeft(RuntimeError):
    """A worker that stopped because its running trial could not go on with its
    checkpoint: one that cannot be written (disk full, read-only folder) or that belongs
    to no run of this trial, or a storage that stopped taking writes (disk full). The
    trial was marked FAIL and re-queued like after a polite stop, so once the cause is
    fixed the next worker resumes it from its checkpoint (``stored`` False: the storage
    refused even that, and the trial waits RUNNING for the heartbeat's retry).
    ``cause`` is the error, ``trial``/``retry``/``epochs`` as for :class:`WorkerInterrupted`."""

    def __init__(
        self,
        cause: BaseException,
        trial: int,
        retry: int | None = None,
        epochs: int = 0,
        stored: bool = True,
    ) -> None:
        super().__init__(str(cause))
        self.cause, self.trial, self.retry, self.epochs = cause, trial, retry, epochs
        self.stored = stored

    def __str__(self) -> str:
        if not self.stored:  # the storage itself refused the FAIL: the heartbeat retries the trial
            return (
                f"{self.cause}; trial {self.trial} left RUNNING (the storage takes no writes): "
                "a worker with heartbeats retries it once it does"
            )
        where = (
            f"re-queued as trial {self.retry}"
            if self.retry is not None
            else "not re-queued (retries used up)"
        )
        kept = f"checkpoint kept at epoch {self.epochs}" if self.epochs else "no epoch finished"
        return f"{self.cause}; trial {self.trial} {where}, {kept}"


class Abandon(BaseException):
    """Raised inside a trial to leave it at once. A ``BaseException`` that is not a
    ``KeyboardInterrupt``, so ``Study.optimize`` neither fails the trial nor logs it
    (it catches ``Exception`` and ``KeyboardInterrupt`` only; tests/test_optuna_compat.py)."""


class PoliteStop:
    """The signal handlers and the state of a polite stop (see the module doc)."""

    def __init__(self) -> None:
        self.signal_name: str | None = None
        self._abandonable = False

    @property
    def requested(self) -> bool:
        return self.signal_name is not None

    def _handle(self, signum: int, frame: Any) -> None:
        first = self.signal_name is None
        self.signal_name = signal.Signals(signum).name
        if self._abandonable or not first:
            self._abandonable = False
            raise Abandon()

    def check(self) -> None:
        """Leave the trial now if a stop was requested (a safe point)."""
        if self.requested:
            raise Abandon()

    @contextlib.contextmanager
    def installed(self) -> Iterator[PoliteStop]:
        """Handle SIGINT/SIGTERM inside the block (main thread only; elsewhere no-op)."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = {s: signal.getsignal(s) for s in SIGNALS}
        for s in SIGNALS:
            signal.signal(s, self._handle)
        try:
            yield self
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)

    @contextlib.contextmanager
    def abandonable(self) -> Iterator[None]:
        """A signal inside the block leaves the trial at once (training: its state on
        disk is the last checkpoint, written atomically)."""
        self.check()
        self._abandonable = True
        try:
            yield
        finally:
            self._abandonable = False

    @contextlib.contextmanager
    def writing(self, *, then_stop: bool = True) -> Iterator[None]:
        """A signal inside the block waits for its end (storage writes stay whole);
        the stop happens right after it (``then_stop``), or, for a trial that is
        finishing, after Optuna has stored its end (between trials)."""
        was, self._abandonable = self._abandonable, False
        try:
            yield
        finally:
            self._abandonable = was
        if then_stop:
            self.check()
