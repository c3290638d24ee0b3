"""The durable feedback store: issued cards and CDS Hooks feedback in SQLite or PostgreSQL.

Why it is built this way:

* Feedback is written synchronously, one batch in one transaction, with insert-or-ignore on a
  dedupe key: the EHR gets 200 only once the batch is committed, and a re-sent batch (after a
  timeout, a restart) is counted once. Rows go in sorted by key so that two concurrent batches
  sharing items take their row locks in the same order and cannot deadlock on PostgreSQL.
* Issued-card records are queued by the request that issued the cards, before its answer is
  sent, and written off the request path by a background thread (every
  ``feedback.issued_flush_seconds``, everything queued, ``ISSUED_BATCH`` per transaction);
  ``close()`` writes what is left, so a normal stop loses none. The queue is bounded
  (``feedback.issued_queue_size``): a full queue makes the caller write synchronously, slower,
  never dropped. What a crash (kill -9) can lose is what is queued: at most a flush interval's
  records, at most the queue's size. The queued count is a gauge (service/ops/metrics.py), and what
  was lost is counted: by this process when the database refuses a record or is away at
  shutdown, by the gunicorn master for a worker that died with records queued.
* Whether a feedback's card is known is decided when reporting, by a join: the card record may
  still be in another worker's queue when the feedback arrives.
* Nothing here holds a patient identifier (at most a keyed hash), and no database error leaves
  this module with its SQL parameters attached (they may quote a clinician's comment).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import threading
import time
import weakref
from collections import defaultdict, deque
from datetime import date, datetime, timezone
from operator import itemgetter
from pathlib import Path
from typing import Any, Iterator, Sequence

import orjson
from sqlalchemy import (
    Column,
    DateTime,
    Integer,
    String,
    Table,
    Text,
    TypeDecorator,
    delete,
    func,
    select,
    text,
)
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError, SQLAlchemyError

from service.errors import BadRequest, ServiceUnavailable
from service.ops import metrics
from service.protocol.models import FeedbackItem
from service.settings import FeedbackSettings, Settings
from service.storage.db import make_engine, metadata
from service.storage.feedback import IssuedCard, StoreResult

log = logging.getLogger("ivig_cds.storage")

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
#: pg_advisory_xact_lock key serialising migrations across workers ("ivigcds" in ASCII).
MIGRATION_LOCK_KEY = 0x69766967636473
#: Rows per INSERT statement (well under SQLite's bound-parameter limit).
CHUNK = 500
#: Issued-card records per transaction, the writer's and a final flush's alike.
ISSUED_BATCH = 2000
#: Longest externally supplied strings we keep (PostgreSQL enforces these; SQLite would not).
MAX_LEN = {"card": 255, "override_code": 255, "override_system": 1024, "override_display": 1024,
           "accepted_suggestion": 255}


class UTCDateTime(TypeDecorator):
    """Aware datetimes in, aware UTC datetimes out, on both databases.

    SQLite keeps datetimes as text without a zone, so everything is stored as UTC there and the
    zone is put back on reading; PostgreSQL uses ``timestamptz``.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(timezone.utc)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


issued_card = Table(
    "issued_card", metadata,
    Column("uuid", String(64), primary_key=True),
    Column("service_id", String(128), nullable=False),
    Column("hook_instance", Text, nullable=False),
    Column("topic", String(128), nullable=False),
    Column("indicator", String(16), nullable=False),
    Column("ruleset_version", String(128), nullable=False),
    Column("issued_at", UTCDateTime, nullable=False, index=True),
    # JSON arrays, in the card's order: the suggestions offered and their labels
    Column("suggestion_uuids", Text, nullable=False),
    Column("suggestion_labels", Text, nullable=False),
    Column("patient_hash", String(64), nullable=True),
)

