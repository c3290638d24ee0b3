"""Deferred bookkeeping (service/deferred.py): run off the request thread, never lost, never unbounded."""

from __future__ import annotations

import os
import threading
import time

from service.deferred import DeferredWork


def test_calls_run_in_the_background_in_order():
    work = DeferredWork(interval=0.01)
    done: list[int] = []
    for i in range(500):
        work.defer(done.append, i)
    deadline = time.monotonic() + 5
    while len(done) < 500 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert done == list(range(500))
    assert work._thread is not None and work._thread.name == "ivig-cds-deferred"
    work.stop()


def test_drain_returns_only_when_a_batch_in_progress_is_done():
    """A reader (a feedback call, a scrape) that drains must see every call queued before it."""
    work = DeferredWork(interval=0.01)
    started, release = threading.Event(), threading.Event()
    done: list[str] = []

    def slow() -> None:
        started.set()
        release.wait(5)
        done.append("slow")

    work.defer(slow)
    work.defer(done.append, "after")
    assert started.wait(5)  # the background thread is inside slow()
    drained = threading.Event()
    reader = threading.Thread(target=lambda: (work.drain(), drained.set()))
    reader.start()
    assert not drained.wait(0.2)  # still waiting for the batch in progress
    release.set()
    assert drained.wait(5)
    assert done == ["slow", "after"]
    reader.join()
    work.stop()


def test_a_failing_call_is_logged_and_the_rest_still_run(caplog):
    work = DeferredWork(interval=60)  # only drain runs them
    done: list[int] = []

    def broken() -> None:
        raise ValueError("patient Jane Doe")

    work.defer(done.append, 1)
    work.defer(broken)
    work.defer(done.append, 2)
    work.drain()
    assert done == [1, 2]
    failures = [r for r in caplog.records if r.name == "ivig_cds.deferred"]
    assert [r.getMessage() for r in failures] == ["deferred bookkeeping failed: ValueError"]
    assert "Jane" not in caplog.text
    work.stop()


def test_past_the_bound_the_caller_does_the_work_itself():
    work = DeferredWork(interval=60)
    work.MAX_PENDING = 3
    done: list[int] = []
    for i in range(5):
        work.defer(done.append, i)
    assert done == [3, 4] and len(work) == 3  # nothing dropped, the queue never past its bound
    work.drain()
    assert sorted(done) == [0, 1, 2, 3, 4] and len(work) == 0
    work.stop()


def test_stop_runs_what_is_left():
    work = DeferredWork(interval=60)
    done: list[int] = []
    for i in range(10):
        work.defer(done.append, i)
    work.stop()
    assert done == list(range(10))


def test_a_forked_worker_starts_empty_with_its_own_thread():
    """gunicorn forks workers: a child must neither run its parent's calls nor lack a thread."""
    work = DeferredWork(interval=0.01)
    parent_done: list[str] = []
    release = threading.Event()
    work.defer(release.wait, 5)  # keeps the parent's thread busy across the fork
    work.defer(parent_done.append, "parent")
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its queue is empty, and what it defers runs in its own thread
        os.close(read_end)
        child_done: list[str] = []
        empty = len(work) == 0
        work.defer(child_done.append, "child")
        deadline = time.monotonic() + 5
        while not child_done and time.monotonic() < deadline:
            time.sleep(0.01)
        os.write(write_end, f"{empty} {child_done}".encode())
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        child = pipe.read()
    os.waitpid(pid, 0)
    release.set()
    work.stop()
    assert child == "True ['child']"
    assert parent_done == ["parent"]


def test_a_request_thread_runs_the_queue_once_a_batch_has_built_up():
    work = DeferredWork(interval=60)  # the background thread stays asleep
    work.BATCH = 4
    ran_in: list[str] = []
    record = lambda: ran_in.append(threading.current_thread().name)  # noqa: E731
    for _ in range(3):
        work.defer(record)
    work.run_batch_if_due()
    assert ran_in == [] and len(work) == 3  # not yet a batch: left for later
    work.defer(record)
    caller = threading.Thread(target=work.run_batch_if_due, name="request-thread")
    caller.start()
    caller.join(5)
    assert ran_in == ["request-thread"] * 4 and len(work) == 0
    work.stop()


def test_a_request_thread_never_waits_for_a_batch_in_progress():
    work = DeferredWork(interval=0.01)
    work.BATCH = 1
    started, release = threading.Event(), threading.Event()
    work.defer(lambda: (started.set(), release.wait(5)))
    assert started.wait(5)  # the background thread is inside the batch
    work.defer(time.sleep, 0)
    began = time.monotonic()
    work.run_batch_if_due()
    assert time.monotonic() - began < 0.5 and len(work) == 1  # returned at once, left the call queued
    release.set()
    work.drain()
    assert len(work) == 0
    work.stop()


def test_a_hook_call_is_answered_before_its_bookkeeping_runs_in_the_request_thread(make_app, monkeypatch):
    """Over a real HTTP server: the card record is made after the answer has reached the caller."""
    import requests

    import service.cds as cds
    from fhir_fixtures import load_json
    from service.deferred import WORK
    from tests.servers import live_app

    recorded: list[tuple[str, float]] = []
    real_record = cds._record_issued

    def slow_record(*args):
        time.sleep(0.3)
        real_record(*args)
        recorded.append((threading.current_thread().name, time.monotonic()))

    monkeypatch.setattr(cds, "_record_issued", slow_record)
    monkeypatch.setattr(WORK, "BATCH", 1)
    body = load_json("sample-isolated-igm", "request-order-sign.json")
    with live_app(make_app()) as base, requests.Session() as http:
        for call in range(1, 4):
            sent = time.monotonic()
            r = http.post(f"{base}/cds-services/ivig-order-sign", json=body, timeout=10)
            answered = time.monotonic()
            assert r.status_code == 200 and r.json()["cards"]
            assert answered - sent < 0.3  # the answer did not wait for the 0.3 s record
            deadline = time.monotonic() + 5
            while len(recorded) < call and time.monotonic() < deadline:
                time.sleep(0.01)
            assert len(recorded) == call and recorded[-1][1] > answered
    # by the server's request thread, not the background one (nor this test's)
    assert any(name not in ("ivig-cds-deferred", "MainThread") for name, _ in recorded), recorded
