"""The SQL feedback store against real SQLite files and a real PostgreSQL database.

Every behaviour runs on both (``db_url``): migrations, idempotency, atomic batches (a database
error injected mid-batch), unknown cards, the issued-card writer (off the request path, flushed
on close, synchronous when its queue is full), and no patient identifier in any row.
"""

from __future__ import annotations

import json
import time
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import event, inspect, select, text

from hooks.service_def import HookResult
from service.app import create_app
from service.errors import BadRequest, ServiceUnavailable
from service.storage.db import metadata
from service.storage.sql_store import (
    CHUNK,
    ISSUED_BATCH,
    SqlFeedbackStore,
    feedback,
    issued_card,
)
from tests.conftest import make_settings
from tests.pg import db_url, pg_database, pg_url  # noqa: F401 - fixtures
from tests.storage_support import SERVICE, STAMP, fb_item, issued, items, store_for


def feedback_rows(store: SqlFeedbackStore) -> list[dict[str, Any]]:
    with store.engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(select(feedback))]


def wait_for(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


@pytest.fixture
def store(tmp_path, db_url):  # noqa: F811 - fixture
    s = store_for(tmp_path, db_url, issued_flush_seconds=0.05)
    yield s
    s.close()


# ------------------------------------------------------------------ schema


def test_migrations_create_every_table_of_the_metadata(tmp_path, db_url):  # noqa: F811
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    import service.auth.replay  # noqa: F401 - its table is part of the migration
    from service.storage.sql_store import alembic_config

    s = store_for(tmp_path, db_url)
    try:
        names = set(inspect(s.engine).get_table_names())
        assert {"issued_card", "feedback", "jwt_replay", "alembic_version"} <= names
        with s.engine.connect() as conn:
            ctx = MigrationContext.configure(conn)
            assert set(ctx.get_current_heads()) == set(ScriptDirectory.from_config(alembic_config()).get_heads())
            # what the migrations built is what the code declares (no column, index or type differs)
            assert compare_metadata(ctx, metadata) == []
    finally:
        s.close()


def test_opening_again_keeps_the_data(tmp_path, db_url):  # noqa: F811
    first = store_for(tmp_path, db_url)
    first.store_feedback(SERVICE, items(fb_item("card-a")))
    first.close()
    second = store_for(tmp_path, db_url)
    try:
        assert second.count()["feedback"] == 1
    finally:
        second.close()


def test_issued_card_table_holds_no_patient_identifier_column(store):
    columns = {c["name"] for c in inspect(store.engine).get_columns("issued_card")}
    assert "patient_hash" in columns
    assert not {"patient_id", "patient", "patientid", "mrn"} & {c.lower() for c in columns}


# ------------------------------------------------------------------ feedback


def test_same_feedback_twice_is_stored_once(store):
    batch = items(fb_item("card-1"), fb_item("card-2", "accepted", accepted=["s-1"]),
                  fb_item("card-3", code="other-indication", comment="seen by immunology"))
    first = store.store_feedback(SERVICE, batch)
    assert (first.stored, first.duplicates) == (3, 0)
    again = store.store_feedback(SERVICE, batch)
    assert (again.stored, again.duplicates) == (0, 3)
    assert store.count()["feedback"] == 3


def test_duplicates_inside_one_batch_and_across_time_zones_are_one_item(store):
    same_instant = fb_item("card-1", stamp="2026-01-01T14:00:00+02:00")
    result = store.store_feedback(SERVICE, items(fb_item("card-1"), fb_item("card-1"), same_instant))
    assert (result.stored, result.duplicates) == (1, 2)
    assert store.count()["feedback"] == 1


def test_different_feedback_on_one_card_is_kept_apart(store):
    later = fb_item("card-1", stamp="2026-01-01T12:05:00Z")
    other_service = store.store_feedback("ivig-patient-view", items(fb_item("card-1")))
    result = store.store_feedback(SERVICE, items(fb_item("card-1"), later, fb_item("card-1", code="x")))
    assert result.stored == 3 and other_service.stored == 1
    assert store.count()["feedback"] == 4


def test_fields_round_trip(store):
    store.store_feedback(SERVICE, items(
        fb_item("card-1", code="other-indication", display="Other indication", comment="see note"),
        fb_item("card-2", "accepted", accepted=["s-2", "s-1"], stamp="2026-03-04T05:06:07.891+01:00"),
    ))
    rows = {r["card_uuid"]: r for r in feedback_rows(store)}
    over = rows["card-1"]
    assert (over["outcome"], over["override_code"], over["override_display"], over["user_comment"]) == (
        "overridden", "other-indication", "Other indication", "see note")
    assert over["override_system"] == "https://ivig-cds.example/override"
    acc = rows["card-2"]
    assert json.loads(acc["accepted_suggestions"]) == ["s-2", "s-1"]
    assert acc["outcome_timestamp"] == datetime(2026, 3, 4, 4, 6, 7, 891000, tzinfo=timezone.utc)
    assert acc["received_at"].tzinfo is not None
    assert abs(acc["received_at"] - datetime.now(timezone.utc)) < timedelta(minutes=1)


def test_unknown_cards_are_accepted_and_reported_unknown_until_the_card_record_arrives(store):
    known = issued()
    store.record_issued([known])
    assert wait_for(lambda: store.count()["issued"] == 1)
    result = store.store_feedback(SERVICE, items(fb_item(known.uuid), fb_item("never-issued")))
    assert (result.stored, result.unknown_cards) == (2, 1)

    report = store.report()
    assert report["totals"]["unknownCardFeedback"] == 1
    unknown_rows = [r for r in report["topics"] if not r["knownCards"]]
    assert [(r["topic"], r["feedback"]) for r in unknown_rows] == [(None, 1)]

    # the card record is written after its feedback (another worker's queue): known at report time
    store.record_issued([issued("never-issued", topic="workup-incomplete")])
    assert wait_for(lambda: store.count()["issued"] == 2)
    report = store.report()
    assert report["totals"]["unknownCardFeedback"] == 0
    assert {r["topic"]: r["overridden"] for r in report["topics"]} == {"ivig-not-indicated": 1,
                                                                       "workup-incomplete": 1}


def test_a_card_still_in_the_queue_counts_as_known(tmp_path, db_url):  # noqa: F811
    s = store_for(tmp_path, db_url, issued_flush_seconds=3600)
    try:
        card = issued()
        s.record_issued([card])
        assert s.count()["issued"] == 0  # not written yet
        assert s.store_feedback(SERVICE, items(fb_item(card.uuid))).unknown_cards == 0
    finally:
        s.close()


def test_too_long_values_are_refused_before_anything_is_written(store):
    with pytest.raises(BadRequest) as err:
        store.store_feedback(SERVICE, items(fb_item("ok"), fb_item("x" * 256)))
    assert err.value.details == ["feedback[1].card: longer than 255 characters"]
    assert store.count()["feedback"] == 0


def _fail_on_insert(engine, number: int, make_error):
    """Raise ``make_error()`` as the DBAPI error of the ``number``-th INSERT INTO feedback."""
    seen = {"inserts": 0}

    def before(conn, cursor, statement, parameters, context, executemany):
        if statement.lstrip().upper().startswith("INSERT INTO FEEDBACK"):
            seen["inserts"] += 1
            if seen["inserts"] == number:
                raise make_error()

    event.listen(engine, "before_cursor_execute", before)
    return seen, lambda: event.remove(engine, "before_cursor_execute", before)


def test_a_batch_failing_mid_way_stores_nothing(store):
    store.store_feedback(SERVICE, items(fb_item("earlier")))
    batch = items(*(fb_item(f"card-{i:05d}") for i in range(CHUNK * 2 + 10)))  # three INSERT statements
    dbapi = store.engine.dialect.dbapi
    seen, remove = _fail_on_insert(store.engine, 2, lambda: dbapi.OperationalError("injected: disk full"))
    try:
        with pytest.raises(ServiceUnavailable):
            store.store_feedback(SERVICE, batch)
    finally:
        remove()
    assert seen["inserts"] == 2  # the first chunk had been inserted when the second failed
    assert [r["card_uuid"] for r in feedback_rows(store)] == ["earlier"]
    # the same batch sent again once the database is fine is stored whole
    result = store.store_feedback(SERVICE, batch)
    assert (result.stored, result.duplicates) == (len(batch), 0)
    assert store.count()["feedback"] == len(batch) + 1


def test_a_deadlock_or_lock_timeout_is_retried_whole(store):
    if store.engine.dialect.name == "postgresql":
        import psycopg

        make_error = lambda: psycopg.errors.DeadlockDetected("injected deadlock")  # noqa: E731
    else:
        import sqlite3

        make_error = lambda: sqlite3.OperationalError("database is locked")  # noqa: E731
    batch = items(*(fb_item(f"card-{i}") for i in range(CHUNK + 5)))
    seen, remove = _fail_on_insert(store.engine, 2, make_error)
    try:
        result = store.store_feedback(SERVICE, batch)
    finally:
        remove()
    assert seen["inserts"] == 4  # two chunks, failed on the second, then both again
    assert (result.stored, result.duplicates) == (len(batch), 0)
    assert store.count()["feedback"] == len(batch)


def test_database_errors_do_not_carry_feedback_text(store, caplog):
    secret = "comment naming Jane Doe"
    dbapi = store.engine.dialect.dbapi
    _, remove = _fail_on_insert(store.engine, 1, lambda: dbapi.OperationalError("injected"))
    try:
        with pytest.raises(ServiceUnavailable) as err:
            store.store_feedback(SERVICE, items(fb_item("card-1", comment=secret)))
    finally:
        remove()
    assert err.value.__suppress_context__
    assert secret not in str(err.value) and secret not in caplog.text


# ------------------------------------------------------------------ issued cards


def test_issued_cards_are_written_by_the_background_writer(store):
    cards = [issued(suggestions=(("s-" + str(i), "Delete the order"),)) for i in range(50)]
    store.record_issued(cards)
    assert wait_for(lambda: store.count()["issued"] == 50, timeout=10)
    with store.engine.connect() as conn:
        row = conn.execute(select(issued_card).where(issued_card.c.uuid == cards[7].uuid)).one()._mapping
    assert (row["topic"], row["indicator"], row["service_id"], row["ruleset_version"]) == (
        "ivig-not-indicated", "warning", SERVICE, "test-1")
    assert json.loads(row["suggestion_uuids"]) == ["s-7"]
    assert json.loads(row["suggestion_labels"]) == ["Delete the order"]
    assert row["issued_at"] == cards[7].issued_at


def _count_issued_inserts(engine) -> tuple[list[int], Any]:
    """Rows per INSERT INTO issued_card statement, as they reach the driver."""
    sizes: list[int] = []

    def before(conn, cursor, statement, parameters, context, executemany):
        if statement.lstrip().upper().startswith("INSERT INTO ISSUED_CARD"):
            sizes.append(len(parameters) if executemany else 1)

    event.listen(engine, "before_cursor_execute", before)
    return sizes, lambda: event.remove(engine, "before_cursor_execute", before)


def test_the_writer_writes_queued_records_in_large_transactions(tmp_path, db_url):  # noqa: F811
    s = store_for(tmp_path, db_url, issued_flush_seconds=3600)
    sizes, stop = _count_issued_inserts(s.engine)
    try:
        cards = [issued() for _ in range(ISSUED_BATCH + 20)]
        s.record_issued(cards)
        assert s.flush() == len(cards)
        assert sizes == [ISSUED_BATCH, 20]
        assert s.count()["issued"] == len(cards)
    finally:
        stop()
        s.close()


def test_close_flushes_every_queued_record(tmp_path, db_url):  # noqa: F811
    s = store_for(tmp_path, db_url, issued_flush_seconds=3600)
    cards = [issued() for _ in range(300)]
    s.record_issued(cards)
    assert s.count()["issued"] == 0  # off the request path: nothing written by record_issued itself
    s.close()
    s.close()  # idempotent
    again = store_for(tmp_path, db_url)
    try:
        assert again.count()["issued"] == 300
    finally:
        again.close()


def test_a_full_queue_writes_synchronously_instead_of_dropping(tmp_path, db_url):  # noqa: F811
    s = store_for(tmp_path, db_url, issued_flush_seconds=3600, issued_queue_size=5)
    try:
        s.record_issued([issued() for _ in range(12)])
        assert s.count()["issued"] == 7  # five queued, the rest written at once
        s.record_issued([issued()])  # queue still full: written at once too
        assert s.count()["issued"] == 8
    finally:
        s.close()
    again = store_for(tmp_path, db_url)
    try:
        assert again.count()["issued"] == 13
    finally:
        again.close()


def test_the_writer_keeps_records_while_the_database_fails(store):
    dbapi = store.engine.dialect.dbapi
    failing = {"on": True}

    def before(conn, cursor, statement, parameters, context, executemany):
        if failing["on"] and statement.lstrip().upper().startswith("INSERT INTO ISSUED_CARD"):
            raise dbapi.OperationalError("injected: server gone")

    event.listen(store.engine, "before_cursor_execute", before)
    try:
        store.record_issued([issued() for _ in range(20)])
        time.sleep(0.3)  # several flush attempts fail
        assert store.count()["issued"] == 0
        failing["on"] = False
        assert wait_for(lambda: store.count()["issued"] == 20)
    finally:
        event.remove(store.engine, "before_cursor_execute", before)


def test_records_after_close_are_written_synchronously(tmp_path, db_url):  # noqa: F811
    s = store_for(tmp_path, db_url, issued_flush_seconds=3600)
    s.close()  # disposes the pool only: a request finishing after shutdown began is still recorded
    s.record_issued([issued()])
    assert s.count()["issued"] == 1
    s.engine.dispose()


def test_no_patient_identifier_reaches_the_database(tmp_path, db_url):  # noqa: F811
    from service.protocol.cds import _record_issued

    patient_id = "mrn-99887766"
    settings = make_settings(tmp_path, database_url=db_url, **{"feedback.issued_flush_seconds": 0.05})
    app = create_app(settings)
    st = app.extensions["ivig_cds"]
    try:
        card = {"uuid": str(uuid.uuid4()), "indicator": "warning", "summary": "s",
                "source": {"label": "x", "topic": {"code": "ivig-not-indicated"}},
                "suggestions": [{"label": "Delete the IVIG order", "uuid": "sug-1"}]}
        with app.app_context():
            _record_issued(st, st.services[SERVICE], "hook-1", patient_id, HookResult(cards=[card]))
        assert wait_for(lambda: st.store.count()["issued"] == 1)
        with st.store.engine.connect() as conn:
            row = dict(conn.execute(select(issued_card)).one()._mapping)
            dump = json.dumps([row, [dict(r._mapping) for r in conn.execute(select(feedback))]], default=str)
        assert patient_id not in dump
        assert row["patient_hash"] and len(row["patient_hash"]) == 32
        assert json.loads(row["suggestion_labels"]) == ["Delete the IVIG order"]
    finally:
        app.extensions["ivig_cds"].close()


# ------------------------------------------------------------------ reading and housekeeping


def test_ping_and_readiness(tmp_path, db_url):  # noqa: F811
    app = create_app(make_settings(tmp_path, database_url=db_url))
    try:
        app.extensions["ivig_cds"].store.ping()
        resp = app.test_client().get("/readyz")
        assert resp.status_code == 200 and resp.get_json()["checks"]["database"] == "ok"
    finally:
        app.extensions["ivig_cds"].close()


def test_purge_deletes_only_what_is_older(store):
    old, new = datetime.now(timezone.utc) - timedelta(days=40), datetime.now(timezone.utc)
    store.record_issued([issued("old-card", at=old), issued("new-card", at=new)])
    store.store_feedback(SERVICE, items(fb_item("old-card"), fb_item("new-card")))
    assert wait_for(lambda: store.count()["issued"] == 2)
    with store.engine.begin() as conn:  # feedback received long ago
        conn.execute(feedback.update().where(feedback.c.card_uuid == "old-card").values(received_at=old))
    assert store.purge(datetime.now(timezone.utc) - timedelta(days=30)) == (1, 1)
    assert store.count() == {"issued": 1, "feedback": 1}
    assert [r["card_uuid"] for r in feedback_rows(store)] == ["new-card"]


# ------------------------------------------------------------------ the endpoint with the real store


@pytest.fixture
def client(tmp_path, db_url):  # noqa: F811
    app = create_app(make_settings(tmp_path, database_url=db_url))
    yield app.test_client()
    app.extensions["ivig_cds"].close()


def test_feedback_endpoint_is_idempotent_and_marks_unknown_cards(client):
    body = {"feedback": [fb_item("card-1"), fb_item("card-2", "accepted", accepted=["s"])]}
    first = client.post(f"/cds-services/{SERVICE}/feedback", json=body)
    assert first.status_code == 200
    assert first.get_json() == {"stored": 2, "duplicates": 0, "unknownCards": 2}
    again = client.post(f"/cds-services/{SERVICE}/feedback", json=body)
    assert again.status_code == 200
    assert again.get_json() == {"stored": 0, "duplicates": 2, "unknownCards": 0}


def test_feedback_right_after_a_call_finds_its_cards_still_queued(tmp_path, db_url):  # noqa: F811
    """The call queues its records before answering; the writer has not run (flush in an hour)."""
    from prometheus_client import REGISTRY

    from fhir_fixtures import load_json
    from tests.deploy_support import metric_value

    app = create_app(make_settings(tmp_path, database_url=db_url, **{"feedback.issued_flush_seconds": 3600}))
    client = app.test_client()
    try:
        cards = client.post(f"/cds-services/{SERVICE}",
                            json=load_json("sample-isolated-igm", "request-order-sign.json")).get_json()["cards"]
        assert cards and app.extensions["ivig_cds"].store.count()["issued"] == 0
        resp = client.post(f"/cds-services/{SERVICE}/feedback", json={"feedback": [fb_item(c["uuid"]) for c in cards]})
        assert resp.get_json() == {"stored": len(cards), "duplicates": 0, "unknownCards": 0}
        scrape = client.get("/metrics").get_data(as_text=True)
        assert metric_value(scrape, "ivig_cds_issued_cards_queued") == len(cards)
    finally:
        app.extensions["ivig_cds"].close()
    assert REGISTRY.get_sample_value("ivig_cds_issued_cards_queued") == 0  # written at close


def test_feedback_endpoint_refuses_a_malformed_batch_whole(client):
    body = {"feedback": [fb_item("card-1"), {"card": "card-2", "outcome": "maybe", "outcomeTimestamp": STAMP}]}
    resp = client.post(f"/cds-services/{SERVICE}/feedback", json=body)
    assert resp.status_code == 400
    assert any("feedback[1].outcome" in d for d in resp.get_json()["details"])
    report = client.get("/analytics/overrides").get_json()
    assert report["totals"]["feedback"] == 0


def test_feedback_endpoint_answers_503_when_the_database_fails(client):
    store = client.application.extensions["ivig_cds"].store
    dbapi = store.engine.dialect.dbapi
    _, remove = _fail_on_insert(store.engine, 1, lambda: dbapi.OperationalError("injected"))
    try:
        resp = client.post(f"/cds-services/{SERVICE}/feedback", json={"feedback": [fb_item("card-1")]})
    finally:
        remove()
    assert resp.status_code == 503  # the EHR may send it again; nothing was stored
    assert store.count()["feedback"] == 0


def test_sqlite_default_database_is_created_in_the_data_dir(tmp_path):
    settings = make_settings(tmp_path)
    app = create_app(settings)
    try:
        assert (tmp_path / "data" / "ivig-cds.sqlite3").is_file()
        with app.extensions["ivig_cds"].store.engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM feedback")).scalar_one() == 0
    finally:
        app.extensions["ivig_cds"].close()