feedback = Table(
    "feedback", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("dedupe_key", String(64), nullable=False, unique=True),
    Column("card_uuid", String(255), nullable=False, index=True),
    Column("service_id", String(128), nullable=False),
    Column("outcome", String(16), nullable=False),
    Column("accepted_suggestions", Text, nullable=False),  # JSON array of suggestion uuids
    Column("override_code", String(255), nullable=True),
    Column("override_system", String(1024), nullable=True),
    Column("override_display", String(1024), nullable=True),
    Column("user_comment", Text, nullable=True),
    Column("outcome_timestamp", UTCDateTime, nullable=False, index=True),
    Column("received_at", UTCDateTime, nullable=False, index=True),
)


# ------------------------------------------------------------------ opening and migrating


def open_store(settings: Settings) -> "SqlFeedbackStore":
    """Engine for the configured database, schema brought to head, store ready for requests."""
    engine = make_engine(settings.effective_database_url)
    engine.hide_parameters = True  # error messages must never quote feedback content
    try:
        upgrade_database(engine)
    except Exception:
        engine.dispose()
        raise
    return SqlFeedbackStore(engine, settings.feedback)


def alembic_config(connection: Connection | None = None):
    """An Alembic Config for the migrations shipped in this package (no alembic.ini needed)."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR).replace("%", "%%"))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def _at_head(engine: Engine) -> bool:
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    heads = set(ScriptDirectory.from_config(alembic_config()).get_heads())
    with engine.connect() as conn:
        current = set(MigrationContext.configure(conn).get_current_heads())
    return current == heads


def upgrade_database(engine: Engine) -> None:
    """``alembic upgrade head``, safe when several workers start at once.

    PostgreSQL: a transaction-scoped advisory lock; SQLite: an exclusive lock on a file next to
    the database. The second worker waits, then finds the schema at head and does nothing.
    """
    from alembic import command

    if _at_head(engine):
        return
    with _migration_lock(engine):
        with engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
            command.upgrade(alembic_config(conn), "head")
    log.info("database schema at head", extra={"event": "migrated"})


@contextlib.contextmanager
def _migration_lock(engine: Engine) -> Iterator[None]:
    """Cross-process lock for SQLite files (PostgreSQL locks inside the transaction)."""
    url = engine.url
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        yield
        return
    try:
        import fcntl
    except ImportError:  # not POSIX: one process at a time is the operator's job
        yield
        return
    lock_path = Path(url.database).expanduser().with_suffix(".migrate.lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# ------------------------------------------------------------------ the store


def dedupe_key(service_id: str, item: FeedbackItem) -> str:
    """What makes two feedback items 'the same feedback': everything the clinician decided."""
    parts = [
        service_id,
        item.card,
        item.outcome,
        item.outcome_timestamp.astimezone(timezone.utc).isoformat(timespec="microseconds"),
        sorted(item.accepted_suggestions),
        item.override_code,
        item.override_system,
        item.user_comment,
    ]
    return hashlib.sha256(json.dumps(parts, separators=(",", ":")).encode()).hexdigest()


def _check_lengths(items: Sequence[FeedbackItem]) -> None:
    """Refuse (400) what the columns cannot hold, before anything is written."""
    problems = []
    for i, item in enumerate(items):
        for name, value, limit in (
            ("card", item.card, MAX_LEN["card"]),
            ("overrideReason.reason.code", item.override_code, MAX_LEN["override_code"]),
            ("overrideReason.reason.system", item.override_system, MAX_LEN["override_system"]),
            ("overrideReason.reason.display", item.override_display, MAX_LEN["override_display"]),
        ):
            if value is not None and len(value) > limit:
                problems.append(f"feedback[{i}].{name}: longer than {limit} characters")
        if any(len(s) > MAX_LEN["accepted_suggestion"] for s in item.accepted_suggestions):
            problems.append(f"feedback[{i}].acceptedSuggestions: an id is longer than "
                            f"{MAX_LEN['accepted_suggestion']} characters")
    if problems:
        raise BadRequest("the feedback is not valid", details=problems)


def _is_transient(exc: DBAPIError) -> bool:
    """Errors worth retrying the whole (atomic) transaction for."""
    code = getattr(exc.orig, "sqlstate", None) or getattr(exc.orig, "pgcode", None)
    if code in ("40P01", "40001"):  # deadlock detected, serialization failure
        return True
    return "database is locked" in str(exc.orig)


def _chunks(rows: list, size: int = CHUNK) -> Iterator[list]:
    for start in range(0, len(rows), size):
        yield rows[start:start + size]


def _dialect_insert(conn: Connection, table: Table):
    """INSERT ... ON CONFLICT DO NOTHING for the connection's database."""
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(table).on_conflict_do_nothing()
    if conn.dialect.name == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        return sqlite_insert(table).on_conflict_do_nothing()
    raise NotImplementedError(f"unsupported database {conn.dialect.name}")


