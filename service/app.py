"""The application factory: settings in, a wired Flask app out.

Each concern plugs in here with an ``init_app``-style call or a blueprint; the long-lived parts
(feedback store, FHIR client pool, key cache) hang off ``AppState`` (service/state.py), one per
app. Only the entry points (the CLI, the WSGI module, the gunicorn settings) import this module.
"""

from __future__ import annotations

import atexit
from typing import Any, Callable

from flask import Flask

import hooks
from hooks.lru import BoundedLRU
from hooks.ruleset import ruleset_version
from service import errors
from service.auth.tokens import Authenticator
from service.ops import health, logging as cds_logging, metrics_view
from service.prefetch.completion import PrefetchCompleter
from service.protocol import cds, cors, guards, jsonbody, openapi
from service.protocol.answers import AnswerMemo
from service.settings import Settings, load_settings
from service.smart import landing, views as smart_views
from service.state import EXTENSION, AppState
from service.storage import analytics
from service.storage.feedback import FeedbackStore
from service.storage.sql_store import open_store


class CdsFlask(Flask):
    """Flask, asking once per function whether it is a coroutine.

    Flask asks it of the view and of every request hook on every request (``ensure_sync``, ten
    times a hook call here, through ``inspect``); the answer never changes for a function.
    """

    _SYNC_KEPT = 256

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._sync: dict[Callable[..., Any], Callable[..., Any]] = {}

    def ensure_sync(self, func: Callable[..., Any]) -> Callable[..., Any]:
        sync = self._sync.get(func)
        if sync is None:
            sync = super().ensure_sync(func)
            if len(self._sync) < self._SYNC_KEPT:
                self._sync[func] = sync
        return sync


def create_app(settings: Settings | None = None, *, store: FeedbackStore | None = None) -> Flask:
    """Build the app. ``settings`` default to ``load_settings()`` (config file + environment);
    ``store`` defaults to the SQL store of the configured database, schema brought to head."""
    settings = settings or load_settings()
    guards.configure(settings.limits)  # the process-wide bounds: body budget, resource size
    app = CdsFlask("ivig_cds")
    # One byte over the limit: werkzeug cuts a streamed (chunked) body at MAX_CONTENT_LENGTH
    # without an error, so read_json must be able to see that more than the limit arrived.
    app.config["MAX_CONTENT_LENGTH"] = settings.limits.max_body_bytes + 1
    app.json.sort_keys = False  # keep CDS Hooks field order readable

    app.extensions[EXTENSION] = AppState(
        settings=settings,
        services=dict(hooks.SERVICES),
        ruleset_version=ruleset_version(settings.guideline),
        store=store if store is not None else open_store(settings),
        authenticator=Authenticator(settings),
        prefetcher=PrefetchCompleter(settings),
        answers=AnswerMemo(settings.limits.answer_cache_entries),
        # bounded in the bytes of the resources' JSON too: a large resource must not fill memory
        models=BoundedLRU(settings.limits.resource_cache_entries, max_weight=settings.limits.resource_cache_bytes,
                          weigh=lambda key, _ingest: len(key)),
    )
    cds_logging.init_app(app)
    cors.init_app(app, settings.security.cors_origins)
    jsonbody.init_app(app)
    errors.register_error_handlers(app)

    app.register_blueprint(cds.bp)
    app.register_blueprint(health.bp)
    for module in (analytics, smart_views, metrics_view, landing, openapi):
        module.init_app(app)
    return app


def close_app(app: Flask) -> None:
    app.extensions[EXTENSION].close()


def register_shutdown(app: Flask) -> None:
    atexit.register(close_app, app)


def stop_on_sigterm() -> None:
    """SIGTERM ends the process as Ctrl-C does, through the exit handlers (``close_app`` writes the
    queued issued-card records); by default it would end it at once. For ``ivig-cds serve`` only:
    gunicorn's workers have handlers of their own."""
    import signal
    import sys

    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
