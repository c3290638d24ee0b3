"""CDS client JWTs (CDS Hooks 2.0.1 'Trusting CDS Clients'): every attack is a 401, valid tokens pass.

Tokens are signed with keys generated per test session (ES384, RS384; ES256/RS256 where an
issuer allows them) and pinned in the settings; the app is the real one from the factory.
"""

from __future__ import annotations

import json
import logging
import time

import pytest

from service.app import create_app
from service.auth.tokens import Authenticator, ClientIdentity, endpoint_url
from service.errors import Unauthorized
from service.settings import ConfigError
from service.storage.feedback import MemoryFeedbackStore
from tests.conftest import make_settings, reference
from tests.security_helpers import (
    BASE,
    HOOK_PATH,
    HOOK_URL,
    ISSUER,
    PATIENT_VIEW,
    assert_401,
    bearer,
    claims,
    forge_hs256,
    forge_unsigned,
    jwks,
    new_key,
    patient_view_body,
    secure_settings,
    sign,
    trusted_issuer,
)

FEEDBACK_URL = HOOK_URL + "/feedback"
DISCOVERY_URL = BASE + "/cds-services"


@pytest.fixture(scope="module")
def es384():
    return new_key("ES384")


@pytest.fixture(scope="module")
def rs384():
    return new_key("RS384")


@pytest.fixture
def make_client(make_app, tmp_path):
    return lambda issuers, **overrides: make_app(secure_settings(tmp_path, issuers, **overrides)).test_client()


@pytest.fixture
def client(make_client, es384, rs384):
    return make_client([trusted_issuer(es384, rs384)])


def call(client, token: str | None, path: str = HOOK_PATH, body=None, **headers):
    if token is not None:
        headers.update(bearer(token))
    return client.post(path, json=body if body is not None else patient_view_body(), headers=headers)


# ---------------------------------------------------------------- valid tokens


@pytest.mark.parametrize("alg", ["ES384", "RS384"])
def test_valid_token_is_accepted(client, es384, rs384, alg):
    key = es384 if alg == "ES384" else rs384
    resp = call(client, sign(key, claims(HOOK_URL)))
    assert resp.status_code == 200, resp.get_data(as_text=True)
    assert "cards" in resp.get_json()


def test_aud_may_be_an_array_containing_the_endpoint(client, es384):
    token = sign(es384, claims([BASE + "/cds-services/other", HOOK_URL]))
    assert call(client, token).status_code == 200


def test_feedback_requires_and_accepts_a_token(client, es384):
    body = {"feedback": [{"card": "c0a8012e-0000-4000-8000-000000000001", "outcome": "overridden",
                          "outcomeTimestamp": "2026-01-01T12:00:00.000Z"}]}
    assert_401(call(client, None, HOOK_PATH + "/feedback", body))
    resp = call(client, sign(es384, claims(FEEDBACK_URL)), HOOK_PATH + "/feedback", body)
    assert resp.status_code == 200, resp.get_data(as_text=True)


def test_token_within_clock_skew_is_accepted(client, es384):
    now = time.time()
    token = sign(es384, claims(HOOK_URL, iat=int(now) - 300, exp=int(now) - 30))  # expired 30 s ago, skew 60
    assert call(client, token).status_code == 200


def test_tenant_is_passed_on(tmp_path, es384):
    settings = secure_settings(tmp_path, [trusted_issuer(es384)])
    app = create_app(settings, store=MemoryFeedbackStore())
    auth = app.extensions["ivig_cds"].authenticator
    token = sign(es384, claims(HOOK_URL, tenant="hospital-a"))
    with app.test_request_context(HOOK_PATH, method="POST", headers=bearer(token)):
        from flask import request

        assert auth.verify(request) == ClientIdentity(issuer=ISSUER, tenant="hospital-a")
    app.extensions["ivig_cds"].close()


# ---------------------------------------------------------------- attacks and mistakes


def test_missing_token_when_required(client):
    resp = call(client, None)
    assert_401(resp)
    assert "error=" not in resp.headers["WWW-Authenticate"]  # RFC 6750: no error code without credentials


@pytest.mark.parametrize("value", ["Basic dXNlcjpwdw==", "Bearer", "Bearer a b", "bearer not-a-jwt", "Bearer ..."])
def test_malformed_authorization_header(client, value):
    assert_401(call(client, None, Authorization=value))


