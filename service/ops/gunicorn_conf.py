"""Production gunicorn settings: ``gunicorn -c python:service.ops.gunicorn_conf`` (or deploy/gunicorn.conf.py).

Lives in the package so that ``ivig-cds serve --production`` works after a plain ``pip install``.
Everything comes from the environment: bind address and worker timeout from the ``IVIG_CDS_*``
settings (the same loader the app uses, so a bad value stops the master before any worker
forks), process counts and timeouts from the variables in ``service.ops.production.GUNICORN_ENV``.

Choices and why:
- gthread workers: a hook call mostly waits on FHIR reads and the database; threads overlap
  those waits without the monkey-patching of gevent. Processes give parallelism past the GIL.
- no preload: the app opens database pools and a background flush thread; neither survives
  fork, so each worker builds its own app.
- ``timeout`` is gunicorn's watchdog of a worker's main loop (with gthread a slow request does
  not trip it), so it is never shorter than ``limits.request_timeout_seconds`` and at least 30 s,
  so that a worker busy booting (imports, migrations) is not killed.
- Prometheus multiprocess mode: ``PROMETHEUS_MULTIPROC_DIR`` is created and emptied when the
  master starts, dead workers' files are retired in ``child_exit`` (after counting the
  issued-card records a killed worker held). With ``metrics.port`` the master itself serves
  ``/metrics`` there, summing every worker's files: a scrape never takes a request thread.
- the database schema is brought to head once, in the master, before workers fork: workers
  then find it at head instead of racing each other (SQLite locks, PostgreSQL DDL).
- ``worker_exit`` closes the app, which flushes the queue of issued-card records: a rolling
  update must not lose them.
- header limits: one header line may be 32 KiB (gunicorn's default is 8 KiB), so that a bearer
  token too large for the service (16 KiB, service/auth/tokens.py) reaches it and is refused as a token
  (401 with WWW-Authenticate). Whatever gunicorn itself refuses (a longer header, a request
  line over 4 KiB, a malformed request) is answered in JSON like every other error, not with
  gunicorn's HTML page (``json_error``).
"""

from __future__ import annotations

import gc
import glob
import json
import math
import os
import shutil
import sys
import tempfile
import threading
import time
from typing import Any

from gunicorn.glogging import Logger as _GunicornLogger

from service.ops.production import APP_URI, env_int
from service.settings import load_settings

__all__ = [
    "wsgi_app", "bind", "workers", "worker_class", "threads", "timeout", "graceful_timeout", "keepalive",
    "max_requests", "max_requests_jitter", "preload_app", "worker_tmp_dir", "proc_name", "accesslog",
    "errorlog", "loglevel", "logconfig_dict", "control_socket_disable", "logger_class",
    "on_starting", "post_worker_init", "child_exit", "worker_exit", "on_exit",
    "limit_request_field_size", "limit_request_line", "limit_request_fields",
]

_settings = load_settings()


def _bind_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


