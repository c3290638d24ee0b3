"""Operational endpoints: liveness and readiness."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Callable

from flask import Blueprint, jsonify

if TYPE_CHECKING:
    from service.app import AppState

bp = Blueprint("ops", __name__)
log = logging.getLogger("ivig_cds.ops")


@bp.get("/healthz")
def healthz():
    """Liveness: the process answers. Deliberately checks nothing else."""
    return jsonify({"status": "ok"})


@bp.get("/readyz")
def readyz():
    """Readiness: the database answers, the configuration holds, the trusted issuers' keys load.

    503 names each failed check (``failed`` lists them) with the exception type only: the body
    is visible to anyone who can reach the port, and driver messages may quote connection details.
    """
    from service.app import state

    st = state()
    checks: dict[str, str] = {
        "database": _check(st.store.ping),
        "configuration": _check(lambda: _check_configuration(st)),
    }
    ready = getattr(st.authenticator, "ready", None)  # JWKS readiness, where the authenticator offers it
    if callable(ready):
        checks["jwks"] = _check(ready)
    failed = [name for name, result in checks.items() if result != "ok"]
    _log_transition(failed)
    body: dict[str, object] = {"status": "unavailable" if failed else "ok", "checks": checks}
    if failed:
        body["failed"] = failed
    resp = jsonify(body)
    resp.status_code = 503 if failed else 200
    return resp


def _check(probe: Callable[[], object]) -> str:
    """'ok', or 'failed: <exception type>' (a probe may also answer False)."""
    try:
        result = probe()
    except Exception as exc:  # any failure means not ready; the type is enough to act on
        return f"failed: {type(exc).__name__}"
    return "failed: not ready" if result is False else "ok"


def _check_configuration(st: "AppState") -> None:
    """The settings in force still validate as a whole, and there are services to publish."""
    type(st.settings).model_validate(st.settings.model_dump())
    if not st.services:
        raise LookupError("no CDS services loaded")


_last_failed: list[str] = []


def _log_transition(failed: list[str]) -> None:
    """One log line when readiness changes, not one per probe."""
    global _last_failed
    if failed != _last_failed:
        if failed:
            log.warning("not ready: %s", ", ".join(failed), extra={"event": "readiness", "reason": ",".join(failed)})
        else:
            log.info("ready again", extra={"event": "readiness"})
        _last_failed = failed