def _json_array(values: Sequence[str]) -> str:
    """A JSON array as text (orjson, not json.dumps: the writer makes two for every issued card)."""
    return orjson.dumps(list(values)).decode()


def _issued_values(card: IssuedCard) -> tuple[Any, ...]:
    """The record's column values, in ``issued_card``'s column order."""
    return (card.uuid, card.service_id, card.hook_instance, card.topic, card.indicator, card.ruleset_version,
            card.issued_at, _json_array(card.suggestion_uuids), _json_array(card.suggestion_labels),
            card.patient_hash)


class _DriverInsert:
    """A table's INSERT ... ON CONFLICT DO NOTHING compiled once, its rows bound by the DBAPI driver.

    Through ``Connection.execute`` every row would pay for a parameter dict and SQLAlchemy's
    per-row processing. Here a row is a tuple, processed only where a column's type needs it (the
    UTC datetime on SQLite), handed to the driver's ``executemany``, which binds it in C and
    releases the GIL while the database works. Rows are tuples in the table's column order, which
    is also the INSERT's.
    """

    def __init__(self, conn: Connection, table: Table) -> None:
        self.columns = [c.name for c in table.columns]
        compiled = _dialect_insert(conn, table).compile(dialect=conn.dialect, column_keys=self.columns)
        self.sql = str(compiled)
        #: the driver takes parameters by position (SQLite's "?"), else by name (psycopg's "%(uuid)s")
        self.positional = bool(compiled.positional)
        if self.positional and list(compiled.positiontup) != self.columns:
            raise RuntimeError(f"INSERT INTO {table.name} binds its columns in another order than the table's")
        self.processors = [(i, p) for i, c in enumerate(table.columns)
                           if (p := c.type.bind_processor(conn.dialect)) is not None]

    def execute(self, conn: Connection, rows: Sequence[tuple[Any, ...]]) -> None:
        params: list[Any] = []
        for row in rows:
            if self.processors:
                values = list(row)
                for i, process in self.processors:
                    values[i] = process(values[i])
                row = tuple(values)
            params.append(row if self.positional else dict(zip(self.columns, row)))
        conn.exec_driver_sql(self.sql, params)


