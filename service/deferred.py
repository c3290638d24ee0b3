"""Bookkeeping a request leaves behind, done in batches once answers are on their way.

After the answer is made, a hook call still counts itself for Prometheus and records the cards
it issued. Done in the request thread, that cost ~35 us of a ~300 us memoised hook call; the
same work run as a batch in one loop cost a few (bench harness: one process, variants
interleaved). A request thread runs it cold, between JSON parsing, rules and socket I/O; a loop
over a batch runs it hot. Nothing here is part of the answer.

Who runs a batch: under load, the request thread that has just sent its response and finds
``BATCH`` calls queued (``run_batch_if_due``, called when the WSGI server closes the response;
service/app.py). It holds the GIL anyway, and its own caller has the answer. A background
thread that woke every 50 ms to do the same had to take the GIL from the request threads, and
answers waited behind its batch: the benchmark's p99 on the typical call was ~0.4 ms longer
(bench/run.py, typical, 4 rounds). The thread is still there for quiet times: it runs what
is left every ``interval``.

What reads the results calls ``drain`` first, so nothing is ever seen missing: a ``/metrics``
scrape, a feedback call that checks whether its cards were issued, and the app's ``close`` at
shutdown (which then flushes the issued-card queue). Work queued past ``MAX_PENDING`` (the
batches cannot keep up) is done at once in the caller's thread: slower, never lost or unbounded.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import weakref
from collections import deque
from typing import Any, Callable

log = logging.getLogger("ivig_cds.deferred")


class DeferredWork:
    """A queue of calls run in batches: by a request thread whose answer is sent
    (``run_batch_if_due``), by a background thread every ``interval`` seconds, or by ``drain``."""

    #: calls queued at most; past it the caller does the work itself
    MAX_PENDING = 20_000
    #: calls queued before a request thread, its response sent, runs them (``run_batch_if_due``)
    BATCH = 16

    def __init__(self, interval: float = 0.05) -> None:
        self.interval = interval
        self._reset()
        ref = weakref.ref(self)  # a forked worker starts with its own queue and thread
        os.register_at_fork(after_in_child=lambda: (work := ref()) is not None and work._reset())

    def _reset(self) -> None:
        self._calls: deque[tuple[Callable[..., Any], tuple[Any, ...]]] = deque()
        self._drain_lock = threading.Lock()  # drain returns only once a batch in progress is done
        self._start_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def defer(self, call: Callable[..., Any], *args: Any) -> None:
        """Run ``call(*args)`` soon, off this thread (at once here when too much is queued)."""
        if len(self._calls) >= self.MAX_PENDING:
            self._run(call, args)
            return
        self._calls.append((call, args))
        if self._thread is None:
            self._start()

    def _start(self) -> None:
        with self._start_lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="ivig-cds-deferred", daemon=True)
                self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.drain()

    def drain(self) -> None:
        """Run every call queued so far (and any queued meanwhile); return when they are done."""
        with self._drain_lock:
            self._run_queued(None)

    def run_batch_if_due(self) -> None:
        """Run the queued calls if ``BATCH`` have built up and no other thread is running them.

        For a request thread whose response has been sent: it never waits here for another
        thread, and runs at most what was queued when it came (a busy server keeps queueing).
        """
        if len(self._calls) < self.BATCH or not self._drain_lock.acquire(blocking=False):
            return
        try:
            self._run_queued(len(self._calls))
        finally:
            self._drain_lock.release()

    def _run_queued(self, limit: int | None) -> None:
        done = 0
        while limit is None or done < limit:
            try:
                call, args = self._calls.popleft()
            except IndexError:
                return
            self._run(call, args)
            done += 1

    @staticmethod
    def _run(call: Callable[..., Any], args: tuple[Any, ...]) -> None:
        try:
            call(*args)
        except Exception as exc:  # one failing record must not stop the others (nor the thread)
            log.error("deferred bookkeeping failed: %s", type(exc).__name__,
                      extra={"event": "deferred_failed", "reason": getattr(call, "__name__", "")})

    def stop(self) -> None:
        """Stop the thread and run what is left (at exit)."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=10)
        self.drain()

    def __len__(self) -> int:
        return len(self._calls)


#: The process's queue: the metrics and the issued-card records of every app in it.
WORK = DeferredWork()
atexit.register(WORK.stop)
