"""The application factory: settings in, a wired Flask app out.

Each concern lives in its own module and plugs in here with ``init_app``-style calls; the
long-lived parts (feedback store, FHIR client pool, key cache) hang off ``AppState`` so that
tests can build as many independent apps as they like.
"""

from __future__ import annotations

import atexit
import logging
from dataclasses import dataclass, field
from typing import Any

from flask import Flask, current_app

import hooks
from hooks.ruleset import ruleset_version
from hooks.service_def import ServiceDefinition
from service import cors, errors, logging as cds_logging
from service.answers import AnswerMemo
from service.deferred import WORK
from service.auth import Authenticator
from service.feedback import FeedbackStore, MemoryFeedbackStore
from service.prefetch import PrefetchCompleter
from service.settings import Settings, load_settings

log = logging.getLogger("ivig_cds.app")


@dataclass
class AppState:
    """Everything a request needs besides the request itself."""

    settings: Settings
    services: dict[str, ServiceDefinition]
    ruleset_version: str
    store: FeedbackStore
    authenticator: Authenticator
    prefetcher: PrefetchCompleter
    answers: AnswerMemo
    extras: dict[str, Any] = field(default_factory=dict)

    def write_records(self) -> None:
        """Write now what answered requests left to record: their deferred bookkeeping (issued
        cards, metrics; service/deferred.py), then the store's queue of issued-card records."""
        WORK.drain()
        flush = getattr(self.store, "flush", None)
        if flush is not None:
            flush()

    def close(self) -> None:
        WORK.drain()  # the bookkeeping of answered requests (issued cards) reaches the store first
        for part in (self.prefetcher, self.authenticator, self.store):
            try:
                part.close()
            except Exception:  # closing must never raise during shutdown
                log.exception("error while closing %s", type(part).__name__)


def state() -> AppState:
    return current_app.extensions["ivig_cds"]


def _open_store(settings: Settings) -> FeedbackStore:
    """The SQL store when available (the feedback issue), else the in-process one."""
    try:
        from service.storage import open_store  # type: ignore[attr-defined]
    except ImportError:
        return MemoryFeedbackStore()
    return open_store(settings)


class CdsFlask(Flask):
    """Flask that decides once per function whether it is a coroutine function.

    Flask asks ``inspect`` on every call of every view, request hook and error handler (seven a
    hook call); the answer never changes for a function. Registered functions are few; one made
    per request (``after_this_request``) is asked about, not kept, once the table is full.
    """

    #: functions remembered at most
    SYNC_TABLE_SIZE = 256

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._sync_functions: dict[Any, Any] = {}

    def ensure_sync(self, func: Any) -> Any:
        sync = self._sync_functions.get(func)
        if sync is None:
            sync = super().ensure_sync(func)
            if len(self._sync_functions) < self.SYNC_TABLE_SIZE:
                self._sync_functions[func] = sync
        return sync


def create_app(settings: Settings | None = None, *, store: FeedbackStore | None = None) -> Flask:
    """Build the app. ``settings`` default to ``load_settings()`` (config file + environment)."""
    settings = settings or load_settings()
    from hooks.fhir_read import MODEL_CACHE

    MODEL_CACHE.resize(settings.limits.resource_cache_entries)
    app = CdsFlask("ivig_cds")
    # One byte over the limit: werkzeug cuts a streamed (chunked) body at MAX_CONTENT_LENGTH
    # without an error, so read_json must be able to see that more than the limit arrived.
    app.config["MAX_CONTENT_LENGTH"] = settings.limits.max_body_bytes + 1
    app.json.sort_keys = False  # keep CDS Hooks field order readable

    app.extensions["ivig_cds"] = AppState(
        settings=settings,
        services=dict(hooks.SERVICES),
        ruleset_version=ruleset_version(settings.guideline),
        store=store if store is not None else _open_store(settings),
        authenticator=Authenticator(settings),
        prefetcher=PrefetchCompleter(settings),
        answers=AnswerMemo(settings.limits.answer_cache_entries, settings.limits.answer_cache_bytes),
    )
    cds_logging.init_app(app)
    cors.init_app(app, settings.security.cors_allow_origins)

    @app.after_request
    def _bookkeeping_after_send(response: Any) -> Any:
        # run by the WSGI server when it closes the response, i.e. once the answer is sent
        response.call_on_close(WORK.run_batch_if_due)
        return response

    errors.register_error_handlers(app)

    from service import cds, ops

    app.register_blueprint(cds.bp)
    app.register_blueprint(ops.bp)
    for optional in ("service.analytics", "service.smart", "service.metrics"):
        _register_optional(app, optional)
    return app


def _register_optional(app: Flask, module_name: str) -> None:
    """Modules added by later issues register themselves when present."""
    import importlib

    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise
        return
    module.init_app(app)


def close_app(app: Flask) -> None:
    app.extensions["ivig_cds"].close()


def register_shutdown(app: Flask) -> None:
    atexit.register(close_app, app)