def test_expired(client, es384):
    now = int(time.time())
    assert_401(call(client, sign(es384, claims(HOOK_URL, iat=now - 600, exp=now - 120))))


def test_not_yet_valid_nbf(client, es384):
    now = int(time.time())
    assert_401(call(client, sign(es384, claims(HOOK_URL, nbf=now + 300, exp=now + 600))))


def test_issued_in_the_future(client, es384):
    now = int(time.time())
    assert_401(call(client, sign(es384, claims(HOOK_URL, iat=now + 300, exp=now + 600))))


def test_lifetime_longer_than_allowed(client, es384):
    now = int(time.time())
    assert_401(call(client, sign(es384, claims(HOOK_URL, iat=now, exp=now + 3600 + 61))))


NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize("times", [
    {"iat": NAN},  # compares false with everything: would pass the lifetime check with a far exp
    {"iat": NAN, "exp": 4_000_000_000},
    {"exp": NAN},  # would reach the replay store as an expiry it cannot store (503)
    {"exp": INF},
    {"iat": -INF},
    {"nbf": NAN},
    {"nbf": INF},
    {"exp": 10 ** 400, "iat": 10 ** 400 - 60},  # past a float's range
    {"exp": "4000000000"},
    {"iat": [0]},
    {"exp": True},
])
def test_exp_iat_nbf_must_be_finite_numbers(client, es384, times):
    """JSON in a JWT may carry NaN and Infinity (PyJWT reads them); none of them is a time."""
    payload = claims(HOOK_URL, **times)
    resp = call(client, sign(es384, payload))
    assert_401(resp)
    assert call(client, sign(es384, claims(HOOK_URL))).status_code == 200  # the store still answers


@pytest.mark.parametrize("claim", ["iss", "aud", "exp", "iat", "jti"])
def test_missing_required_claim(client, es384, claim):
    payload = claims(HOOK_URL)
    del payload[claim]
    assert_401(call(client, sign(es384, payload)))


@pytest.mark.parametrize("aud", [
    BASE + "/cds-services/ivig-order-sign",  # another service of ours
    FEEDBACK_URL,  # the feedback endpoint of this service
    DISCOVERY_URL,  # discovery
    "https://localhost" + HOOK_PATH,  # another scheme
    HOOK_URL + "/",  # not the exact URL
])
def test_wrong_aud(client, es384, aud):
    assert_401(call(client, sign(es384, claims(aud))))


def test_issuer_not_allowlisted(client, es384):
    assert_401(call(client, sign(es384, claims(HOOK_URL, iss="https://evil.example/"))))


def test_unknown_kid(client, es384):
    assert_401(call(client, sign(es384, claims(HOOK_URL), kid="no-such-kid")))


def test_missing_kid_and_wrong_typ(client, es384):
    assert_401(call(client, sign(es384, claims(HOOK_URL), kid=None)))
    assert_401(call(client, sign(es384, claims(HOOK_URL), typ=None)))
    assert_401(call(client, sign(es384, claims(HOOK_URL), typ="at+jwt")))


def test_signed_by_another_key_under_a_trusted_kid(client, es384):
    impostor = new_key("ES384", kid=es384.kid)
    assert_401(call(client, sign(impostor, claims(HOOK_URL))))


def test_tampered_payload(client, es384):
    token = sign(es384, claims(HOOK_URL))
    other = sign(es384, claims(HOOK_URL, tenant="someone-else"))
    head, _, sig = token.split(".")
    assert_401(call(client, f"{head}.{other.split('.')[1]}.{sig}"))


def test_alg_none(client, es384):
    assert_401(call(client, forge_unsigned(claims(HOOK_URL), es384.kid)))


@pytest.mark.parametrize("which", ["ES384", "RS384"])
def test_hs256_signed_with_the_public_key(client, es384, rs384, which):
    """Algorithm confusion: the issuer's public key (PEM and JWK forms) used as an HMAC secret."""
    key = es384 if which == "ES384" else rs384
    for secret in (key.public_pem(), json.dumps(key.public_jwk()).encode(), json.dumps(jwks(key)).encode()):
        assert_401(call(client, forge_hs256(secret, claims(HOOK_URL), key.kid)))


