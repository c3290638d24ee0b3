"""Answers memoised per request: the same chart sent again gets the same cards without re-deciding.

An EHR calls patient-view every time a chart is opened and order-sign every time orders are
signed. Calls for the same patient on the same day often carry the same request body but for
two values: the ``hookInstance`` (new for every call) and the FHIR access token (often rotated).
What the cards say depends only on the rest of the body, the service, "today", the base URL
(SMART links), the client's tenant, and the app's thresholds and ruleset (fixed per app).

**The key** is the raw body itself with those two values cut out, followed by the other inputs;
a hit is exact because the stored key is compared with it byte for byte (the key was a SHA-256
digest until the fourth session: hashing 37 KB cost ~21 us of a ~300 us memoised call).

**Where a key is filed**: under a fingerprint of a sample of its bytes (its length, both ends,
every 61st byte; ``_fingerprint``), one entry per fingerprint, instead of under the key itself:
Python's own hash reads every byte (~11 us for 37 KB, ~280 us for 900 KB), the sample ~1 us.
Two keys with one fingerprint are told apart by the comparison; the later one takes the place
(a miss for the other, never its answer). A caller who makes bodies that share fingerprints
therefore only evicts entries, and never makes a lookup compare more than one stored key.

**Cutting the values out**: each value is cut out at the first place where its JSON text (as
orjson writes it, quotes included) occurs, and only if it holds no quote, backslash or other
JSON punctuation (UUIDs and JWTs qualify); a marker holding a NUL byte, which valid JSON text
never contains, takes its place. Why that is exact: two bodies with one key are then
byte-identical but for one place, which holds ``"v1"`` in the first and ``"v2"`` in the second,
each that body's parsed value. Neither holds a quote or backslash, so both bodies split into
strings and structure at the same places: the same JSON but for one string value. If that string
is the ``hookInstance`` (or the token), the two calls differ in that and nothing else. If it is
any other string, their ``hookInstance`` fields are the same text, so ``v1 == v2`` and the
bodies are identical. (The first occurrence is enough: a second full scan to prove it unique
cost more than the rest of the key.) A body that spells the value differently, with escapes, is
simply not memoised. Byte-identity is also why a remembered body needs no second depth or
resource-count check: it has the depth and count of the body that was answered. Keys hold the
bodies, so the memo is bounded in bytes (``limits.answer_cache_bytes``) as well as in entries.

**What is stored**: the result of a call answered with status 200 whose prefetch was completed
without reading a FHIR server (what a server returns can change between calls, so such answers
are always made afresh). A later call gets the stored cards with uuids derived from its own
hookInstance (hooks/cards.py ``reissue``), so feedback and analytics see its own cards.
"""

from __future__ import annotations

from datetime import date
from typing import Any

import orjson

from hooks.cards import reissue
from hooks.lru import BoundedLRU
from hooks.service_def import HookResult

#: Stands in for a cut-out value; a NUL byte never occurs in valid JSON text.
_MARKERS = (b"\x00hookInstance\x00", b"\x00access_token\x00")
#: A value holding none of these, quoted, ends a string token wherever it occurs in JSON text, and
#: putting another such value in its place leaves every other token as it was.
_STRUCTURAL = frozenset('",:[]{}\\')


def _volatile_values(body: dict[str, Any]) -> tuple[Any, Any]:
    """The hookInstance and the access token (None when the request has none)."""
    auth = body.get("fhirAuthorization")
    return body.get("hookInstance"), auth.get("access_token") if isinstance(auth, dict) else None


#: Every this many bytes, one goes into a key's fingerprint (prime: JSON's repeats are not missed).
_STRIDE = 61
_ENDS = 256


def _fingerprint(key: bytes) -> int:
    """Where a key is filed: a hash of its length, both ends and every ``_STRIDE``-th byte."""
    return hash((len(key), key[:_ENDS], key[-_ENDS:], key[::_STRIDE]))


def _key_bytes(fingerprint: int, entry: tuple[bytes, HookResult]) -> int:
    return len(entry[0])


class AnswerMemo:
    """Hook results of answered requests (see the module docstring for what the key covers)."""

    def __init__(self, capacity: int, max_bytes: int | None = None) -> None:
        self._entries: BoundedLRU[int, tuple[bytes, HookResult]] = BoundedLRU(
            capacity, max_weight=max_bytes, weigh=_key_bytes)

    def key(self, raw: bytes, body: Any, *, service_id: str, today: date, base_url: str,
            tenant: str | None) -> bytes | None:
        """The key of this request, or None when it cannot be memoised exactly (or the memo is off)."""
        if self._entries.capacity == 0 or self._entries.max_weight == 0 or not isinstance(body, dict):
            return None
        hook_instance, token = _volatile_values(body)
        if not isinstance(hook_instance, str):
            return None  # not a valid request: the envelope check answers it (400)
        cuts: list[tuple[int, int, bytes]] = []  # (start, end, marker) of each value's one occurrence
        for value, marker in zip((hook_instance, token), _MARKERS):
            if value is None:
                continue
            if not isinstance(value, str) or not value or _STRUCTURAL.intersection(value):
                return None
            quoted = orjson.dumps(value)
            start = raw.find(quoted)
            if start < 0:
                return None  # spelled with escapes: not memoised
            cuts.append((start, start + len(quoted), marker))
        cuts.sort()
        if len(cuts) == 2 and cuts[0][1] > cuts[1][0]:
            return None  # both values in one place (equal values): refuse rather than guess
        view = memoryview(raw)
        parts: list[Any] = []
        position = 0
        for start, end, marker in cuts:
            parts += (view[position:start], marker)
            position = end
        parts += (view[position:], b"\x00", orjson.dumps([service_id, today.isoformat(), base_url, tenant]))
        return b"".join(parts)

    def get(self, key: bytes | None) -> HookResult | None:
        """The result stored for this key (its cards carry the first call's uuids), or None."""
        if key is None:
            return None
        entry = self._entries.get(_fingerprint(key))
        return entry[1] if entry is not None and entry[0] == key else None

    @staticmethod
    def reissued(stored: HookResult, hook_instance: str, service_id: str) -> HookResult:
        """A stored result as the answer to another call: its cards with that call's uuids."""
        return HookResult(cards=reissue(stored.cards, hook_instance, service_id),
                          system_actions=stored.system_actions, trace=stored.trace)

    def put(self, key: bytes | None, result: HookResult) -> None:
        if key is not None:
            self._entries.put(_fingerprint(key), (key, result))

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)
