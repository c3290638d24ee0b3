"""A real PostgreSQL for tests: a fresh, uniquely named database per test session, dropped after.

The server is the local one on 127.0.0.1:5432 (trust auth, user ``postgres``), which .ci/run
installs and starts. If it does not answer, the fixture tries to start the Debian cluster
itself; only when that fails too are the PostgreSQL tests skipped, with the reason.

Use ``db_url`` (parametrised: a SQLite file and a PostgreSQL database, each empty) to run a
test against both databases; ``pg_url`` for PostgreSQL only.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import time
from typing import Any, Iterator

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine

HOST, PORT, USER = "127.0.0.1", 5432, "postgres"
ADMIN_DATABASES = ("postgres", "test")


def _admin_engine() -> tuple[Engine | None, str]:
    """An AUTOCOMMIT engine on a maintenance database, or None and why not."""
    reason = "no connection attempted"
    for name in ADMIN_DATABASES:
        engine = create_engine(f"postgresql+psycopg://{USER}@{HOST}:{PORT}/{name}",
                               isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 3})
        try:
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            return engine, ""
        except Exception as exc:  # any failure: try the next database, then report
            reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            engine.dispose()
    return None, reason


def _try_start_server() -> str:
    """Start the Debian cluster as .ci/run does; returns what happened, for the skip message."""
    if not os.path.isdir("/etc/postgresql") or not shutil.which("pg_ctlcluster"):
        return "Debian's postgresql package is not installed (no /etc/postgresql, no pg_ctlcluster)"
    versions = sorted(os.listdir("/etc/postgresql"))
    if not versions:
        return "no cluster under /etc/postgresql"
    cmd = ["pg_ctlcluster", "--skip-systemctl-redirect", versions[-1], "main", "start"]
    if os.geteuid() != 0:
        if not shutil.which("sudo"):
            return "not root and no sudo to start the cluster"
        cmd = ["sudo", "-n", *cmd]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{' '.join(cmd)} failed: {type(exc).__name__}"
    return f"{' '.join(cmd)} exited {done.returncode}: {(done.stderr or done.stdout).strip()[:200]}"


#: One database per test session, shared by every module that imports the fixture (pytest makes
#: an imported session fixture one definition per module): url, admin engine, users.
_SHARED: dict[str, Any] = {"url": None, "admin": None, "name": None, "users": 0}


def _drop_leftovers(admin: Engine) -> None:
    """Databases of earlier sessions whose process is gone (killed runs) are dropped."""
    with admin.connect() as conn:
        names = conn.execute(text("SELECT datname FROM pg_database WHERE datname LIKE 'ivig_cds_test_%'")).scalars()
        for name in list(names):
            try:
                pid = int(name.split("_")[3])
                os.kill(pid, 0)
                continue  # still running
            except ProcessLookupError:
                pass
            except (ValueError, IndexError, PermissionError):
                continue
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """URL of a fresh PostgreSQL database for this session (dropped at the end)."""
    if _SHARED["url"] is None:
        admin, reason = _admin_engine()
        if admin is None:
            started = _try_start_server()
            deadline = time.monotonic() + 30
            while admin is None and time.monotonic() < deadline:
                time.sleep(1)
                admin, reason = _admin_engine()
            if admin is None:
                pytest.skip(f"PostgreSQL is not reachable on {HOST}:{PORT} even after trying to start it "
                            f"({reason}; {started}). Install and start Debian's postgresql (see .ci/run).")
        _drop_leftovers(admin)
        name = f"ivig_cds_test_{os.getpid()}_{secrets.token_hex(4)}"
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        _SHARED.update(url=f"postgresql+psycopg://{USER}@{HOST}:{PORT}/{name}", admin=admin, name=name)
    _SHARED["users"] += 1
    try:
        yield _SHARED["url"]
    finally:
        _SHARED["users"] -= 1
        if _SHARED["users"] == 0:  # session fixtures are all finalised at the end of the session
            admin = _SHARED["admin"]
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{_SHARED["name"]}" WITH (FORCE)'))
            admin.dispose()
            _SHARED.update(url=None, admin=None, name=None)


def reset_pg(url: str) -> None:
    """Empty the session database: every test starts from no tables at all (migrations included)."""
    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(text("SET lock_timeout = '30s'"))
            conn.execute(text("DROP SCHEMA public CASCADE"))
            conn.execute(text("CREATE SCHEMA public"))
    finally:
        engine.dispose()


@pytest.fixture
def pg_url(pg_database) -> str:
    """The session's PostgreSQL database, emptied for this test."""
    reset_pg(pg_database)
    return pg_database


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path) -> str:
    """An empty database of each kind: a SQLite file in tmp_path, and PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'db' / 'ivig-cds.sqlite3'}"
    return request.getfixturevalue("pg_url")
