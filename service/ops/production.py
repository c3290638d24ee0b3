"""``ivig-cds serve --production``: the app under gunicorn, configured by service/ops/gunicorn_conf.py.

gunicorn runs inside this process (it becomes the master), so the container's PID 1 is the
gunicorn arbiter itself and SIGTERM from Docker or Kubernetes starts its graceful shutdown
directly. The configuration is loaded from the installed package (``python:service.ops.gunicorn_conf``)
because a plain ``pip install .`` does not carry the repository's deploy/ folder;
deploy/gunicorn.conf.py only re-exports it for the documented ``gunicorn -c`` command.

Workers build their own Settings from the environment, so what the command line decided (host,
port, profile, config file) is handed to them as ``IVIG_CDS_*`` variables.

This module stays free of side effects and heavy imports: the configuration reference
(service/governance/config_reference.py) reads ``GUNICORN_ENV`` from it.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Any

from service.settings import Settings

PACKAGED_CONFIG = "python:service.ops.gunicorn_conf"
APP_URI = "service.wsgi:app"


@dataclass(frozen=True)
class EnvVar:
    """A process-level variable read by the production server (not an ``IVIG_CDS_*`` setting)."""

    name: str
    default: str
    description: str
    #: least accepted value, for the numeric ones
    minimum: int = 0


#: Every process variable of the production server, with its default; rendered into the README.
GUNICORN_ENV: tuple[EnvVar, ...] = (
    EnvVar("WEB_CONCURRENCY", "2", "gunicorn worker processes (scale further with replicas)", minimum=1),
    EnvVar("GUNICORN_THREADS", "4", "threads per worker (gthread); each serves one request at a time", minimum=1),
    EnvVar("GUNICORN_GRACEFUL_TIMEOUT", "25",
           "seconds a worker may finish in-flight requests after SIGTERM (keep below the orchestrator's grace period)",
           minimum=1),
    EnvVar("GUNICORN_KEEPALIVE", "5",
           "seconds an idle keep-alive connection is held (raise above a load balancer's idle timeout)", minimum=1),
    EnvVar("GUNICORN_MAX_REQUESTS", "0", "restart a worker after this many requests (0: never)"),
    EnvVar("GUNICORN_MAX_REQUESTS_JITTER", "0", "random extra requests before such a restart, to stagger them"),
    EnvVar("FORWARDED_ALLOW_IPS", "127.0.0.1,::1",
           "gunicorn's own: proxies trusted to set the URL scheme through X-Forwarded-Proto"),
    EnvVar("GUNICORN_CMD_ARGS", "",
           "further gunicorn command-line options; they win over service/ops/gunicorn_conf.py"),
    EnvVar("PROMETHEUS_MULTIPROC_DIR", "a fresh directory under $TMPDIR",
           "where workers keep metric values for /metrics to sum; emptied at start (one per server)"),
)


def env_int(name: str) -> int:
    """An integer variable of ``GUNICORN_ENV``, or its default; ValueError naming it when invalid."""
    spec = next(v for v in GUNICORN_ENV if v.name == name)
    raw = os.environ.get(name, "").strip() or spec.default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name} must be an integer, not {raw!r}") from None
    if value < spec.minimum:
        raise ValueError(f"{name} must be at least {spec.minimum}, not {value}")
    return value


def check_environment() -> None:
    """Every numeric process variable parses; ValueError naming the first that does not.

    Runs before gunicorn is imported: gunicorn reads WEB_CONCURRENCY at import time and would
    answer a typo with a traceback instead of a line naming the variable.
    """
    for var in GUNICORN_ENV:
        if var.default.isdigit():
            env_int(var.name)


def worker_environment(settings: Settings, config_file: str | os.PathLike | None) -> dict[str, str]:
    """The ``IVIG_CDS_*`` variables that make each worker's Settings equal ``settings``."""
    env = {
        "IVIG_CDS_HOST": settings.host,
        "IVIG_CDS_PORT": str(settings.port),
        "IVIG_CDS_PROFILE": settings.profile.value,
    }
    if config_file:
        env["IVIG_CDS_CONFIG"] = os.path.abspath(config_file)
    return env


def _application_class() -> type:
    from gunicorn import util
    from gunicorn.app.base import Application

    class ProductionApplication(Application):
        """gunicorn with the packaged config, then ``GUNICORN_CMD_ARGS`` (as the gunicorn command does)."""

        def load_config(self) -> None:
            self.load_config_from_module_name_or_filename(PACKAGED_CONFIG)
            parser = self.cfg.parser()
            env_args = parser.parse_args(self.cfg.get_cmd_args_from_env())
            for key, value in vars(env_args).items():
                if value is None or key in ("args", "config"):
                    continue
                self.cfg.set(key.lower(), value)

        def init(self, parser: Any, opts: Any, args: Any) -> None:  # abstract in Application; unused here
            return None

        def load(self) -> Any:
            return util.import_app(APP_URI)

    return ProductionApplication


def run_gunicorn(settings: Settings, config_file: str | os.PathLike | None, warning: str | None = None) -> int:
    """Serve ``settings`` under gunicorn in this process until it is stopped; the exit status.

    ``warning`` (that this is the development profile) is printed once the start can go on, as a
    JSON line like everything gunicorn and the workers print.
    """
    try:
        check_environment()
    except ValueError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    if warning:
        import time

        from service.ops.logging import json_line

        print(json_line(time.time(), "warning", "ivig_cds.cli", warning, {"event": "serve_profile"}),
              file=sys.stderr, flush=True)
    os.environ.update(worker_environment(settings, config_file))
    try:
        # configuration errors surface here too: gunicorn prints them and exits 1
        _application_class()(prog="ivig-cds serve --production").run()
    except SystemExit as exc:  # the arbiter leaves through sys.exit, also on a clean shutdown
        code = exc.code
        if code is None:
            return 0
        return code if isinstance(code, int) else 1
    return 0
