"""Feedback under load, on both databases: every item counted exactly once, nothing acknowledged lost.

* threads sharing one store post overlapping batches while cards are being recorded;
* several processes migrate one fresh database at the same moment;
* two real gunicorn workers (gthread) take thousands of items, each item sent twice;
* a gunicorn server stopped with SIGTERM in the middle of the load keeps every item it answered
  200 for, and the same items sent again after the restart are not counted twice.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest
import requests
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, select, text

from service.storage.sql_store import alembic_config, feedback
from tests.pg import db_url, pg_database, pg_url  # noqa: F401 - fixtures
from tests.servers import free_port, stop_process
from tests.storage_support import SERVICE, fb_item, issued, items, store_for

FEEDBACK_URL = f"/cds-services/{SERVICE}/feedback"


def unique_items(prefix: str, n: int) -> list[dict[str, Any]]:
    """n distinct feedback items with a realistic mix of outcomes and reasons."""
    out = []
    for i in range(n):
        card = f"{prefix}-{i:05d}"
        if i % 3 == 0:
            out.append(fb_item(card, "accepted", accepted=[f"{card}-s1"]))
        elif i % 3 == 1:
            out.append(fb_item(card, code=f"reason-{i % 4}", display=f"Reason {i % 4}"))
        else:
            out.append(fb_item(card))
    return out


def batches_of(seq: list, size: int) -> list[list]:
    return [seq[i:i + size] for i in range(0, len(seq), size)]


def stored_cards(tmp_path: Path, url: str) -> list[str]:
    s = store_for(tmp_path, url)
    try:
        with s.engine.connect() as conn:
            return list(conn.execute(select(feedback.c.card_uuid)).scalars())
    finally:
        s.close()


# ------------------------------------------------------------------ threads, one process


def test_threads_posting_overlapping_batches_count_every_item_once(tmp_path, db_url):  # noqa: F811
    store = store_for(tmp_path, db_url, issued_flush_seconds=0.05)
    try:
        unique = unique_items("thr", 3000)
        work = unique * 2  # every item sent twice, by different threads, in different batches
        random.Random(8).shuffle(work)
        pending: queue.Queue[list] = queue.Queue()
        for batch in batches_of(work, 25):
            pending.put(batch)
        totals = {"stored": 0, "duplicates": 0}
        lock = threading.Lock()
        errors: list[BaseException] = []

        def post() -> None:
            while True:
                try:
                    batch = pending.get_nowait()
                except queue.Empty:
                    return
                try:
                    result = store.store_feedback(SERVICE, items(*batch))
                except BaseException as exc:  # surfaced below
                    errors.append(exc)
                    return
                with lock:
                    totals["stored"] += result.stored
                    totals["duplicates"] += result.duplicates

        def record() -> None:  # the hook side recording cards at the same time
            for i in range(0, 3000, 50):
                store.record_issued([issued(f"thr-{j:05d}") for j in range(i, i + 50)])

        threads = [threading.Thread(target=post) for _ in range(8)] + [threading.Thread(target=record)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=300)
        assert not errors, errors
        assert totals == {"stored": 3000, "duplicates": 3000}
        assert store.count()["feedback"] == 3000
        store.flush()
        report = store.report()
        assert report["totals"]["feedback"] == 3000
        assert report["totals"]["unknownCardFeedback"] == 0
        assert report["totals"]["accepted"] == 1000 and report["totals"]["overridden"] == 2000
    finally:
        store.close()


# ------------------------------------------------------------------ processes migrating at once


def test_workers_starting_together_migrate_once(tmp_path, db_url):  # noqa: F811
    start_at = time.time() + 4.0
    code = textwrap.dedent(f"""
        import time
        import alembic.command, alembic.runtime.migration, alembic.script  # imported before the start line
        from service.settings import load_settings
        from service.storage.sql_store import open_store
        settings = load_settings(environ={{}}, overrides={{"data_dir": {str(tmp_path / 'data')!r},
                                                          "database_url": {db_url!r}}})
        time.sleep(max(0.0, {start_at!r} - time.time()))
        open_store(settings).close()
    """)
    env = {k: v for k, v in os.environ.items() if not k.startswith("IVIG_CDS_")}
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, stderr=subprocess.PIPE, text=True)
             for _ in range(6)]
    outcomes = [(p.wait(timeout=120), p.stderr.read()) for p in procs]
    for p in procs:
        p.stderr.close()
    assert [rc for rc, _ in outcomes] == [0] * len(procs), [err[-2000:] for _, err in outcomes]
    s = store_for(tmp_path, db_url)
    try:
        with s.engine.connect() as conn:
            heads = ScriptDirectory.from_config(alembic_config()).get_heads()
            assert len(heads) == 1  # one line of migrations, no branches
            assert conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all() == heads
        assert {"issued_card", "feedback", "jwt_replay"} <= set(inspect(s.engine).get_table_names())
    finally:
        s.close()


# ------------------------------------------------------------------ real gunicorn workers


def _control_socket_args() -> list[str]:
    """gunicorn >= 24 opens a control socket under ~/.gunicorn by default: keep tests out of $HOME."""
    out = subprocess.run([sys.executable, "-m", "gunicorn", "--help"], capture_output=True, text=True).stdout
    return ["--no-control-socket"] if "--no-control-socket" in out else []


def wait_ready(base: str, proc: subprocess.Popen, log_path: Path, timeout: float = 60.0) -> None:
    """Until /readyz answers 200 (workers boot and migrate first; early requests may time out)."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"gunicorn exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
        try:
            resp = requests.get(base + "/readyz", timeout=5)
            if resp.status_code == 200:
                return
            last = f"HTTP {resp.status_code}"
        except requests.RequestException as exc:
            last = type(exc).__name__
        time.sleep(0.1)
    raise AssertionError(f"gunicorn not ready within {timeout}s ({last}):\n{log_path.read_text()[-3000:]}")


