"""SMART App Launch (EHR launch, PKCE, authorization code) against a local authorization + FHIR server.

Everything runs over real HTTP on 127.0.0.1: the service on an ephemeral port, and
``LocalFhir`` playing the EHR's FHIR server and its authorization server. The stub checks PKCE
itself (S256 of the verifier must equal the challenge it saw at /authorize), so a service that
sent the wrong verifier, or none, would not get a token.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import re
from datetime import datetime, timezone
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

import fhir_fixtures
from service.app import create_app
from service.smart.views import COOKIE
from service.storage.feedback import MemoryFeedbackStore
from service.storage.smart_sessions import SessionStore
from tests.conftest import make_settings
from tests.servers import live_app
from tests.smart_support import LocalFhir

PATIENT = "sample-on-ivig-low-trough"


def _today():
    return datetime.now(timezone.utc).date()


def _sample_resources() -> list[dict]:
    return [e["resource"] for e in fhir_fixtures.sample_transaction(_today())["entry"]]


def _session() -> requests.Session:
    s = requests.Session()
    s.trust_env = False
    return s


@pytest.fixture
def fhir():
    with LocalFhir(patient=PATIENT) as server:
        server.load(_sample_resources())
        yield server


def _app(tmp_path, **overrides):
    return create_app(make_settings(tmp_path, **overrides), store=MemoryFeedbackStore())


@pytest.fixture
def service(tmp_path):
    app = _app(tmp_path)
    with live_app(app) as base:
        yield base, app
    app.extensions["ivig_cds"].close()


def _launch(s: requests.Session, base: str, fhir: LocalFhir, launch: str = "launch-123") -> requests.Response:
    return s.get(f"{base}/smart/launch", params={"iss": fhir.base, "launch": launch}, allow_redirects=False,
                 timeout=10)


def test_ehr_launch_pkce_token_exchange_and_page(service, fhir, caplog):
    caplog.set_level(logging.DEBUG)
    base, app = service
    s = _session()

    # 1. EHR launch: discovery, then a redirect to the authorization endpoint with PKCE and state
    r = _launch(s, base, fhir)
    assert r.status_code == 302, r.text
    target = urlsplit(r.headers["Location"])
    assert f"{target.scheme}://{target.netloc}{target.path}" == f"{fhir.origin}/auth/authorize"
    params = {k: v[0] for k, v in parse_qs(target.query).items()}
    assert params["response_type"] == "code"
    assert params["client_id"] == "ivig-cds"
    assert params["redirect_uri"] == f"{base}/smart/app"
    assert params["launch"] == "launch-123"
    assert params["aud"] == fhir.base
    assert params["scope"] == app.extensions["ivig_cds"].settings.smart.scope
    assert params["code_challenge_method"] == "S256"
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", params["code_challenge"])
    assert len(params["state"]) >= 32
    launch_cookie = r.headers["Set-Cookie"]
    assert f"{COOKIE}=" in launch_cookie and "HttpOnly" in launch_cookie and "Path=/smart" in launch_cookie
    assert "SameSite=Lax" in launch_cookie  # plain http here; https gets SameSite=None; Secure
    assert [x.path for x in fhir.seen] == ["/fhir/.well-known/smart-configuration"]

    # 2. the user authorizes at the EHR, which redirects back with code and state
    r = s.get(r.headers["Location"], allow_redirects=False, timeout=10)
    assert r.status_code == 302
    callback = r.headers["Location"]
    assert callback.startswith(f"{base}/smart/app?code=")

    # 3. the callback exchanges the code with the verifier and lands on a clean /smart/app
    r = s.get(callback, allow_redirects=False, timeout=10)
    assert r.status_code == 303, r.text
    assert r.headers["Location"] in ("/smart/app", f"{base}/smart/app")
    assert len(fhir.token_requests) == 1 and len(fhir.issued_tokens) == 1
    form = fhir.token_requests[0]
    assert form["grant_type"] == "authorization_code" and form["redirect_uri"] == f"{base}/smart/app"
    digest = base64.urlsafe_b64encode(hashlib.sha256(form["code_verifier"].encode()).digest()).rstrip(b"=").decode()
    assert digest == params["code_challenge"]
    token = fhir.issued_tokens[0]

    # 4. the page and its data, read from the FHIR server with the token kept server-side
    page = s.get(f"{base}/smart/app", timeout=10)
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
    assert "default-src 'none'" in page.headers["Content-Security-Policy"]
    assert 'data-api="/smart/api/patient"' in page.text
    data = s.get(f"{base}/smart/api/patient", timeout=30)
    assert data.status_code == 200, data.text
    view = data.json()
    assert view["source"] == "fhir"
    expected = fhir_fixtures.load_json(PATIENT, "expected.json")["expected"]["patient-view"]
    assert sorted(c["topic"] for c in view["cards"]) == sorted(expected)
    assert view["decision"]["rule"] == "indicated_by_igg_deficiency"
    assert [len(view["series"][a]["points"]) for a in ("IgG", "IgM", "IgA")] == [3, 1, 1]
    assert len(view["ivig"]["infusions"]) == 28
    assert len(view["infections"]["episodes"]) == 2

    fhir_calls = fhir.fhir_requests()
    assert fhir_calls, "the record must be read from the FHIR server"
    assert all(c.headers.get("Authorization") == f"Bearer {token}" for c in fhir_calls)
    assert any(c.path == f"/fhir/Patient/{PATIENT}" for c in fhir_calls)
    assert all(c.query.get("patient", [PATIENT])[0] == PATIENT for c in fhir_calls)

    # the token never leaves the server: not in pages, redirects, cookies or logs
    for text in (page.text, data.text, callback, r.headers.get("Location", ""), *s.cookies.values()):
        assert token not in text
    # (werkzeug's line is this test server's access log; `ivig-cds serve` silences it, see service/ops/logging.py)
    for record in [r for r in caplog.records if r.name != "werkzeug"]:
        dump = repr(record.__dict__) + record.getMessage()
        assert token not in dump and PATIENT not in dump and form["code"] not in dump, (record.name, dump[:500])


def test_iss_off_the_allowlist_is_never_contacted(tmp_path, fhir):
    app = _app(tmp_path, **{"security.fhir_server_allowlist": ["https://fhir.example.org/r4"]})
    with live_app(app) as base:
        r = _launch(_session(), base, fhir)
    app.extensions["ivig_cds"].close()
    assert r.status_code == 400
    assert "allowlist" in r.text
    assert fhir.seen == []


def test_state_mismatch_is_refused_without_token_request(service, fhir):
    base, _ = service
    s = _session()
    r = _launch(s, base, fhir)
    callback = s.get(r.headers["Location"], allow_redirects=False, timeout=10).headers["Location"]
    forged = re.sub(r"state=[^&]+", "state=forged-state-value", callback)
    r = s.get(forged, allow_redirects=False, timeout=10)
    assert r.status_code == 400 and "state mismatch" in r.text
    assert fhir.token_requests == []
    # the launch was used up: the genuine callback cannot be replayed afterwards
    assert s.get(callback, allow_redirects=False, timeout=10).status_code == 400
    assert fhir.token_requests == []


def test_callback_from_another_browser_is_refused(service, fhir):
    base, _ = service
    s = _session()
    r = _launch(s, base, fhir)
    callback = s.get(r.headers["Location"], allow_redirects=False, timeout=10).headers["Location"]
    other = _session()  # no launch cookie: login CSRF or a stolen code
    r = other.get(callback, allow_redirects=False, timeout=10)
    assert r.status_code == 400 and "no launch in progress" in r.text
    assert fhir.token_requests == []


def test_wrong_verifier_gets_no_token(service, fhir, monkeypatch):
    """Fault injection: the challenge sent does not belong to the verifier kept; the EHR must refuse."""
    import service.smart.views as smart

    real = smart.pkce_pair
    monkeypatch.setattr(smart, "pkce_pair", lambda: (real()[0], real()[1]))
    base, _ = service
    s = _session()
    r = _launch(s, base, fhir)
    callback = s.get(r.headers["Location"], allow_redirects=False, timeout=10).headers["Location"]
    r = s.get(callback, allow_redirects=False, timeout=10)
    assert r.status_code == 502
    assert "invalid_grant" in r.text
    assert fhir.issued_tokens == []
    assert s.get(f"{base}/smart/api/patient", timeout=10).status_code == 401


def test_authorization_denied_by_user(service, fhir):
    base, _ = service
    s = _session()
    _launch(s, base, fhir)
    r = s.get(f"{base}/smart/app", params={"error": "access_denied", "state": "x"}, allow_redirects=False, timeout=10)
    assert r.status_code == 400 and "access_denied" in r.text
    assert fhir.token_requests == []


@pytest.mark.parametrize("config, message", [
    ({"code_challenge_methods_supported": ["plain"]}, "PKCE S256"),
    ({"authorization_endpoint": "http://192.0.2.10/authorize"}, "authorization_endpoint"),
    ({"token_endpoint": None}, "token_endpoint"),
])
def test_unusable_smart_configuration(service, fhir, config, message):
    base, _ = service
    smart_config = {**fhir.default_smart_config(), **config}
    fhir.smart_config = {k: v for k, v in smart_config.items() if v is not None}
    r = _launch(_session(), base, fhir)
    assert r.status_code == 502 and message in r.text
    assert not fhir.authorize_requests


def test_expired_fhir_access_is_reported_on_the_page(service, fhir):
    base, _ = service
    s = _session()
    r = _launch(s, base, fhir)
    callback = s.get(r.headers["Location"], allow_redirects=False, timeout=10).headers["Location"]
    assert s.get(callback, allow_redirects=False, timeout=10).status_code == 303
    fhir.issued_tokens.clear()  # the EHR revoked the token
    r = s.get(f"{base}/smart/api/patient", timeout=10)
    assert r.status_code == 502
    assert "could not be read" in r.json()["message"]


def test_a_flood_of_launches_cannot_evict_an_open_session(service, fhir):
    base, app = service
    app.extensions["ivig_cds"].extras["smart_launches"] = SessionStore(max_entries=2)
    s = _session()
    r = _launch(s, base, fhir)
    callback = s.get(r.headers["Location"], allow_redirects=False, timeout=10).headers["Location"]
    assert s.get(callback, allow_redirects=False, timeout=10).status_code == 303
    for i in range(5):
        assert _launch(_session(), base, fhir, launch=f"flood-{i}").status_code == 302
    assert s.get(f"{base}/smart/api/patient", timeout=30).status_code == 200


def test_launch_and_page_need_their_parameters(client):
    assert client.get("/smart/launch").status_code == 400
    assert client.get("/smart/launch?iss=http://127.0.0.1:9/fhir").status_code == 400
    r = client.get("/smart/app")  # neither a launch nor a fixture: the index of scenarios
    assert r.status_code == 200 and b"?fixture=sample-isolated-igm" in r.data
    assert client.get("/smart/api/patient").status_code == 401
    assert client.get("/smart/app?fixture=no-such-scenario").status_code == 400
    assert client.get("/smart/api/patient?fixture=no-such-scenario").status_code == 400
    r = client.get("/smart/app?fixture=sample-isolated-igm")
    assert r.status_code == 200 and b'data-api="/smart/api/patient?fixture=sample-isolated-igm"' in r.data


def test_session_store_is_bounded_and_expires():
    now = [0.0]
    store = SessionStore(max_entries=3, clock=lambda: now[0])
    keys = [store.put({"n": i}, ttl=10) for i in range(5)]
    assert len(store) == 3
    assert store.get(keys[0]) is None and store.get(keys[1]) is None  # oldest evicted
    assert store.get(keys[4]) == {"n": 4}
    now[0] = 10.0
    assert store.get(keys[4]) is None and len(store) == 0
    assert store.get(None) is None and store.get("made-up") is None
    key = store.put({"n": 9}, ttl=5)
    assert len(key) >= 40 and store.pop(key) == {"n": 9} and store.get(key) is None


@pytest.mark.parametrize("service_id, name", [
    ("ivig-patient-view", "sample-on-ivig-low-trough"),
    ("ivig-order-sign", "sample-isolated-igm"),
])
def test_cards_link_to_the_smart_page(client, service_id, name):
    body = fhir_fixtures.load_json(name, f"request-{'patient-view' if 'patient' in service_id else 'order-sign'}.json")
    body.pop("prefetch", None)  # the development profile answers for the sample patients
    r = client.post(f"/cds-services/{service_id}", json=body)
    assert r.status_code == 200, r.data
    cards = r.get_json()["cards"]
    assert cards
    for card in cards:
        smart = [link for link in card.get("links", []) if link["type"] == "smart"]
        assert smart and smart[0]["url"] == "http://localhost/smart/launch", card.get("links")
