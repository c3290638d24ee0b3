"""/healthz and /readyz: what an orchestrator acts on, checked against real stores and settings.

Faults are injected only where a real outage cannot be staged in-process (a store whose ping
raises, an authenticator whose keys do not load); the PostgreSQL outage through a cut TCP
connection is in tests/test_deploy_gunicorn.py.
"""

from __future__ import annotations

import json

import pytest

from service.app import create_app
from service.settings import Profile
from service.storage.feedback import MemoryFeedbackStore
from tests.conftest import make_settings

SANDBOX_PINNED = {"iss": "https://sandbox.cds-hooks.org", "jwks_file": "package:sandbox-jwks.json",
                  "algorithms": ["ES384"]}


class _DatabaseDown(MemoryFeedbackStore):
    """A store whose database has gone away; the message quotes what must not leak."""

    def ping(self) -> None:
        raise ConnectionRefusedError("connection to postgresql://ivig:hunter2@db.internal failed")


def test_healthz_is_ok_even_when_the_database_is_down(tmp_path):
    app = create_app(make_settings(tmp_path), store=_DatabaseDown())
    try:
        resp = app.test_client().get("/healthz")
        assert resp.status_code == 200
        assert resp.get_json() == {"status": "ok"}
    finally:
        app.extensions["ivig_cds"].close()


def test_readyz_ok_with_the_real_sql_store(tmp_path):
    """No injected store: the app opens its own database (SQLite in tmp) and pings it."""
    app = create_app(make_settings(tmp_path))
    try:
        resp = app.test_client().get("/readyz")
        body = resp.get_json()
        assert resp.status_code == 200, body
        assert body["status"] == "ok"
        assert body["checks"]["database"] == "ok"
        assert body["checks"]["configuration"] == "ok"
        assert "failed" not in body
        assert all(v == "ok" for v in body["checks"].values())
    finally:
        app.extensions["ivig_cds"].close()


def test_readyz_503_names_the_database_and_hides_the_message(tmp_path):
    app = create_app(make_settings(tmp_path), store=_DatabaseDown())
    try:
        resp = app.test_client().get("/readyz")
        assert resp.status_code == 503
        body = resp.get_json()
        assert body["status"] == "unavailable"
        assert body["failed"] == ["database"]
        assert body["checks"]["database"] == "failed: ConnectionRefusedError"
        assert body["checks"]["configuration"] == "ok"
        assert "hunter2" not in resp.get_data(as_text=True)
        assert resp.mimetype == "application/json"
    finally:
        app.extensions["ivig_cds"].close()


def test_readyz_names_jwks_when_trusted_issuer_keys_do_not_load(tmp_path):
    missing = tmp_path / "no-such-jwks.json"
    settings = make_settings(
        tmp_path, profile="production", database_url=f"sqlite:///{tmp_path / 'db.sqlite3'}",
        security={"trusted_issuers": [{"iss": "https://ehr.example.org", "jwks_file": str(missing)}],
                  "fhir_server_allowlist": ["https://fhir.example.org/*"], "public_base_url": "http://localhost"})
    app = create_app(settings, store=MemoryFeedbackStore())
    try:
        if not callable(getattr(app.extensions["ivig_cds"].authenticator, "ready", None)):
            pytest.fail("Authenticator.ready() is missing: /readyz cannot check the trusted issuers' keys")
        resp = app.test_client().get("/readyz")
        assert resp.status_code == 503
        body = resp.get_json()
        assert body["failed"] == ["jwks"]
        assert body["checks"]["jwks"].startswith("failed: ")
        assert str(missing) not in resp.get_data(as_text=True)

        # the same issuer with a key set that loads: ready
        missing.write_text(json.dumps(_packaged_jwks()), encoding="utf-8")
        app2 = create_app(settings, store=MemoryFeedbackStore())
        try:
            resp2 = app2.test_client().get("/readyz")
            assert resp2.status_code == 200, resp2.get_json()
            assert resp2.get_json()["checks"]["jwks"] == "ok"
        finally:
            app2.extensions["ivig_cds"].close()
    finally:
        app.extensions["ivig_cds"].close()


def test_readyz_production_profile_with_pinned_sandbox_keys_is_ready(tmp_path):
    settings = make_settings(
        tmp_path, profile="production", database_url=f"sqlite:///{tmp_path / 'db.sqlite3'}",
        security={"trusted_issuers": [SANDBOX_PINNED], "fhir_server_allowlist": ["https://*"],
                  "public_base_url": "http://localhost"})
    app = create_app(settings)
    try:
        resp = app.test_client().get("/readyz")
        assert resp.status_code == 200, resp.get_json()
        assert set(resp.get_json()["checks"]) == {"database", "configuration", "jwks"}
    finally:
        app.extensions["ivig_cds"].close()


def test_readyz_names_configuration_when_settings_no_longer_hold(tmp_path):
    app = create_app(make_settings(tmp_path), store=MemoryFeedbackStore())
    try:
        st = app.extensions["ivig_cds"]
        # a production profile without its database, issuers and allowlist (bypassing validation,
        # as a bug mutating settings would)
        st.settings = st.settings.model_copy(update={"profile": Profile.production})
        resp = app.test_client().get("/readyz")
        assert resp.status_code == 503
        assert resp.get_json()["failed"] == ["configuration"]
        assert resp.get_json()["checks"]["configuration"] == "failed: ValidationError"
    finally:
        app.extensions["ivig_cds"].close()


