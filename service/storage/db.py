"""The database: one SQLAlchemy MetaData for every table, and engines built the same way.

SQLite (default, a file in the data directory) and PostgreSQL (deployment) are both first-class.
Tables are declared next to the code that owns them (service/storage/sql_store.py, service/auth/replay.py)
on this ``metadata``; Alembic migrations (service/storage/migrations) create them.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from pathlib import Path

from sqlalchemy import MetaData, event
from sqlalchemy.engine import Engine, make_url
from sqlalchemy import create_engine

# Alembic narrates each step at INFO (plugins set up, "Context impl SQLiteImpl.", every revision): a
# page of lines at the first start. The service says in one line that the schema is at head
# (service/storage/sql_store.py); failures still surface as exceptions.
logging.getLogger("alembic").setLevel(logging.WARNING)

metadata = MetaData(naming_convention={
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
})


def _switch_to_wal(cur: sqlite3.Cursor, attempts: int = 200) -> None:
    """Put the database file in WAL mode, waiting out other connections doing the same.

    WAL is a property of the file, so a connection that finds it already set does nothing.
    Switching needs an exclusive lock, and SQLite reports "database is locked" at once, without
    its busy handler, when another connection (another worker starting on a fresh file) holds
    one, so the switch is retried here for up to about ten seconds.
    """
    for attempt in range(attempts):
        try:
            if cur.execute("PRAGMA journal_mode").fetchone()[0].lower() == "wal":
                return
            cur.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc).lower() or attempt == attempts - 1:
                raise
            time.sleep(0.05)


def make_engine(url: str) -> Engine:
    """An engine with settings that suit a multi-threaded, multi-process web service."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False}, hide_parameters=True)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):  # WAL: readers never block the writer; safe across processes
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA busy_timeout=30000")
            _switch_to_wal(cur)
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

        return engine
    if parsed.get_backend_name() == "postgresql" and parsed.get_driver_name() in ("", "psycopg2"):
        # psycopg (3) is the driver we ship; accept plain postgresql:// URLs
        parsed = parsed.set(drivername="postgresql+psycopg")
    connect_args = {} if "connect_timeout" in parsed.query else {"connect_timeout": 5}  # never hang /readyz
    # hide_parameters: SQL errors never carry values (a comment may name a patient) into logs
    return create_engine(parsed, pool_pre_ping=True, pool_size=5, max_overflow=10, hide_parameters=True,
                         connect_args=connect_args)
