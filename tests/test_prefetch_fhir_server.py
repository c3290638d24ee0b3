"""Prefetch completion against a real FHIR R4 server: the same data, and the same cards, either way.

The server is Medplum's FHIR implementation started on 127.0.0.1 by ``tests/fhir_server.py``
(why that server, and what CI needs for it, is written there). It demands a bearer token, so
every test here also proves that the service passes ``fhirAuthorization`` on.

* a synthetic record (written out below, independent of the fixtures) is read completely:
  each prefetch key gets exactly the resources its template selects, other patients' data
  never, paging included (450 Ig results at ``_count=200`` are three pages);
* Medications behind draft-order references are read from the server;
* for every scenario in ``fhir_fixtures/`` and every hook it has a request for, the cards with
  the prefetch given (the scenario's ``request-<hook>.json``) equal the cards with no prefetch
  at all, only ``fhirServer`` + ``fhirAuthorization`` + context, the server holding exactly the
  scenario's ``bundle.json`` (reset and loaded per test) — read through a reverse proxy that
  rewrites nothing (tests/fhir_proxy.py), from a server whose pages hold at most 5 resources, so
  every next link names the backend's own address (``localhost:<port>``) rather than the
  ``fhirServer`` the EHR gave (``127.0.0.1:<proxy port>``), as behind a hospital's proxy;
* the same over HTTP through the app.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any, Iterator

import pytest

import hooks
from hooks.ruleset import ruleset_version
from hooks.service_def import HookRequest, ServiceDefinition
from service.app import create_app
from service.errors import PreconditionFailed
from service.prefetch.completion import CompletedData, PrefetchCompleter
from service.protocol.models import parse_cds_request
from service.storage.feedback import MemoryFeedbackStore
from tests.cds_validate import without_uuids
from tests.conftest import ROOT, make_settings
from tests.fhir_proxy import ReverseProxy
from tests.fhir_server import FhirServer, start_server

pytestmark = pytest.mark.slow

FIXTURES = ROOT / "fhir_fixtures"
SERVICE_BY_HOOK: dict[str, ServiceDefinition] = {s.hook: s for s in hooks.SERVICES.values()}
LOINC = "http://loinc.org"
TODAY = date(2026, 11, 24)


#: largest page of the server behind the proxy: small, so every fixture needs several pages
SMALL_PAGE = 5


@pytest.fixture(scope="module")
def fhir_server() -> Iterator[FhirServer]:
    """One real FHIR R4 server for this module; each test resets it and loads its own record."""
    yield from start_server()


@dataclass
class Proxied:
    """The small-page server, and the proxy the service is told is the FHIR server."""

    server: FhirServer
    proxy: ReverseProxy

    @property
    def base(self) -> str:
        return self.proxy.base

    @property
    def token(self) -> str:
        return self.server.token

    def reset(self) -> None:
        self.server.reset()

    def load(self, resources) -> None:
        self.server.load(resources)


@pytest.fixture(scope="module")
def proxied() -> Iterator[Proxied]:
    for server in start_server(max_count=SMALL_PAGE):
        with ReverseProxy(server.base) as proxy:
            yield Proxied(server, proxy)


def settings_for(tmp_path, **overrides):
    """Time enough for the single-threaded in-memory server, which rescans its store for every page and
    answers one request at a time, on a machine the whole suite shares: what is tested here is what
    arrives, not how fast (timing faults are test_prefetch.py's, against the stub)."""
    base = {"prefetch.deadline_seconds": 30.0, "prefetch.query_timeout_seconds": 25.0, "sample_patients": False}
    base.update(overrides)
    return make_settings(tmp_path, **base)


def auth(server: "FhirServer | Proxied", token: str | None = None) -> dict[str, Any]:
    return {"fhirServer": server.base,
            "fhirAuthorization": {"access_token": token or server.token, "token_type": "Bearer",
                                  "scope": "patient/*.read", "subject": "ivig-cds"}}


def run_hook(settings, body: dict[str, Any], today: date) -> tuple[CompletedData, list[dict[str, Any]]]:
    """The invoke pipeline of service/protocol/cds.py with a fixed 'today': complete the prefetch, call the handler."""
    service = SERVICE_BY_HOOK[body["hook"]]
    req = parse_cds_request(body, service.hook)
    completer = PrefetchCompleter(settings)
    try:
        completed = completer.complete(req, service, today)
    finally:
        completer.close()
    result = service.handler(HookRequest(
        hook=service.hook, hook_instance=req.hook_instance, service_id=service.id, context=req.context,
        prefetch=completed.prefetch, today=today, config=settings.guideline, unavailable=completed.unavailable,
        extra_resources=completed.extra_resources, base_url="http://127.0.0.1:8080",
        ruleset_version=ruleset_version(settings.guideline)))
    return completed, result.cards


def ids(bundle: dict[str, Any]) -> set[str]:
    return {e["resource"]["id"] for e in bundle.get("entry") or []}


# ------------------------------------------------------------------ a synthetic record, read completely

PID, OTHER = "pf-patient-1", "pf-patient-2"
IG_CODES = ("2465-3", "2472-9", "2458-8")  # IgG, IgM, IgA


def _obs(oid: str, pid: str, code: str | None, when: str, value: float, unit: str, text: str,
         category: str = "laboratory") -> dict[str, Any]:
    concept: dict[str, Any] = {"text": text}
    if code:
        concept["coding"] = [{"system": LOINC, "code": code, "display": text}]
    return {"resourceType": "Observation", "id": oid, "status": "final", "code": concept,
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                      "code": category}]}],
            "subject": {"reference": f"Patient/{pid}"}, "effectiveDateTime": when,
            "valueQuantity": {"value": value, "unit": unit, "system": "http://unitsofmeasure.org", "code": unit}}


