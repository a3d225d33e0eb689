"""Storage URLs: parsing, redaction, and the heartbeat-enabled storages workers use.

Accepted forms (the same strings ``optuna create-study --storage`` takes, plus two
shorthands for journal files):

- ``None``, ``""`` or ``":memory:"``: an in-memory storage (one process only);
- an SQLAlchemy URL (``sqlite:///search.db``, ``postgresql://user:pw@host/db``,
  ``mysql+pymysql://...``): an :class:`optuna.storages.RDBStorage`, with heartbeats so a
  killed worker's trial is failed and retried (``RetryHeartbeatStaleTrialCallback``).
  SQLite gets :class:`SQLiteRDBStorage`, whose transactions take the write lock first,
  so several worker processes on one machine are safe (see :func:`sqlite_engine_kwargs`);
- ``journal:PATH``, or a path ending in ``.log``/``.journal``/``.jsonl``: a journal file
  (:class:`optuna.storages.JournalStorage` over ``JournalFileBackend``). Journal storages
  have no heartbeats; use an RDB storage where workers may die.

A URL is never printed with its password: every message goes through :func:`redact_url`.
"""

from __future__ import annotations

import re
import sqlite3
import threading
import warnings
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus, unquote, unquote_plus

import optuna
from optuna.storages import BaseStorage, RDBStorage
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from .._checks import check_int

__all__ = ["redact_url", "make_storage", "normalize_url", "storage_kind", "StorageError", "SQLiteRDBStorage", "sqlite_engine_kwargs"]

JOURNAL_SUFFIXES = (".log", ".journal", ".jsonl")
_SECRET_QUERY_KEYS = frozenset({"password", "passwd", "pwd", "secret", "token", "sslpassword"})
_HIDDEN = "***"


class StorageError(Exception):
    """A storage that cannot be opened or reached; the message holds no password."""


def redact_url(url: str | None, text: str | None = None) -> str:
    """``url`` with its password and secret query parameters (``password``, ``passwd``,
    ``pwd``, ``secret``, ``token``, ``sslpassword``, any case) replaced by ``***`` (or
    ``text`` with that URL and every form of those secrets replaced, when ``text`` is
    given: driver errors quote the password decoded or re-encoded, not as written).

    Parsing and rendering are SQLAlchemy's (:func:`sqlalchemy.engine.make_url`,
    ``render_as_string(hide_password=True)``), so the URL shown is the one the storage
    opens. A password with an unencoded ``@`` is ambiguous (SQLAlchemy ends it at the
    first ``@``): then everything up to the last ``@`` counts as credentials, so more is
    hidden, never less. A URL with nothing to hide, and anything that is not an
    SQLAlchemy URL (``journal:PATH``, a file path), comes back as given.

    Example::

        >>> redact_url("postgresql://neve:s3cret@db:5432/search")
        'postgresql://neve:***@db:5432/search'
        >>> redact_url("postgresql://neve:s3cret@db/search", "cannot reach postgresql://neve:s3cret@db/search")
        'cannot reach postgresql://neve:***@db/search'
        >>> redact_url("postgresql://neve@db/search?sslmode=require&sslpassword=k3y")
        'postgresql://neve@db/search?sslmode=require&sslpassword=***'
        >>> redact_url("sqlite:///search.db")
        'sqlite:///search.db'
    """
    if url is None:
        return "<in-memory>" if text is None else text
    found = _redacted(url)
    if found is None:
        return url if text is None else text
    shown, secrets = found
    if text is None:
        return shown
    text = text.replace(url, shown)
    for secret in sorted(secrets, key=len, reverse=True):  # longest first: a short form inside a long one
        text = text.replace(secret, _HIDDEN)
    return text


def _forms(secret: str, *, written: str | None = None) -> set[str]:
    """The forms a secret can take in a message: as written in the URL, decoded, encoded."""
    forms = {secret, unquote(secret), unquote_plus(secret), quote(secret, safe=""), quote_plus(secret)}
    if written is not None:
        forms.add(written)
    return {f for f in forms if f and f != _HIDDEN}


def _hide_query(parsed: URL) -> tuple[URL, set[str]]:
    """``parsed`` with the values of secret query parameters replaced, and those values."""
    keys = [k for k in parsed.query if k.lower() in _SECRET_QUERY_KEYS]
    secrets: set[str] = set()
    for k in keys:
        value = parsed.query[k]
        for v in (value,) if isinstance(value, str) else value:
            secrets |= _forms(v)
    return (parsed.update_query_dict({k: _HIDDEN for k in keys}) if keys else parsed), secrets


