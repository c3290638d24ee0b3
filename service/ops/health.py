"""Operational endpoints: liveness and readiness.

Readiness checks every dependency a hook call needs: the database (issued cards, feedback, and
the default jti replay store), the jti replay store when it is elsewhere (Redis), the trusted
issuers' keys (pinned sets readable; a JWK Set URL fetched once, then cached) and the
configuration itself. The checks run at once, each in a thread of its own, and the probe
waits at most ``CHECK_TIMEOUT_SECONDS`` for them: a database that does not answer must make the
probe say so before the orchestrator's own timeout (5 s in deploy/k8s), not hang it. A check
still running from an earlier probe is not started again; it counts as failed until it ends.
"""

from __future__ import annotations

import logging
import os
import threading
from concurrent.futures import Future, wait
from typing import Callable

from flask import Blueprint, jsonify

from service.state import AppState, state

bp = Blueprint("ops", __name__)
log = logging.getLogger("ivig_cds.ops")

#: Longest a readiness probe waits for its checks (they run at the same time).
CHECK_TIMEOUT_SECONDS = 2.0


@bp.get("/healthz")
def healthz():
    """Liveness: the process answers. Deliberately checks nothing else."""
    return jsonify({"status": "ok"})


@bp.get("/readyz")
def readyz():
    """Readiness: every dependency of the hook path answers, within a short time.

    503 names each failed check (``failed`` lists them) with the exception type only: the body
    is visible to anyone who can reach the port, and driver messages may quote connection details.
    """
    st = state()
    probes: dict[str, Callable[[], object]] = {
        "database": st.store.ping,
        "configuration": lambda: _check_configuration(st),
    }
    auth = st.authenticator
    ready = getattr(auth, "ready", None)  # keys' readiness, where the authenticator offers it
    if callable(ready):
        probes["jwks"] = ready
    replay_ready = getattr(auth, "replay_ready", None)
    if callable(replay_ready) and st.settings.security.require_token:
        probes["replay_store"] = replay_ready
    checks = _CHECKS.run(id(st), probes, CHECK_TIMEOUT_SECONDS)
    failed = [name for name, result in checks.items() if result != "ok"]
    _log_transition(failed)
    body: dict[str, object] = {"status": "unavailable" if failed else "ok", "checks": checks}
    if failed:
        body["failed"] = failed
    resp = jsonify(body)
    resp.status_code = 503 if failed else 200
    return resp


class _Checks:
    """Runs the probes at once, bounded in time, never two of the same check for one app at a time.

    Each check runs in a daemon thread of its own: a driver call that hangs (a database that
    accepts connections and never answers) must not hold up the process's exit.
    """

    def __init__(self) -> None:
        self._reset()
        os.register_at_fork(after_in_child=self._reset)  # a forked worker starts with its own threads

    def _reset(self) -> None:
        self._running: dict[tuple[int, str], Future] = {}
        self._lock = threading.Lock()

    def run(self, app_key: int, probes: dict[str, Callable[[], object]], timeout: float) -> dict[str, str]:
        futures: dict[str, Future] = {}
        with self._lock:
            for name, probe in probes.items():
                key = (app_key, name)
                running = self._running.get(key)
                if running is None or running.done():
                    running = self._running[key] = Future()
                    threading.Thread(target=lambda f=running, p=probe: f.set_result(_check(p)),
                                     name=f"ivig-cds-readyz-{name}", daemon=True).start()
                futures[name] = running
        wait(futures.values(), timeout=timeout)
        return {name: future.result() if future.done() else "failed: timeout" for name, future in futures.items()}


_CHECKS = _Checks()


def _check(probe: Callable[[], object]) -> str:
    """'ok', or 'failed: <exception type>' (a probe may also answer False)."""
    try:
        result = probe()
    except Exception as exc:  # any failure means not ready; the type is enough to act on
        return f"failed: {type(exc).__name__}"
    return "failed: not ready" if result is False else "ok"


def _check_configuration(st: AppState) -> None:
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
