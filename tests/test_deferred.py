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
