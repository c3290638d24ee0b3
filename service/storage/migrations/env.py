"""Alembic environment: the service's metadata, a connection handed in by the service or built
from the ivig-cds settings (for developers running the ``alembic`` command)."""

from __future__ import annotations

from alembic import context

# Every module that declares tables on ``metadata`` is imported so that autogenerate sees them.
import service.auth.replay  # noqa: F401
import service.storage.smart_sessions  # noqa: F401
import service.storage.sql_store  # noqa: F401
from service.storage.db import make_engine, metadata

config = context.config
target_metadata = metadata


def _configure_and_run(connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",  # ALTER TABLE on SQLite needs batch mode
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_offline() -> None:
    context.configure(url=_url(), target_metadata=target_metadata, literal_binds=True,
                      dialect_opts={"paramstyle": "named"})
    with context.begin_transaction():
        context.run_migrations()


def _url() -> str:
    url = config.get_main_option("sqlalchemy.url")
    if url:
        return url
    from service.settings import load_settings

    return load_settings().effective_database_url


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:  # service.storage.sql_store.upgrade_database: already locked, in a transaction
        _configure_and_run(connection)
        return
    engine = make_engine(_url())
    try:
        with engine.begin() as conn:
            _configure_and_run(conn)
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
