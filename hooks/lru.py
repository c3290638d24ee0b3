"""The bounded caches of the hot path: one least-recently-used map, and a memo per term.

The maps (validated resources in hooks/fhir_read.py, whole answers in service/protocol/answers.py)
differ only in what they key on and hold; the bound and the locking are the same, so they live
here once. Values are shared between threads and must never be mutated once stored.
"""

from __future__ import annotations

import functools
import threading
from collections import OrderedDict
from typing import Any, Callable, Generic, Hashable, NamedTuple, TypeVar

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


#: How many terms each ``by_term`` function remembers, and how long a term may be to be remembered.
TERMS = 4096
TERM_CHARS = 200

F = TypeVar("F", bound=Callable[..., Any])


class _TermsKept(NamedTuple):
    currsize: int


def by_term(func: F) -> F:
    """Remember a pure function of terminology (a code, a lab's or a diagnosis's name) per term.

    Records of different patients name the same tests and diagnoses ("Hemoglobin [Mass/volume]
    in Blood", "J18.9"), so each term is matched against the value sets and patterns once, not
    once per resource. Terms longer than ``TERM_CHARS`` in all are matched every time, and past
    ``TERMS`` terms what is remembered starts again, so it stays small whatever callers send. A
    plain dictionary: a hit is one lookup, which matters where every resource of a long record
    asks (a lock-free read is safe under the GIL; a lost write only costs a match again).
    """
    remembered: dict[tuple[str, ...], Any] = {}

    @functools.wraps(func)
    def call(*terms: str) -> Any:
        try:
            return remembered[terms]
        except KeyError:
            pass
        value = func(*terms)
        if sum(map(len, terms)) <= TERM_CHARS:
            if len(remembered) >= TERMS:
                remembered.clear()
            remembered[terms] = value
        return value

    call.cache_info = lambda: _TermsKept(len(remembered))  # type: ignore[attr-defined]
    return call  # type: ignore[return-value]
