"""Operational endpoints: liveness and readiness."""

from __future__ import annotations

from flask import Blueprint, jsonify

bp = Blueprint("ops", __name__)


@bp.get("/healthz")
def healthz():
    """Liveness: the process answers. Deliberately checks nothing else."""
    return jsonify({"status": "ok"})


@bp.get("/readyz")
def readyz():
    """Readiness: the database answers and the configuration is loaded."""
    from service.app import state

    checks: dict[str, str] = {}
    ok = True
    try:
        state().store.ping()
        checks["database"] = "ok"
    except Exception as exc:  # any failure means not ready; the type is enough to act on
        checks["database"] = f"failed: {type(exc).__name__}"
        ok = False
    checks["configuration"] = "ok"
    resp = jsonify({"status": "ok" if ok else "unavailable", "checks": checks})
    resp.status_code = 200 if ok else 503
    return resp