def test_algorithm_not_matching_the_key(client, rs384):
    """An RSA key verifies RS384 only: not RS256 (not configured), nor a header relabelled ES384."""
    assert_401(call(client, sign(rs384, claims(HOOK_URL), alg="RS256")))
    token = sign(rs384, claims(HOOK_URL))
    _, payload, signature = token.split(".")
    import base64

    header = base64.urlsafe_b64encode(json.dumps({"alg": "ES384", "typ": "JWT", "kid": rs384.kid}).encode())
    relabelled = header.rstrip(b"=").decode()
    assert_401(call(client, f"{relabelled}.{payload}.{signature}"))
    assert call(client, token).status_code == 200


def test_es256_and_rs256_only_when_configured(make_client):
    es256, rs256 = new_key("ES256"), new_key("RS256")
    default = make_client([trusted_issuer(es256, rs256)])
    assert_401(call(default, sign(es256, claims(HOOK_URL))))
    assert_401(call(default, sign(rs256, claims(HOOK_URL))))
    allowing = make_client([trusted_issuer(es256, rs256, algorithms=["ES256", "RS256"])])
    assert call(allowing, sign(es256, claims(HOOK_URL))).status_code == 200
    assert call(allowing, sign(rs256, claims(HOOK_URL))).status_code == 200


def test_symmetric_keys_in_a_jwks_are_never_used(make_client, es384):
    """A JWKS with an 'oct' key under the token's kid: HS256 stays rejected whatever is configured."""
    secret = b"s" * 32
    oct_jwk = {"kty": "oct", "kid": "hmac", "k": "c3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3M", "alg": "HS256"}
    client = make_client([{"iss": ISSUER, "jwks": {"keys": [oct_jwk, es384.public_jwk()]},
                           "algorithms": ["ES384", "HS256"]}])
    assert_401(call(client, forge_hs256(secret, claims(HOOK_URL), "hmac")))
    assert call(client, sign(es384, claims(HOOK_URL))).status_code == 200


def test_jku_not_allowlisted(make_client, es384):
    client = make_client([trusted_issuer(es384, jku_allowlist=["https://ehr.test.example/jwks"])])
    assert_401(call(client, sign(es384, claims(HOOK_URL), jku="https://evil.example/jwks")))
    assert_401(call(client, sign(es384, claims(HOOK_URL), jku="https://ehr.test.example/jwks/../evil")))
    # the allowlisted jku is answered from the pinned set, without a fetch
    assert call(client, sign(es384, claims(HOOK_URL), jku="https://ehr.test.example/jwks")).status_code == 200


def test_jku_rejected_when_issuer_has_no_jku_allowlist(client, es384):
    assert_401(call(client, sign(es384, claims(HOOK_URL), jku="https://ehr.test.example/jwks")))


def test_replayed_jti(client, es384):
    token = sign(es384, claims(HOOK_URL))
    assert call(client, token).status_code == 200
    assert_401(call(client, token))
    # the same jti in a freshly signed token is a replay too
    first = claims(HOOK_URL)
    assert call(client, sign(es384, first)).status_code == 200
    assert_401(call(client, sign(es384, dict(first, iat=first["iat"] + 1))))


def test_rejected_token_does_not_burn_its_jti(client, es384):
    payload = claims(HOOK_URL)
    assert_401(call(client, sign(es384, dict(payload, aud=DISCOVERY_URL))))
    assert call(client, sign(es384, payload)).status_code == 200


def test_oversized_token(client, es384):
    assert_401(call(client, sign(es384, claims(HOOK_URL, padding="x" * 20000))))


# ---------------------------------------------------------------- profiles, discovery, audience


def test_development_profile_needs_no_token_and_ignores_one(tmp_path):
    app = create_app(make_settings(tmp_path), store=MemoryFeedbackStore())
    client = app.test_client()
    assert client.post(HOOK_PATH, json=patient_view_body()).status_code == 200
    assert client.post(HOOK_PATH, json=patient_view_body(), headers=bearer("garbage")).status_code == 200
    app.extensions["ivig_cds"].close()


