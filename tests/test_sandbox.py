"""The service driven the way the public CDS Hooks sandbox drives it.

``ivig-cds serve --profile sandbox`` runs as a real process. The sandbox's behaviour
(../shared/reference/cds-hooks/README.md): browser calls with a CORS preflight; ``Authorization:
Bearer`` JWT signed ES384 by ``https://sandbox.cds-hooks.org`` with ``jku`` naming its JWKS and
``aud`` = the exact URL called; ``fhirServer`` set, ``fhirAuthorization`` absent on an open
launch; prefetch keys it could not resolve left out. A P-384 key made here stands in for the
sandbox's; its JWK Set is pinned in the test's configuration the same way the shipped profile
pins the real one (so no fetch of the jku ever happens). The FHIR server is ``LocalFhir`` on
127.0.0.1, filled with ``ivig-cds load-fixtures`` as the README says.
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timezone
from typing import Any, Iterator

import pytest
import requests

import fhir_fixtures
from service.governance.load_fixtures import run_load_fixtures
from tests.conftest import SHARED
from tests.servers import cli_server
from tests.smart_support import SANDBOX_ISS, SANDBOX_JKU, LocalFhir, SandboxSigner

pytestmark = pytest.mark.slow

ORIGIN = "https://sandbox.cds-hooks.org"
SAMPLES = ["sample-hyper-igm", "sample-igg-deficiency", "sample-impaired-ppsv23", "sample-isolated-igm",
           "sample-on-ivig-low-trough"]
USER = "Practitioner/COREPRACTITIONER1"


def _today():
    return datetime.now(timezone.utc).date()


@pytest.fixture(scope="module")
def signer() -> SandboxSigner:
    return SandboxSigner()


@pytest.fixture(scope="module")
def fhir() -> Iterator[LocalFhir]:
    with LocalFhir(require_token=False) as server:  # an open FHIR server, as on an open sandbox launch
        run_load_fixtures(server.base, today=_today())
        yield server


def _config(tmp_path, signer: SandboxSigner, **security: Any) -> str:
    jwks = tmp_path / "sandbox-stand-in-jwks.json"
    jwks.write_text(json.dumps(signer.jwks()))
    issuer = {"iss": SANDBOX_ISS, "jwks_file": str(jwks), "jku_allowlist": [SANDBOX_JKU], "algorithms": ["ES384"]}
    lines = ['profile = "sandbox"', f"data_dir = {json.dumps(str(tmp_path / 'data'))}", "[security]",
             f"trusted_issuers = [{_inline(issuer)}]"]
    lines += [f"{k} = {json.dumps(v)}" for k, v in security.items()]
    path = tmp_path / "sandbox-test.toml"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def _inline(table: dict[str, Any]) -> str:
    return "{" + ", ".join(f"{k} = {json.dumps(v)}" for k, v in table.items()) + "}"


@pytest.fixture(scope="module")
def service(tmp_path_factory, signer) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("sandbox")
    config = _config(tmp, signer)
    with cli_server(["serve", "--profile", "sandbox", "--config", config], cwd=str(tmp)) as (base, _proc):
        yield base


def _session() -> requests.Session:
    s = requests.Session()
    s.trust_env = False
    return s


def _preflight(url: str) -> requests.Response:
    return _session().options(url, headers={"Origin": ORIGIN, "Access-Control-Request-Method": "POST",
                                            "Access-Control-Request-Headers": "authorization,content-type"},
                              timeout=10)


def _call(url: str, body: dict[str, Any], token: str | None) -> requests.Response:
    headers = {"Origin": ORIGIN, "Accept": "application/json", "Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return _session().post(url, data=json.dumps(body), headers=headers, timeout=30)


def _patient_view(fhir: LocalFhir, patient_id: str, prefetch: dict[str, Any]) -> dict[str, Any]:
    return {"hookInstance": str(uuid.uuid4()), "hook": "patient-view", "fhirServer": fhir.base,
            "context": {"userId": USER, "patientId": patient_id}, "prefetch": prefetch}


def _cors_ok(r: requests.Response) -> None:
    assert r.headers.get("Access-Control-Allow-Origin") in ("*", ORIGIN), dict(r.headers)


def test_preflight_then_discovery_with_the_sandbox_token(service, signer):
    url = f"{service}/cds-services"
    r = _preflight(url)
    assert r.status_code in (200, 204)
    _cors_ok(r)
    assert "authorization" in r.headers["Access-Control-Allow-Headers"].lower()
    assert "POST" in r.headers["Access-Control-Allow-Methods"]
    r = _session().get(url, headers={"Origin": ORIGIN, "Accept": "application/json",
                                     "Authorization": f"Bearer {signer.token(url)}"}, timeout=10)
    assert r.status_code == 200
    _cors_ok(r)
    ids = {s["id"] for s in r.json()["services"]}
    assert {"ivig-patient-view", "ivig-order-sign"} <= ids


@pytest.mark.parametrize("name", SAMPLES)
def test_patient_view_like_the_sandbox_gets_the_sample_cards(service, signer, fhir, name):
    url = f"{service}/cds-services/ivig-patient-view"
    preflight = _preflight(url)
    assert preflight.status_code in (200, 204)
    _cors_ok(preflight)
    patient = fhir.resources[("Patient", name)]
    before = len(fhir.seen)
    # only "patient" resolved; every other key omitted, never null — the service reads them itself
    r = _call(url, _patient_view(fhir, name, {"patient": patient}), signer.token(url))
    assert r.status_code == 200, r.text
    _cors_ok(r)
    cards = r.json()["cards"]
    expected = fhir_fixtures.load_json(name, "expected.json")["expected"]["patient-view"]
    assert sorted(c["source"]["topic"]["code"] for c in cards) == sorted(expected)
    for card in cards:
        assert {"type": "smart", "url": f"{service}/smart/launch"}.items() <= next(
            link for link in card["links"] if link["type"] == "smart").items()
    reads = [s for s in fhir.seen[before:] if s.method == "GET"]
    assert reads and all(s.query.get("patient", [name])[0] == name for s in reads)
    assert not any(s.path == f"/fhir/Patient/{name}" for s in reads), "a sent prefetch key is not read again"
    assert any(s.path == "/fhir/Observation" for s in reads)
    assert all("Authorization" not in s.headers for s in reads), "open launch: no token to send"


def test_order_sign_like_the_sandbox_rx_sign(service, signer, fhir):
    name = "sample-isolated-igm"
    drafts = fhir_fixtures.load_scenario(name, _today())["draftOrders"]
    drafts.pop("type", None)  # the sandbox's draftOrders Bundle has no type
    url = f"{service}/cds-services/ivig-order-sign"
    body = {"hookInstance": str(uuid.uuid4()), "hook": "order-sign", "fhirServer": fhir.base,
            "context": {"userId": USER, "patientId": name, "draftOrders": drafts}}  # no prefetch at all
    r = _call(url, body, signer.token(url))
    assert r.status_code == 200, r.text
    topics = [c["source"]["topic"]["code"] for c in r.json()["cards"]]
    assert topics == fhir_fixtures.load_json(name, "expected.json")["expected"]["order-sign"]


def test_tokens_the_sandbox_would_not_send_are_refused(service, signer, fhir):
    url = f"{service}/cds-services/ivig-patient-view"
    body = _patient_view(fhir, "sample-igg-deficiency", {})
    impostor = SandboxSigner(kid=signer.kid)  # right kid and jku, wrong key
    cases = {
        "no token": None,
        "other key": impostor.token(url),
        "aud of another URL": signer.token(f"{service}/cds-services"),
        "jku elsewhere": signer.token(url, jku="https://evil.example/jwks.json"),
        "other issuer": SandboxSigner(iss="https://sandbox.cds-hooks.org.evil.example", kid=signer.kid,
                                      private_key=signer.private_key).token(url),
    }
    for label, token in cases.items():
        r = _call(url, body, token)
        assert r.status_code == 401, (label, r.text)
        assert r.headers.get("WWW-Authenticate", "").startswith("Bearer"), label
        _cors_ok(r)  # the browser must be able to read the 401
    token = signer.token(url)
    assert _call(url, body, token).status_code == 200
    assert _call(url, body, token).status_code == 401, "a replayed jti is refused"


def test_shipped_sandbox_profile_pins_the_sandbox_jwks():
    """The real profile trusts exactly the sandbox issuer with the JWK Set the sandbox publishes."""
    from service.auth.keys import load_jwks_file
    from service.settings import load_settings

    settings = load_settings(environ={}, overrides={"profile": "sandbox"})
    issuers = settings.security.trusted_issuers
    assert [i.iss for i in issuers] == [SANDBOX_ISS]
    assert issuers[0].jku_allowlist == [SANDBOX_JKU] and issuers[0].algorithms == ["ES384"]
    assert issuers[0].jwks_url is None, "no network fetch: the set ships inside the package"
    published = SHARED / "reference" / "cds-hooks" / "sandbox" / "jwks.json"
    if not published.is_file():
        pytest.skip(f"{published} (the sandbox's published JWK Set) is not present")
    assert load_jwks_file(issuers[0].jwks_file) == json.loads(published.read_text())
    assert settings.security.require_token and not settings.sample_patients
    assert "*" in settings.security.cors_origins


def test_readme_walkthrough_with_a_real_fhir_server(tmp_path, signer):
    """load-fixtures into a real R4 server (Medplum, tests/fhir_server.py), then a sandbox call that
    was SMART-launched (so it sends fhirAuthorization) with no prefetch at all."""
    from tests.fhir_server import start_server

    servers = start_server()
    real = next(servers)
    try:
        summary = run_load_fixtures(real.base, token=real.token, today=_today())
        assert summary.startswith("loaded 5 sample patients (228 resources")
        config = _config(tmp_path, signer)
        with cli_server(["serve", "--profile", "sandbox", "--config", config], cwd=str(tmp_path)) as (base, _p):
            url = f"{base}/cds-services/ivig-patient-view"
            for name in ("sample-on-ivig-low-trough", "sample-hyper-igm"):
                body = {"hookInstance": str(uuid.uuid4()), "hook": "patient-view", "fhirServer": real.base,
                        "fhirAuthorization": {"access_token": real.token, "token_type": "Bearer", "expires_in": 300,
                                              "scope": "patient/*.* user/*.* launch openid profile online_access",
                                              "subject": "48163c5e-88b5-4cb3-92d3-23b800caa927"},
                        "context": {"userId": USER, "patientId": name}}
                r = _call(url, body, signer.token(url))
                assert r.status_code == 200, r.text
                expected = fhir_fixtures.load_json(name, "expected.json")["expected"]["patient-view"]
                assert sorted(c["source"]["topic"]["code"] for c in r.json()["cards"]) == sorted(expected), name
    finally:
        servers.close()
