"""Property tests: whatever arrives, the service answers 2xx/4xx, never 5xx.

A CDS service is called by systems we do not control; a 500 there reads, at best, as "no
advice" and, at worst, as an outage. Hypothesis throws random JSON, random bytes, random
request envelopes (with FHIR-ish resources in ``draftOrders`` and ``prefetch``) and random
feedback at every endpoint of the real app. ``IVIG_FUZZ_EXAMPLES`` sets the examples per test
(default 300); each test prints how many it sent and which statuses came back.
"""

from __future__ import annotations

import datetime
import json
import os
from collections import Counter
from typing import Any, Callable, Iterator

import pytest
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.app import create_app
from tests.conftest import make_settings
from tests.test_protocol import (DEFINITION, HOOKS, REQUIRED_CONTEXT, assert_cds_response, closed_loopback_port,
                                 loopback_only, service_url)

# Not IVIG_CDS_*: the settings loader rejects unknown variables with that prefix.
FUZZ_EXAMPLES = int(os.environ.get("IVIG_FUZZ_EXAMPLES", "300"))
FUZZ = settings(max_examples=FUZZ_EXAMPLES, deadline=None, print_blob=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.fixture(scope="module")
def dead_fhir_server() -> Iterator[str]:
    with closed_loopback_port() as port:
        yield f"http://127.0.0.1:{port}/fhir"


@pytest.fixture(scope="module")
def fuzz_client(tmp_path_factory, dead_fhir_server) -> Iterator[FlaskClient]:
    """One real app (default feedback store, data in tmp) for the whole module; no traffic off this machine."""
    with loopback_only() as attempts:
        app = create_app(make_settings(tmp_path_factory.mktemp("fuzz")))
        try:
            yield app.test_client()
        finally:
            app.extensions["ivig_cds"].close()
    assert attempts == [], f"the service tried to reach outside this machine: {attempts}"


def _confine(body: Any, dead_fhir_server: str) -> Any:
    """Whatever was generated, a fhirServer URL may only point at a closed loopback port."""
    if isinstance(body, dict) and isinstance(body.get("fhirServer"), str) and "://" in body["fhirServer"]:
        body["fhirServer"] = dead_fhir_server
    return body


def _check(resp, endpoint: str) -> None:
    """Never a 5xx; every answer is JSON; a 200 from a service is a well-formed card response."""
    text = resp.get_data(as_text=True)
    assert resp.status_code < 500, f"{endpoint} answered {resp.status_code}: {text[:500]}"
    assert resp.mimetype == "application/json", (resp.status_code, resp.headers)
    json.loads(text)
    if resp.status_code == 200 and not endpoint.endswith("/feedback"):
        assert_cds_response(resp)


def _report(capsys, what: str, statuses: Counter) -> None:
    with capsys.disabled():
        print(f"\n[fuzz] {what}: {sum(statuses.values())} requests, statuses {dict(sorted(statuses.items()))}")


def _run(strategy: st.SearchStrategy, send: Callable[[Any], Any], endpoint: str) -> Counter:
    statuses: Counter = Counter()

    @FUZZ
    @given(strategy)
    def run(value: Any) -> None:
        resp = send(value)
        statuses[resp.status_code] += 1
        _check(resp, endpoint)

    run()
    assert sum(statuses.values()) >= FUZZ_EXAMPLES
    return statuses


# ------------------------------------------------------------------ strategies

ENVELOPE_KEYS = ("hook", "hookInstance", "context", "prefetch", "fhirServer", "fhirAuthorization", "extension",
                 "feedback", "card", "outcome", "outcomeTimestamp", "resourceType", "entry", "resource")

# Integers as orjson reads them: i64 and u64 stay ints, anything wider arrives as a float.
scalars = (st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**64 - 1)
           | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20))
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=5)
    | st.dictionaries(st.sampled_from(ENVELOPE_KEYS) | st.text(max_size=12), children, max_size=6),
    max_leaves=25,
)
#: Inside FHIR-ish resources: random values, kept small so that generating them stays cheap.
small_json = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=5,
)

ids = st.sampled_from(["p1", "1288992", "smart-1288992", "x", ""]) | st.text(max_size=8)
dates = (st.sampled_from(["2024-01-15", "2025-06-30T10:00:00Z", "2026-01-01T00:00:00+01:00", "2025", "2025-13-45",
                          "not a date", ""])
         | st.dates().map(str) | st.datetimes().map(lambda d: d.isoformat()))
