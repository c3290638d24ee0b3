"""What a request needs besides the request itself: the app's long-lived parts, and how a view finds them.

The factory (service/app.py) builds one ``AppState`` per app and keeps it in the app's
extensions; views look it up with ``state()``. Living here rather than in the factory, it lets
the views import it without importing the factory that imports them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from flask import current_app

from hooks.lru import BoundedLRU
from hooks.service_def import ServiceDefinition
from service.auth.tokens import Authenticator
from service.prefetch.completion import PrefetchCompleter
from service.protocol.answers import AnswerMemo
from service.protocol.turns import RecordTurns
from service.settings import Settings
from service.storage.feedback import FeedbackStore

log = logging.getLogger("ivig_cds.app")

#: The key of an app's state in ``Flask.extensions``.
EXTENSION = "ivig_cds"


@dataclass
class AppState:
    """Everything a request needs besides the request itself: one per app, so that tests can
    build as many independent apps as they like."""

    settings: Settings
    services: dict[str, ServiceDefinition]
    ruleset_version: str
    store: FeedbackStore
    authenticator: Authenticator
    prefetcher: PrefetchCompleter
    answers: AnswerMemo
    #: validated resources by content (hooks/fhir_read.py), read through while a hook runs
    models: BoundedLRU = field(default_factory=lambda: BoundedLRU(0))
    extras: dict[str, Any] = field(default_factory=dict)
    #: the records this app's hook calls work on, one at a time (service/protocol/turns.py)
    turns: RecordTurns = field(default_factory=RecordTurns)

    def write_records(self) -> None:
        """Write now the issued-card records that answered requests queued in the store."""
        flush = getattr(self.store, "flush", None)
        if flush is not None:
            flush()

    def close(self) -> None:
        for part in (self.prefetcher, self.authenticator, self.store):
            try:
                part.close()
            except Exception:  # closing must never raise during shutdown
                log.exception("error while closing %s", type(part).__name__)


def state() -> AppState:
    """The state of the app handling the current request."""
    return current_app._get_current_object().extensions[EXTENSION]  # one context lookup, not an attribute proxy
