"""Alembic migrations for every table on ``service.db.metadata``; run by ``storage.upgrade_database``."""
