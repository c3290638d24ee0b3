"""What the service keeps: issued cards and feedback, SMART sessions, the schema and its migrations.

- feedback.py: the store's interface (``FeedbackStore``), the records it keeps, an in-memory store.
- sql_store.py: the durable store on SQLite or PostgreSQL, its tables, bringing the schema to
  head, and the override report's queries.
- db.py: the one SQLAlchemy ``metadata`` and how engines are built.
- smart_sessions.py: SMART launch state and app sessions, in the database (shared by every worker)
  or, for an app without one, in memory.
- reporting.py: ``ivig-cds report`` and ``retention``: the report as a table, JSON or CSV.
- analytics.py: ``GET /analytics/overrides`` (a view: the same report as JSON).
- migrations/: Alembic's environment and revisions, shipped in the package.

Everything but analytics.py is a service module: it imports the protocol's feedback shapes,
base modules and hooks/, never a view or the app state.
"""
