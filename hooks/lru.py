"""A bounded, thread-safe least-recently-used map: the one shape of every cache on the hot path.

The caches (validated resources in hooks/fhir_read.py, evaluations in hooks/engine.py, whole
answers in service/answers.py) differ only in what they key on and hold; the bound and the
locking are the same, so they live here once. Values are shared between threads and must never
be mutated once stored.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Callable, Generic, Hashable, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class BoundedLRU(Generic[K, V]):
    """At most ``capacity`` entries (0: nothing is kept); the least recently used goes first.

    With ``max_weight``, also at most that much ``weigh(key, value)`` in all (bytes, for a cache
    whose keys are request bodies); an entry heavier than that on its own is not kept.
    """

    def __init__(self, capacity: int, *, max_weight: int | None = None,
                 weigh: Callable[[K, V], int] | None = None) -> None:
        self.capacity = max(0, capacity)
        self.max_weight = max_weight
        self._weigh = weigh if weigh is not None else (lambda key, value: 1)
        self._weights: dict[K, int] = {}
        self.weight = 0
        self._data: OrderedDict[K, V] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: K) -> V | None:
        with self._lock:
            hit = self._data.get(key)
            if hit is not None:
                self._data.move_to_end(key)
            return hit

    def put(self, key: K, value: V) -> None:
        weighed = self.max_weight is not None
        weight = self._weigh(key, value) if weighed else 0
        if weighed and weight > self.max_weight:  # type: ignore[operator]
            return
        with self._lock:
            if weighed:
                self.weight += weight - self._weights.get(key, 0)
                self._weights[key] = weight
            self._data[key] = value
            self._data.move_to_end(key)
            self._evict()

    def _evict(self) -> None:
        while len(self._data) > self.capacity or (self.max_weight is not None and self.weight > self.max_weight):
            key, _ = self._data.popitem(last=False)
            self.weight -= self._weights.pop(key, 0)

    def resize(self, capacity: int) -> None:
        """A new bound (the service sets some from its settings at start-up)."""
        with self._lock:
            self.capacity = max(0, capacity)
            self._evict()

    def clear(self) -> None:
        with self._lock:
            self._data.clear()
            self._weights.clear()
            self.weight = 0

    def __len__(self) -> int:
        return len(self._data)
