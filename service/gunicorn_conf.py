"""Production gunicorn settings: ``gunicorn -c python:service.gunicorn_conf`` (or deploy/gunicorn.conf.py).

Lives in the package so that ``ivig-cds serve --production`` works after a plain ``pip install``.
Everything comes from the environment: bind address and worker timeout from the ``IVIG_CDS_*``
settings (the same loader the app uses, so a bad value stops the master before any worker
forks), process counts and timeouts from the variables in ``service.production.GUNICORN_ENV``.

Choices and why:
- gthread workers: a hook call mostly waits on FHIR reads and the database; threads overlap
  those waits without the monkey-patching of gevent. Processes give parallelism past the GIL.
- no preload: the app opens database pools and a background flush thread; neither survives
  fork, so each worker builds its own app.
- ``timeout`` is gunicorn's watchdog of a worker's main loop (with gthread a slow request does
  not trip it), so it is never shorter than ``limits.request_timeout_seconds`` and at least 30 s,
  so that a worker busy booting (imports, migrations) is not killed.
- Prometheus multiprocess mode: ``PROMETHEUS_MULTIPROC_DIR`` is created and emptied when the
  master starts, dead workers' files are retired in ``child_exit``.
- the database schema is brought to head once, in the master, before workers fork: workers
  then find it at head instead of racing each other (SQLite locks, PostgreSQL DDL).
- ``worker_exit`` closes the app, which flushes the queue of issued-card records: a rolling
  update must not lose them.
"""

from __future__ import annotations

import gc
import glob
import math
import os
import shutil
import sys
import tempfile
from typing import Any

from gunicorn.glogging import Logger as _GunicornLogger

from service.production import APP_URI, env_int
from service.settings import load_settings

__all__ = [
    "wsgi_app", "bind", "workers", "worker_class", "threads", "timeout", "graceful_timeout", "keepalive",
    "max_requests", "max_requests_jitter", "preload_app", "worker_tmp_dir", "proc_name", "accesslog",
    "errorlog", "loglevel", "logconfig_dict", "control_socket_disable", "logger_class",
    "on_starting", "post_worker_init", "child_exit", "worker_exit", "on_exit",
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
# The heartbeat file is touched every second: keep it in memory where /dev/shm exists (it does in
# containers), which also keeps it off a read-only root filesystem.
worker_tmp_dir = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
proc_name = "ivig-cds"
# The app writes one JSON access line per request (service/logging.py) with the route pattern
# rather than the URL; gunicorn's own access log would add a second, unstructured one.
accesslog = None
errorlog = "-"
loglevel = _settings.log_level.lower()
# gunicorn's own messages (boot, worker exits, timeouts) in the same JSON shape as the app's.
logconfig_dict: dict[str, Any] = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"json": {"()": "service.logging.JsonFormatter"}},
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
    for gunicorn.access to drop them: ~3 % of a hook call's CPU (bench/run.py), for nothing.
    """

    def access(self, resp: Any, req: Any, environ: Any, request_time: Any) -> None:
        return None


logger_class = NoAccessLogger
#: The workers' garbage collector thresholds (CPython's default: 700, 10, 10); see post_worker_init.
GC_THRESHOLDS = (20_000, 10, 10)

#: A metrics directory this server made for itself (and so removes at exit).
_own_metrics_dir: str | None = None


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
    try:
        from service.storage import open_store
    except ImportError:  # a build without the SQL store keeps records in memory
        return
    try:
        open_store(_settings).close()
    except Exception as exc:  # workers will try again and report it; the type is enough here
        server.log.error("database migration before start failed: %s", type(exc).__name__,
                         extra={"event": "migrate", "phase": "start"})
    else:
        server.log.info("database schema at head", extra={"event": "migrate", "phase": "start"})


def on_starting(server: Any) -> None:
    """In the master, before any worker exists."""
    path = _prepare_metrics_dir()
    server.log.info("prometheus multiprocess directory %s", path, extra={"event": "metrics_dir"})
    _migrate_database(server)


def post_worker_init(worker: Any) -> None:
    """In the worker, once the app is loaded: keep the garbage collector off work it need not do.

    What is loaded by now (modules, fhir.resources model classes, settings) lives as long as the
    worker: ``gc.freeze()`` leaves it out of every later collection. A young generation of 20 000
    objects lets a request's parsed body (100 000+ objects for a large record) die by reference
    counting instead of being promoted and scanned again by full collections, which took half the
    CPU of a large hook call (bench/run.py). Reference cycles are still collected, a little later.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def child_exit(server: Any, worker: Any) -> None:
    """In the master, after a worker died: retire its live gauges (counters stay summed)."""
    from prometheus_client import multiprocess

    try:
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
    """In the master, last: remove the metrics directory if this server created it."""
    if _own_metrics_dir:
        shutil.rmtree(_own_metrics_dir, ignore_errors=True)
