"""Test-side feedback: items as an EHR sends them, issued-card records, a SQL store on a given database.

Used by the feedback store's own tests (tests/test_feedback_store.py) and by those of reporting
and concurrency, which drive the same store.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timezone
from typing import Any

from service.protocol.models import parse_feedback
from service.storage.feedback import IssuedCard
from service.storage.sql_store import SqlFeedbackStore, open_store
from tests.conftest import make_settings

SERVICE = "ivig-order-sign"
STAMP = "2026-01-01T12:00:00.000Z"


def fb_item(card: str, outcome: str = "overridden", *, stamp: str = STAMP, accepted: list[str] | None = None,
            code: str | None = None, display: str | None = None, comment: str | None = None) -> dict[str, Any]:
    """One CDS Hooks 2.0.1 feedback item, as an EHR sends it."""
    item: dict[str, Any] = {"card": card, "outcome": outcome, "outcomeTimestamp": stamp}
    if outcome == "accepted":
        item["acceptedSuggestions"] = [{"id": s} for s in (accepted or ["suggestion-1"])]
    if code or comment:
        item["overrideReason"] = {}
        if code:
            item["overrideReason"]["reason"] = {"code": code, "system": "https://ivig-cds.example/override",
                                                **({"display": display} if display else {})}
        if comment:
            item["overrideReason"]["userComment"] = comment
    return item


def items(*raw: dict[str, Any]):
    return parse_feedback({"feedback": list(raw)})


def issued(uuid_: str | None = None, *, topic: str = "ivig-not-indicated", service: str = SERVICE,
           at: datetime | None = None, suggestions: tuple[tuple[str, str], ...] = (),
           patient_hash: str | None = "0" * 32) -> IssuedCard:
    return IssuedCard(
        uuid=uuid_ or str(uuid.uuid4()), service_id=service, hook_instance=str(uuid.uuid4()), topic=topic,
        indicator="warning", ruleset_version="test-1", issued_at=at or datetime.now(timezone.utc),
        suggestion_uuids=tuple(u for u, _ in suggestions), patient_hash=patient_hash,
        suggestion_labels=tuple(label for _, label in suggestions),
    )


def store_for(tmp_path, url: str, **feedback_settings: Any) -> SqlFeedbackStore:
    overrides = {f"feedback.{k}": v for k, v in feedback_settings.items()}
    return open_store(make_settings(tmp_path, database_url=url, **overrides))
