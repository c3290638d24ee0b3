"""Key sources: pinned, file, package, a JWKS URL on 127.0.0.1 (cache, rotation, rate limit), jku, sandbox."""

from __future__ import annotations

import json
import threading
import time
from unittest import mock

import pytest
import requests

from service.app import create_app
from service.auth.keys import load_jwks_file, parse_jwks
from service.auth.tokens import Authenticator, AuthNotReady
from service.settings import SANDBOX_ISS, SANDBOX_JKU
from service.storage.feedback import MemoryFeedbackStore
from tests.conftest import make_settings, reference
from tests.security_helpers import (
    FakeClock,
    HOOK_PATH,
    HOOK_URL,
    ISSUER,
    assert_401,
    bearer,
    claims,
    json_server,
    jwks,
    new_key,
    patient_view_body,
    secure_settings,
    sign,
    trusted_issuer,
)


def serve(app, authenticator):
    """Put an Authenticator with test clocks in place of the app's own."""
    state = app.extensions["ivig_cds"]
    state.authenticator.close()
    state.authenticator = authenticator
    return app.test_client()


def hook(client, token):
    return client.post(HOOK_PATH, json=patient_view_body(), headers=bearer(token))


# ---------------------------------------------------------------- JWKS URL: cache, rotation, rate limit


def test_kid_rotation_refetches_at_most_once_per_interval(tmp_path):
    old, new, other = new_key("ES384"), new_key("RS384"), new_key("ES384")
    with json_server(jwks(old)) as jwks_host:
        settings = secure_settings(tmp_path, [{"iss": ISSUER, "jwks_url": jwks_host.url + "/jwks.json"}],
                                   **{"security.jwks_refetch_interval_seconds": 60,
                                      "security.jwks_cache_seconds": 300})
        app = create_app(settings, store=MemoryFeedbackStore())
        clock = FakeClock()
        client = serve(app, Authenticator(settings, monotonic=clock))

        assert hook(client, sign(old, claims(HOOK_URL))).status_code == 200
        assert hook(client, sign(old, claims(HOOK_URL))).status_code == 200
        assert len(jwks_host.hits) == 1  # cached

        jwks_host.body = jwks(new)  # the EHR rotates its key
        clock.advance(10)
        assert_401(hook(client, sign(new, claims(HOOK_URL))))  # unknown kid, but refetch was 10 s ago
        assert len(jwks_host.hits) == 1
        clock.advance(51)
        assert hook(client, sign(new, claims(HOOK_URL))).status_code == 200  # refetched
        assert len(jwks_host.hits) == 2

        clock.advance(1)
        for _ in range(5):  # a flood of made-up kids costs nothing
            assert_401(hook(client, sign(other, claims(HOOK_URL))))
        assert_401(hook(client, sign(old, claims(HOOK_URL))))  # the retired key is gone
        assert len(jwks_host.hits) == 2

        clock.advance(300)  # the cache expires: fetched again even for a known kid
        assert hook(client, sign(new, claims(HOOK_URL))).status_code == 200
        assert len(jwks_host.hits) == 3
        app.extensions["ivig_cds"].close()


