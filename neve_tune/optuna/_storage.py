"""Storage URLs: parsing, redaction, and the heartbeat-enabled storages workers use.

Accepted forms (the same strings ``optuna create-study --storage`` takes, plus two
shorthands for journal files):

- ``None``, ``""`` or ``":memory:"``: an in-memory storage (one process only);
- an SQLAlchemy URL (``sqlite:///search.db``, ``postgresql://user:pw@host/db``,
  ``mysql+pymysql://...``): an :class:`optuna.storages.RDBStorage`, with heartbeats so a
  killed worker's trial is failed and retried (``RetryHeartbeatStaleTrialCallback``).
  SQLite gets :class:`SQLiteRDBStorage`, whose trial state changes are atomic across
  processes (see there);
- ``journal:PATH``, or a path ending in ``.log``/``.journal``/``.jsonl``: a journal file
  (:class:`optuna.storages.JournalStorage` over ``JournalFileBackend``). Journal storages
  have no heartbeats; use an RDB storage where workers may die.

A URL is never printed with its password: every message goes through :func:`redact_url`.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import BaseStorage, RDBStorage
from optuna.trial import TrialState

__all__ = ["redact_url", "make_storage", "normalize_url", "storage_kind", "StorageError", "SQLiteRDBStorage"]

JOURNAL_SUFFIXES = (".log", ".journal", ".jsonl")
_PASSWORD_RE = re.compile(r"^(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^/@:]*):(?P<pw>[^@/]*)@")


class StorageError(Exception):
    """A storage that cannot be opened or reached; the message holds no password."""


def redact_url(url: str | None, text: str | None = None) -> str:
    """``url`` with its password replaced by ``***`` (or ``text`` with every occurrence of
    that password replaced, when ``text`` is given).

    Example::

        >>> redact_url("postgresql://neve:s3cret@db:5432/search")
        'postgresql://neve:***@db:5432/search'
        >>> redact_url("postgresql://neve:s3cret@db/search", "cannot reach postgresql://neve:s3cret@db/search")
        'cannot reach postgresql://neve:***@db/search'
        >>> redact_url("sqlite:///search.db")
        'sqlite:///search.db'
    """
    if url is None:
        return "<in-memory>" if text is None else text
    m = _PASSWORD_RE.match(url)
    if text is None:
        return url if m is None else f"{m.group('head')}:***@{url[m.end():]}"
    if m is None or not m.group("pw"):
        return text
    pw = m.group("pw")
    text = text.replace(url, redact_url(url))
    for variant in {pw, _unquote(pw)}:
        if variant:
            text = text.replace(variant, "***")
    return text


def _unquote(s: str) -> str:
    from urllib.parse import unquote

    return unquote(s)


def _importable(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def normalize_url(url: str) -> str:
    """``url`` with a PostgreSQL driver SQLAlchemy can load.

    SQLAlchemy 2.1 maps ``postgresql://`` to the ``psycopg`` (v3) driver; where only
    ``psycopg2`` is installed that URL fails, so it becomes ``postgresql+psycopg2://``.
    ``postgres://`` (Heroku style) becomes ``postgresql://``. Other URLs are unchanged.

    Example::

        >>> normalize_url("sqlite:///search.db")
        'sqlite:///search.db'
    """
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            rest = url[len(prefix):]
            if not _importable("psycopg") and _importable("psycopg2"):
                return "postgresql+psycopg2://" + rest
            return "postgresql://" + rest
    return url


def storage_kind(url: str | None) -> str:
    """``"memory"``, ``"rdb"`` or ``"journal"`` for a storage string (see the module doc)."""
    if url is None or url in ("", ":memory:"):
        return "memory"
    if url.startswith("journal:"):
        return "journal"
    if "://" in url:
        return "rdb"
    if url.endswith(JOURNAL_SUFFIXES) or Path(url).is_file():
        return "journal"
    raise ValueError(
        f"storage {redact_url(url)!r} is neither an SQLAlchemy URL (sqlite:///FILE, postgresql://...), "
        f"a journal file (journal:PATH or *.log) nor ':memory:'"
    )


class SQLiteRDBStorage(RDBStorage):
    """An :class:`~optuna.storages.RDBStorage` on SQLite whose trial state changes are
    atomic across processes.

    ``RDBStorage.set_trial_state_values`` reads the trial's state with ``SELECT ... FOR
    UPDATE``, checks it, then writes the new one. SQLite has no ``FOR UPDATE`` (SQLAlchemy
    drops it) and Python's ``sqlite3`` driver begins a transaction only at the first write,
    so the check reads a state another process may be changing at that moment. Two
    workers could both pop the same enqueued (WAITING) trial, both train it, and the
    second to finish then failed with ``Cannot tell a COMPLETE trial``; two workers could
    also both fail the same stale trial and retry it twice. Here a no-op ``UPDATE`` of the
    trial first takes SQLite's write lock (waiting for it under the busy timeout), so the
    check and the write form one transaction no other process can interleave with.
    """

    def set_trial_state_values(self, trial_id: int, state: TrialState, values: Any = None) -> bool:
        import sqlalchemy

        session = self.scoped_session()
        try:
            session.execute(
                sqlalchemy.text("UPDATE trials SET state = state WHERE trial_id = :trial_id"), {"trial_id": trial_id}
            )
        except Exception as e:
            session.rollback()
            session.close()
            if isinstance(e, sqlalchemy.exc.SQLAlchemyError):  # as RDBStorage reports it
                raise optuna.exceptions.StorageInternalError(f"cannot lock trial {trial_id} for a state change: {e}") from e
            raise
        # RDBStorage's own session is this thread's same scoped session, so its read, check
        # and write run in the transaction that now holds the lock; it commits (or rolls
        # back) and closes it.
        return super().set_trial_state_values(trial_id, state, values)


def make_storage(
    url: str | None,
    *,
    heartbeat_interval: int | None = 60,
    grace_period: int | None = None,
    max_retry: int | None = 3,
) -> BaseStorage | None:
    """The storage for ``url``; ``None`` means in-memory (what ``optuna.create_study`` takes).

    RDB storages get heartbeats every ``heartbeat_interval`` seconds (``None`` turns them
    off); a trial whose heartbeat is older than ``grace_period`` (default: twice the
    interval) is failed by the next worker that starts a trial, and retried up to
    ``max_retry`` times as a new trial that inherits its parameters, user attributes,
    system attributes (rung state) and intermediate values, so the retry resumes from the
    same checkpoint and keeps its velocity series.

    Raises :class:`StorageError` (with the password redacted) when the storage cannot be
    opened.
    """
    kind = storage_kind(url)
    if kind == "memory":
        return None
    assert url is not None
    if kind == "journal":
        path = url[len("journal:"):] if url.startswith("journal:") else url
        if not path:
            raise ValueError("storage 'journal:' needs a file path, e.g. journal:search.log")
        Path(path).expanduser().parent.mkdir(parents=True, exist_ok=True)
        try:
            from optuna.storages.journal import JournalFileBackend

            return optuna.storages.JournalStorage(JournalFileBackend(str(Path(path).expanduser())))
        except OSError as e:
            raise StorageError(f"cannot open journal file {path!r}: {e}") from None
    kwargs: dict[str, Any] = {}
    if heartbeat_interval is not None:
        if isinstance(heartbeat_interval, bool) or not isinstance(heartbeat_interval, int) or heartbeat_interval < 1:
            raise ValueError(f"heartbeat_interval must be a positive int (seconds) or None, got {heartbeat_interval!r}")
        with warnings.catch_warnings():  # heartbeats and the retry callback are "experimental" since 2.8
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            callback = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=max_retry, inherit_intermediate_values=True)
        kwargs.update(
            heartbeat_interval=heartbeat_interval,
            grace_period=grace_period if grace_period is not None else 2 * heartbeat_interval,
            heartbeat_stale_trial_callback=callback,
        )
    given, url = url, normalize_url(url)
    engine_kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if url.startswith("sqlite"):
        engine_kwargs["connect_args"] = {"timeout": 60}
    elif url.startswith("postgresql"):
        engine_kwargs["connect_args"] = {"connect_timeout": 10}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            cls = SQLiteRDBStorage if url.startswith("sqlite") else optuna.storages.RDBStorage
            return cls(url, engine_kwargs=engine_kwargs, **kwargs)
    except ImportError as e:
        raise StorageError(f"storage {redact_url(given)!r} needs a database driver that is not installed: {e}") from None
    except Exception as e:  # sqlalchemy.exc.OperationalError, ArgumentError, ...
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise StorageError(f"cannot reach storage {redact_url(given)!r}: {redact_url(url, redact_url(given, first))}") from None
