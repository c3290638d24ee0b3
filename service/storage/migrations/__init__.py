"""Alembic migrations for every table on ``service.storage.db.metadata``; run by
``service.storage.sql_store.upgrade_database`` (no alembic.ini needed)."""
