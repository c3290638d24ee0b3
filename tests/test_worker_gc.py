"""A gunicorn worker collects reference cycles on a clock, with its allocation-triggered collector off."""

from __future__ import annotations

import gc
import threading
import time
import weakref

from service.ops import gunicorn_conf


class _Cycle:
    def __init__(self) -> None:
        self.me = self


def test_a_worker_collects_cycles_on_a_clock_not_on_allocations(monkeypatch):
    monkeypatch.setattr(gunicorn_conf, "GC_SECONDS", 0.05)
    was_enabled = gc.isenabled()
    try:
        gunicorn_conf.post_worker_init(worker=None)
        assert not gc.isenabled()  # allocations trigger nothing
        assert any(t.name == "ivig-cds-gc" and t.daemon for t in threading.enumerate())
        cycle = _Cycle()
        gone = weakref.ref(cycle)
        del cycle
        for _ in range(50):  # freed by the clock, not by reference counting
            if gone() is None:
                break
            time.sleep(0.05)
        assert gone() is None
    finally:
        gc.unfreeze()
        if was_enabled:
            gc.enable()