def test_discovery_open_by_default_and_protected_when_configured(make_client, es384):
    open_client = make_client([trusted_issuer(es384)])
    assert open_client.get("/cds-services").status_code == 200
    protected = make_client([trusted_issuer(es384)], **{"security.protect_discovery": True})
    assert_401(protected.get("/cds-services"))
    assert_401(protected.get("/cds-services", headers=bearer(sign(es384, claims(HOOK_URL)))))
    assert protected.get("/cds-services", headers=bearer(sign(es384, claims(DISCOVERY_URL)))).status_code == 200


def test_forwarded_headers_only_when_behind_proxy(make_client, es384):
    public = "https://cds.hospital.example" + HOOK_PATH
    forwarded = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "cds.hospital.example"}
    direct = make_client([trusted_issuer(es384)])
    assert_401(call(direct, sign(es384, claims(public)), **forwarded))
    proxied = make_client([trusted_issuer(es384)], **{"security.behind_proxy": True, "security.public_base_url": None})
    assert call(proxied, sign(es384, claims(public)), **forwarded).status_code == 200
    # a client-supplied value before our proxy's is not trusted: the last one counts
    spoofed = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "cds.hospital.example, internal.example"}
    assert_401(call(proxied, sign(es384, claims(public)), **spoofed))


def test_production_refuses_to_build_the_audience_from_the_callers_host(tmp_path):
    """Without a public URL (or a proxy it trusts) the expected ``aud`` would follow the Host header:
    a token minted for another service, sent with that service's Host, would be accepted."""
    with pytest.raises(ConfigError) as err:
        secure_settings(tmp_path, [{"iss": ISSUER, "jwks": {"keys": []}}], **{"security.public_base_url": None})
    assert ("production profile needs IVIG_CDS_SECURITY_PUBLIC_BASE_URL (or IVIG_CDS_SECURITY_BEHIND_PROXY=true)"
            in str(err.value))
    assert "security.public_base_url in the --config file" in str(err.value)
    assert "\n" not in str(err.value)


def test_a_token_for_another_service_is_refused_whatever_the_host_header(make_client, es384):
    other = "http://other-service.example/cds-services/" + PATIENT_VIEW
    client = make_client([trusted_issuer(es384)])
    assert_401(call(client, sign(es384, claims(other)), Host="other-service.example"))
    assert call(client, sign(es384, claims(HOOK_URL)), Host="other-service.example").status_code == 200


def test_public_base_url_wins(make_client, es384):
    client = make_client([trusted_issuer(es384)], **{"security.public_base_url": "https://cds.example.org/",
                                                     "security.behind_proxy": True})
    good = sign(es384, claims("https://cds.example.org" + HOOK_PATH))
    assert call(client, good, **{"X-Forwarded-Host": "other.example"}).status_code == 200
    assert_401(call(client, sign(es384, claims(HOOK_URL))))


def test_endpoint_url_keeps_script_root(tmp_path):
    settings = make_settings(tmp_path)
    app = create_app(settings, store=MemoryFeedbackStore())
    with app.test_request_context(HOOK_PATH, base_url="https://h.example:8443/ivig"):
        from flask import request

        assert endpoint_url(request, settings.security) == "https://h.example:8443/ivig" + HOOK_PATH
    app.extensions["ivig_cds"].close()


# ---------------------------------------------------------------- logging of failures


def test_failure_reason_is_logged_without_the_token(client, es384, caplog):
    token = sign(es384, claims(HOOK_URL, iss="https://evil.example/", jti="jti-secret-value"))
    with caplog.at_level(logging.INFO, logger="ivig_cds"):
        assert_401(call(client, token))
    records = [r for r in caplog.records if r.name == "ivig_cds.auth"]
    assert [r.reason for r in records] == ["issuer_not_trusted"]
    assert getattr(records[0], "issuer", None) is None  # an untrusted iss is the caller's text: not logged
    text = "\n".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
    assert token not in text and token.split(".")[2] not in text and "jti-secret-value" not in text