def synthetic_record(ig_results: int = 450) -> tuple[list[dict[str, Any]], dict[str, set[str]]]:
    """Resources for two patients, and for PID the ids each prefetch key must return."""
    res: list[dict[str, Any]] = []
    want: dict[str, set[str]] = {k: set() for k in SERVICE_BY_HOOK["patient-view"].prefetch}
    for pid in (PID, OTHER):
        res.append({"resourceType": "Patient", "id": pid, "gender": "female", "birthDate": "1980-01-01"})
    want["patient"] = {PID}
    start = date(2020, 1, 1)
    for i in range(ig_results):  # 450: three pages at _count=200
        oid = f"pf-ig-{i}"
        res.append(_obs(oid, PID, IG_CODES[i % 3], (start + timedelta(days=3 * i)).isoformat(),
                        30 + i % 50, "mg/dL", "Immunoglobulin"))
        want["immunoglobulins"].add(oid)
    res.append(_obs("pf-ig-other", OTHER, "2472-9", "2026-01-01", 20, "mg/dL", "IgM"))
    for n in (1, 3, 4):
        oid = f"pf-titer-{n}"
        res.append(_obs(oid, PID, None, "2026-06-01", 0.5 + n, "ug/mL",
                        f"Streptococcus pneumoniae Danish serotype {n} IgG Ab [Mass/volume] in Serum"))
        want["pneumococcalTiters"].add(oid)
    weighed = ("2024-05-01", "2026-10-01", "2025-03-01", "2026-02-01", "2025-09-01", "2023-01-01", "2026-06-01")
    for i, when in enumerate(weighed):
        res.append(_obs(f"pf-weight-{i}", PID, "29463-7", when, 70 + i, "kg", "Body weight", "vital-signs"))
    want["weight"] = {f"pf-weight-{i}" for i in (1, 6, 3, 4, 2)}  # the latest five, not the older two
    res.append(_obs("pf-unrelated", PID, "718-7", "2026-01-01", 13, "g/dL", "Hemoglobin"))
    if "category=laboratory" in SERVICE_BY_HOOK["patient-view"].prefetch["pneumococcalTiters"]:
        # no serotype LOINC code in the value set yet: the titers key asks for every laboratory result
        want["pneumococcalTiters"] |= want["immunoglobulins"] | {"pf-unrelated"}
    for rtype, key, n in (("Condition", "conditions", 3), ("Encounter", "encounters", 4),
                          ("Immunization", "immunizations", 2), ("Procedure", "procedures", 2)):
        for i in range(n):
            rid = f"pf-{rtype.lower()}-{i}"
            resource: dict[str, Any] = {"resourceType": rtype, "id": rid}
            if rtype == "Condition":
                resource.update(subject={"reference": f"Patient/{PID}"},
                                code={"coding": [{"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": "J18.9"}]})
            elif rtype == "Encounter":
                resource.update(status="finished", subject={"reference": f"Patient/{PID}"},
                                **{"class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                                             "code": "AMB"}},
                                period={"start": f"2026-0{i + 1}-01", "end": f"2026-0{i + 1}-01"})
            elif rtype == "Immunization":
                resource.update(status="completed", patient={"reference": f"Patient/{PID}"},
                                vaccineCode={"coding": [{"system": "http://hl7.org/fhir/sid/cvx", "code": "33"}]},
                                occurrenceDateTime="2026-05-01")
            else:
                resource.update(status="completed", subject={"reference": f"Patient/{PID}"},
                                code={"text": "IVIG infusion"}, performedDateTime="2026-02-01")
            res.append(resource)
            want[key].add(rid)
    res.append({"resourceType": "Condition", "id": "pf-condition-other", "subject": {"reference": f"Patient/{OTHER}"},
                "code": {"text": "Pneumonia"}})
    res.append({"resourceType": "Medication", "id": "pf-med-1",
                "code": {"coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "1658655",
                                     "display": "immune globulin 100 MG/ML Injectable Solution"}],
                         "text": "Gammagard Liquid"}})
    res.append({"resourceType": "MedicationRequest", "id": "pf-medreq-1", "status": "active", "intent": "order",
                "subject": {"reference": f"Patient/{PID}"}, "medicationReference": {"reference": "Medication/pf-med-1"},
                "authoredOn": "2026-09-01"})
    want["medicationRequests"] = {"pf-medreq-1"}
    res.append({"resourceType": "MedicationAdministration", "id": "pf-medadmin-1", "status": "completed",
                "subject": {"reference": f"Patient/{PID}"}, "medicationReference": {"reference": "Medication/pf-med-1"},
                "effectiveDateTime": "2026-09-02"})
    want["medicationAdministrations"] = {"pf-medadmin-1"}
    return res, want


