"""SQLite storages several worker processes can share: every transaction takes the
write lock first (``BEGIN IMMEDIATE``), so Optuna's read-check-write steps are atomic."""

from __future__ import annotations

import re
import sqlite3
import threading
from pathlib import Path
from typing import Any

from optuna.storages import RDBStorage

__all__ = ["SQLiteRDBStorage", "sqlite_engine_kwargs", "sqlite_file", "sqlite_file_problem"]

# a table every Optuna schema since 1.x holds (its schema version); a database with tables
# but not this one is someone else's: Optuna would add its tables beside them and fail
_OPTUNA_MARKER = "version_info"


def sqlite_file(url: str) -> Path | None:
    """The file an SQLite URL opens (``sqlite:///search.db`` -> ``search.db``); ``None``
    for other URLs and in-memory SQLite."""
    if not url.startswith("sqlite"):
        return None
    from sqlalchemy.engine import make_url

    try:
        database = make_url(url).database
    except Exception:  # sqlalchemy.exc.ArgumentError: the storage factory says why
        return None
    return Path(database).expanduser() if database and database != ":memory:" else None


def sqlite_file_problem(url: str) -> str | None:
    """Why the existing file of SQLite URL ``url`` is no Optuna database (not SQLite at
    all, or tables of something else), read without writing; ``None`` when it is one, is
    empty or does not exist yet."""
    path = sqlite_file(url)
    if path is None or not path.is_file() or path.stat().st_size == 0:
        return None
    try:
        con = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            rows = con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            tables = sorted(row[0] for row in rows)
        finally:
            con.close()
    except sqlite3.DatabaseError as e:
        return f"{path} is not an SQLite database ({e})"
    if tables and _OPTUNA_MARKER not in tables:
        shown = ", ".join(tables[:8])
        return f"{path} holds tables Optuna did not create ({shown}); give another file"
    return None


_TRANSACTIONAL = re.compile(
    r"\s*(SELECT|INSERT|UPDATE|DELETE|REPLACE|WITH|CREATE|DROP|ALTER)\b", re.IGNORECASE
)


# Connections of this thread now inside a BEGIN IMMEDIATE transaction. A connection the
# same thread opens meanwhile (Optuna checks its schema version on a second connection
# while a session is open) begins a deferred one instead: it only reads, which SQLite
# allows beside the write lock, where waiting for that lock would wait for itself.
_holding = threading.local()


def _holders() -> set[int]:
    held = getattr(_holding, "ids", None)
    if held is None:
        held = _holding.ids = set()
    return held


class _ImmediateCursor(sqlite3.Cursor):
    """A cursor that opens every transaction with ``BEGIN IMMEDIATE``."""

    def _begin(self, sql: str) -> None:
        con = self.connection
        if con.in_transaction or not _TRANSACTIONAL.match(sql):
            return
        held = _holders()
        if held - {id(con)}:
            super().execute("BEGIN")
        else:
            super().execute("BEGIN IMMEDIATE")  # waits for the write lock under the busy timeout
            held.add(id(con))

    def execute(self, sql: str, parameters: Any = (), /) -> _ImmediateCursor:
        self._begin(sql)
        return super().execute(sql, parameters)

    def executemany(self, sql: str, seq_of_parameters: Any, /) -> _ImmediateCursor:
        self._begin(sql)
        return super().executemany(sql, seq_of_parameters)


class _ImmediateConnection(sqlite3.Connection):
    """An ``sqlite3`` connection whose cursors begin transactions with ``BEGIN IMMEDIATE``."""

    def cursor(self, factory: Any = _ImmediateCursor) -> sqlite3.Cursor:  # type: ignore[override]
        return super().cursor(factory)

    def commit(self) -> None:
        try:
            super().commit()
        finally:
            if not self.in_transaction:
                _holders().discard(id(self))

    def rollback(self) -> None:
        try:
            super().rollback()
        finally:
            _holders().discard(id(self))

    def close(self) -> None:
        _holders().discard(id(self))
        super().close()


def sqlite_engine_kwargs(timeout: float = 60.0) -> dict[str, Any]:
    """SQLAlchemy ``engine_kwargs`` that make an SQLite :class:`~optuna.storages.RDBStorage`
    safe for several worker processes.

    ``RDBStorage.set_trial_state_values`` reads a trial's state with ``SELECT ... FOR
    UPDATE``, checks it and writes the new one. SQLite has no ``FOR UPDATE`` and Python's
    ``sqlite3`` begins a transaction only at the first write, so two workers could both
    read the same enqueued (WAITING) trial, both pop and train it (the second ``tell``
    then failed with ``Cannot tell a COMPLETE trial``), or both fail the same stale trial
    and retry it twice. These arguments give every connection a cursor that opens each
    transaction with ``BEGIN IMMEDIATE``: the transaction holds SQLite's write lock from
    its first statement (waiting up to ``timeout`` seconds for it), so Optuna's
    read-check-write is one step no other process can interleave with. Only public
    interfaces are involved: ``RDBStorage(engine_kwargs=...)``, SQLAlchemy's
    ``connect_args`` and the ``factory`` argument of :func:`sqlite3.connect`. The cost:
    reads wait for writes too, so SQLite suits a few workers on one machine; use
    PostgreSQL for many, or across machines.

    Example::

        >>> import optuna
        >>> storage = optuna.storages.RDBStorage(
        ...     "sqlite:///:memory:", engine_kwargs=sqlite_engine_kwargs()
        ... )
        >>> optuna.create_study(storage=storage).study_name.startswith("no-name")
        True
    """
    return {"connect_args": {"timeout": float(timeout), "factory": _ImmediateConnection}}


class SQLiteRDBStorage(RDBStorage):
    """An :class:`~optuna.storages.RDBStorage` on SQLite whose transactions are atomic
    across processes: it opens ``url`` with :func:`sqlite_engine_kwargs` (merged into
    any ``engine_kwargs`` given)."""

    def __init__(
        self, url: str, engine_kwargs: dict[str, Any] | None = None, **kwargs: Any
    ) -> None:
        merged = dict(engine_kwargs or {})
        given = dict(merged.get("connect_args") or {})
        connect_args = sqlite_engine_kwargs(given.pop("timeout", 60.0))["connect_args"]
        connect_args.update(given)
        merged["connect_args"] = connect_args
        super().__init__(url, engine_kwargs=merged, **kwargs)
