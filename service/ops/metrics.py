"""Prometheus metrics: requests, latencies, cards per topic, prefetch, feedback; recorded and exposed.

The recording API, the exposition and the metrics port live here, below every view:
service/ops/metrics_view.py answers ``GET /metrics`` on the service's own port.

Under gunicorn every worker is a separate process, so a scrape that reached one worker would see
a fraction of the truth. When ``PROMETHEUS_MULTIPROC_DIR`` is set (service/ops/gunicorn_conf.py sets
it), prometheus_client keeps each value in a file there and ``/metrics`` sums the files of all
workers; without it the process-local default registry answers (``ivig-cds serve``, tests).

A request's figures are recorded by the request itself, just before its answer leaves (an
``after_request`` hook): a scrape that comes after an answer counts it, whichever worker gave
it, and never has to wait for anything.

Where scrapes are answered: on a port of their own (``metrics.port``; under gunicorn the master
serves it, so a scrape never takes a worker's request thread), and on the service's port except
in the production profile, where that needs ``metrics.token``. With a token, every scrape must
carry it. One rendering runs at a time per process; a scrape that finds one running is answered
429 at once instead of waiting or adding its own.

The recording functions (``observe_prefetch``, ``count_feedback``) are module-level and do nothing
until the metrics exist (``observe_requests``, or the gunicorn master), so library code may call
them unconditionally: a CLI command or a unit test that never built an app must not fail for want
of metrics.

Label values are bounded on purpose (service ids not in discovery become ``unknown``, unmatched
routes ``unmatched``): a caller must not be able to grow the series count with made-up URLs.
Nothing here ever carries a patient id or a token.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from flask import Flask, Response, g, request

if TYPE_CHECKING:
    from prometheus_client import Counter, Gauge, Histogram
    from pydantic import SecretStr

    from service.settings import Settings

log = logging.getLogger("ivig_cds.metrics")

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
#: Seconds; CDS Hooks answers are expected within a few hundred milliseconds, EHRs give up near 5 s.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0)
_MAX_LABEL = 64
ISSUED_QUEUED = "ivig_cds_issued_cards_queued"


@dataclass(frozen=True)
class _Metrics:
    requests: Counter
    latency: Histogram
    cards: Counter
    prefetch_latency: Histogram
    prefetch_failures: Counter
    feedback: Counter
    issued_queued: Gauge
    issued_lost: Counter


_lock = threading.Lock()
_metrics: _Metrics | None = None


def multiprocess_dir() -> str | None:
    """The shared directory of per-process metric files, when running under several processes."""
    return os.environ.get(MULTIPROC_ENV) or None


#: This process's id, renewed in every forked child: what names its metric files.
_pid = os.getpid()


def _renew_pid() -> None:
    global _pid
    _pid = os.getpid()


os.register_at_fork(after_in_child=_renew_pid)


def _process_id() -> int:
    """The process identifier of the metric files: prometheus_client asks for it on every value
    it records, and ``os.getpid`` is a system call each time; this one is renewed at every fork,
    so processes running at once still get distinct ones (the rule prometheus_client sets)."""
    return _pid


def _create() -> _Metrics:
    """Create the metric objects once per process (after gunicorn forked, so values are per pid)."""
    from prometheus_client import Counter, Gauge, Histogram, values

    path = multiprocess_dir()
    if path:
        os.makedirs(path, exist_ok=True)
        # before any metric of this process exists: all its values must share one ValueClass (one map per file)
        values.ValueClass = values.MultiProcessValue(process_identifier=_process_id)
    return _Metrics(
        requests=Counter(
            "ivig_cds_http_requests", "HTTP requests answered, by endpoint, CDS service id and status",
            ["endpoint", "service", "status"]),
        latency=Histogram(
            "ivig_cds_http_request_duration_seconds", "Time to answer an HTTP request",
            ["endpoint", "service", "status"], buckets=LATENCY_BUCKETS),
        cards=Counter(
            "ivig_cds_cards_issued", "Cards returned to EHRs, by CDS service id and card topic",
            ["service", "topic"]),
        prefetch_latency=Histogram(
            "ivig_cds_prefetch_fetch_duration_seconds", "Time of one FHIR read made to complete prefetch",
            ["key"], buckets=LATENCY_BUCKETS),
        prefetch_failures=Counter(
            "ivig_cds_prefetch_fetch_failures", "FHIR reads for prefetch that failed (timeout, HTTP error, invalid)",
            ["key"]),
        feedback=Counter(
            "ivig_cds_feedback_outcomes", "Card outcomes reported by EHRs through the feedback endpoint",
            ["service", "outcome"]),
        issued_queued=Gauge(
            ISSUED_QUEUED, "Issued-card records queued in memory, not yet written (what a crash would lose)",
            multiprocess_mode="livesum"),
        issued_lost=Counter(
            "ivig_cds_issued_cards_lost", "Issued-card records never written, by reason: rejected (by the "
            "database), database_unavailable, error, shutdown (database away at a stop), worker_died (queued in "
            "a worker that died)", ["reason"]),
    )


def _get() -> _Metrics | None:
    return _metrics


def ensure_metrics() -> _Metrics:
    """The process's metric objects, created on first use (observe_requests, or the gunicorn master)."""
    global _metrics
    with _lock:
        if _metrics is None:
            _metrics = _create()
    return _metrics