@pytest.fixture
def synthetic(fhir_server: FhirServer) -> dict[str, set[str]]:
    resources, want = synthetic_record()
    fhir_server.reset()
    fhir_server.load(resources)
    return want


def test_every_key_gets_exactly_what_its_template_selects(tmp_path, fhir_server, synthetic):
    body = {"hook": "patient-view", "hookInstance": "5b8b3c47-3a5e-4a8f-9d0c-0d1e2f3a4b5c",
            "context": {"userId": "Practitioner/pf-dr", "patientId": PID}, **auth(fhir_server)}
    completed, _ = run_hook(settings_for(tmp_path), body, TODAY)
    assert completed.unavailable == {} and completed.sources == {"fhir"}
    got = {key: ({value["id"]} if value.get("resourceType") != "Bundle" else ids(value))
           for key, value in completed.prefetch.items()}
    assert got == synthetic
    assert len(completed.prefetch["immunoglobulins"]["entry"]) == 450  # three pages, merged


def test_behind_a_proxy_with_small_pages_every_key_is_still_read_completely(tmp_path, proxied):
    """Every next link names localhost:<backend port>; each is read at fhirServer (the proxy)."""
    resources, want = synthetic_record(ig_results=40)  # the in-memory server rescans per page: keep it small
    proxied.reset()
    proxied.load(resources)
    proxied.proxy.requests.clear()
    body = {"hook": "patient-view", "hookInstance": "5b8b3c47-3a5e-4a8f-9d0c-0d1e2f3a4b60",
            "context": {"userId": "Practitioner/pf-dr", "patientId": PID}, **auth(proxied)}
    completed, _ = run_hook(settings_for(tmp_path), body, TODAY)
    assert completed.unavailable == {}
    got = {key: ({value["id"]} if value.get("resourceType") != "Bundle" else ids(value))
           for key, value in completed.prefetch.items()}
    assert got == want
    assert len(completed.prefetch["encounters"]["entry"]) == 4  # a top-N query over pages smaller than N
    pages = [r.target for r in proxied.proxy.requests if "_offset=" in r.target]
    assert len(pages) >= 2 * (40 // SMALL_PAGE - 1)  # Ig results and laboratory results, page by page


@pytest.mark.parametrize("token", [None, "not-the-token"])
def test_without_a_valid_token_the_server_refuses_and_the_answer_is_412(tmp_path, fhir_server, synthetic, token):
    body = {"hook": "patient-view", "hookInstance": "5b8b3c47-3a5e-4a8f-9d0c-0d1e2f3a4b5d",
            "context": {"userId": "Practitioner/pf-dr", "patientId": PID}, **auth(fhir_server, token)}
    if token is None:
        del body["fhirAuthorization"]
    with pytest.raises(PreconditionFailed) as err:
        run_hook(settings_for(tmp_path), body, TODAY)
    assert "authorization" in err.value.message
    assert fhir_server.token not in json.dumps(err.value.body())


def test_order_sign_reads_the_medication_a_draft_order_references(tmp_path, fhir_server, synthetic):
    drafts = {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": {
        "resourceType": "MedicationRequest", "id": "pf-draft-1", "status": "draft", "intent": "order",
        "subject": {"reference": f"Patient/{PID}"}, "medicationReference": {"reference": "Medication/pf-med-1"},
        "dosageInstruction": [{"doseAndRate": [{"doseQuantity": {"value": 0.5, "unit": "g/kg"}}]}]}}]}
    body = {"hook": "order-sign", "hookInstance": "5b8b3c47-3a5e-4a8f-9d0c-0d1e2f3a4b5e",
            "context": {"userId": "Practitioner/pf-dr", "patientId": PID, "draftOrders": drafts},
            **auth(fhir_server)}
    service = SERVICE_BY_HOOK["order-sign"]
    assert service.unresolved_references(body["context"], {}) == ["Medication/pf-med-1"]
    completed, _ = run_hook(settings_for(tmp_path), body, TODAY)
    assert [r["id"] for r in completed.extra_resources] == ["pf-med-1"]
    assert completed.extra_resources[0]["resourceType"] == "Medication"
    assert completed.unavailable == {}


