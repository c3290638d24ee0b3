"""Where card records and feedback go: an interface, and a process-local implementation.

The durable SQL store (service/storage/sql_store.py) implements the same protocol. Nothing here ever
holds a patient identifier: issued-card records carry at most a keyed hash of the patient id.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol, Sequence

from service.protocol.models import FeedbackItem


@dataclass(frozen=True)
class IssuedCard:
    """What we remember of a card we returned (no PHI)."""

    uuid: str
    service_id: str
    hook_instance: str
    topic: str
    indicator: str
    ruleset_version: str
    issued_at: datetime
    suggestion_uuids: tuple[str, ...] = ()
    patient_hash: str | None = None
    #: labels of the suggestions, same order: reports show uptake per suggestion by name
    suggestion_labels: tuple[str, ...] = ()


@dataclass(frozen=True)
class StoreResult:
    stored: int
    duplicates: int
    unknown_cards: int


class FeedbackStore(Protocol):
    def record_issued(self, cards: Sequence[IssuedCard]) -> None: ...

    def store_feedback(self, service_id: str, items: Sequence[FeedbackItem]) -> StoreResult: ...

    def report(self, since: datetime | None = None) -> dict[str, Any]: ...

    def ping(self) -> None: ...

    def close(self) -> None: ...


class MemoryFeedbackStore:
    """For tests and tools that need no persistence. Same semantics as the SQL store."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.issued: dict[str, IssuedCard] = {}
        self.feedback: dict[tuple, tuple[str, FeedbackItem, bool]] = {}

    def record_issued(self, cards: Sequence[IssuedCard]) -> None:
        with self._lock:
            for card in cards:
                self.issued.setdefault(card.uuid, card)

    def store_feedback(self, service_id: str, items: Sequence[FeedbackItem]) -> StoreResult:
        stored = dupes = unknown = 0
        with self._lock:
            for item in items:
                key = (service_id, item.card, item.outcome, item.outcome_timestamp, item.accepted_suggestions,
                       item.override_code, item.user_comment)
                if key in self.feedback:
                    dupes += 1
                    continue
                known = item.card in self.issued
                unknown += 0 if known else 1
                self.feedback[key] = (service_id, item, known)
                stored += 1
        return StoreResult(stored, dupes, unknown)

    def report(self, since: datetime | None = None) -> dict[str, Any]:
        return {"issued": len(self.issued), "feedback": len(self.feedback)}

    def ping(self) -> None:
        return None

    def close(self) -> None:
        return None
