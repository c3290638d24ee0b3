"""Structured JSON logs with a request id, and nothing a patient or an attacker could be found by.

Log lines carry only what we put in ``extra`` under whitelisted keys, the logger, the level and
the message. Exceptions are rendered as their type and the code locations they passed through
(never their message, which may quote a patient's data or a token).
"""

from __future__ import annotations

import atexit
import copy
import functools
import logging
import os
import queue
import random
import sys
import threading
import time
import traceback
from logging.handlers import QueueHandler
from typing import Any

import orjson
from flask import Flask, g, request

#: Keys a log record may carry besides message, level and logger.
SAFE_FIELDS = (
    "request_id", "method", "path", "service", "hook", "status", "duration_ms", "cards", "topics",
    "reason", "fhir_status", "prefetch_key", "event", "count", "ruleset", "outcome", "skipped",
    "issuer", "worker", "phase",
)

REQUEST_ID_HEADER = "X-Request-ID"
_REQUEST_ID_ENVIRON = "HTTP_X_REQUEST_ID"


#: The last second a line was written in, as (seconds, its text): most lines share their second.
_SECOND: tuple[int, str] = (-1, "")


def timestamp(created: float) -> str:
    """``created`` (seconds since the epoch) as the lines write it: UTC, milliseconds, ``Z``."""
    global _SECOND
    whole = int(created)
    second = _SECOND
    if second[0] != whole:
        second = _SECOND = (whole, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)))
    return f"{second[1]}.{int((created - whole) * 1000):03d}Z"


def json_line(created: float, level: str, logger: str, message: str, fields: dict[str, Any]) -> str:
    """One log line: time, level, logger and message first, then ``fields`` (SAFE_FIELDS, and an
    exception's type and code locations)."""
    out: dict[str, Any] = {"time": timestamp(created), "level": level, "logger": logger, "message": message}
    out.update(fields)
    return orjson.dumps(out, default=str).decode()


def safe_fields(get: Any) -> dict[str, Any]:
    """The SAFE_FIELDS that ``get(key)`` gives a value for, in their order: nothing else is written."""
    return {key: value for key in SAFE_FIELDS if (value := get(key)) is not None}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = safe_fields(lambda key: getattr(record, key, None))
        if "request_id" not in fields:
            rid = _current_request_id()
            if rid:
                fields["request_id"] = rid
        if record.exc_info and record.exc_info[0] is not None:
            fields["exception"], fields["stack"] = _safe_stack(record.exc_info)
        elif getattr(record, "exception", None):  # reduced already by RequestQueueHandler
            fields["exception"], fields["stack"] = record.exception, getattr(record, "stack", [])
        return safe_json_line(record.created, record.levelname.lower(), record.name, record.getMessage(), fields)


def safe_json_line(created: float, level: str, logger: str, message: str, fields: dict[str, Any]) -> str:
    """``json_line``, or the line without its fields when one cannot be written (an integer beyond
    64 bits): the message is never lost for a field."""
    try:
        return json_line(created, level, logger, message, fields)
    except TypeError:
        return json_line(created, level, logger, message, {"event": "log_fields_unwritable"})


def _current_request_id() -> str | None:
    try:
        return g.get("request_id")
    except RuntimeError:  # outside a request
        return None


def _safe_stack(exc_info) -> tuple[str, list[str]]:
    etype, _, tb = exc_info
    return etype.__name__, [f"{f.filename.rsplit('/', 1)[-1]}:{f.lineno} {f.name}" for f in traceback.extract_tb(tb)][-8:]


class RequestQueueHandler(QueueHandler):
    """Hands records to a background thread, so a request never waits for stderr or its lock.

    What the formatter needs from the request (its id) is taken now, in the request's thread;
    an exception is reduced now to its type and code locations — the stdlib default would format
    the whole traceback text, messages included, into the record.
    """

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        record = copy.copy(record)
        if getattr(record, "request_id", None) is None:
            record.request_id = _current_request_id()
        record.msg = record.getMessage()
        record.args = None
        if record.exc_info and record.exc_info[0] is not None:
            record.exception, record.stack = _safe_stack(record.exc_info)
        record.exc_info = None
        record.exc_text = None
        record.stack_info = None
        return record


class LineBatchHandler(logging.StreamHandler):
    """Collects formatted lines; ``write_pending`` writes them in one write (stderr is
    line-buffered: a write per record would be a system call per record)."""

    #: lines held at most before they are written anyway
    MAX_PENDING = 256

    def __init__(self, stream: Any = None) -> None:
        super().__init__(stream)
        self._pending: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:
            self.handleError(record)
            return
        self.add_line(line)

    def add_line(self, line: str) -> None:
        """A formatted line (without its terminator), written with the next batch."""
        self._pending.append(line + self.terminator)
        if len(self._pending) >= self.MAX_PENDING:
            self.write_pending()

    def write_pending(self) -> None:
        if not self._pending:
            return
        text, self._pending = "".join(self._pending), []
        with self.lock:  # type: ignore[union-attr]
            try:
                self.stream.write(text)
                self.stream.flush()
            except Exception:  # as StreamHandler.emit does: a broken stream is reported, never raised
                if logging.raiseExceptions and sys.__stderr__ is not None and sys.__stderr__ is not self.stream:
                    sys.__stderr__.write(f"--- Logging error: {len(text.splitlines())} log lines lost ---\n")


