"""CORS by profile: open in development and the sandbox, exact origins only in production.

A browser page on another origin may read an answer only when the service names that origin (or
``*``) in ``Access-Control-Allow-Origin``; ``Access-Control-Allow-Private-Network`` lets a public
page reach a service on the intranet. Production must grant neither to a page it does not know.
"""

from __future__ import annotations

import pytest

from service.settings import ConfigError, load_settings
from tests.security_helpers import new_key, secure_settings, trusted_issuer

HOOK = "/cds-services/ivig-patient-view"
EHR = "https://ehr.hospital.example"
PREFLIGHT = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization, content-type",
             "Access-Control-Request-Private-Network": "true"}


@pytest.fixture(scope="module")
def key():
    return new_key("ES384")


def _production(make_app, tmp_path, key, **overrides):
    return make_app(secure_settings(tmp_path, [trusted_issuer(key)], **overrides)).test_client()


def _cors_headers(resp) -> dict[str, str]:
    return {k: v for k, v in resp.headers.items() if k.lower().startswith("access-control-")}


@pytest.mark.parametrize("origin", ["https://evil.example", EHR, "null"])
def test_production_grants_no_origin_by_default(make_app, tmp_path, key, origin):
    client = _production(make_app, tmp_path, key)
    pre = client.options(HOOK, headers={"Origin": origin, **PREFLIGHT})
    assert pre.status_code == 204
    assert _cors_headers(pre) == {}
    for resp in (client.get("/cds-services", headers={"Origin": origin}),
                 client.post(HOOK, json={}, headers={"Origin": origin})):
        assert "Access-Control-Allow-Origin" not in resp.headers
        assert "Access-Control-Allow-Private-Network" not in resp.headers


def test_production_grants_exactly_the_configured_origins(make_app, tmp_path, key):
    client = _production(make_app, tmp_path, key, **{"security.cors_origins": [EHR]})
    pre = client.options(HOOK, headers={"Origin": EHR, **PREFLIGHT})
    assert pre.headers["Access-Control-Allow-Origin"] == EHR
    assert pre.headers["Access-Control-Allow-Private-Network"] == "true"
    assert "Origin" in pre.headers.get("Vary", "")
    call = client.post(HOOK, json={}, headers={"Origin": EHR})
    assert call.status_code == 401 and call.headers["Access-Control-Allow-Origin"] == EHR  # the page may read the 401
    for other in ("https://evil.example", EHR + ":8443", "http://ehr.hospital.example", EHR.upper()):
        resp = client.options(HOOK, headers={"Origin": other, **PREFLIGHT})
        assert _cors_headers(resp) == {}, other
        assert "Origin" in resp.headers.get("Vary", "")  # a cache must not hand this answer to the EHR's page


def test_production_refuses_any_origin():
    environ = {"IVIG_CDS_PROFILE": "production", "IVIG_CDS_DATABASE_URL": "postgresql://db/ivig",
               "IVIG_CDS_SECURITY_FHIR_SERVER_ALLOWLIST": "https://fhir.example.org/*",
               "IVIG_CDS_SECURITY_PUBLIC_BASE_URL": "https://cds.example.org",
               "IVIG_CDS_SECURITY_TRUSTED_ISSUERS": '[{"iss": "https://ehr.example.org", "jwks_file": "/etc/j.json"}]'}
    assert load_settings(environ=environ).security.cors_origins == []
    with pytest.raises(ConfigError, match=r"production profile does not allow security.cors_origins = '\*'") as err:
        load_settings(environ={**environ, "IVIG_CDS_SECURITY_CORS_ORIGINS": "*"})
    assert "\n" not in str(err.value)
    allowed = load_settings(environ={**environ, "IVIG_CDS_SECURITY_CORS_ORIGINS": f"{EHR},https://other.example:8443"})
    assert allowed.security.cors_origins == [EHR, "https://other.example:8443"]


@pytest.mark.parametrize("value", ["https://ehr.example.org/", "https://ehr.example.org/app", "ehr.example.org",
                                   "https://*.example.org", "ftp://ehr.example.org"])
def test_an_origin_must_be_exact(value):
    with pytest.raises(ConfigError, match="security.cors_origins"):
        load_settings(environ={"IVIG_CDS_SECURITY_CORS_ORIGINS": value})


def test_the_old_setting_name_is_refused_with_the_new_one_named():
    with pytest.raises(ConfigError, match="did you mean IVIG_CDS_SECURITY_CORS_ORIGINS"):
        load_settings(environ={"IVIG_CDS_SECURITY_CORS_ALLOW_ORIGINS": EHR})


@pytest.mark.parametrize("profile", ["development", "sandbox"])
def test_development_and_sandbox_stay_open(make_app, profile):
    client = make_app(profile=profile).test_client()
    origin = "https://sandbox.cds-hooks.org"
    pre = client.options(HOOK, headers={"Origin": origin, **PREFLIGHT})
    assert pre.status_code == 204
    assert pre.headers["Access-Control-Allow-Origin"] == "*"
    assert pre.headers["Access-Control-Allow-Private-Network"] == "true"
    assert client.get("/cds-services", headers={"Origin": origin}).headers["Access-Control-Allow-Origin"] == "*"
