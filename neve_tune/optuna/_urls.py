"""Storage URLs: their kind, their driver, and their display without secrets.

A URL is never printed with its password: every message goes through :func:`redact_url`.
The forms a storage string takes are listed in :mod:`neve_tune.optuna._storage`.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import quote, quote_plus, unquote, unquote_plus

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

__all__ = [
    "redact_url",
    "normalize_url",
    "storage_kind",
    "url_problem",
    "JOURNAL_SUFFIXES",
    "IN_MEMORY_SQLITE",
]

JOURNAL_SUFFIXES = (".log", ".journal", ".jsonl")
# SQLite databases private to one connection: the heartbeat thread would see none of it
IN_MEMORY_SQLITE = ("sqlite://", "sqlite:///:memory:")
_SECRET_QUERY_KEYS = frozenset({"password", "passwd", "pwd", "secret", "token", "sslpassword"})
_HIDDEN = "***"


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
    if not isinstance(url, str):
        raise TypeError(f"url must be a storage URL string or None, got {url!r}")
    found = _redacted(url)
    if found is None:
        return url if text is None else text
    shown, secrets = found
    if text is None:
        return shown
    text = text.replace(url, shown)
    for secret in sorted(
        secrets, key=len, reverse=True
    ):  # longest first: a short form inside a long one
        text = _hide_word(text, secret)
    return text


def _hide_word(text: str, secret: str) -> str:
    """``text`` with each whole occurrence of ``secret`` hidden: one that does not run on
    into letters or digits on a side where the secret itself starts or ends with one, so
    a short password ``p`` hides ``'p'`` and ``:p@``, never the p of "port"."""
    left = r"(?<![A-Za-z0-9])" if secret[:1].isalnum() else ""
    right = r"(?![A-Za-z0-9])" if secret[-1:].isalnum() else ""
    return re.sub(left + re.escape(secret) + right, _HIDDEN, text)


def _forms(secret: str, *, written: str | None = None) -> set[str]:
    """The forms a secret can take in a message: as written in the URL, decoded, encoded."""
    forms = {
        secret,
        unquote(secret),
        unquote_plus(secret),
        quote(secret, safe=""),
        quote_plus(secret),
    }
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
    return scheme + "://" + _render(tail)[len("neve://") :], secrets


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
            rest = url[len(prefix) :]
            if not _importable("psycopg") and _importable("psycopg2"):
                return "postgresql+psycopg2://" + rest
            return "postgresql://" + rest
    return url


def storage_kind(url: str | None) -> str:
    """``"memory"``, ``"rdb"`` or ``"journal"`` for a storage string (see the module doc).
    An in-memory SQLite URL (``sqlite://``, ``sqlite:///:memory:``) is ``"memory"``: such a
    database lives in one connection, so Optuna's in-memory storage stands in for it."""
    if url is None or url in ("", ":memory:") or url in IN_MEMORY_SQLITE:
        return "memory"
    if not isinstance(url, str):
        raise TypeError(
            f"storage must be a URL string (sqlite:///FILE, postgresql://...) or None, got {url!r}"
        )
    if url.startswith("journal:"):
        return "journal"
    if "://" in url:
        return "rdb"
    if url.endswith(JOURNAL_SUFFIXES) or Path(url).is_file():
        return "journal"
    raise ValueError(
        f"storage {redact_url(url)!r} is neither an SQLAlchemy URL (sqlite:///FILE, "
        "postgresql://...), a journal file (journal:PATH or *.log) nor ':memory:'"
    )


def url_problem(url: str) -> str | None:
    """Why SQLAlchemy cannot read ``url`` as a server URL (a password with an unencoded
    ``@``, ``/`` or ``:`` makes the host or port unreadable), in words; ``None`` if it can.

    >>> url_problem("postgresql://neve:p@ss@db:5432/search")
    "its user or password holds an unencoded '@': percent-encode '@' as %40, '/' as %2F, ':' as %3A"
    >>> url_problem("postgresql://neve:s3cret@db:5432/search") is None
    True
    """
    scheme, sep, rest = url.partition("://")
    if not sep or rest.startswith("/"):
        return None
    authority = rest.split("?", 1)[0]
    hint = "percent-encode '@' as %40, '/' as %2F, ':' as %3A"
    if authority.count("@") > 1:
        return f"its user or password holds an unencoded '@': {hint}"
    try:
        parsed = make_url(url)
        parsed.port  # noqa: B018 - parsing the port raises for a password split at '/' or ':'
    except (ArgumentError, ValueError):
        return (
            "its user, password, host or port cannot be read (an unencoded '/', '@' or ':' in "
            f"the password?): {hint}"
        )
    return None