class SqlFeedbackStore:
    """FeedbackStore on SQLAlchemy Core; one instance per process, shared by request threads."""

    def __init__(self, engine: Engine, settings: FeedbackSettings | None = None) -> None:
        settings = settings or FeedbackSettings()
        self.engine = engine
        self.flush_seconds = settings.issued_flush_seconds
        self.queue_size = settings.issued_queue_size
        self._reset_runtime()
        ref = weakref.ref(self)
        # a store opened before a fork (gunicorn --preload) gets its own pool and writer in the child
        os.register_at_fork(after_in_child=lambda: (s := ref()) is not None and s._after_fork())

    def _reset_runtime(self) -> None:
        # A deque: appends and pops are atomic, so request threads and the writer never wait on
        # each other's lock (queue.Queue takes a mutex and a condition per item).
        self._queue: deque[IssuedCard] = deque()
        self._state_lock = threading.Lock()   # orders "enqueue" against "closed"
        self._flush_lock = threading.Lock()   # one flush at a time
        self._pending_lock = threading.Lock()
        self._pending: set[str] = set()       # uuids queued but not yet committed
        self._retry: list[IssuedCard] = []    # a flush that failed, tried again next time
        self._stop = threading.Event()
        self._writer: threading.Thread | None = None
        self._closed = False
        self._issued_insert: _DriverInsert | None = None

    def _after_fork(self) -> None:
        self.engine.dispose(close=False)  # never share the parent's connections
        self._reset_runtime()

    # -------------------------------------------------------------- issued cards

    def record_issued(self, cards: Sequence[IssuedCard]) -> None:
        """Queue the records for the writer thread; write them here if the queue is full."""
        cards = [c for c in cards if c.uuid]
        if not cards:
            return
        uuids = [c.uuid for c in cards]
        with self._pending_lock:
            self._pending.update(uuids)
            metrics.issued_queued(len(self._pending))
        with self._state_lock:
            if self._closed:
                overflow = cards
            else:
                self._ensure_writer()
                room = max(0, self.queue_size - len(self._queue))
                self._queue.extend(cards[:room])
                overflow = cards[room:]
        if overflow:
            log.warning("issued-card queue full or closed: writing synchronously",
                        extra={"event": "issued_sync_write", "count": len(overflow)})
            try:
                self._write_issued(overflow)
            except SQLAlchemyError as exc:
                self._done_pending(overflow)
                log.error("could not record issued cards: %s", type(exc).__name__,
                          extra={"event": "issued_lost", "count": len(overflow)})
                metrics.count_issued_lost(len(overflow), "database_unavailable")

    def _ensure_writer(self) -> None:
        if self._writer is None or not self._writer.is_alive():
            self._writer = threading.Thread(target=self._run_writer, name="ivig-cds-issued-writer", daemon=True)
            self._writer.start()

    def _run_writer(self) -> None:
        while not self._stop.wait(self.flush_seconds):
            try:
                self.flush()
            except Exception as exc:  # the writer must outlive any one failure
                log.error("issued-card flush failed: %s", type(exc).__name__, extra={"event": "issued_flush_failed"})

    def flush(self) -> int:
        """Write everything queued so far, ``ISSUED_BATCH`` per transaction; how many were written."""
        written = 0
        size = ISSUED_BATCH
        with self._flush_lock:
            while True:
                batch, self._retry = self._retry, []
                while len(batch) < size:
                    try:
                        batch.append(self._queue.popleft())
                    except IndexError:
                        break
                if not batch:
                    return written
                try:
                    self._write_issued(batch)
                except SQLAlchemyError as exc:
                    # the database is away: keep the batch and try again on the next tick
                    self._retry = batch
                    log.error("issued-card write failed, will retry: %s", type(exc).__name__,
                              extra={"event": "issued_retry", "count": len(batch)})
                    return written
                written += len(batch)

    def _write_issued(self, cards: Sequence[IssuedCard]) -> None:
        rows = sorted((_issued_values(c) for c in cards), key=itemgetter(0))  # by uuid (PostgreSQL row locks)
        try:
            self._run_tx(lambda conn: self._insert_issued(conn, rows))
        except (OperationalError, InterfaceError):
            raise  # the database is away: the caller keeps the batch and retries
        except DBAPIError as exc:
            if len(cards) > 1:  # one record the database refuses must not hold back the others
                for card in cards:
                    self._write_issued([card])
                return
            log.error("dropping an issued-card record the database refuses: %s", type(exc).__name__,
                      extra={"event": "issued_rejected", "count": 1})
            metrics.count_issued_lost(1, "rejected")
        self._done_pending(cards)

    def _done_pending(self, cards: Sequence[IssuedCard]) -> None:
        uuids = [c.uuid for c in cards]  # made before the lock: request threads and feedback calls wait on it
        with self._pending_lock:
            self._pending.difference_update(uuids)
            metrics.issued_queued(len(self._pending))

    def _insert_issued(self, conn: Connection, rows: list[tuple[Any, ...]]) -> None:
        insert = self._issued_insert
        if insert is None:  # compiled for this store's database on first use
            insert = self._issued_insert = _DriverInsert(conn, issued_card)
        insert.execute(conn, rows)

    # -------------------------------------------------------------- feedback

    def store_feedback(self, service_id: str, items: Sequence[FeedbackItem]) -> StoreResult:
        """Store a batch atomically; the same feedback twice is stored once."""
        _check_lengths(items)
        received = datetime.now(timezone.utc)
        by_key: dict[str, dict[str, Any]] = {}
        for item in items:
            key = dedupe_key(service_id, item)
            by_key.setdefault(key, {
                "dedupe_key": key,
                "card_uuid": item.card,
                "service_id": service_id,
                "outcome": item.outcome,
                "accepted_suggestions": json.dumps(list(item.accepted_suggestions)),
                "override_code": item.override_code,
                "override_system": item.override_system,
                "override_display": item.override_display,
                "user_comment": item.user_comment,
                "outcome_timestamp": item.outcome_timestamp,
                "received_at": received,
            })
        rows = [by_key[k] for k in sorted(by_key)]  # same order in every batch: no lock cycles

        def work(conn: Connection) -> tuple[list[str], set[str]]:
            inserted: list[str] = []
            stmt = _dialect_insert(conn, feedback).returning(feedback.c.card_uuid)
            for chunk in _chunks(rows):
                inserted.extend(conn.execute(stmt.values(chunk)).scalars().all())
            cards = sorted(set(inserted))
            known: set[str] = set()
            for chunk in _chunks(cards):
                known.update(conn.execute(select(issued_card.c.uuid).where(issued_card.c.uuid.in_(chunk))).scalars())
            return inserted, known

        try:
            inserted, known = self._run_tx(work)
        except SQLAlchemyError as exc:
            log.error("feedback not stored: %s", type(exc).__name__, extra={"event": "feedback_failed",
                                                                            "count": len(items)})
            raise ServiceUnavailable("the feedback could not be stored; send it again later") from None
        with self._pending_lock:
            known |= self._pending.intersection(inserted)
        unknown = sum(1 for card in inserted if card not in known)
        return StoreResult(stored=len(inserted), duplicates=len(items) - len(inserted), unknown_cards=unknown)

    def _run_tx(self, work, attempts: int = 5):
        """Run ``work(conn)`` in one transaction; retry it whole on deadlock / lock timeout."""
        for attempt in range(1, attempts + 1):
            try:
                with self.engine.begin() as conn:
                    return work(conn)
            except DBAPIError as exc:
                if attempt == attempts or not _is_transient(exc):
                    raise
                time.sleep(0.05 * attempt)
        raise AssertionError("unreachable")

    # -------------------------------------------------------------- reading, housekeeping

    def ping(self) -> None:
        with self.engine.connect() as conn:
            conn.execute(text("SELECT 1"))

    def count(self) -> dict[str, int]:
        """Rows per table (operations and tests)."""
        with self.engine.connect() as conn:
            return {
                "issued": conn.execute(select(func.count()).select_from(issued_card)).scalar_one(),
                "feedback": conn.execute(select(func.count()).select_from(feedback)).scalar_one(),
            }

    def purge(self, before: datetime) -> tuple[int, int]:
        """Delete cards issued and feedback received before ``before``; returns both counts."""
        def work(conn: Connection) -> tuple[int, int]:
            cards = conn.execute(delete(issued_card).where(issued_card.c.issued_at < before)).rowcount
            items = conn.execute(delete(feedback).where(feedback.c.received_at < before)).rowcount
            return cards, items

        return self._run_tx(work)

    def report(self, since: datetime | date | None = None) -> dict[str, Any]:
        """Per service and topic: cards shown, outcomes, override reasons ranked, suggestion uptake."""
        if isinstance(since, date) and not isinstance(since, datetime):
            since = datetime(since.year, since.month, since.day, tzinfo=timezone.utc)
        with self.engine.connect() as conn:
            return build_report(conn, since)

    def close(self) -> None:
        """Flush every queued record, stop the writer, release connections. Idempotent."""
        with self._state_lock:
            if self._closed:
                return
            self._closed = True
        self._stop.set()
        if self._writer is not None and self._writer is not threading.current_thread():
            self._writer.join(timeout=30)  # it wakes at once; only a flush in progress delays it
        try:
            self.flush()
        finally:
            left = self._retry + list(self._queue)
            if left:
                log.error("issued-card records not written at shutdown",
                          extra={"event": "issued_lost", "count": len(left)})
                metrics.count_issued_lost(len(left), "shutdown")
                self._done_pending(left)  # counted here: the gauge must not make the master count them again
            self.engine.dispose()