#: labelled children by metric and label values: ``labels()`` validates and locks on every call.
#: Bounded because every label value is (see the module docstring).
_children: dict[tuple[int, tuple[str, ...]], object] = {}


def _child(metric, *values: str):
    key = (id(metric), values)
    child = _children.get(key)
    if child is None:
        child = _children[key] = metric.labels(*values)
    return child


def _label(value: object, default: str = "none") -> str:
    text = str(value) if value not in (None, "") else default
    return text[:_MAX_LABEL]


# ------------------------------------------------------------------ recording API for other modules

def observe_prefetch(key: str, seconds: float, ok: bool) -> None:
    """Record one FHIR read made for prefetch ``key``; safe to call before ``observe_requests``."""
    m = _get()
    if m is None:
        return
    try:
        _child(m.prefetch_latency, _label(key)).observe(max(0.0, float(seconds)))
        if not ok:
            _child(m.prefetch_failures, _label(key)).inc()
    except Exception:  # metrics must never break a clinical answer
        log.warning("could not record prefetch metric", exc_info=True)


def count_feedback(outcome: str, service: str = "", n: int = 1) -> None:
    """Count ``n`` feedback items with ``outcome`` (accepted / overridden); safe before ``observe_requests``."""
    m = _get()
    if m is None or n <= 0:
        return
    try:
        _child(m.feedback, _label(service, "unknown"), _label(outcome)).inc(n)
    except Exception:
        log.warning("could not record feedback metric", exc_info=True)


def count_cards(service: str, topics: list[str | None]) -> None:
    """Count cards issued, one per entry of ``topics``; safe before ``observe_requests``."""
    m = _get()
    if m is None:
        return
    for topic in topics:
        _child(m.cards, _label(service, "unknown"), _label(topic)).inc()


def issued_queued(count: int) -> None:
    """How many issued-card records this process holds unwritten now; safe before ``observe_requests``."""
    m = _get()
    if m is None:
        return
    try:
        m.issued_queued.set(count)
    except Exception:
        log.warning("could not record the issued-card queue", exc_info=True)


def count_issued_lost(n: int, reason: str) -> None:
    """Count ``n`` issued-card records that will never be written; safe before ``observe_requests``."""
    m = _get()
    if m is None or n <= 0:
        return
    try:
        _child(m.issued_lost, _label(reason)).inc(n)
    except Exception:
        log.warning("could not count lost issued-card records", exc_info=True)


