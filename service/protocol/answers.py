"""Answers memoised per request: the same chart sent again gets the same cards without re-deciding.

An EHR calls patient-view every time a chart is opened and order-sign every time orders are
signed; the same call made again carries the same body but for its ``hookInstance`` (new every
call) and often its FHIR access token (rotated). What the cards say depends on the rest of the
body, the service, "today", the base URL (SMART links) and the client's tenant; the thresholds
and the ruleset are fixed per app.

**The key** is the SHA-256 of those inputs and of the body's bytes with the hookInstance and the
token cut out where their JSON text first occurs. The cut is made only for values of plain
characters (letters, digits, ``-._~+/=``: UUIDs and JWTs are), whose JSON text is the value
between quotes; such a body is otherwise not memoised. It is exact: two bodies with one key are
the same text but for that one string, which holds each body's own value. If the string is the
``hookInstance`` field, the calls differ in it alone. If it is any other string, the field lies in
the text both share, so both have one hookInstance, and it is the cut value: the bodies are equal.

**What is stored**: the handler's result for a call whose prefetch was completed without
reading a FHIR server (what a server returns can change between calls), from the second time
its body is seen. Most bodies are never sent again (every chart opened is another patient's
record), so the first sight of a body costs a fingerprint (``key_if_seen_before``), not the key
and a stored answer; the fingerprint only picks the bodies the exact key is made for. A call
answered at once (nothing in the record to decide) never reaches the memo: that answer costs
less than the key.
A later call gets the stored cards with uuids derived from its own hookInstance (hooks/cards.py
``reissue``), so feedback and analytics see its own cards.
"""

from __future__ import annotations

import hashlib
import re
from datetime import date
from typing import Any

import orjson

from hooks.cards import reissue
from hooks.lru import BoundedLRU
from hooks.service_def import HookResult

_PLAIN = re.compile(r"[A-Za-z0-9\-._~+/=]+")
#: Stands in for a cut-out value in the hashed text; a NUL byte never occurs in valid JSON text.
_MARKER = b"\x00"
#: How much of the text before each cut value, and of its end, a body's fingerprint holds
_TAIL_BYTES = 1024


class AnswerMemo:
    """Hook results of answered requests (see the module docstring for what the key covers).

    Each answer is kept as its JSON text, one block of bytes: kept as the cards' own objects,
    thousands of small dicts and strings made while a record was being read would outlive it,
    scattered among the pages its parse used, and every later body would be parsed into and freed
    from a fragmented heap (on distinct large records that cost a fifth of the call).
    """

    def __init__(self, capacity: int) -> None:
        self._entries: BoundedLRU[bytes, bytes] = BoundedLRU(capacity)
        #: fingerprints of the bodies seen once (``key_if_seen_before``)
        self._seen: BoundedLRU[int, bool] = BoundedLRU(capacity)

    def key_if_seen_before(self, raw: bytes, body: Any, *, service_id: str, today: date, base_url: str,
                           tenant: str | None) -> bytes | None:
        """The key of this request when a body with its fingerprint came before; None on a first
        sight (which is remembered) or when it cannot be memoised exactly.

        The fingerprint is the other inputs, the body's length without the cut values and the last
        bytes of each stretch of its text between them: two calls of one chart share it whatever their
        hookInstance and token. Bodies that share it but differ get different keys.
        """
        cuts = self._cuts(raw, body)
        if cuts is None:
            return None
        tails, position = [], 0
        for start, end in [*cuts, (len(raw), len(raw))]:
            tails.append(raw[max(position, start - _TAIL_BYTES):start])
            position = end
        length = len(raw) - sum(end - start for start, end in cuts)  # a rotated token may be longer
        fingerprint = hash((service_id, today, base_url, tenant, length, *tails))
        if self._seen.get(fingerprint) is None:
            self._seen.put(fingerprint, True)
            return None
        return self._digest(raw, cuts, service_id, today, base_url, tenant)

    def key(self, raw: bytes, body: Any, *, service_id: str, today: date, base_url: str,
            tenant: str | None) -> bytes | None:
        """The key of this request, or None when it cannot be memoised exactly (or the memo is off)."""
        cuts = self._cuts(raw, body)
        return None if cuts is None else self._digest(raw, cuts, service_id, today, base_url, tenant)

    def _cuts(self, raw: bytes, body: Any) -> list[tuple[int, int]] | None:
        """Where the hookInstance and the token are in the text (None: not memoised)."""
        if self._entries.capacity == 0 or not isinstance(body, dict):
            return None
        auth = body.get("fhirAuthorization")
        token = auth.get("access_token") if isinstance(auth, dict) else None
        cuts: list[tuple[int, int]] = []
        for value in (body.get("hookInstance"), token):
            if value is None and cuts:
                continue  # no token: only the hookInstance is cut
            if not isinstance(value, str) or not _PLAIN.fullmatch(value):
                return None
            start = raw.find(b'"%s"' % value.encode())
            if start < 0:
                return None  # spelled with escapes
            cuts.append((start, start + len(value) + 2))
        cuts.sort()
        if len(cuts) == 2 and cuts[0][1] > cuts[1][0]:
            return None  # both values in one place (equal values): refuse rather than guess
        return cuts

    @staticmethod
    def _digest(raw: bytes, cuts: list[tuple[int, int]], service_id: str, today: date, base_url: str,
                tenant: str | None) -> bytes:
        digest = hashlib.sha256(orjson.dumps([service_id, today.isoformat(), base_url, tenant]))
        text, position = memoryview(raw), 0
        for start, end in cuts:
            digest.update(text[position:start])
            digest.update(_MARKER)
            position = end
        digest.update(text[position:])
        return digest.digest()

    def get(self, key: bytes | None) -> bytes | None:
        """The answer stored for this key (its cards carry the first call's uuids), or None."""
        return self._entries.get(key) if key is not None else None

    @staticmethod
    def reissued(stored: bytes, hook_instance: str, service_id: str) -> HookResult:
        """A stored answer as the answer to another call: its cards with that call's uuids."""
        cards, system_actions = orjson.loads(stored)
        return HookResult(cards=reissue(cards, hook_instance, service_id), system_actions=system_actions)

    def put(self, key: bytes | None, result: HookResult) -> None:
        """Keep the answer: its cards and system actions (the trace is no part of the answer)."""
        if key is not None:
            self._entries.put(key, orjson.dumps([result.cards, result.system_actions]))

    def clear(self) -> None:
        self._entries.clear()
        self._seen.clear()

    def __len__(self) -> int:
        return len(self._entries)