@contextlib.contextmanager
def gunicorn(tmp_path: Path, url: str, name: str, **extra_env: str) -> Iterator[tuple[str, subprocess.Popen, Path]]:
    """``gunicorn -w 2 -k gthread --threads 4 service.wsgi:app`` on a free port; yields (base, proc, log)."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("IVIG_CDS_")}
    env.update({"IVIG_CDS_DATABASE_URL": url, "IVIG_CDS_DATA_DIR": str(tmp_path / "data"),
                "IVIG_CDS_LOG_LEVEL": "WARNING", **extra_env})
    log_path = tmp_path / f"gunicorn-{name}.log"
    workdir = tmp_path / f"cwd-{name}"  # no gunicorn.conf.py is picked up from here
    workdir.mkdir()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-w", "2", "-k", "gthread", "--threads", "4",
             "-b", f"127.0.0.1:{port}", "--graceful-timeout", "30", "--timeout", "60", *_control_socket_args(),
             "service.wsgi:app"],
            env=env, cwd=workdir, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base, proc, log_path)
        yield base, proc, log_path
    finally:
        stop_process(proc, timeout=60)


def post_all(base: str, batches: list[list], threads: int = 16) -> list[tuple[int, dict | None]]:
    """POST every batch from ``threads`` clients at once; (status, body) per batch, in order."""
    results: list[tuple[int, dict | None] | None] = [None] * len(batches)
    pending: queue.Queue[int] = queue.Queue()
    for i in range(len(batches)):
        pending.put(i)

    def client() -> None:
        with requests.Session() as http:
            while True:
                try:
                    i = pending.get_nowait()
                except queue.Empty:
                    return
                try:
                    resp = http.post(base + FEEDBACK_URL, json={"feedback": batches[i]}, timeout=60)
                    results[i] = (resp.status_code, resp.json() if resp.status_code == 200 else None)
                except requests.RequestException:
                    results[i] = (0, None)

    workers = [threading.Thread(target=client) for _ in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join(timeout=600)
    return [r if r is not None else (0, None) for r in results]


@pytest.mark.slow
def test_two_gunicorn_workers_count_every_item_exactly_once(tmp_path, db_url):  # noqa: F811
    unique = unique_items("gun", 4000)
    work = unique * 2
    random.Random(2).shuffle(work)
    with gunicorn(tmp_path, db_url, "load") as (base, _proc, log_path):
        results = post_all(base, batches_of(work, 20))
        assert [status for status, _ in results].count(200) == len(results), \
            f"{sorted(set(s for s, _ in results))}\n{log_path.read_text()[-3000:]}"
        assert sum(body["stored"] for _, body in results) == 4000
        assert sum(body["duplicates"] for _, body in results) == 4000
        report = requests.get(base + "/analytics/overrides", timeout=30).json()
        assert report["totals"]["feedback"] == 4000
        assert report["totals"]["unknownCardFeedback"] == 4000  # these cards were never issued here
        boots = log_path.read_text().count("Booting worker")
    assert boots >= 2
    cards = stored_cards(tmp_path, db_url)
    assert len(cards) == len(set(cards)) == 4000


@pytest.mark.slow
def test_sigterm_mid_load_loses_nothing_acknowledged(tmp_path, db_url):  # noqa: F811
    unique = unique_items("rst", 6000)
    batches = batches_of(unique, 10)
    acked: set[int] = set()
    lock = threading.Lock()
    stop_after = 150

    with gunicorn(tmp_path, db_url, "first") as (base, proc, log_path):
        pending: queue.Queue[int] = queue.Queue()
        for i in range(len(batches)):
            pending.put(i)
        enough = threading.Event()

        def client() -> None:
            with requests.Session() as http:
                while True:
                    try:
                        i = pending.get_nowait()
                    except queue.Empty:
                        return
                    try:
                        resp = http.post(base + FEEDBACK_URL, json={"feedback": batches[i]}, timeout=60)
                    except requests.RequestException:
                        continue  # not acknowledged: the EHR would send it again
                    if resp.status_code == 200:
                        with lock:
                            acked.add(i)
                            if len(acked) >= stop_after:
                                enough.set()

        workers = [threading.Thread(target=client) for _ in range(8)]
        for t in workers:
            t.start()
        assert enough.wait(timeout=120), log_path.read_text()[-3000:]
        proc.send_signal(signal.SIGTERM)  # mid-load: requests are in flight in both workers
        assert proc.wait(timeout=90) == 0, log_path.read_text()[-3000:]
        for t in workers:
            t.join(timeout=120)
    with lock:
        acknowledged = {item["card"] for i in acked for item in batches[i]}
    assert len(acked) < len(batches), "the server must have stopped before the load was over"

    before = set(stored_cards(tmp_path, db_url))
    assert acknowledged <= before, f"{len(acknowledged - before)} acknowledged items lost"

    with gunicorn(tmp_path, db_url, "second") as (base, _proc, _log):
        results = post_all(base, batches)  # everything again, acknowledged or not
        assert all(status == 200 for status, _ in results)
        assert sum(body["stored"] for _, body in results) == len(unique) - len(before)
        assert sum(body["duplicates"] for _, body in results) == len(before)
        report = requests.get(base + "/analytics/overrides", timeout=30).json()
        assert report["totals"]["feedback"] == len(unique)
    cards = stored_cards(tmp_path, db_url)
    assert len(cards) == len(set(cards)) == len(unique)


@pytest.mark.slow
def test_issued_cards_queued_in_workers_are_written_when_gunicorn_stops(tmp_path, db_url):  # noqa: F811
    """Real hook calls issue cards; the writer never flushes on its own here, only at shutdown."""
    requests_dir = Path(__file__).resolve().parent.parent / "fhir_fixtures" / "sample-isolated-igm"
    order_sign = json.loads((requests_dir / "request-order-sign.json").read_text())
    issued_cards: dict[str, list[str]] = {}
    with gunicorn(tmp_path, db_url, "cards", IVIG_CDS_FEEDBACK_ISSUED_FLUSH_SECONDS="3600") as (base, proc, log):
        with requests.Session() as http:
            for _ in range(30):
                body = {**order_sign, "hookInstance": str(uuid.uuid4())}
                resp = http.post(base + "/cds-services/ivig-order-sign", json=body, timeout=60)
                assert resp.status_code == 200, resp.text
                for card in resp.json()["cards"]:
                    issued_cards[card["uuid"]] = [s["uuid"] for s in card.get("suggestions", []) if "uuid" in s]
            assert issued_cards, "the sample patient's order-sign call must issue cards"
            assert stored_issued_count(tmp_path, db_url) == 0  # still queued in the workers
            fb = [fb_item(card, "accepted", accepted=sugg[:1]) if sugg and n % 2 else fb_item(card, code="other")
                  for n, (card, sugg) in enumerate(issued_cards.items())]
            resp = http.post(base + "/cds-services/ivig-order-sign/feedback", json={"feedback": fb}, timeout=60)
            assert resp.status_code == 200 and resp.json()["stored"] == len(fb)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=90) == 0, log.read_text()[-3000:]
    assert stored_issued_count(tmp_path, db_url) == len(issued_cards)
    s = store_for(tmp_path, db_url)
    try:
        report = s.report()
    finally:
        s.close()
    assert report["totals"]["cardsShown"] == len(issued_cards)
    assert report["totals"]["feedback"] == len(issued_cards)
    assert report["totals"]["unknownCardFeedback"] == 0


def stored_issued_count(tmp_path: Path, url: str) -> int:
    s = store_for(tmp_path, url)
    try:
        return s.count()["issued"]
    finally:
        s.close()