#: Codes the rules look for, so that random resources often take the interesting paths.
CODES = [
    ("http://loinc.org", "2465-3", "IgG"), ("http://loinc.org", "2472-9", "IgM"), ("http://loinc.org", "2458-8", "IgA"),
    ("http://loinc.org", "29463-7", "Body weight"), ("http://loinc.org", "2466-1", "IgG1"),
    ("http://hl7.org/fhir/sid/cvx", "33", "PPSV23"),
    ("http://www.nlm.nih.gov/research/umls/rxnorm", "1740851", "Privigen"),
    ("https://www.cms.gov/Medicare/Coding/HCPCSReleaseCodeSets", "J1459", "IVIG"),
    ("http://snomed.info/sct", "233604007", "Pneumonia"), ("http://snomed.info/sct", "190981001", "IgM deficiency"),
]
codings = st.one_of(
    st.sampled_from(CODES).map(lambda c: {"system": c[0], "code": c[1], "display": c[2]}),
    st.fixed_dictionaries({}, optional={"system": st.text(max_size=10), "code": st.text(max_size=8) | st.integers(),
                                        "display": small_json}),
)
concepts = st.one_of(
    st.fixed_dictionaries({}, optional={"coding": st.lists(codings, max_size=3),
                                        "text": st.sampled_from(["IVIG 30 g", "immune globulin intravenous",
                                                                 "Hizentra", "IgM", "pneumococcal titer"])
                                        | st.text(max_size=10)}),
    small_json,
)
quantities = st.fixed_dictionaries({}, optional={
    "value": st.floats(allow_nan=False, allow_infinity=False) | st.integers(-(2**31), 2**31) | st.text(max_size=5),
    "unit": st.sampled_from(["mg/dL", "g/L", "mg/L", "kg", "g", "g/kg", "[lb_av]", ""]) | small_json,
    "system": st.just("http://unitsofmeasure.org"), "comparator": st.sampled_from(["<", ">", "<="]),
})
references = st.fixed_dictionaries({}, optional={
    "reference": st.sampled_from(["Patient/p1", "Medication/m1", "#m1", ""]) | st.text(max_size=10),
    "display": st.text(max_size=10)})
RESOURCE_TYPES = ["Patient", "Observation", "Condition", "MedicationRequest", "MedicationAdministration",
                  "Immunization", "Encounter", "Procedure", "Medication", "OperationOutcome", "NutritionOrder",
                  "ServiceRequest", "MedicationOrder", "Bundle", "Unknown"]
resources = st.fixed_dictionaries(
    {"resourceType": st.sampled_from(RESOURCE_TYPES)},
    optional={
        "id": ids,
        "status": st.sampled_from(["final", "draft", "active", "completed", "entered-in-error"]) | small_json,
        "intent": st.sampled_from(["order", "plan"]), "subject": references, "patient": references,
        "code": concepts, "vaccineCode": concepts, "medicationCodeableConcept": concepts,
        "medicationReference": references,
        "valueQuantity": quantities, "valueString": st.text(max_size=10), "effectiveDateTime": dates, "issued": dates,
        "authoredOn": dates, "occurrenceDateTime": dates, "onsetDateTime": dates, "recordedDate": dates,
        "birthDate": dates, "gender": st.sampled_from(["male", "female", "other"]) | small_json,
        "effectivePeriod": st.fixed_dictionaries({}, optional={"start": dates, "end": dates}),
        "period": st.fixed_dictionaries({}, optional={"start": dates, "end": dates}),
        "dosageInstruction": st.lists(st.fixed_dictionaries({}, optional={
            "doseAndRate": st.lists(st.fixed_dictionaries({}, optional={"doseQuantity": quantities}), max_size=2),
            "timing": small_json, "text": st.text(max_size=10)}), max_size=2) | small_json,
        "dosage": st.fixed_dictionaries({}, optional={"dose": quantities}), "clinicalStatus": concepts,
        "category": st.lists(concepts, max_size=2), "interpretation": st.lists(concepts, max_size=2),
        "reasonCode": st.lists(concepts, max_size=2), "class": codings | small_json,
        "component": st.lists(st.fixed_dictionaries({}, optional={"code": concepts, "valueQuantity": quantities}),
                              max_size=3),
        "contained": st.lists(st.fixed_dictionaries({"resourceType": st.just("Medication")},
                                                    optional={"id": st.just("m1"), "code": concepts}), max_size=2),
        "extra": small_json,
    },
)


def bundles(kind: str | None = None) -> st.SearchStrategy:
    entry = st.one_of(st.fixed_dictionaries({"resource": resources}), st.fixed_dictionaries({}, optional={
        "resource": small_json, "fullUrl": st.text(max_size=10), "search": small_json}))
    return st.fixed_dictionaries(
        {"resourceType": st.just("Bundle")},
        optional={"type": st.just(kind) if kind else st.sampled_from(["searchset", "collection"]) | small_json,
                  "entry": st.lists(entry, max_size=6), "total": st.integers(-1, 50) | small_json,
                  "link": small_json},
    )