def count_dead_worker_records(pid: int) -> int:
    """In the gunicorn master, when a worker has died: what it still had queued is lost; count it.

    A worker that stops normally writes its queue first (its gauge is 0 by then); one killed
    (kill -9, out of memory) leaves its last value in its gauge file, read here before that file
    is retired. Returns the number counted.
    """
    path = multiprocess_dir()
    if not path:
        return 0
    from prometheus_client.mmap_dict import MmapedDict

    lost = 0.0
    file = os.path.join(path, f"gauge_livesum_{pid}.db")
    if os.path.exists(file):
        for key, value, _timestamp, _pos in MmapedDict.read_all_values_from_file(file):
            if json.loads(key)[0] == ISSUED_QUEUED:  # (metric, sample, label names, values, help)
                lost += value
    if lost > 0:
        ensure_metrics()
        count_issued_lost(int(lost), "worker_died")
    return int(lost)


# ------------------------------------------------------------------ Flask wiring

def _service_label(service_id: str | None, known: Any) -> str:
    """The CDS service id of a request, or '' when its route has none, 'unknown' when not published."""
    if service_id is None:
        return ""
    return service_id if known is not None and service_id in known else "unknown"


def observe_requests(app: Flask) -> None:
    """Create the process's metrics (once) and observe every request of ``app``."""
    m = ensure_metrics()

    state = app.extensions.get("ivig_cds")
    known = getattr(state, "services", None)  # the app's own dict: what it publishes, now and later

    def _observe(endpoint: str, service_id: str | None, status: int, seconds: float | None,
                 topics: list[str | None] | None, outcomes: list[str] | None) -> None:
        """One request's figures."""
        try:
            service = _service_label(service_id, known)
            route = (endpoint, service, str(status))
            _child(m.requests, *route).inc()
            if seconds is not None:
                _child(m.latency, *route).observe(seconds)
            if status < 400:
                if topics:
                    count_cards(service, topics)
                for outcome in outcomes or ():
                    count_feedback(outcome, service)
        except Exception:  # metrics must never turn an answer into an error
            log.warning("could not record request metrics", exc_info=True)

    @app.before_request
    def _metrics_start() -> None:
        g._get_current_object().metrics_started = time.perf_counter()

    @app.after_request
    def _metrics_observe(response: Response) -> Response:
        try:
            req, here = request._get_current_object(), g._get_current_object()  # one context lookup each
            started = here.get("metrics_started")
            _observe(req.endpoint or "unmatched", (req.view_args or {}).get("service_id"), response.status_code,
                     None if started is None else time.perf_counter() - started,
                     here.get("cds_topics"), here.get("cds_feedback_outcomes"))
        except Exception:  # metrics must never turn an answer into an error
            log.warning("could not record request metrics", exc_info=True)
        return response


def _registry():
    """Where a scrape reads from: all workers' files in multiprocess mode, else this process."""
    from prometheus_client import REGISTRY, CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector

    path = multiprocess_dir()
    if not path:
        return REGISTRY
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=path)
    return registry


# ------------------------------------------------------------------ serving scrapes

#: One rendering at a time per process: a scrape that finds one running is told to come back
#: (429) at once rather than wait or add its own. Prometheus scrapes every 15-60 s; only a flood
#: of scrapes meets this, and a flood must not take the request threads from the hook calls.
_render_lock = threading.Lock()


def _fresh_render_lock() -> None:
    global _render_lock
    _render_lock = threading.Lock()  # the master's listener may hold it at the moment a worker forks


os.register_at_fork(after_in_child=_fresh_render_lock)


def render(accept: str) -> tuple[bytes, str] | None:
    """The exposition in the format ``accept`` asks for, and its content type; None when busy."""
    from prometheus_client.exposition import choose_encoder

    if not _render_lock.acquire(blocking=False):
        return None
    try:
        encoder, content_type = choose_encoder(accept)
        return encoder(_registry()), content_type
    finally:
        _render_lock.release()