# ------------------------------------------------------------------ the report


NO_REASON = "(no reason given)"


def _rate(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def build_report(conn: Connection, since: datetime | None) -> dict[str, Any]:
    """The override picture, computed from the tables; known/unknown cards decided by join."""
    card_filter = [issued_card.c.issued_at >= since] if since else []
    fb_filter = [feedback.c.outcome_timestamp >= since] if since else []
    rows: dict[tuple[str, str | None], dict[str, Any]] = {}

    def row(service: str, topic: str | None) -> dict[str, Any]:
        key = (service, topic)
        if key not in rows:
            rows[key] = {
                "service": service, "topic": topic, "knownCards": topic is not None,
                "cardsShown": 0, "cardsWithFeedback": 0, "feedback": 0, "accepted": 0, "overridden": 0,
                "acceptanceRate": None, "overrideRate": None, "withComment": 0,
                "overrideReasons": [], "suggestions": [],
            }
        return rows[key]

    shown = select(issued_card.c.service_id, issued_card.c.topic, func.count()).where(*card_filter) \
        .group_by(issued_card.c.service_id, issued_card.c.topic)
    for service, topic, n in conn.execute(shown):
        row(service, topic)["cardsShown"] = n

    joined = feedback.outerjoin(issued_card, issued_card.c.uuid == feedback.c.card_uuid)
    outcomes = select(
        feedback.c.service_id, issued_card.c.topic, feedback.c.outcome, func.count(),
        func.count(feedback.c.user_comment),
    ).select_from(joined).where(*fb_filter).group_by(feedback.c.service_id, issued_card.c.topic, feedback.c.outcome)
    for service, topic, outcome, n, commented in conn.execute(outcomes):
        r = row(service, topic)
        r[outcome] = r.get(outcome, 0) + n
        r["feedback"] += n
        r["withComment"] += commented

    distinct_cards = select(
        feedback.c.service_id, issued_card.c.topic, func.count(feedback.c.card_uuid.distinct()),
    ).select_from(joined).where(*fb_filter).group_by(feedback.c.service_id, issued_card.c.topic)
    for service, topic, n in conn.execute(distinct_cards):
        row(service, topic)["cardsWithFeedback"] = n

    reasons = select(
        feedback.c.service_id, issued_card.c.topic, feedback.c.override_code, feedback.c.override_system,
        func.max(feedback.c.override_display), func.count(),
    ).select_from(joined).where(feedback.c.outcome == "overridden", *fb_filter).group_by(
        feedback.c.service_id, issued_card.c.topic, feedback.c.override_code, feedback.c.override_system)
    for service, topic, code, system, display, n in conn.execute(reasons):
        row(service, topic)["overrideReasons"].append(
            {"code": code, "system": system, "display": display if code else NO_REASON, "count": n})

    _suggestion_uptake(conn, card_filter, fb_filter, row)
    by_version = _by_ruleset_version(conn, card_filter, fb_filter)

    out_rows = []
    for key in sorted(rows, key=lambda k: (k[0], k[1] is None, k[1] or "")):
        r = rows[key]
        decided = r["accepted"] + r["overridden"]
        r["acceptanceRate"] = _rate(r["accepted"], decided)
        r["overrideRate"] = _rate(r["overridden"], decided)
        r["overrideReasons"].sort(key=lambda x: (-x["count"], x["code"] is None, x["code"] or "", x["system"] or ""))
        for rank, reason in enumerate(r["overrideReasons"], 1):
            reason["rank"] = rank
        out_rows.append(r)

    totals = {
        "cardsShown": sum(r["cardsShown"] for r in out_rows),
        "feedback": sum(r["feedback"] for r in out_rows),
        "accepted": sum(r["accepted"] for r in out_rows),
        "overridden": sum(r["overridden"] for r in out_rows),
        "unknownCardFeedback": sum(r["feedback"] for r in out_rows if not r["knownCards"]),
    }
    return {
        "since": since.isoformat() if since else None,
        "generatedAt": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "totals": totals,
        "topics": out_rows,
        "rulesetVersions": by_version,
    }


def _by_ruleset_version(conn: Connection, card_filter, fb_filter) -> list[dict[str, Any]]:
    """Cards and outcomes per ruleset version: which logic produced the cards that were overridden."""
    versions: dict[str, dict[str, Any]] = {}

    def entry(version: str) -> dict[str, Any]:
        return versions.setdefault(version, {"rulesetVersion": version, "cardsShown": 0, "accepted": 0,
                                             "overridden": 0, "overrideRate": None})

    shown = select(issued_card.c.ruleset_version, func.count()).where(*card_filter) \
        .group_by(issued_card.c.ruleset_version)
    for version, n in conn.execute(shown):
        entry(version)["cardsShown"] = n
    outcomes = select(issued_card.c.ruleset_version, feedback.c.outcome, func.count()) \
        .select_from(feedback.join(issued_card, issued_card.c.uuid == feedback.c.card_uuid)) \
        .where(*fb_filter).group_by(issued_card.c.ruleset_version, feedback.c.outcome)
    for version, outcome, n in conn.execute(outcomes):
        entry(version)[outcome] = n
    for e in versions.values():
        e["overrideRate"] = _rate(e["overridden"], e["accepted"] + e["overridden"])
    return [versions[v] for v in sorted(versions)]


def _suggestion_uptake(conn: Connection, card_filter, fb_filter, row) -> None:
    """Offered and accepted per suggestion (by label; by position when a card had no labels)."""
    offered: dict[tuple[str, str, str], int] = defaultdict(int)
    accepted: dict[tuple[str, str, str], int] = defaultdict(int)

    def names(uuids_json: str, labels_json: str) -> list[tuple[str, str]]:
        uuids = json.loads(uuids_json or "[]")
        labels = json.loads(labels_json or "[]")
        return [(u, labels[i] if i < len(labels) and labels[i] else f"suggestion {i + 1}") for i, u in enumerate(uuids)]

    cards = select(issued_card.c.service_id, issued_card.c.topic, issued_card.c.suggestion_uuids,
                   issued_card.c.suggestion_labels).where(issued_card.c.suggestion_uuids != "[]", *card_filter)
    for service, topic, uuids, labels in conn.execution_options(yield_per=1000).execute(cards):
        for _, name in names(uuids, labels):
            offered[(service, topic, name)] += 1

    taken = select(feedback.c.service_id, issued_card.c.topic, feedback.c.accepted_suggestions,
                   issued_card.c.suggestion_uuids, issued_card.c.suggestion_labels) \
        .select_from(feedback.join(issued_card, issued_card.c.uuid == feedback.c.card_uuid)) \
        .where(feedback.c.outcome == "accepted", *fb_filter)
    for service, topic, chosen, uuids, labels in conn.execution_options(yield_per=1000).execute(taken):
        by_uuid = dict(names(uuids, labels))
        for suggestion in set(json.loads(chosen or "[]")):
            if suggestion in by_uuid:
                accepted[(service, topic, by_uuid[suggestion])] += 1

    for key in sorted(set(offered) | set(accepted)):
        service, topic, name = key
        row(service, topic)["suggestions"].append({
            "label": name, "offered": offered[key], "accepted": accepted[key],
            "acceptanceRate": _rate(accepted[key], offered[key]),
        })