def test_order_sign_reads_a_medication_named_by_the_backend_address_through_the_proxy(tmp_path, proxied):
    """A draft order written from the FHIR server's own links: an absolute URL at localhost:<backend>."""
    resources, _ = synthetic_record(ig_results=3)
    proxied.reset()
    proxied.load(resources)
    proxied.proxy.requests.clear()
    url = f"http://{proxied.proxy.backend_address}/fhir/Medication/pf-med-1"
    drafts = {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": {
        "resourceType": "MedicationRequest", "id": "pf-draft-2", "status": "draft", "intent": "order",
        "subject": {"reference": f"Patient/{PID}"}, "medicationReference": {"reference": url}}}]}
    body = {"hook": "order-sign", "hookInstance": "5b8b3c47-3a5e-4a8f-9d0c-0d1e2f3a4b61",
            "context": {"userId": "Practitioner/pf-dr", "patientId": PID, "draftOrders": drafts}, **auth(proxied)}
    completed, cards = run_hook(settings_for(tmp_path), body, TODAY)
    assert [r["id"] for r in completed.extra_resources] == ["pf-med-1"] and completed.unavailable == {}
    assert any(r.target == "/fhir/Medication/pf-med-1" for r in proxied.proxy.requests)
    assert cards, "the order is recognised as immune globulin once its Medication is read"


# ------------------------------------------------------------------ every fixture: same cards either way