def token_matches(authorization: str | None, token: "SecretStr") -> bool:
    """Whether an Authorization header carries ``Bearer <token>`` (compared in constant time)."""
    scheme, _, value = (authorization or "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode(), token.get_secret_value().encode())


REALM = 'Bearer realm="ivig-cds metrics"'


def _json(start_response: Any, status: str, body: dict[str, str], headers: list[tuple[str, str]] = ()) -> list[bytes]:
    data = json.dumps(body).encode()
    start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(data))), *headers])
    return [data]


def exposition_app(token: "SecretStr | None") -> Callable[..., list[bytes]]:
    """The WSGI app of the metrics port: ``GET /metrics`` and nothing else."""

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        if environ.get("PATH_INFO") != "/metrics":
            return _json(start_response, "404 Not Found", {"error": "not_found", "message": "only GET /metrics here"})
        if environ.get("REQUEST_METHOD") not in ("GET", "HEAD"):
            return _json(start_response, "405 Method Not Allowed",
                         {"error": "method_not_allowed", "message": "GET /metrics"}, [("Allow", "GET, HEAD")])
        if token is not None and not token_matches(environ.get("HTTP_AUTHORIZATION"), token):
            return _json(start_response, "401 Unauthorized",
                         {"error": "unauthorized", "message": "a valid bearer token is required for metrics"},
                         [("WWW-Authenticate", REALM)])
        try:
            rendered = render(environ.get("HTTP_ACCEPT", ""))
        except Exception as exc:  # a file of a worker being replaced, say: this scrape fails, the next may not
            log.error("metrics exposition failed: %s", type(exc).__name__, extra={"event": "metrics_failed"})
            return _json(start_response, "500 Internal Server Error",
                         {"error": "internal_error", "message": "the metrics could not be read"})
        if rendered is None:
            return _json(start_response, "429 Too Many Requests",
                         {"error": "too_many_requests", "message": "another scrape is being answered; retry"},
                         [("Retry-After", "1")])
        body, content_type = rendered
        start_response("200 OK", [("Content-Type", content_type), ("Content-Length", str(len(body))),
                                  ("Cache-Control", "no-store")])
        return [body]

    return app


class MetricsListener:
    """The metrics port: a small threaded HTTP server of its own, in a daemon thread.

    Under gunicorn the master runs it (service/ops/gunicorn_conf.py), so a scrape takes no worker's
    request thread; a forked worker closes its copy of the listening socket. Each connection has
    a socket timeout, so slow clients cannot hold threads for long.
    """

    TIMEOUT_SECONDS = 5.0

    def __init__(self, host: str, port: int, token: "SecretStr | None") -> None:
        import socket
        from socketserver import ThreadingMixIn
        from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0]

        class Server(ThreadingMixIn, WSGIServer):
            address_family = family
            daemon_threads = True
            allow_reuse_address = True

        class Handler(WSGIRequestHandler):
            timeout = self.TIMEOUT_SECONDS

            def log_message(self, format: str, *args: Any) -> None:  # scrapes are not worth a log line
                return None

        self.server = make_server(host, port, exposition_app(token), server_class=Server, handler_class=Handler)
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, name="ivig-cds-metrics", daemon=True)
        self._thread.start()
        os.register_at_fork(after_in_child=self._forget_in_child)

    def _forget_in_child(self) -> None:
        self.server.socket.close()  # this process's copy only; the parent keeps serving

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def serve_metrics_port(settings: "Settings") -> MetricsListener | None:
    """Start the metrics port when ``metrics.port`` is set; one line naming the problem if it cannot bind."""
    from service.settings import ConfigError

    cfg = settings.metrics
    if cfg.port is None:
        return None
    host = cfg.host or settings.host
    try:
        listener = MetricsListener(host, cfg.port, cfg.token)
    except OSError as exc:
        raise ConfigError(f"metrics.port {cfg.port} on {host} cannot be opened: {exc.strerror or exc}") from None
    log.info("metrics on http://%s:%s/metrics", host, listener.port, extra={"event": "metrics_port"})
    return listener