def _render(parsed: URL) -> str:
    # render_as_string percent-encodes the query's "***"; show it as the password's is shown
    return parsed.render_as_string(hide_password=True).replace(quote_plus(_HIDDEN), _HIDDEN)


def _redacted(url: str) -> tuple[str, set[str]] | None:
    """``(url with its secrets hidden, the secrets in every form)``; ``None`` when ``url``
    is no SQLAlchemy URL or holds no secret."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return None  # journal:PATH, a file path, ":memory:"
    # An authority (user:password@host) follows "://" unless a path does (sqlite:///FILE).
    has_authority = not rest.startswith("/")
    if has_authority and rest.count("@") > 1:
        parsed: URL | None = None  # SQLAlchemy would end the password at the first '@'
    else:
        try:
            parsed = make_url(url)
        except (ArgumentError, ValueError):  # an unknown scheme syntax, a port that is no number
            parsed = None
    if parsed is not None:
        written = rest[: rest.find("@")].partition(":")[2] if parsed.password is not None else None
        parsed, secrets = _hide_query(parsed)
        if written is not None:
            secrets |= _forms(parsed.password or "", written=written)
        elif not secrets:
            return None
        return _render(parsed), secrets
    if not has_authority:
        return None
    userinfo, at, hostpart = rest.rpartition("@")
    user, colon, written = userinfo.partition(":")
    secrets = _forms(unquote(written), written=written) if colon else set()
    try:  # the placeholder driver name: only the part after "://" is parsed here
        tail = make_url("neve://" + hostpart)
    except (ArgumentError, ValueError):
        return f"{scheme}://{_HIDDEN}", secrets | {rest}  # unparseable: show the scheme only
    if at:
        tail = tail.set(username=unquote(user), password=unquote(written) if colon else None)
    tail, query_secrets = _hide_query(tail)
    secrets |= query_secrets
    if not secrets:
        return None
    return scheme + "://" + _render(tail)[len("neve://"):], secrets


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


_TRANSACTIONAL = re.compile(r"\s*(SELECT|INSERT|UPDATE|DELETE|REPLACE|WITH|CREATE|DROP|ALTER)\b", re.IGNORECASE)


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

    def execute(self, sql: str, parameters: Any = (), /) -> "_ImmediateCursor":
        self._begin(sql)
        return super().execute(sql, parameters)

    def executemany(self, sql: str, seq_of_parameters: Any, /) -> "_ImmediateCursor":
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
        >>> storage = optuna.storages.RDBStorage("sqlite:///:memory:", engine_kwargs=sqlite_engine_kwargs())
        >>> optuna.create_study(storage=storage).study_name.startswith("no-name")
        True
    """
    return {"connect_args": {"timeout": float(timeout), "factory": _ImmediateConnection}}


class SQLiteRDBStorage(RDBStorage):
    """An :class:`~optuna.storages.RDBStorage` on SQLite whose transactions are atomic
    across processes: it opens ``url`` with :func:`sqlite_engine_kwargs` (merged into
    any ``engine_kwargs`` given)."""

    def __init__(self, url: str, engine_kwargs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        merged = dict(engine_kwargs or {})
        given = dict(merged.get("connect_args") or {})
        connect_args = sqlite_engine_kwargs(given.pop("timeout", 60.0))["connect_args"]
        connect_args.update(given)
        merged["connect_args"] = connect_args
        super().__init__(url, engine_kwargs=merged, **kwargs)


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
        heartbeat_interval = check_int("heartbeat_interval", heartbeat_interval, minimum=1)
        grace_period = check_int("grace_period", grace_period, minimum=1, allow_none=True)
        with warnings.catch_warnings():  # heartbeats and the retry callback are "experimental" since 2.8
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            callback = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=max_retry, inherit_intermediate_values=True)
        kwargs.update(
            heartbeat_interval=heartbeat_interval,
            grace_period=grace_period if grace_period is not None else 2 * heartbeat_interval,
            heartbeat_stale_trial_callback=callback,
        )
    given, url = url, normalize_url(url)
    engine_kwargs: dict[str, Any] = {}
    if url.startswith("postgresql"):  # a server connection can go stale between trials; a file cannot
        engine_kwargs.update(pool_pre_ping=True, connect_args={"connect_timeout": 10})
    elif not url.startswith("sqlite"):
        engine_kwargs["pool_pre_ping"] = True
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
