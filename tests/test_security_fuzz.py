"""Fuzzing the authenticated edge: whatever arrives, a defined non-5xx answer, and never a pass without a token.

Hypothesis drives the real app in the production profile (tokens required, replay store in an
SQLite file, fhirServer allowlist = one closed loopback port) with: random Authorization headers
and JWT-shaped junk (always 401), and validly signed calls carrying random JSON, wrong types,
huge strings, deep nesting and random FHIR-like resources to the invoke and feedback endpoints
(never 5xx). Nothing may leave this machine: every outbound connection attempt is recorded and
must be to loopback.

Examples per test: ``IVIG_FUZZ_EXAMPLES`` (the knob shared with tests/test_protocol_fuzz.py; not
``IVIG_CDS_*``, which the settings loader owns), default 1500. For the issue's >= 10 000 run::

    IVIG_FUZZ_EXAMPLES=10000 .venv/bin/pytest tests/test_security_fuzz.py

Each test prints how many requests it sent, the statuses, and the number of 5xx.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import uuid
from collections import Counter
from typing import Any, Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hooks.data_needs import PREFETCH
from service.app import create_app
from service.storage.feedback import MemoryFeedbackStore
from tests.security_helpers import PATIENT_VIEW, bearer, claims, new_key, secure_settings, sign, trusted_issuer

FUZZ_EXAMPLES = int(os.environ.get("IVIG_FUZZ_EXAMPLES", "1500"))
FUZZ = settings(max_examples=FUZZ_EXAMPLES, deadline=None, database=None, print_blob=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.filter_too_much])
MAX_BODY = 200_000
SERVICES = [PATIENT_VIEW, "ivig-order-sign", "ivig-order-select"]
BASE = "http://localhost"


@pytest.fixture(scope="module")
def key():
    return new_key("ES384")


@pytest.fixture(scope="module")
def dead_port() -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused at once
        yield s.getsockname()[1]


@pytest.fixture(scope="module")
def outbound() -> Iterator[list]:
    """Record every outbound TCP connection of the process; tests assert they were all loopback."""
    attempts: list = []
    real_connect = socket.socket.connect

    def connect(self, address):
        attempts.append(address)
        return real_connect(self, address)

    socket.socket.connect = connect  # type: ignore[method-assign]
    try:
        yield attempts
    finally:
        socket.socket.connect = real_connect  # type: ignore[method-assign]


@pytest.fixture(scope="module")
def client(tmp_path_factory, key, dead_port, outbound):
    tmp = tmp_path_factory.mktemp("security-fuzz")
    app = create_app(secure_settings(tmp, [trusted_issuer(key)], **{
        "security.fhir_server_allowlist": [f"http://127.0.0.1:{dead_port}"],
        "limits.max_body_bytes": MAX_BODY,
        "limits.max_resources": 500,
        "prefetch.deadline_seconds": 0.5,
    }), store=MemoryFeedbackStore())
    yield app.test_client()
    app.extensions["ivig_cds"].close()
    assert all(addr[0] in ("127.0.0.1", "::1", "localhost") for addr in outbound), outbound


def report(capsys, what: str, statuses: Counter) -> None:
    server_errors = sum(n for status, n in statuses.items() if status >= 500)
    with capsys.disabled():
        print(f"\n[security fuzz] {what}: {sum(statuses.values())} requests, "
              f"{server_errors} with status 5xx, statuses {dict(sorted(statuses.items()))}")


# ------------------------------------------------------------------ strategies

scalars = (st.none() | st.booleans() | st.integers(-(2**70), 2**70)
           | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=30))
json_values = st.recursive(scalars, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=10), c, max_size=4),
                           max_leaves=20)
huge_strings = st.integers(1_000, 2 * MAX_BODY).map(lambda n: "\u00e9" * (n // 2))
deep = st.tuples(st.integers(2, 5_000), st.sampled_from(["list", "dict"])).map(
    lambda t: _nest(t[0], t[1]))

LOINC = ["2465-3", "2472-9", "2458-8", "2466-1", "29463-7", "not-a-code"]
codings = st.fixed_dictionaries({}, optional={
    "system": st.sampled_from(["http://loinc.org", "http://snomed.info/sct", "http://hl7.org/fhir/sid/cvx"]) | scalars,
    "code": st.sampled_from(LOINC) | scalars, "display": scalars})
resource = st.fixed_dictionaries(
    {"resourceType": st.sampled_from(["Patient", "Observation", "Condition", "MedicationRequest", "Encounter",
                                      "Immunization", "MedicationAdministration", "Procedure", "OperationOutcome",
                                      "Bundle", "Medication"]) | scalars},
    optional={
        "id": scalars, "status": st.sampled_from(["final", "active", "draft", "completed"]) | scalars,
        "code": st.fixed_dictionaries({}, optional={"coding": st.lists(codings, max_size=3) | scalars,
                                                    "text": scalars}) | scalars,
        "valueQuantity": st.fixed_dictionaries({}, optional={
            "value": st.floats(allow_nan=False, allow_infinity=False) | st.integers(-(2**64), 2**64) | scalars,
            "unit": st.sampled_from(["mg/dL", "g/L", "mg/L", "kg", "%"]) | scalars}) | scalars,
        "effectiveDateTime": st.sampled_from(["2025-01-01", "2025-13-40", "0001-01-01T00:00:00Z", "9999-12-31"])
        | st.datetimes().map(lambda d: d.isoformat()) | scalars,
        "birthDate": st.dates().map(str) | scalars,
        "subject": st.fixed_dictionaries({"reference": st.text(max_size=20) | scalars}) | scalars,
        "medicationCodeableConcept": json_values, "dosageInstruction": json_values, "extension": json_values,
    })
bundles = st.fixed_dictionaries({"resourceType": st.just("Bundle")}, optional={
    "type": st.sampled_from(["searchset", "collection"]) | scalars,
    "entry": st.lists(st.fixed_dictionaries({}, optional={"resource": resource | json_values}) | scalars, max_size=8)
    | scalars})
prefetch_values = st.none() | resource | bundles | json_values | huge_strings | deep
prefetch = st.dictionaries(st.sampled_from(sorted(PREFETCH)) | st.text(max_size=10), prefetch_values, max_size=6)


def _nest(depth: int, kind: str) -> Any:
    value: Any = "leaf"
    for _ in range(depth):
        value = [value] if kind == "list" else {"n": value}
    return value


HOOK_OF = {PATIENT_VIEW: "patient-view", "ivig-order-sign": "order-sign", "ivig-order-select": "order-select"}
valid_bundle = st.fixed_dictionaries({"resourceType": st.just("Bundle"), "entry": st.lists(
    st.fixed_dictionaries({"resource": resource}), max_size=5)})


@st.composite
def hook_bodies(draw, service_id: str) -> Any:
    """Mostly well-shaped envelopes for this service with random parts; sometimes anything at all."""
    if draw(st.integers(0, 9)) == 0:
        return draw(json_values | huge_strings | deep)
    well_formed = draw(st.integers(0, 3)) > 0
    hook = HOOK_OF.get(service_id, "patient-view") if well_formed else draw(
        st.sampled_from(["patient-view", "order-sign", "order-select"]) | scalars)
    context: Any = {"userId": "Practitioner/1", "patientId": draw(st.sampled_from(["p1", "Patient/p1"])),
                    "draftOrders": draw(valid_bundle), "selections": ["MedicationRequest/m1"]}
    if not well_formed:
        context = draw(st.fixed_dictionaries({}, optional={
            "userId": st.just("Practitioner/1") | scalars, "patientId": st.just("p1") | scalars | huge_strings,
            "encounterId": scalars, "selections": st.lists(st.text(max_size=20)) | json_values,
            "draftOrders": bundles | json_values}) | json_values)
    body = draw(st.fixed_dictionaries({"hook": st.just(hook), "context": st.just(context),
                                       "hookInstance": st.uuids().map(str) | scalars}, optional={
        "prefetch": prefetch | json_values,
        "fhirServer": st.sampled_from(["http://127.0.0.1:{port}/fhir", "http://169.254.169.254/",
                                       "https://evil.example/fhir", "file:///etc/passwd"]) | scalars,
        "fhirAuthorization": st.fixed_dictionaries({}, optional={
            "access_token": scalars, "token_type": scalars, "scope": scalars, "subject": scalars}) | scalars,
        "extension": json_values | deep,
    }))
    if well_formed and isinstance(body.get("hookInstance"), str) is False:
        body["hookInstance"] = str(uuid.uuid4())
    return body


feedback_bodies = st.one_of(
    json_values, huge_strings, deep,
    st.fixed_dictionaries({"feedback": st.lists(st.fixed_dictionaries({}, optional={
        "card": st.uuids().map(str) | scalars | huge_strings,
        "outcome": st.sampled_from(["accepted", "overridden"]) | scalars,
        "outcomeTimestamp": st.sampled_from(["2026-01-01T12:00:00.000Z", "0001-01-01T00:00:00+14:00"])
        | st.datetimes().map(lambda d: d.isoformat()) | scalars,
        "acceptedSuggestions": st.lists(st.fixed_dictionaries({"id": scalars})) | json_values,
        "overrideReason": st.fixed_dictionaries({}, optional={"reason": st.fixed_dictionaries(
            {}, optional={"code": scalars, "system": scalars}) | scalars, "userComment": scalars | huge_strings}),
    }) | json_values, max_size=5) | json_values}),
)


def _encode(body: Any, dead_port: int) -> bytes:
    raw = json.dumps(body, ensure_ascii=False) if not isinstance(body, str) else json.dumps(body)
    return raw.replace("{port}", str(dead_port)).encode()


# ------------------------------------------------------------------ tests


def test_fuzz_authenticated_invoke_and_feedback_never_5xx(client, key, dead_port, capsys):
    statuses: Counter = Counter()

    @FUZZ
    @given(st.data())
    def run(data) -> None:
        service_id = data.draw(st.sampled_from(SERVICES * 4 + ["no-such-service"]))
        to_feedback = data.draw(st.integers(0, 3)) == 0
        body = data.draw(feedback_bodies if to_feedback else hook_bodies(service_id))
        content_type = data.draw(st.sampled_from(["application/json"] * 8 + ["application/fhir+json", "text/plain"]))
        path = f"/cds-services/{service_id}" + ("/feedback" if to_feedback else "")
        token = sign(key, claims(BASE + path))
        try:
            data_bytes = _encode(body, dead_port)
        except RecursionError:  # json.dumps cannot write it; send the nesting as text instead
            data_bytes = b"[" * 5000 + b"]" * 5000
        resp = client.post(path, data=data_bytes, content_type=content_type, headers=bearer(token))
        statuses[resp.status_code] += 1
        assert resp.status_code < 500, (resp.status_code, resp.get_data(as_text=True)[:300])
        assert resp.status_code != 401, "a valid token was refused"
        assert resp.mimetype == "application/json"

    try:
        run()
    finally:
        report(capsys, "signed calls with random bodies", statuses)
    assert sum(statuses.values()) >= FUZZ_EXAMPLES
    assert not any(status >= 500 for status in statuses)


def _b64(value: Any) -> str:
    raw = value if isinstance(value, bytes) else json.dumps(value).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


@st.composite
def forged_tokens(draw, key) -> str:
    """JWT-shaped junk and near-misses of a valid token; none of them may pass."""
    kind = draw(st.integers(0, 4))
    if kind == 0:
        return draw(st.text(max_size=200))
    if kind == 1:
        parts = draw(st.lists(st.text(alphabet="ABCDEFabcdef0123456789-_=.", max_size=60), min_size=1, max_size=5))
        return ".".join(parts)
    header = draw(st.fixed_dictionaries({}, optional={
        "alg": st.sampled_from(["none", "HS256", "ES384", "RS384", "ES256", "PS384", "None", ""]) | scalars,
        "typ": st.sampled_from(["JWT", "jwt", "at+jwt"]) | scalars,
        "kid": st.just(key.kid) | scalars, "jku": scalars, "crit": json_values}))
    payload = draw(st.fixed_dictionaries({}, optional={
        "iss": st.just("https://ehr.test.example/") | scalars, "aud": scalars | st.lists(scalars),
        "exp": scalars, "iat": scalars, "nbf": scalars, "jti": scalars, "tenant": json_values}) | json_values)
    signature = draw(st.binary(max_size=120))
    if kind == 2:
        return f"{_b64(header)}.{_b64(payload)}.{_b64(signature)}"
    # a real signature over one payload, spliced onto another
    real = sign(key, claims(BASE + f"/cds-services/{PATIENT_VIEW}"))
    h, _, s = real.split(".")
    return f"{h if kind == 3 else _b64(header)}.{_b64(payload)}.{s}"


def test_fuzz_authorization_header_is_always_401(client, key, capsys):
    statuses: Counter = Counter()
    body = json.dumps({"hook": "patient-view", "hookInstance": str(uuid.uuid4()),
                       "context": {"userId": "Practitioner/1", "patientId": "p1"}})

    @FUZZ
    @given(st.one_of(
        forged_tokens(key).map(lambda t: f"Bearer {t}"),
        st.text(max_size=100),
        st.tuples(st.sampled_from(["Basic", "bearer", "Bearer", "BEARER", "Token", ""]), st.text(max_size=50))
        .map(lambda p: f"{p[0]} {p[1]}"),
    ), st.sampled_from([f"/cds-services/{s}" for s in SERVICES] + [f"/cds-services/{PATIENT_VIEW}/feedback"]))
    def run(authorization: str, path: str) -> None:
        try:
            headers = {"Authorization": authorization}
            resp = client.post(path, data=body, content_type="application/json", headers=headers)
        except ValueError:  # werkzeug refuses header values with newlines before sending: not a request
            return
        statuses[resp.status_code] += 1
        assert resp.status_code == 401, (resp.status_code, authorization[:200])
        assert resp.headers["WWW-Authenticate"].startswith("Bearer ")

    try:
        run()
    finally:
        report(capsys, "forged Authorization headers", statuses)
    assert statuses[401] >= FUZZ_EXAMPLES * 0.9
