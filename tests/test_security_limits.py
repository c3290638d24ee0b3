"""Limits at the edge (body size, JSON depth, resources per request) and the fhirServer allowlist (SSRF)."""

from __future__ import annotations

import io
import json
import socket

import pytest
import requests

from hooks.data_needs import PREFETCH
from service.app import create_app
from service.feedback import MemoryFeedbackStore
from service.guards import count_resources
from tests.conftest import make_settings
from tests.security_helpers import PATIENT_VIEW, json_server, patient_view_body
from tests.servers import live_app

HOOK = f"/cds-services/{PATIENT_VIEW}"


def observations(n: int) -> dict:
    return {"resourceType": "Bundle", "type": "searchset",
            "entry": [{"resource": {"resourceType": "Observation", "id": f"o{i}", "status": "final"}}
                      for i in range(n)]}


# ---------------------------------------------------------------- resources per request


def test_resource_count_limit(make_client):
    client = make_client(**{"limits.max_resources": 50})
    body = patient_view_body()
    body["prefetch"]["immunoglobulins"] = observations(47)  # + the Bundle + the Patient = 49
    assert client.post(HOOK, json=body).status_code != 413
    body["prefetch"]["immunoglobulins"] = observations(48)  # 50: at the limit
    assert client.post(HOOK, json=body).status_code != 413
    body["prefetch"]["immunoglobulins"] = observations(49)  # 51
    resp = client.post(HOOK, json=body)
    assert resp.status_code == 413
    assert "more than 50 FHIR resources" in resp.get_json()["message"]


def test_draft_orders_count(make_client):
    client = make_client(**{"limits.max_resources": 10})
    bundle = {"resourceType": "Bundle", "entry": [
        {"resource": {"resourceType": "MedicationRequest", "id": f"m{i}", "status": "draft"}} for i in range(20)]}
    body = {"hook": "order-sign", "hookInstance": "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea",
            "context": {"userId": "Practitioner/1", "patientId": "p1", "draftOrders": bundle}}
    assert client.post("/cds-services/ivig-order-sign", json=body).status_code == 413


def test_count_resources_counts_nested_and_stops_early():
    nested = {"resourceType": "Bundle", "entry": [{"resource": {"resourceType": "Patient",
                                                                "contained": [{"resourceType": "Organization"}]}}]}
    assert count_resources([nested], 100) == 3
    assert count_resources([{"resourceType": 5}, "x", None, [[{"resourceType": "A"}]]], 100) == 1
    assert count_resources([observations(10_000)], 10) == 11


# ---------------------------------------------------------------- body size and JSON depth


def test_body_too_large(make_client):
    client = make_client(**{"limits.max_body_bytes": 2048})
    body = patient_view_body()
    body["prefetch"]["patient"]["text"] = {"div": "x" * 4000}
    resp = client.post(HOOK, data=json.dumps(body), content_type="application/json")
    assert resp.status_code == 413


def test_chunked_body_too_large_on_a_real_server(tmp_path):
    app = create_app(make_settings(tmp_path, **{"limits.max_body_bytes": 4096}), store=MemoryFeedbackStore())
    body = json.dumps(patient_view_body(filler="y" * 10_000)).encode()

    def chunks():
        for i in range(0, len(body), 1000):
            yield body[i:i + 1000]

    with live_app(app) as base:
        resp = requests.post(base + HOOK, data=chunks(), headers={"Content-Type": "application/json"}, timeout=10)
    assert resp.status_code == 413
    app.extensions["ivig_cds"].close()


def test_a_body_shorter_than_its_content_length_is_400(make_client):
    client = make_client()
    data = json.dumps(patient_view_body()).encode()
    resp = client.post(HOOK, input_stream=io.BytesIO(data[:-10]), content_type="application/json",
                       environ_overrides={"CONTENT_LENGTH": str(len(data))})
    assert resp.status_code == 400
    assert "Content-Length" in resp.get_json()["message"]


def test_chunked_body_within_the_limit_on_a_real_server(tmp_path):
    """No Content-Length (chunked): read through werkzeug's limited stream, and answered."""
    app = create_app(make_settings(tmp_path), store=MemoryFeedbackStore())
    body = json.dumps(patient_view_body()).encode()
    with live_app(app) as base:
        resp = requests.post(base + HOOK, data=(body[i:i + 1000] for i in range(0, len(body), 1000)),
                             headers={"Content-Type": "application/json"}, timeout=10)
    app.extensions["ivig_cds"].close()
    assert resp.status_code == 200, resp.text[:300]
    assert "cards" in resp.json()


def nest(depth: int) -> dict:
    value: object = 1
    for i in range(depth - 1):
        value = [value] if i % 2 else {"a": value}
    return {"deep": value}


