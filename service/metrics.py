"""Prometheus metrics at ``GET /metrics``: requests, latencies, cards per topic, prefetch, feedback.

Under gunicorn every worker is a separate process, so a scrape that reached one worker would see
a fraction of the truth. When ``PROMETHEUS_MULTIPROC_DIR`` is set (service/gunicorn_conf.py sets
it), prometheus_client keeps each value in a file there and ``/metrics`` sums the files of all
workers; without it the process-local default registry answers (``ivig-cds serve``, tests).

A request's figures are recorded after its answer has been sent, in batches (service/deferred.py:
by a request thread once its own answer is out, or by a timer thread in quiet times), which is
cheaper than one at a time. A scrape first records what its worker has pending and, under
several workers, waits two timer rounds (0.1 s) for the others' pending calls, so it counts
every call answered before it came.

The recording functions (``observe_prefetch``, ``count_feedback``) are module-level and do nothing
until ``init_app`` has run, so library code may call them unconditionally: a CLI command or a
unit test that never built an app must not fail for want of metrics.

Label values are bounded on purpose (service ids not in discovery become ``unknown``, unmatched
routes ``unmatched``): a caller must not be able to grow the series count with made-up URLs.
Nothing here ever carries a patient id or a token.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from flask import Blueprint, Flask, Response, g, request

from service.deferred import WORK

if TYPE_CHECKING:
    from prometheus_client import Counter, Histogram

log = logging.getLogger("ivig_cds.metrics")

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
#: Seconds; CDS Hooks answers are expected within a few hundred milliseconds, EHRs give up near 5 s.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0)
_MAX_LABEL = 64

bp = Blueprint("metrics", __name__)


@dataclass(frozen=True)
class _Metrics:
    requests: Counter
    latency: Histogram
    cards: Counter
    prefetch_latency: Histogram
    prefetch_failures: Counter
    feedback: Counter


_lock = threading.Lock()
_metrics: _Metrics | None = None


def multiprocess_dir() -> str | None:
    """The shared directory of per-process metric files, when running under several processes."""
    return os.environ.get(MULTIPROC_ENV) or None


def _create() -> _Metrics:
    """Create the metric objects once per process (after gunicorn forked, so values are per pid)."""
    from prometheus_client import Counter, Histogram

    path = multiprocess_dir()
    if path:
        os.makedirs(path, exist_ok=True)
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
    )


def _get() -> _Metrics | None:
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
    """Record one FHIR read made for prefetch ``key``; safe to call before ``init_app``."""
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
    """Count ``n`` feedback items with ``outcome`` (accepted / overridden); safe before ``init_app``."""
    m = _get()
    if m is None or n <= 0:
        return
    try:
        _child(m.feedback, _label(service, "unknown"), _label(outcome)).inc(n)
    except Exception:
        log.warning("could not record feedback metric", exc_info=True)


def count_cards(service: str, topics: list[str | None]) -> None:
    """Count cards issued, one per entry of ``topics``; safe before ``init_app``."""
    m = _get()
    if m is None:
        return
    for topic in topics:
        _child(m.cards, _label(service, "unknown"), _label(topic)).inc()


# ------------------------------------------------------------------ Flask wiring

def _service_label(service_id: str | None, known: Any) -> str:
    """The CDS service id of a request, or '' when its route has none, 'unknown' when not published."""
    if service_id is None:
        return ""
    return service_id if known is not None and service_id in known else "unknown"


def init_app(app: Flask) -> None:
    """Create the process's metrics (once) and observe every request of ``app``."""
    global _metrics
    with _lock:
        if _metrics is None:
            _metrics = _create()
    m = _metrics

    state = app.extensions.get("ivig_cds")
    known = getattr(state, "services", None)  # the app's own dict: what it publishes, now and later

    def _observe(endpoint: str, service_id: str | None, status: int, seconds: float | None,
                 topics: list[str | None] | None, outcomes: list[str] | None) -> None:
        """One request's figures (run by service/deferred.py once the answer has been sent)."""
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
        g.metrics_started = time.perf_counter()

    @app.after_request
    def _metrics_observe(response: Response) -> Response:
        try:
            req, here = request._get_current_object(), g._get_current_object()  # one context lookup each
            started = here.get("metrics_started")
            WORK.defer(_observe, req.endpoint or "unmatched", (req.view_args or {}).get("service_id"),
                       response.status_code, None if started is None else time.perf_counter() - started,
                       here.get("cds_topics"), here.get("cds_feedback_outcomes"))
        except Exception:  # metrics must never turn an answer into an error
            log.warning("could not record request metrics", exc_info=True)
        return response

    app.register_blueprint(bp)


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


@bp.get("/metrics")
def metrics_view() -> Response:
    """Prometheus text format (or OpenMetrics when the scraper asks for it)."""
    from prometheus_client.exposition import choose_encoder

    WORK.drain()  # this worker's requests so far, counted
    if multiprocess_dir():
        # The other workers record theirs in batches too, at the latest when their timer comes
        # round (every WORK.interval): waiting two rounds out, a scrape counts every call
        # answered before it came, whichever worker answered it. Scrapes are seconds apart.
        time.sleep(2 * WORK.interval)
    encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
    return Response(encoder(_registry()), status=200, headers={"Content-Type": content_type})