def test_readyz_names_every_failed_check(tmp_path):
    app = create_app(make_settings(tmp_path), store=_DatabaseDown())
    try:
        st = app.extensions["ivig_cds"]

        def keys_unavailable() -> None:
            raise TimeoutError("JWKS fetch timed out")

        st.authenticator.ready = keys_unavailable
        resp = app.test_client().get("/readyz")
        assert resp.status_code == 503
        body = resp.get_json()
        assert body["failed"] == ["database", "jwks"]
        assert body["checks"]["jwks"] == "failed: TimeoutError"
    finally:
        app.extensions["ivig_cds"].close()


def _packaged_jwks() -> dict:
    from service.auth.keys import packaged_jwks

    return packaged_jwks("sandbox-jwks.json")


# ------------------------------------------------------------------ every dependency of the hook path

def _secure_app(make_app, tmp_path, **overrides):
    from tests.security_helpers import new_key, secure_settings, trusted_issuer

    return make_app(secure_settings(tmp_path, [trusted_issuer(new_key("ES384"))], **overrides))


def _redis_answers() -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(REDIS_URL, socket_timeout=1, socket_connect_timeout=1).ping())
    except redis.RedisError:
        return False


REDIS_URL = "redis://127.0.0.1:6379/15"


def test_readyz_checks_the_replay_store_that_authenticated_calls_need(make_app, tmp_path):
    """Redis down: every authenticated call would be 503, so the instance is not ready."""
    if not _redis_answers():
        pytest.skip("no Redis on 127.0.0.1:6379")
    from tests.deploy_support import TcpProxy

    proxy = TcpProxy(("127.0.0.1", 6379)).start()
    try:
        app = _secure_app(make_app, tmp_path, **{"security.replay_store": "redis",
                                                 "security.redis_url": f"redis://127.0.0.1:{proxy.port}/15"})
        client = app.test_client()
        up = client.get("/readyz")
        assert up.status_code == 200, up.get_json()
        assert up.get_json()["checks"]["replay_store"] == "ok"
        proxy.cut()
        down = client.get("/readyz")
        assert down.status_code == 503
        assert down.get_json()["failed"] == ["replay_store"]
        assert down.get_json()["checks"]["replay_store"].startswith("failed: ")
        assert str(proxy.port) not in down.get_data(as_text=True)
        proxy.restore()
        assert client.get("/readyz").status_code == 200
    finally:
        proxy.close()


def test_readyz_checks_the_database_replay_store_too(make_app, tmp_path):
    app = _secure_app(make_app, tmp_path)
    body = app.test_client().get("/readyz").get_json()
    assert set(body["checks"]) == {"database", "configuration", "jwks", "replay_store"}
    assert body["status"] == "ok", body


def test_a_hanging_dependency_fails_the_probe_in_time_and_is_not_piled_up(tmp_path):
    """A database that accepts and never answers: the probe says so well within the orchestrator's 5 s."""
    import threading
    import time

    from service.ops import health as ops

    release = threading.Event()
    pings: list[int] = []

    class Hanging(MemoryFeedbackStore):
        def ping(self) -> None:
            pings.append(1)
            release.wait(30)

    app = create_app(make_settings(tmp_path), store=Hanging())
    client = app.test_client()
    try:
        for _ in range(3):
            began = time.monotonic()
            resp = client.get("/readyz")
            assert time.monotonic() - began < ops.CHECK_TIMEOUT_SECONDS + 2
            assert resp.status_code == 503
            assert resp.get_json()["checks"] == {"database": "failed: timeout", "configuration": "ok", "jwks": "ok"}
        assert len(pings) == 1  # the hung ping is waited for again, not started three times
        release.set()
        deadline = time.monotonic() + 5
        while client.get("/readyz").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert client.get("/readyz").status_code == 200
    finally:
        release.set()
        app.extensions["ivig_cds"].close()


def test_readyz_checks_that_a_jwks_url_gives_keys(make_app, tmp_path):
    from tests.security_helpers import ISSUER, jwks, json_server, new_key

    key = new_key("ES384")
    with json_server({"error": "down"}, status=503) as host:
        app = _secure_app(make_app, tmp_path, **{
            "security.trusted_issuers": [{"iss": ISSUER, "jwks_url": host.url + "/jwks.json"}],
            "security.jwks_refetch_interval_seconds": 0})
        client = app.test_client()
        down = client.get("/readyz")
        assert down.status_code == 503
        assert down.get_json()["failed"] == ["jwks"]
        host.status, host.body = 200, jwks(key)
        up = client.get("/readyz")
        assert up.status_code == 200, up.get_json()
        fetched = len(host.hits)
        host.status, host.body = 503, {"error": "down"}
        assert client.get("/readyz").status_code == 200  # keys once fetched stay usable (stale) for calls
        assert len(host.hits) == fetched  # and readiness does not fetch them again