def _cases() -> list[tuple[str, str]]:
    cases = []
    for expected in sorted(FIXTURES.glob("*/expected.json")):
        if json.loads(expected.read_text(encoding="utf-8")).get("unreadableEntries"):
            continue  # the request carries entries no FHIR server can hold (null, unknown types): nothing to fetch
        for request in sorted(expected.parent.glob("request-*.json")):
            cases.append((expected.parent.name, request.stem.removeprefix("request-")))
    return cases


CASES = _cases()


def load_scenario(server: "FhirServer | Proxied", scenario: str) -> "FhirServer | Proxied":
    """The real server holding exactly this scenario's record."""
    bundle = json.loads((FIXTURES / scenario / "bundle.json").read_text(encoding="utf-8"))
    server.reset()
    server.load(entry["resource"] for entry in bundle.get("entry", []))
    return server


def test_there_are_fixture_scenarios_to_compare():
    assert CASES, f"no fhir_fixtures/*/request-<hook>.json found under {FIXTURES}"


@pytest.mark.parametrize(("scenario", "hook"), CASES, ids=[f"{s}-{h}" for s, h in CASES])
def test_fixture_cards_are_the_same_with_prefetch_given_and_fetched(tmp_path, proxied, scenario, hook):
    scenario_server = load_scenario(proxied, scenario)
    proxied.proxy.requests.clear()
    folder = FIXTURES / scenario
    given = json.loads((folder / f"request-{hook}.json").read_text(encoding="utf-8"))
    today = date.fromisoformat(json.loads((folder / "expected.json").read_text(encoding="utf-8"))["today"])
    fetched = {k: copy.deepcopy(v) for k, v in given.items() if k != "prefetch"}
    fetched.update(auth(scenario_server))
    settings = settings_for(tmp_path)

    given_data, given_cards = run_hook(settings, given, today)
    fetched_data, fetched_cards = run_hook(settings, fetched, today)

    assert fetched_data.unavailable == {}, "the real FHIR server should have delivered every key"
    assert "fhir" in fetched_data.sources or not fetched_data.prefetch  # order hooks may need no patient data
    assert all(r.authorized for r in proxied.proxy.requests)
    observations = sum(e["resource"]["resourceType"] == "Observation" for e in
                       json.loads((folder / "bundle.json").read_text(encoding="utf-8"))["entry"])
    if fetched_data.prefetch and observations > SMALL_PAGE:  # further pages were read, through the proxy
        assert any("_offset=" in r.target for r in proxied.proxy.requests)
    assert without_uuids(fetched_cards) == without_uuids(given_cards), (
        f"{scenario}/{hook}: topics given {[c.get('source', {}).get('topic', {}).get('code') for c in given_cards]}"
        f" vs fetched {[c.get('source', {}).get('topic', {}).get('code') for c in fetched_cards]}")


# ------------------------------------------------------------------ over HTTP: only fhirServer + token + context

HTTP_CASES = [c for c in CASES if c in {("sample-isolated-igm", "patient-view"),
                                        ("sample-on-ivig-low-trough", "patient-view"),
                                        ("order-via-bundled-medication", "order-sign")}]


@pytest.mark.parametrize(("scenario", "hook"), HTTP_CASES, ids=[f"{s}-{h}" for s, h in HTTP_CASES])
def test_http_request_without_prefetch_gets_the_same_cards(tmp_path, proxied, scenario, hook):
    scenario_server = load_scenario(proxied, scenario)
    given = json.loads((FIXTURES / scenario / f"request-{hook}.json").read_text(encoding="utf-8"))
    fetched = {k: copy.deepcopy(v) for k, v in given.items() if k != "prefetch"}
    fetched.update(auth(scenario_server))
    app = create_app(settings_for(tmp_path), store=MemoryFeedbackStore())
    try:
        client = app.test_client()
        service_id = SERVICE_BY_HOOK[hook].id
        with_prefetch = client.post(f"/cds-services/{service_id}", json=given)
        without = client.post(f"/cds-services/{service_id}", json=fetched)
    finally:
        app.extensions["ivig_cds"].close()
    assert with_prefetch.status_code == 200 and without.status_code == 200, without.get_data(as_text=True)[:300]
    assert without_uuids(without.get_json()) == without_uuids(with_prefetch.get_json())
