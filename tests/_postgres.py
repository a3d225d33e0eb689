"""A PostgreSQL server for the ``@pytest.mark.postgres`` tests.

``NEVE_TEST_POSTGRES_URL`` (set by ``source .ci/postgres.sh`` in ``.ci/run``) is used as
is. Without it, the ``postgres_url`` fixture starts a throwaway server with the same
script and stops it at the end of the session; it skips only when PostgreSQL cannot be
installed or started here. Import the fixture into a test module::

    from _postgres import postgres_url  # noqa: F401
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / ".ci" / "postgres.sh"


def _unavailable(reason: str) -> None:
    """Skip, or fail where PostgreSQL is required (CI sets NEVE_REQUIRE_POSTGRES=1)."""
    if os.environ.get("NEVE_REQUIRE_POSTGRES"):
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    url = os.environ.get("NEVE_TEST_POSTGRES_URL")
    if url:
        yield url
        return
    parent = Path(tempfile.mkdtemp(prefix="neve-pg-"))
    os.chmod(parent, 0o755)  # the server runs as the postgres user when we are root
    data = parent / "pg"
    try:
        out = subprocess.run(
            ["bash", str(SCRIPT), "start", str(data)], capture_output=True, text=True, timeout=600
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        _unavailable(f"cannot start PostgreSQL: {e}")
    m = re.search(r"NEVE_TEST_POSTGRES_URL=(\S+)", out.stdout)
    if out.returncode != 0 or m is None:
        subprocess.run(["bash", str(SCRIPT), "stop", str(data)], capture_output=True)
        _unavailable(f"cannot start PostgreSQL with .ci/postgres.sh: {out.stderr.strip()[-400:]}")
    try:
        yield m.group(1)
    finally:
        subprocess.run(["bash", str(SCRIPT), "stop", str(data)], capture_output=True, timeout=120)
        try:
            parent.rmdir()
        except OSError:
            pass