wsgi_app = APP_URI
bind = [_bind_address(_settings.host, _settings.port)]
workers = env_int("WEB_CONCURRENCY")
worker_class = "gthread"
threads = env_int("GUNICORN_THREADS")
timeout = max(30, math.ceil(_settings.limits.request_timeout_seconds))
graceful_timeout = env_int("GUNICORN_GRACEFUL_TIMEOUT")
keepalive = env_int("GUNICORN_KEEPALIVE")
max_requests = env_int("GUNICORN_MAX_REQUESTS")
max_requests_jitter = env_int("GUNICORN_MAX_REQUESTS_JITTER")
preload_app = False
#: bytes of one header line: twice the longest bearer token the service reads (service/auth/tokens.py)
limit_request_field_size = 32 * 1024
limit_request_line = 4094  # gunicorn's default, stated: the CDS Hooks URLs are short
limit_request_fields = 100  # gunicorn's default: at most ~3 MiB of headers a request
# The heartbeat file is touched every second: keep it in memory where /dev/shm exists (it does in
# containers), which also keeps it off a read-only root filesystem.
worker_tmp_dir = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
proc_name = "ivig-cds"
# The app writes one JSON access line per request (service/ops/logging.py) with the route pattern
# rather than the URL; gunicorn's own access log would add a second, unstructured one.
accesslog = None
errorlog = "-"
loglevel = _settings.log_level.lower()
# gunicorn's own messages (boot, worker exits, timeouts) in the same JSON shape as the app's.
logconfig_dict: dict[str, Any] = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"json": {"()": "service.ops.logging.JsonFormatter"}},
    "handlers": {"json": {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"}},
    "root": {"level": _settings.log_level.upper(), "handlers": []},
    "loggers": {
        "gunicorn.error": {"level": _settings.log_level.upper(), "handlers": ["json"], "propagate": False},
        "gunicorn.access": {"level": "WARNING", "handlers": [], "propagate": False},
    },
}
# gunicorn >= 25.1 opens a control socket under $HOME by default: not writable in the container,
# shared between servers on one machine. Enable it with GUNICORN_CMD_ARGS="--control-socket PATH".
control_socket_disable = True


class NoAccessLogger(_GunicornLogger):
    """gunicorn's logger without its access log, which ``accesslog = None`` means to switch off.

    With a logging config present gunicorn still builds every request's access-log fields, only
    for gunicorn.access to drop them: work on every request, for nothing.
    """

    def access(self, resp: Any, req: Any, environ: Any, request_time: Any) -> None:
        return None


logger_class = NoAccessLogger
#: How often a worker collects reference cycles, in seconds; every GC_FULL_EVERY-th time, all
#: generations. Its automatic, allocation-triggered collector is off (see post_worker_init).
GC_SECONDS = 1.0
GC_FULL_EVERY = 60

#: A metrics directory this server made for itself (and so removes at exit).
_own_metrics_dir: str | None = None
#: The metrics port, served by the master (``metrics.port``).
_metrics_listener: Any = None


def _prepare_metrics_dir() -> str:
    """Create the multiprocess directory (default: a fresh one per server) and empty it."""
    global _own_metrics_dir
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not path:
        path = tempfile.mkdtemp(prefix="ivig-cds-prometheus-")
        _own_metrics_dir = path
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = path  # inherited by every worker forked later
    os.makedirs(path, exist_ok=True)
    # files of a previous run would be summed into this one's counters
    for stale in glob.glob(os.path.join(path, "*.db")):
        os.remove(stale)
    return path


def _migrate_database(server: Any) -> None:
    """``alembic upgrade head`` through the store, then close it so no connection crosses the fork."""
    from service.storage.sql_store import open_store

    try:
        open_store(_settings).close()
    except Exception as exc:  # workers will try again and report it; the type is enough here
        server.log.error("database migration before start failed: %s", type(exc).__name__,
                         extra={"event": "migrate", "phase": "start"})
    else:
        server.log.info("database schema at head", extra={"event": "migrate", "phase": "start"})


def json_error(sock: Any, status_int: int, reason: str, mesg: str) -> None:
    """gunicorn's answer to a request it cannot hand to the app, as the service's JSON error body.

    Replaces ``gunicorn.util.write_error`` (its HTML page) in the master before any worker is
    forked; the signature is gunicorn's. The message is gunicorn's, cut short; it names the
    limit, never the header's value.
    """
    from gunicorn import util

    body = json.dumps({"error": "_".join(reason.lower().split()) or "bad_request",
                       "message": (mesg or reason)[:200]}).encode()
    head = (f"HTTP/1.1 {status_int} {reason}\r\nConnection: close\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode("latin-1")
    util.write_nonblock(sock, head + body)


def on_starting(server: Any) -> None:
    """In the master, before any worker exists: JSON error pages, the metrics directory, the
    schema, the metrics port."""
    global _metrics_listener
    from gunicorn import util

    util.write_error = json_error
    from service.ops.metrics import serve_metrics_port
    from service.settings import ConfigError

    path = _prepare_metrics_dir()
    server.log.info("prometheus multiprocess directory %s", path, extra={"event": "metrics_dir"})
    try:
        _metrics_listener = serve_metrics_port(_settings)
    except ConfigError as exc:
        on_exit(server)  # not called when the start fails: remove what this start made
        raise RuntimeError(str(exc)) from None  # gunicorn prints "Error: <message>" and exits 1
    _migrate_database(server)


def post_worker_init(worker: Any) -> None:
    """In the worker, once the app is loaded: keep the garbage collector off work it need not do.

    What is loaded by now (modules, model classes, settings) lives as long as the worker:
    ``gc.freeze()`` leaves it out of every later collection. A request's parsed body is 100 000+
    live objects for a large record; a collector triggered by allocations scans them again and
    again while the request still uses them, although they die by reference counting the moment it
    ends, and with four threads each holding a record that cost more than the rules themselves
    (bench/run.py: distinct large records, collector on and off). So the automatic collector is
    off and a thread collects reference cycles on a clock instead: its cost follows time, not
    allocations, and a cycle lives at most ``GC_SECONDS``.
    """
    gc.collect()
    gc.freeze()
    gc.disable()
    threading.Thread(target=_collect_cycles, name="ivig-cds-gc", daemon=True).start()


def _collect_cycles() -> None:
    """Young generations every ``GC_SECONDS``, all of them every ``GC_FULL_EVERY``-th time."""
    rounds = 0
    while True:
        time.sleep(GC_SECONDS)
        rounds += 1
        gc.collect(2 if rounds % GC_FULL_EVERY == 0 else 1)


def child_exit(server: Any, worker: Any) -> None:
    """In the master, after a worker ended: count the issued-card records it died with (a worker
    that stopped normally wrote them), then retire its live gauges (counters stay summed)."""
    from prometheus_client import multiprocess

    from service.ops.metrics import count_dead_worker_records

    try:
        lost = count_dead_worker_records(worker.pid)
        if lost:
            server.log.error("worker ended with issued-card records unwritten",
                             extra={"event": "issued_lost", "count": lost, "worker": worker.pid})
        multiprocess.mark_process_dead(worker.pid)
    except Exception:
        server.log.warning("could not retire metrics of worker", extra={"worker": worker.pid}, exc_info=True)


def worker_exit(server: Any, worker: Any) -> None:
    """In the worker, as it leaves: close the app so queued records are written."""
    module = sys.modules.get("service.wsgi")
    app = getattr(module, "app", None)
    if app is None:  # the worker never got as far as loading the app
        return
    import atexit

    from service.app import close_app

    atexit.unregister(close_app)  # wsgi.py registered it; closing twice would be wasted work
    close_app(app)
    server.log.info("app closed", extra={"event": "worker_exit", "worker": worker.pid})


def on_exit(server: Any) -> None:
    """In the master, last: close the metrics port, remove the metrics directory if this server made it."""
    if _metrics_listener is not None:
        _metrics_listener.close()
    if _own_metrics_dir:
        shutil.rmtree(_own_metrics_dir, ignore_errors=True)