class LogWriter:
    """The background thread that writes queued records: every ``interval`` seconds, what has
    been queued since, in one write. A line reaches stderr at most ``interval`` after it was
    logged; ``stop`` writes everything queued."""

    def __init__(self, records: queue.SimpleQueue, handler: LineBatchHandler, interval: float = 0.05) -> None:
        self.queue = records
        self.handler = handler
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ivig-cds-log-writer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.drain()

    def drain(self) -> None:
        while True:
            try:
                item = self.queue.get_nowait()
            except queue.Empty:
                break
            if isinstance(item, str):  # a line formatted where it was logged (``log_access``)
                self.handler.add_line(item)
            else:
                self.handler.handle(item)
        self.handler.write_pending()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self.drain()


_listener: LogWriter | None = None
_queue_handler: RequestQueueHandler | None = None


def _stop_listener() -> None:
    global _listener
    if _listener is not None:
        _listener.stop()  # joins the thread, then writes what is queued
        _listener = None


def configure_logging(level: str = "INFO") -> None:
    """Route every logger of the process through one JSON handler on stderr, written by a
    background thread (records are queued; the queue is drained at exit)."""
    global _listener, _queue_handler
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_ivig_cds", False):
            root.removeHandler(handler)
    _stop_listener()
    stream = LineBatchHandler(sys.stderr)
    stream.setFormatter(JsonFormatter())
    handler = RequestQueueHandler(queue.SimpleQueue())
    handler._ivig_cds = True  # type: ignore[attr-defined]
    _listener = LogWriter(handler.queue, stream)
    _listener.start()
    _queue_handler = handler
    root.addHandler(handler)
    root.setLevel(level.upper())
    # werkzeug's access log prints the full URL and client address in plain text; ours replaces it.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    # urllib3 quotes request URLs (debug lines, retry warnings): FHIR queries carry patient ids.
    logging.getLogger("urllib3").setLevel(logging.ERROR)


atexit.register(_stop_listener)


def _valid_request_id(value: str | None) -> str | None:
    if value and len(value) <= 128 and all(c.isalnum() or c in "-_.:" for c in value):
        return value
    return None


def _known_service(service_id: str | None) -> str | None:
    return service_id if service_id in _published_services() else None


@functools.cache
def _published_services() -> frozenset[str]:
    from hooks import SERVICES  # on first use: logging is set up before, and without, the rules package

    return frozenset(SERVICES)


def new_request_id() -> str:
    """32 random hex digits, unique across processes and forked workers.

    A request id only tells log lines apart; it guards nothing, so it comes from a generator
    seeded from the OS's random source in each process (``_reseed``) rather than from the OS on
    every request: that is a system call, made with the GIL released, which hands the worker's
    other threads the GIL in the middle of every request.
    """
    return f"{_REQUEST_IDS.getrandbits(128):032x}"


_REQUEST_IDS = random.Random(os.urandom(32))


def _reseed() -> None:
    _REQUEST_IDS.seed(os.urandom(32))  # a forked worker must not repeat its parent's or siblings' ids


os.register_at_fork(after_in_child=_reseed)


def _written_only_by_us(logger: logging.Logger) -> bool:
    """Whether a record of ``logger`` would reach our queue and nothing else: no filter, no other
    handler on it or a parent (a test's capture, a deployment's own handler)."""
    ours = False
    node: logging.Logger | None = logger
    while node is not None:
        if node.filters or any(h is not _queue_handler for h in node.handlers):
            return False
        ours = ours or bool(node.handlers)
        node = node.parent if node.propagate else None
    return ours and not _queue_handler.filters  # type: ignore[union-attr]


def log_access(logger: logging.Logger, fields: dict[str, Any]) -> None:
    """One access line. When only our writer listens, the line is made here and queued as text:
    the record, its copy and the formatter cost more than the rest of a quiet call's logging, on
    every call. Otherwise it is logged as any record is, to whatever listens."""
    if not logger.isEnabledFor(logging.INFO):
        return
    listener = _listener
    if listener is None or not _written_only_by_us(logger):
        logger.info("request", extra=fields)
        return
    listener.queue.put(safe_json_line(time.time(), "info", logger.name, "request", safe_fields(fields.get)))


def init_app(app: Flask) -> None:
    """A request id on every request (accepting a sane X-Request-ID) and one access line each."""
    access = logging.getLogger("ivig_cds.access")

    @app.before_request
    def _start() -> None:
        here = g._get_current_object()
        environ = request._get_current_object().environ
        here.request_id = _valid_request_id(environ.get(_REQUEST_ID_ENVIRON)) or new_request_id()
        here.started = time.perf_counter()

    @app.after_request
    def _finish(response):
        req, here = request._get_current_object(), g._get_current_object()  # one context lookup each
        request_id = here.get("request_id", "")
        response.headers[REQUEST_ID_HEADER] = request_id
        started = here.get("started")
        topics = here.get("cds_topics")
        rule = req.url_rule
        log_access(access, {
            "request_id": request_id or None,
            "method": req.method,
            # the route pattern, not the URL: paths may carry ids in future endpoints
            "path": rule.rule if rule else "(unmatched)",
            # only ids we publish: an unknown id in the URL is caller-chosen text
            "service": _known_service((req.view_args or {}).get("service_id")),
            "status": response.status_code,
            "duration_ms": round((time.perf_counter() - started) * 1000, 2) if started else None,
            "cards": len(topics) if topics is not None else None,
            "topics": topics or None,
            "ruleset": here.get("cds_ruleset"),
        })
        return response
