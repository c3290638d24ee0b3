"""A bounded, thread-safe least-recently-used map: the one shape of every cache on the hot path.

The caches (validated resources in hooks/fhir_read.py, evaluations in hooks/engine.py, whole
answers in service/answers.py) differ only in what they key on and hold; the bound and the
locking are the same, so they live here once. Values are shared between threads and must never
be mutated once stored.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Generic, Hashable, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class BoundedLRU(Generic[K, V]):
    """At most ``capacity`` entries (0: nothing is kept); the least recently used goes first."""

    def __init__(self, capacity: int) -> None:
        self.capacity = max(0, capacity)
        self._data: OrderedDict[K, V] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: K) -> V | None:
        with self._lock:
            hit = self._data.get(key)
            if hit is not None:
                self._data.move_to_end(key)
            return hit

    def put(self, key: K, value: V) -> None:
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self.capacity:
                self._data.popitem(last=False)

    def resize(self, capacity: int) -> None:
        """A new bound (the service sets some from its settings at start-up)."""
        with self._lock:
            self.capacity = max(0, capacity)
            while len(self._data) > self.capacity:
                self._data.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()

    def __len__(self) -> int:
        return len(self._data)
