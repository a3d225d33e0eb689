"""Storage URLs never reach a message with their password: :func:`redact_url` on URLs
whose passwords hold the characters that break hand-written URL parsing, on secret query
parameters, on messages that quote the URL or the password, and on storages that are no
SQLAlchemy URL (left as given)."""

from __future__ import annotations

from urllib.parse import quote, quote_plus, unquote

import pytest

from neve_tune.optuna import StorageError, make_storage, redact_url

# (url, the secret as a driver would see it, what must still be shown)
SECRETS = [
    ("postgresql://neve:s3cret@db:5432/search", "s3cret", "postgresql://neve:***@db:5432/search"),
    (
        "postgresql+psycopg2://neve:pa/ss@db/search",
        "pa/ss",
        "postgresql+psycopg2://neve:***@db/search",
    ),
    ("postgresql://neve:pa:ss:w0rd@db/search", "pa:ss:w0rd", "postgresql://neve:***@db/search"),
    ("postgresql://neve:p%40ss%2Fw%3Ard@db/search", "p@ss/w:rd", "postgresql://neve:***@db/search"),
    ("postgresql://neve:p@ss@db:5432/search", "p@ss", "postgresql://neve:***@db:5432/search"),
    ("postgresql://neve:p@ss/w:rd@db/search", "p@ss/w:rd", "postgresql://neve:***@db/search"),
    ("postgresql://neve:p@ss:1@db:5432/search", "p@ss:1", "postgresql://neve:***@db:5432/search"),
    ("mysql+pymysql://root:h?nt#er2@db/search", "h?nt#er2", "mysql+pymysql://root:***@db/search"),
    ("postgresql://:s3cret@db/search", "s3cret", "postgresql://:***@db/search"),
    (
        "postgresql://neve@db/search?sslmode=require&sslpassword=k3y",
        "k3y",
        "postgresql://neve@db/search?sslmode=require&sslpassword=***",
    ),
    (
        "postgresql://db/search?user=neve&PASSWORD=s3cret",
        "s3cret",
        "postgresql://db/search?PASSWORD=***&user=neve",
    ),
    ("mssql+pyodbc://db/search?Pwd=s3cr%2Bt", "s3cr+t", "mssql+pyodbc://db/search?Pwd=***"),
    (
        "mysql://db/search?passwd=s3cret&charset=utf8",
        "s3cret",
        "mysql://db/search?charset=utf8&passwd=***",
    ),
    (
        "snowflake://neve:pw1@acct/db?token=t0k3n&secret=s3cr3t",
        "t0k3n",
        "snowflake://neve:***@acct/db?secret=***&token=***",
    ),
    (
        "mysql+mysql-connector://root:s3cret@db/search",
        "s3cret",
        "mysql+mysql-connector://root:***@db/search",
    ),
    ("postgresql://neve:s3cret@db:notaport/search", "s3cret", "postgresql://***"),
]


@pytest.mark.parametrize("url, secret, shown", SECRETS)
def test_url_shows_no_secret(url: str, secret: str, shown: str) -> None:
    out = redact_url(url)
    assert out == shown
    for form in {secret, quote(secret, safe=""), quote_plus(secret)}:
        assert form not in out


@pytest.mark.parametrize("url, secret, shown", SECRETS)
def test_message_shows_no_secret(url: str, secret: str, shown: str) -> None:
    """A driver's message quotes the URL as given, the password decoded, or encoded."""
    message = (
        f"cannot reach {url}: FATAL: password {secret!r} rejected ({quote(secret, safe='')}, "
        f'{quote_plus(secret)}) for user "neve"'
    )
    out = redact_url(url, message)
    assert out.startswith(f"cannot reach {shown}: FATAL: password '***' rejected")
    for form in {secret, quote(secret, safe=""), quote_plus(secret), unquote(url)}:
        assert form not in out
    assert 'for user "neve"' in out  # the rest of the message survives


@pytest.mark.parametrize(
    "url",
    [
        "sqlite:///search.db",
        "sqlite:////abs/dir:with@odd/search.db",
        "sqlite://",
        "mysql+pymysql://root@db/search",
        "postgresql://neve@db:5432/search?sslmode=require&application_name=neve",
        "journal:runs/search.log",
        "journal:/abs/p@th:with/search.log",
        "runs/search.jsonl",
        ":memory:",
        "",
    ],
)
def test_nothing_to_hide_passes_through(url: str) -> None:
    assert redact_url(url) == url
    assert redact_url(url, f"opened {url}") == f"opened {url}"


def test_in_memory() -> None:
    assert redact_url(None) == "<in-memory>"
    assert redact_url(None, "message") == "message"


def test_an_unencoded_at_in_the_password_is_named_not_hidden_behind_the_driver() -> None:
    """SQLAlchemy ends the password at the first '@' (the driver then sees a wrong host):
    refused before connecting, with the fix, never the password."""
    with pytest.raises(StorageError) as e:
        make_storage("postgresql://neve:p@ss/w:rd@127.0.0.1:1/nothing", heartbeat_interval=None)
    message = str(e.value)
    assert "127.0.0.1" in message and "unencoded '@'" in message and "%40" in message
    for form in ("p@ss/w:rd", "p@ss", "ss/w:rd", quote("p@ss/w:rd", safe="")):
        assert form not in message


def test_a_port_that_cannot_be_read_is_named_not_int_parsing() -> None:
    with pytest.raises(StorageError) as e:
        make_storage("postgresql://neve:s3cret@db:notaport/search", heartbeat_interval=None)
    message = str(e.value)
    assert "cannot be read" in message and "percent-encode" in message
    assert "invalid literal" not in message and "s3cret" not in message


def test_unreachable_storage_error_hides_an_odd_password() -> None:
    """The whole path: make_storage's error names the storage, never the password."""
    with pytest.raises(StorageError) as e:
        make_storage(
            "postgresql://neve:p%40ss%2Fw%3Ard@127.0.0.1:1/nothing", heartbeat_interval=None
        )
    message = str(e.value)
    assert "cannot reach storage" in message and "127.0.0.1" in message
    for form in ("p@ss/w:rd", "p@ss", "ss/w:rd", quote("p@ss/w:rd", safe="")):
        assert form not in message


@pytest.mark.parametrize("password", ["p", "o", "1"])
def test_a_short_password_hides_only_itself(password: str) -> None:
    """Only the password hides: the same letters inside other words stay."""
    url = f"postgresql://neve:{password}@db:5432/search"
    message = (
        f"could not connect to {url}: password '{password}' rejected; port open, option postgres 10"
    )
    out = redact_url(url, message)
    assert out == (
        "could not connect to postgresql://neve:***@db:5432/search: password '***' rejected; "
        "port open, option postgres 10"
    )