def test_unknown_kid_flood_from_many_threads_costs_one_fetch(tmp_path):
    key = new_key("ES384")
    with json_server(jwks(key)) as jwks_host:
        settings = secure_settings(tmp_path, [{"iss": ISSUER, "jwks_url": jwks_host.url}])
        auth = Authenticator(settings)
        issuer = auth.keys.issuers[ISSUER]
        jwks_host.delay = 0.2
        results = []
        threads = [threading.Thread(target=lambda: results.append(issuer.remote(jwks_host.url).lookup("nope")))
                   for _ in range(20)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert results == [()] * 20
        assert len(jwks_host.hits) == 1
        assert issuer.remote(jwks_host.url).lookup(key.kid)  # the set itself was loaded
        auth.close()


def test_fetch_timeout_fails_closed_and_fast(tmp_path):
    key = new_key("ES384")
    with json_server(jwks(key), delay=3.0) as jwks_host:
        settings = secure_settings(tmp_path, [{"iss": ISSUER, "jwks_url": jwks_host.url}],
                                   **{"security.jwks_fetch_timeout_seconds": 0.3})
        app = create_app(settings, store=MemoryFeedbackStore())
        client = app.test_client()
        started = time.monotonic()
        assert_401(hook(client, sign(key, claims(HOOK_URL))))
        assert time.monotonic() - started < 2.0
        app.extensions["ivig_cds"].close()


def test_failed_refresh_keeps_the_stale_set_and_retries_after_the_interval(tmp_path):
    key, rotated = new_key("ES384"), new_key("ES384")
    with json_server(jwks(key)) as jwks_host:
        settings = secure_settings(tmp_path, [{"iss": ISSUER, "jwks_url": jwks_host.url}],
                                   **{"security.jwks_refetch_interval_seconds": 60,
                                      "security.jwks_cache_seconds": 100})
        app = create_app(settings, store=MemoryFeedbackStore())
        clock = FakeClock()
        client = serve(app, Authenticator(settings, monotonic=clock))
        assert hook(client, sign(key, claims(HOOK_URL))).status_code == 200
        jwks_host.status, jwks_host.body = 500, {"error": "down"}
        clock.advance(120)  # expired, refresh fails: the stale set still answers
        assert hook(client, sign(key, claims(HOOK_URL))).status_code == 200
        assert len(jwks_host.hits) == 2
        jwks_host.status, jwks_host.body = 200, jwks(rotated)
        clock.advance(30)  # within the interval after the failure: no new attempt
        assert_401(hook(client, sign(rotated, claims(HOOK_URL))))
        assert len(jwks_host.hits) == 2
        clock.advance(31)
        assert hook(client, sign(rotated, claims(HOOK_URL))).status_code == 200
        assert len(jwks_host.hits) == 3
        app.extensions["ivig_cds"].close()


@pytest.mark.parametrize("answer", [{"keys": "nope"}, ["not", "a", "set"], {"keys": [{"kty": "oct", "k": "AAAA", "kid": "x"}]}])
def test_a_bad_jwks_document_yields_401(tmp_path, answer):
    key = new_key("ES384")
    with json_server(answer) as jwks_host:
        settings = secure_settings(tmp_path, [{"iss": ISSUER, "jwks_url": jwks_host.url}])
        app = create_app(settings, store=MemoryFeedbackStore())
        assert_401(hook(app.test_client(), sign(key, claims(HOOK_URL))))
        app.extensions["ivig_cds"].close()


def test_redirects_are_not_followed(tmp_path):
    key = new_key("ES384")
    with json_server(jwks(key)) as target, json_server(None, status=302) as redirector:
        # a 302 without Location is enough: any non-200 is a failed fetch; and requests is told not to follow
        settings = secure_settings(tmp_path, [{"iss": ISSUER, "jwks_url": redirector.url}])
        app = create_app(settings, store=MemoryFeedbackStore())
        assert_401(hook(app.test_client(), sign(key, claims(HOOK_URL))))
        assert target.hits == []
        app.extensions["ivig_cds"].close()


def test_allowlisted_jku_is_fetched_when_nothing_is_pinned(tmp_path):
    key = new_key("RS384")
    with json_server(jwks(key)) as jwks_host:
        allowed = jwks_host.url + "/jwks"
        settings = secure_settings(tmp_path, [{"iss": ISSUER, "jku_allowlist": [allowed]}])
        app = create_app(settings, store=MemoryFeedbackStore())
        client = app.test_client()
        assert hook(client, sign(key, claims(HOOK_URL), jku=allowed)).status_code == 200
        assert jwks_host.hits == ["/jwks"]
        assert_401(hook(client, sign(key, claims(HOOK_URL), jku=jwks_host.url + "/other")))
        assert jwks_host.hits == ["/jwks"]  # a jku off the allowlist is never fetched
        assert_401(hook(client, sign(key, claims(HOOK_URL))))  # no jku, no jwks_url: no key
        app.extensions["ivig_cds"].close()


# ---------------------------------------------------------------- pinned sources and readiness


def test_jwks_file_and_package_sources(tmp_path):
    key = new_key("ES384")
    path = tmp_path / "ehr-jwks.json"
    path.write_text(json.dumps(jwks(key)))
    assert load_jwks_file(str(path)) == jwks(key)
    packaged = load_jwks_file("package:sandbox-jwks.json")
    assert packaged == json.loads(reference("sandbox", "jwks.json").read_text())

    settings = secure_settings(tmp_path, [{"iss": ISSUER, "jwks_file": str(path)}])
    app = create_app(settings, store=MemoryFeedbackStore())
    app.extensions["ivig_cds"].authenticator.ready()
    assert hook(app.test_client(), sign(key, claims(HOOK_URL))).status_code == 200
    app.extensions["ivig_cds"].close()


@pytest.mark.parametrize("issuer, problem", [
    ({"jwks_file": "/nonexistent/jwks.json"}, "cannot read"),
    ({"jwks_file": "package:no-such.json"}, "cannot read"),
    ({"jwks": {"keys": []}}, "no usable key"),
    ({"jwks": {"keys": [{"kty": "oct", "kid": "k", "k": "AAAA"}]}}, "no usable key"),
    ({"jwks_url": "http://jwks.example.org/keys"}, "must be https"),
    ({}, "no jwks"),
    ({"jwks": {"keys": []}, "algorithms": ["HS256", "none"]}, "no supported algorithm"),
])
def test_ready_reports_unusable_static_keys(tmp_path, issuer, problem):
    settings = secure_settings(tmp_path, [dict(iss=ISSUER, **issuer)])
    auth = Authenticator(settings)
    with pytest.raises(AuthNotReady, match=problem):
        auth.ready()
    auth.close()


def test_broken_key_file_fails_closed_then_recovers_on_ready(tmp_path):
    key = new_key("ES384")
    path = tmp_path / "late.json"
    settings = secure_settings(tmp_path, [{"iss": ISSUER, "jwks_file": str(path)}])
    app = create_app(settings, store=MemoryFeedbackStore())  # starts although the file is missing
    auth = app.extensions["ivig_cds"].authenticator
    with pytest.raises(AuthNotReady):
        auth.ready()
    assert_401(hook(app.test_client(), sign(key, claims(HOOK_URL))))
    path.write_text(json.dumps(jwks(key)))
    auth.ready()  # re-reads the pinned file
    assert hook(app.test_client(), sign(key, claims(HOOK_URL))).status_code == 200
    app.extensions["ivig_cds"].close()


def test_ready_without_any_issuer_when_tokens_are_required(tmp_path):
    auth = Authenticator(make_settings(tmp_path, **{"security.require_token": True}))
    with pytest.raises(AuthNotReady, match="no trusted issuer"):
        auth.ready()


def test_weak_and_foreign_keys_are_left_out():
    weak = {"kty": "RSA", "kid": "weak", "n": "AQAB" * 30, "e": "AQAB"}
    enc = dict(new_key("ES384").public_jwk(), use="enc", kid="enc")
    p521 = {"kty": "EC", "crv": "P-521", "kid": "p521", "x": "AA", "y": "AA"}
    good = new_key("RS384").public_jwk()
    parsed = parse_jwks({"keys": [weak, enc, p521, "junk", {"kid": 1}, good]}, ["ES384", "RS384"])
    assert list(parsed) == [good["kid"]]
    assert parsed[good["kid"]][0].algorithms == frozenset({"RS384"})


# ---------------------------------------------------------------- the sandbox profile


def test_sandbox_profile_trusts_exactly_the_sandbox_with_the_packaged_jwks(tmp_path):
    settings = make_settings(tmp_path, profile="sandbox")
    assert settings.security.require_token is True
    assert [i.iss for i in settings.security.trusted_issuers] == [SANDBOX_ISS]
    auth = Authenticator(settings)
    auth.ready()
    assert list(auth.keys.issuers) == [SANDBOX_ISS]
    sandbox = auth.keys.issuers[SANDBOX_ISS]
    published = json.loads(reference("sandbox", "jwks.json").read_text())["keys"][0]
    keys = sandbox.lookup(published["kid"], SANDBOX_JKU)
    assert [k.algorithms for k in keys] == [frozenset({"ES384"})]
    assert sandbox.algorithms == frozenset({"ES384"})
    auth.close()


def test_sandbox_style_token_with_a_local_stand_in_key(tmp_path):
    """A local P-384 key plays the sandbox: its JWKS pinned, jku as the sandbox sends it, no network."""
    key = new_key("ES384", kid="44823f3d-0b01-4a6c-a80e-b9d3e8a7226f")
    issuer = trusted_issuer(key, iss=SANDBOX_ISS, jku_allowlist=[SANDBOX_JKU], algorithms=["ES384"])
    app = create_app(make_settings(tmp_path, profile="sandbox", **{"security.trusted_issuers": [issuer]}),
                     store=MemoryFeedbackStore())
    client = app.test_client()

    def no_network(*args, **kwargs):
        raise AssertionError("the pinned sandbox JWKS must be used without fetching")

    with mock.patch.object(requests.Session, "request", no_network):
        now = time.time()
        payload = {"iss": SANDBOX_ISS, "aud": HOOK_URL, "iat": int(now), "exp": int(now) + 300,
                   "jti": "6f7b1a4e-2b8a-4c1e-9d3f-0a1b2c3d4e5f"}  # the sandbox sends no tenant
        token = sign(key, payload, jku=SANDBOX_JKU)
        assert hook(client, token).status_code == 200
        assert_401(hook(client, token))  # replay
        assert_401(hook(client, sign(key, claims(HOOK_URL, iss=SANDBOX_ISS), jku="https://evil.example/jwks")))
        assert_401(client.post(HOOK_PATH, json=patient_view_body()))  # token required on hook calls
        assert_401(client.post(HOOK_PATH + "/feedback", json={"feedback": []}))  # and on feedback
        assert client.get("/cds-services").status_code == 200  # discovery stays open
    app.extensions["ivig_cds"].close()

    # with the packaged sandbox set, a token under the sandbox kid but signed by another key fails
    app = create_app(make_settings(tmp_path, profile="sandbox"), store=MemoryFeedbackStore())
    with mock.patch.object(requests.Session, "request", no_network):
        assert_401(hook(app.test_client(), sign(key, claims(HOOK_URL, iss=SANDBOX_ISS), jku=SANDBOX_JKU)))
    app.extensions["ivig_cds"].close()
