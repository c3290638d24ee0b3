"""The records a worker works on, one at a time.

A worker serves several hook calls at once on threads (gunicorn's gthread), but under one GIL
their work never runs at once: it takes turns every few milliseconds. A long record is parsed
into a hundred thousand small objects; made while other calls' records are being made and freed,
they land scattered over the heap, and parsing, reading and freeing every record then misses the
CPU's caches (bench/run.py, distinct large records: about a third more CPU a call with four
threads interleaving than with one). So the work on a record, from parsing its bytes to freeing
them, takes a turn of its own. What is not work on a record is done outside a turn: reading the
body off the socket, checking the token, and waiting on a FHIR server (``waiting``), so a call
held up by the network never holds up the others.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager


class RecordTurns:
    """``with turns:`` works on one record; the worker's other calls wait until it is done."""

    def __init__(self) -> None:
        self._lock = threading.Lock()

    def __enter__(self) -> RecordTurns:
        self._lock.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self._lock.release()

    @contextmanager
    def waiting(self) -> Iterator[None]:
        """Within a turn: give it up while this call waits (on a FHIR server), take it back after."""
        self._lock.release()
        try:
            yield
        finally:
            self._lock.acquire()
