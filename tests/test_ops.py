"""/healthz and /readyz: what an orchestrator acts on, checked against real stores and settings.

Faults are injected only where a real outage cannot be staged in-process (a store whose ping
raises, an authenticator whose keys do not load); the PostgreSQL outage through a cut TCP
connection is in tests/test_deploy_gunicorn.py.
"""

from __future__ import annotations

import json

import pytest

from service.app import create_app
from service.feedback import MemoryFeedbackStore
from service.settings import Profile
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
                  "fhir_server_allowlist": ["https://fhir.example.org/*"]})
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
        security={"trusted_issuers": [SANDBOX_PINNED], "fhir_server_allowlist": ["https://*"]})
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
    from service.auth_keys import packaged_jwks

    return packaged_jwks("sandbox-jwks.json")