@pytest.mark.parametrize("case, reason", [
    ("none", "missing_token"), ("expired", "expired"), ("aud", "wrong_aud"), ("kid", "unknown_kid"),
    ("alg-none", "algorithm_not_allowed"), ("replay", "replayed_jti"),
])
def test_reasons(client, es384, caplog, case, reason):
    now = int(time.time())
    token = {
        "none": None,
        "expired": sign(es384, claims(HOOK_URL, iat=now - 900, exp=now - 600)),
        "aud": sign(es384, claims(DISCOVERY_URL)),
        "kid": sign(es384, claims(HOOK_URL), kid="other"),
        "alg-none": forge_unsigned(claims(HOOK_URL), es384.kid),
        "replay": sign(es384, claims(HOOK_URL)),
    }[case]
    if case == "replay":
        assert call(client, token).status_code == 200
    with caplog.at_level(logging.INFO, logger="ivig_cds.auth"):
        assert_401(call(client, token))
    records = [r for r in caplog.records if r.name == "ivig_cds.auth"]
    assert [r.reason for r in records] == [reason]
    assert getattr(records[0], "issuer", None) == (None if case in ("none", "alg-none") else ISSUER)


# ---------------------------------------------------------------- the spec's own example


def _spec_settings(tmp_path, **overrides):
    payload = json.loads(reference("spec-2.0.1", "jwt-payload.json").read_text())
    header = json.loads(reference("spec-2.0.1", "jwt-header.json").read_text())
    issuer = {"iss": payload["iss"], "jwks_file": str(reference("spec-2.0.1", "jwks.json")), "jku_allowlist": [header["jku"]]}
    base = {
        "security.require_token": True,
        "security.trusted_issuers": [issuer],
        "security.public_base_url": "https://cds.example.org",
        # the example was issued in 2011 and expires in 2015: 3.5 years of lifetime
        "security.max_token_lifetime_seconds": 10 ** 9,
        "security.replay_store": "memory",
    }
    base.update(overrides)
    return make_settings(tmp_path, **base), payload


def _verify_spec_token(tmp_path, now=None):
    settings, payload = _spec_settings(tmp_path)
    app = create_app(settings, store=MemoryFeedbackStore())
    kwargs = {"now": now} if now is not None else {}
    auth = Authenticator(settings, **kwargs)  # ``now`` is the documented test-only clock
    token = reference("spec-2.0.1", "jwt-example.txt").read_text().strip()
    try:
        with app.test_request_context("/cds-services/some-service", method="POST", headers=bearer(token)):
            from flask import request

            return auth.verify(request), payload
    finally:
        auth.close()
        app.extensions["ivig_cds"].close()


def test_spec_example_jwt_verifies_with_a_pinned_clock(tmp_path):
    payload = json.loads(reference("spec-2.0.1", "jwt-payload.json").read_text())
    identity, payload = _verify_spec_token(tmp_path, now=lambda: payload["exp"] - 10)
    assert identity == ClientIdentity(issuer="https://fhir-ehr.example.com/", tenant=payload["tenant"])


def test_spec_example_jwt_is_expired_on_the_real_clock(tmp_path):
    with pytest.raises(Unauthorized):
        _verify_spec_token(tmp_path)


def test_spec_private_jwk_signs_tokens_that_verify(tmp_path):
    """The spec's published private JWK: our parser must keep only its public part."""
    import jwt as pyjwt

    private = pyjwt.PyJWK(json.loads(reference("spec-2.0.1", "jwk-private.json").read_text()))
    settings = secure_settings(tmp_path, [{"iss": ISSUER, "jwks_file": str(reference("spec-2.0.1", "jwk-private.json"))}])
    # the file is a single JWK, not a JWK Set: it must fail closed
    app = create_app(settings, store=MemoryFeedbackStore())
    client = app.test_client()
    token = pyjwt.encode(claims(HOOK_URL), private.key, algorithm="ES384", headers={"kid": "example-kid"})
    assert_401(call(client, token))
    app.extensions["ivig_cds"].close()
    # wrapped as a set with its private member, it verifies with the public part only
    set_path = tmp_path / "private-as-set.json"
    set_path.write_text(json.dumps({"keys": [json.loads(reference("spec-2.0.1", "jwk-private.json").read_text())]}))
    app = create_app(secure_settings(tmp_path, [{"iss": ISSUER, "jwks_file": str(set_path)}]),
                     store=MemoryFeedbackStore())
    keys = app.extensions["ivig_cds"].authenticator.keys.issuers[ISSUER]._pinned.keys
    assert not hasattr(keys["example-kid"][0].key, "sign")
    assert call(app.test_client(), token).status_code == 200
    app.extensions["ivig_cds"].close()