usable_prefetch_values = st.one_of(
    bundles("searchset"),
    st.fixed_dictionaries({"resourceType": st.just("Patient"), "id": ids},
                          optional={"birthDate": dates, "gender": st.sampled_from(["male", "female"])}),
)
prefetch_values = st.one_of(
    st.none(), bundles("searchset"), resources, small_json,
    st.just({"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "not-found"}]}),
    st.fixed_dictionaries({"resourceType": st.just("Patient"), "id": ids},
                          optional={"birthDate": dates, "gender": st.sampled_from(["male", "female"])}),
)


@st.composite
def envelopes(draw, hook: str, dead_fhir_server: str) -> dict[str, Any]:
    """Mostly well-formed requests with random data inside; in a quarter of them any field may be anything."""
    wild = draw(st.integers(0, 3)) == 0

    def field(good: st.SearchStrategy) -> Any:
        return draw(json_values) if wild and draw(st.integers(0, 2)) == 0 else draw(good)

    body: dict[str, Any] = {
        "hook": field(st.just(hook)),
        "hookInstance": field(st.uuids().map(str)),
    }
    context: dict[str, Any] = {}
    for name in REQUIRED_CONTEXT[hook] + ("encounterId",):
        if wild and draw(st.integers(0, 4)) == 0:
            continue
        if name == "draftOrders":
            context[name] = field(bundles())
        elif name == "selections":
            context[name] = field(st.lists(st.sampled_from(["MedicationRequest/mr1", "NutritionOrder/n1", "x/y"]),
                                           min_size=1, max_size=3))
        elif name == "encounterId":
            if draw(st.booleans()):
                context[name] = field(st.sampled_from(["e1", "89284", "Encounter/e1"]))
        else:
            context[name] = field(st.sampled_from(["Practitioner/u1", "p1", "1288992", "Patient/p1"]))
    body["context"] = field(st.just(context))
    if draw(st.integers(0, 3)) > 0:
        prefetch: dict[str, Any] = {}
        for key in sorted(DEFINITION[hook].prefetch):
            if key in DEFINITION[hook].required_prefetch and draw(st.integers(0, 4)) > 0:
                prefetch[key] = draw(usable_prefetch_values)  # mostly reach the handler, not the 412
            elif draw(st.integers(0, 5)) > 0:
                prefetch[key] = draw(prefetch_values)
        if draw(st.integers(0, 3)) == 0:
            prefetch.update(draw(st.dictionaries(st.text(max_size=8), prefetch_values, max_size=2)))
        body["prefetch"] = field(st.just(prefetch))
    if draw(st.integers(0, 3)) == 0:
        body["fhirServer"] = field(st.just(dead_fhir_server))
        if draw(st.booleans()):
            body["fhirAuthorization"] = field(st.fixed_dictionaries(
                {"access_token": st.text(min_size=1, max_size=10).filter(str.strip)},
                optional={"token_type": st.just("Bearer"), "scope": st.text(max_size=10),
                          "subject": st.text(max_size=5), "expires_in": st.integers(0, 3600), "patient": ids}))
    if draw(st.integers(0, 5)) == 0:
        body["extension"] = field(st.dictionaries(st.text(max_size=10), json_values, max_size=3))
    return _confine(body, dead_fhir_server)


good_timestamps = st.one_of(
    st.sampled_from(["2026-01-01T12:00:00Z", "2026-01-01T12:00:00.000Z", "2021-12-11T10:05:31Z"]),
    st.datetimes(timezones=st.timezones()).map(lambda d: d.isoformat()),
    st.datetimes(timezones=st.just(datetime.timezone.utc)).map(
        lambda d: d.strftime("%Y-%m-%dT%H:%M:%S.") + f"{d.microsecond // 1000:03d}Z"),
)
odd_timestamps = st.sampled_from(["2026-01-01T12:00:00", "9999-12-31T23:59:59-23:59", "0001-01-01T00:00:00+23:59",
                                  "2026-02-30T00:00:00Z", "2026-01-01", "Z", "", "2026-01-01T12:00:00ZZ"])


@st.composite
def feedback_items(draw) -> Any:
    """Mostly well-formed items; some with any field anything, some not items at all."""
    if draw(st.integers(0, 7)) == 0:
        return draw(json_values)
    wild = draw(st.integers(0, 2)) == 0

    def field(good: st.SearchStrategy) -> Any:
        return draw(json_values) if wild and draw(st.integers(0, 2)) == 0 else draw(good)

    outcome = field(st.sampled_from(["accepted", "overridden"]))
    item: dict[str, Any] = {"card": field(st.uuids().map(str)), "outcome": outcome,
                            "outcomeTimestamp": field(st.one_of(good_timestamps, good_timestamps, odd_timestamps))}
    if outcome == "accepted" or draw(st.integers(0, 4)) == 0:
        item["acceptedSuggestions"] = field(st.lists(st.fixed_dictionaries({"id": st.uuids().map(str)}), min_size=1,
                                                     max_size=3))
    if draw(st.booleans()):
        item["overrideReason"] = field(st.fixed_dictionaries({}, optional={
            "reason": codings, "userComment": st.text(max_size=20)}))
    return item


feedback_bodies = st.one_of(
    st.fixed_dictionaries({"feedback": st.lists(feedback_items(), min_size=1, max_size=4)},
                          optional={"extension": json_values}),
    st.fixed_dictionaries({"feedback": st.lists(feedback_items(), min_size=1, max_size=4)}),
    json_values,
)


# ------------------------------------------------------------------ the properties

ENDPOINTS = [pytest.param(service_url(h) + suffix, id=f"{h}{suffix.replace('/', '-')}")
             for h in HOOKS for suffix in ("", "/feedback")]


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_random_json_never_5xx(fuzz_client, dead_fhir_server, capsys, endpoint):
    def send(value: Any):
        return fuzz_client.post(endpoint, data=json.dumps(_confine(value, dead_fhir_server)),
                                content_type="application/json")

    _report(capsys, f"random JSON -> {endpoint}", _run(json_values, send, endpoint))


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_random_bytes_never_5xx(fuzz_client, capsys, endpoint):
    content_types = st.sampled_from(["application/json", "application/fhir+json", "text/plain", None])

    def send(value: tuple[bytes, str | None]):
        raw, content_type = value
        kwargs = {"content_type": content_type} if content_type else {}
        return fuzz_client.post(endpoint, data=raw, **kwargs)

    statuses = _run(st.tuples(st.binary(max_size=200), content_types), send, endpoint)
    _report(capsys, f"random bytes -> {endpoint}", statuses)


@pytest.mark.parametrize("hook", HOOKS)
def test_random_envelopes_never_5xx(fuzz_client, dead_fhir_server, capsys, hook):
    endpoint = service_url(hook)

    def send(body: dict[str, Any]):
        return fuzz_client.post(endpoint, data=json.dumps(body), content_type="application/json")

    statuses = _run(envelopes(hook, dead_fhir_server), send, endpoint)
    _report(capsys, f"random envelopes -> {endpoint}", statuses)
    assert statuses[200] and statuses[400], "the strategy must reach both the handler and the validation"


@pytest.mark.parametrize("hook", HOOKS)
def test_random_feedback_never_5xx(fuzz_client, capsys, hook):
    endpoint = service_url(hook) + "/feedback"

    def send(body: Any):
        return fuzz_client.post(endpoint, data=json.dumps(body), content_type="application/json")

    statuses = _run(feedback_bodies, send, endpoint)
    _report(capsys, f"random feedback -> {endpoint}", statuses)
    assert statuses[200] and statuses[400], "the strategy must reach both storage and the validation"


def test_random_methods_and_paths_never_5xx(fuzz_client, capsys):
    known = ["/cds-services", "/healthz", "/cds-services/x", *(service_url(h) for h in HOOKS),
             *(service_url(h) + "/feedback" for h in HOOKS)]
    paths = st.sampled_from(known) | st.text(max_size=20).map(lambda t: "/cds-services/" + t)
    methods = st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"])
    headers = st.fixed_dictionaries({}, optional={
        "Origin": st.just("https://sandbox.cds-hooks.org"),
        "Access-Control-Request-Method": st.sampled_from(["POST", "GET", "X"])})
    statuses: Counter = Counter()

    @FUZZ
    @given(methods, paths, headers, json_values)
    def run(method: str, path: str, hdrs: dict[str, str], body: Any) -> None:
        resp = fuzz_client.open(path, method=method, headers=hdrs, data=json.dumps(body),
                                content_type="application/json")
        statuses[resp.status_code] += 1
        assert resp.status_code < 500, (method, path, resp.status_code, resp.get_data(as_text=True)[:300])
        if resp.get_data() and method != "HEAD":
            assert resp.mimetype == "application/json" or method == "OPTIONS", (method, path, resp.headers)

    run()
    _report(capsys, "random methods and paths", statuses)

