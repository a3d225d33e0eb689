"""The storage factory: a storage string -> the Optuna storage a worker opens.

Accepted forms (the same strings ``optuna create-study --storage`` takes, plus two
shorthands for journal files):

- ``None``, ``""``, ``":memory:"`` or an in-memory SQLite URL (``sqlite://``): an
  in-memory storage (one process only);
- an SQLAlchemy URL (``sqlite:///search.db``, ``postgresql://user:pw@host/db``,
  ``mysql+pymysql://...``): an :class:`optuna.storages.RDBStorage`, with heartbeats so a
  killed worker's trial is failed and retried (``RetryHeartbeatStaleTrialCallback``).
  SQLite gets :class:`SQLiteRDBStorage`, whose transactions take the write lock first,
  so several worker processes on one machine are safe (see :func:`sqlite_engine_kwargs`);
- ``journal:PATH``, or a path ending in ``.log``/``.journal``/``.jsonl``: a journal file
  (:class:`optuna.storages.JournalStorage` over ``JournalFileBackend``). Journal storages
  have no heartbeats; use an RDB storage where workers may die.

A URL is never printed with its password: every message goes through :func:`redact_url`
(:mod:`neve_tune.optuna._urls`); SQLite's atomic transactions are in
:mod:`neve_tune.optuna._sqlite`.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import BaseStorage

from .._checks import check_int
from ._sqlite import SQLiteRDBStorage, sqlite_file, sqlite_file_problem
from ._urls import normalize_url, redact_url, storage_kind, url_problem

__all__ = ["make_storage", "missing_storage", "StorageError"]


class StorageError(Exception):
    """A storage that cannot be opened or reached; the message holds no password."""


def make_storage(
    url: str | None,
    *,
    heartbeat_interval: int | None = 60,
    heartbeat_grace_period: int | None = None,
    max_retry: int | None = 3,
) -> BaseStorage | None:
    """The storage for ``url``; ``None`` means in-memory (what ``optuna.create_study`` takes).

    RDB storages get heartbeats every ``heartbeat_interval`` seconds (``None`` turns them
    off); a trial whose heartbeat is older than ``heartbeat_grace_period`` (default: twice
    the interval) is failed by the next worker that starts a trial, and retried up to
    ``max_retry`` times (``None``: always) as a new trial that inherits its parameters,
    user attributes, system attributes (rung state) and intermediate values, so the retry
    resumes from the same checkpoint and keeps its velocity series.

    Raises :class:`StorageError` (with the password redacted) when the storage cannot be
    opened, ``ValueError`` for a bad setting.
    """
    max_retry = check_int("max_retry", max_retry, minimum=0, allow_none=True)
    kind = storage_kind(url)
    if kind == "memory":
        return None
    assert url is not None
    if kind == "journal":
        return _journal(url)
    problem = url_problem(url)
    if problem:
        raise StorageError(f"storage {redact_url(url)!r} is not a valid URL: {problem}")
    problem = sqlite_file_problem(url)
    if problem:  # before Optuna adds its tables to someone else's database
        raise StorageError(f"storage {redact_url(url)!r}: {problem}")
    kwargs = _heartbeat_kwargs(heartbeat_interval, heartbeat_grace_period, max_retry)
    given, url = url, normalize_url(url)
    engine_kwargs: dict[str, Any] = {}
    if url.startswith(
        "postgresql"
    ):  # a server connection can go stale between trials; a file cannot
        engine_kwargs.update(pool_pre_ping=True, connect_args={"connect_timeout": 10})
    elif not url.startswith("sqlite"):
        engine_kwargs["pool_pre_ping"] = True
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            cls = SQLiteRDBStorage if url.startswith("sqlite") else optuna.storages.RDBStorage
            return cls(url, engine_kwargs=engine_kwargs, **kwargs)
    except ImportError as e:
        raise StorageError(
            f"storage {redact_url(given)!r} needs a database driver that is not installed: {e}"
        ) from None
    except Exception as e:  # sqlalchemy.exc.OperationalError, ArgumentError, ...
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise StorageError(
            f"cannot reach storage {redact_url(given)!r}: "
            f"{redact_url(url, redact_url(given, first))}"
        ) from None


def missing_storage(url: str | None) -> str | None:
    """Why ``url`` holds no study to read: an SQLite or journal file that does not exist
    (opening it would create an empty one); ``None`` otherwise."""
    kind = storage_kind(url)
    if kind == "memory":
        return "an in-memory storage holds no study from another process"
    assert url is not None
    if kind == "journal":
        path = Path(url[len("journal:") :] if url.startswith("journal:") else url).expanduser()
    else:
        path = sqlite_file(url)  # type: ignore[assignment]
    if path is not None and not path.is_file():
        return f"{path} does not exist"
    return None


def _journal(url: str) -> BaseStorage:
    path = url[len("journal:") :] if url.startswith("journal:") else url
    if not path:
        raise ValueError("storage 'journal:' needs a file path, e.g. journal:search.log")
    Path(path).expanduser().parent.mkdir(parents=True, exist_ok=True)
    try:
        from optuna.storages.journal import JournalFileBackend

        return optuna.storages.JournalStorage(JournalFileBackend(str(Path(path).expanduser())))
    except OSError as e:
        raise StorageError(f"cannot open journal file {path!r}: {e}") from None


def _heartbeat_kwargs(
    interval: int | None, grace: int | None, max_retry: int | None
) -> dict[str, Any]:
    """``RDBStorage`` arguments for heartbeats and the retry of a dead worker's trial."""
    if interval is None:
        return {}
    interval = check_int("heartbeat_interval", interval, minimum=1)
    grace = check_int("heartbeat_grace_period", grace, minimum=1, allow_none=True)
    with (
        warnings.catch_warnings()
    ):  # heartbeats and the retry callback are "experimental" since 2.8
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        callback = optuna.storages.RetryHeartbeatStaleTrialCallback(
            max_retry=max_retry, inherit_intermediate_values=True
        )
    return {
        "heartbeat_interval": interval,
        "grace_period": grace if grace is not None else 2 * interval,
        "heartbeat_stale_trial_callback": callback,
    }