def test_json_depth_limit(make_client):
    client = make_client(**{"limits.max_json_depth": 40})
    ok = patient_view_body(extension={"x": nest(30)})
    assert client.post(HOOK, json=ok).status_code == 200
    too_deep = patient_view_body(extension={"x": nest(60)})
    resp = client.post(HOOK, json=too_deep)
    assert resp.status_code == 400
    assert "nests deeper than 40" in resp.get_json()["message"]


def test_json_nesting_beyond_the_parser_limit(make_client):
    client = make_client()
    raw = "[" * 100_000 + "]" * 100_000
    resp = client.post(HOOK, data=raw, content_type="application/json")
    assert resp.status_code == 400
    resp = client.post(HOOK + "/feedback", data='{"feedback": ' + raw + "}", content_type="application/json")
    assert resp.status_code == 400


# ---------------------------------------------------------------- fhirServer allowlist (SSRF)


def complete_body(**extra):
    """A patient-view call that brings every prefetch key the service declares."""
    body = patient_view_body(**extra)
    for key in PREFETCH:
        body["prefetch"].setdefault(key, {"resourceType": "Bundle", "type": "searchset", "entry": []})
    return body


@pytest.mark.parametrize("fhir_server", [
    "http://169.254.169.254/latest/meta-data",  # cloud metadata
    "http://10.0.0.5/fhir",
    "https://fhir.other-hospital.example/r4",
    "https://user:pw@fhir.hospital.example/r4",
    "http://fhir.hospital.example/r4",  # right host, wrong scheme
    "https://fhir.hospital.example:8443/r4",  # wrong port
    "https://fhir.hospital.example/other",  # outside the path prefix
])
def test_fhir_server_off_the_allowlist_is_refused(make_client, fhir_server):
    """Every prefetch key is sent, so nothing would be fetched: the invoke path itself must refuse."""
    client = make_client(**{"security.fhir_server_allowlist": ["https://fhir.hospital.example/r4"]})
    body = complete_body(fhirServer=fhir_server)
    assert client.post(HOOK, json=complete_body(fhirServer="https://fhir.hospital.example/r4")).status_code == 200
    resp = client.post(HOOK, json=body)
    assert resp.status_code == 400
    assert "fhirServer is not allowed" in resp.get_json()["message"]


def test_fhir_server_refused_before_anything_contacts_it(tmp_path):
    """The request brings no prefetch, so a fetch would be needed: the server must see nothing."""
    with json_server({"resourceType": "Bundle", "type": "searchset", "entry": []}) as fhir:
        settings = make_settings(tmp_path, **{"security.fhir_server_allowlist": ["https://fhir.hospital.example/*"]})
        app = create_app(settings, store=MemoryFeedbackStore())
        body = patient_view_body(fhirServer=fhir.url + "/fhir",
                                 fhirAuthorization={"access_token": "tok", "token_type": "Bearer",
                                                    "expires_in": 300, "scope": "patient/*.read", "subject": "x"})
        body.pop("prefetch")
        resp = app.test_client().post(HOOK, json=body)
        assert resp.status_code == 400
        assert fhir.hits == []
        app.extensions["ivig_cds"].close()


def test_fhir_server_on_the_allowlist_is_accepted(make_client):
    client = make_client(**{"security.fhir_server_allowlist": ["https://fhir.hospital.example/r4"]})
    body = patient_view_body(fhirServer="https://fhir.hospital.example/r4/")
    assert client.post(HOOK, json=body).status_code == 200  # complete prefetch: nothing is fetched


def test_development_default_allows_loopback_and_https_only(make_client):
    client = make_client()
    with socket.socket() as s:  # a closed loopback port: allowed, nothing fetched (complete prefetch)
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert client.post(HOOK, json=patient_view_body(fhirServer=f"http://127.0.0.1:{port}/fhir")).status_code == 200
    assert client.post(HOOK, json=patient_view_body(fhirServer="http://192.168.1.10/fhir")).status_code == 400


def test_byte_level_bound_never_lets_too_many_resources_through():
    """The fast path skips the walk only when the key text itself is rare enough."""
    import orjson

    from service.errors import PayloadTooLarge
    from service.guards import check_resource_count

    body = {"prefetch": {"labs": observations(49)}}  # 49 Observations + their Bundle = 50
    check_resource_count(body, 50, orjson.dumps(body))  # exactly at the limit: fine
    try:
        check_resource_count(body, 49, orjson.dumps(body))
    except PayloadTooLarge:
        pass
    else:  # pragma: no cover - the assertion
        raise AssertionError("50 resources passed a limit of 49")
    # text that merely mentions "resourceType" makes the bound loose, never wrong: the walk decides
    chatty = {"prefetch": {"labs": observations(3)}, "extension": {"note": ['"resourceType"'] * 100}}
    check_resource_count(chatty, 10, orjson.dumps(chatty))
