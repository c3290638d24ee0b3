"""Limits at the edge (body size, JSON depth, resources per request) and the fhirServer allowlist (SSRF)."""

from __future__ import annotations

import io
import json
import socket
from typing import Iterator

import pytest
import requests

from hooks.data_needs import PREFETCH
from service.app import create_app
from service.protocol.guards import count_resources
from service.storage.feedback import MemoryFeedbackStore
from tests.conftest import make_settings
from tests.security_helpers import PATIENT_VIEW, json_server, patient_view_body
from tests.servers import live_app

HOOK = f"/cds-services/{PATIENT_VIEW}"


@pytest.fixture(autouse=True)
def _default_limits_afterwards():
    """The limits an app applies are process-wide (body budget, resource size, resource cache):
    put the defaults back, so that tests after these do not run under a test's small bounds."""
    yield
    from service.protocol.guards import configure
    from service.settings import LimitSettings

    configure(LimitSettings())


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
    from service.protocol.guards import check_resource_count

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


@pytest.mark.parametrize("resources, limit, too_many", [(5, 5, False), (6, 5, True), (40, 39, True)])
def test_length_bound_holds_for_the_tightest_resources(resources: int, limit: int, too_many: bool):
    """A body too short to hold more resources than the limit is not counted at all: the bound
    must hold for the shortest text a counted resource can have, written as tightly as JSON allows."""
    import orjson

    from service.errors import PayloadTooLarge
    from service.protocol.guards import check_resource_count

    body = {"prefetch": {"x": [{"resourceType": ""}] * resources}}
    raw = orjson.dumps(body)  # no spaces: {"prefetch":{"x":[{"resourceType":""},...]}}
    if too_many:
        with pytest.raises(PayloadTooLarge):
            check_resource_count(body, limit, raw)
    else:
        check_resource_count(body, limit, raw)


# ---------------------------------------------------------------- under gunicorn: its own limits answer in JSON


def _send_whole_then_read(url: str, body: bytes | Iterator[bytes], **headers: str) -> tuple[int, dict[str, str], bytes]:
    """POST as urllib does: the whole body is sent before the answer is read. A server that
    answers early and closes the connection with the body unread makes such a client fail
    (broken pipe, reset) instead of reading the answer."""
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url, data=body, method="POST",
                                     headers={"Content-Type": "application/json", **headers})
    try:
        with urllib.request.urlopen(request, timeout=60) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()
    except urllib.error.URLError as err:
        raise AssertionError(f"no answer read: {err.reason}") from None


@pytest.mark.slow
def test_gunicorn_answers_oversized_tokens_headers_and_bodies_in_json(tmp_path):
    from tests.deploy_support import ROOT, VENV_BIN, clean_env, run_server
    from tests.servers import free_port

    port = free_port()
    env = clean_env({"IVIG_CDS_DATA_DIR": str(tmp_path / "data"), "IVIG_CDS_PORT": str(port),
                     "IVIG_CDS_PROFILE": "sandbox", "IVIG_CDS_LIMITS_MAX_BODY_BYTES": str(1024 * 1024),
                     "WEB_CONCURRENCY": "1", "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "prometheus")})
    cmd = [str(VENV_BIN / "gunicorn"), "-c", str(ROOT / "deploy" / "gunicorn.conf.py")]
    with run_server(cmd, env, tmp_path / "cwd", port, tmp_path / "gunicorn.log") as server:
        hook = f"{server.base}{HOOK}"
        # a 17 KB bearer token passes gunicorn and is refused as a token
        resp = requests.post(hook, json=patient_view_body(), headers={"Authorization": "Bearer " + "a" * 17_000},
                             timeout=30)
        assert resp.status_code == 401
        assert resp.json()["error"] == "unauthorized" and resp.headers["WWW-Authenticate"].startswith("Bearer")
        # past gunicorn's own limits: JSON, not its HTML page
        for headers, url, status, error in (
                ({"Authorization": "Bearer " + "a" * 40_000}, hook, 431, "request_header_fields_too_large"),
                ({"X-Padding": "p" * 40_000}, f"{server.base}/cds-services", 431, "request_header_fields_too_large"),
                ({}, f"{server.base}/cds-services?" + "q" * 5000, 414, "uri_too_long")):
            resp = requests.post(url, json=patient_view_body(), headers=headers, timeout=30)
            assert resp.status_code == status, resp.text[:300]
            assert resp.headers["Content-Type"] == "application/json"
            assert resp.json()["error"] == error and "<html" not in resp.text
            assert "aaaa" not in resp.text and "pppp" not in resp.text
        # refused before its body is read (no valid token): the body is drained, the 401 arrives
        big = b'{"hook": "patient-view", "x": "' + b"z" * (10 * 1024 * 1024) + b'"}'
        for headers in ({}, {"Authorization": "Bearer " + "t" * 100}):
            status, answer_headers, payload = _send_whole_then_read(hook, big, **headers)
            assert status == 401 and answer_headers["Content-Type"] == "application/json"
            assert json.loads(payload)["error"] == "unauthorized"
        assert server.stop() == 0
    assert "Traceback" not in server.log()


@pytest.mark.slow
def test_gunicorn_answers_a_body_past_the_limit_413_in_json(tmp_path):
    from tests.deploy_support import ROOT, VENV_BIN, clean_env, run_server
    from tests.servers import free_port

    port = free_port()
    env = clean_env({"IVIG_CDS_DATA_DIR": str(tmp_path / "data"), "IVIG_CDS_PORT": str(port),
                     "IVIG_CDS_LIMITS_MAX_BODY_BYTES": str(1024 * 1024), "WEB_CONCURRENCY": "1",
                     "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "prometheus")})
    cmd = [str(VENV_BIN / "gunicorn"), "-c", str(ROOT / "deploy" / "gunicorn.conf.py")]
    with run_server(cmd, env, tmp_path / "cwd", port, tmp_path / "gunicorn.log") as server:
        big = json.dumps(patient_view_body(filler="z" * (10 * 1024 * 1024))).encode()
        status, headers, payload = _send_whole_then_read(server.base + HOOK, big)
        assert status == 413 and headers["Content-Type"] == "application/json"
        answer = json.loads(payload)
        assert answer["error"] == "payload_too_large" and "limits.max_body_bytes" in answer["message"]
        # chunked, no length announced: cut at the limit, the rest drained, the same answer
        status, _, payload = _send_whole_then_read(server.base + HOOK, (big[i:i + 65536] for i in range(0, len(big), 65536)))
        assert status == 413 and json.loads(payload)["error"] == "payload_too_large"
        # and the worker still answers
        assert requests.post(server.base + HOOK, json=patient_view_body(), timeout=30).status_code == 200
        assert server.stop() == 0


# ---------------------------------------------------------------- what one worker works on at once


def _igg(i: int, patient: str = "pat-1", **extra) -> dict:
    return {"resourceType": "Observation", "id": f"igg-{i}", "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "2465-3"}]},
            "subject": {"reference": f"Patient/{patient}"}, "effectiveDateTime": "2026-01-10",
            "valueQuantity": {"value": 300 + i, "unit": "mg/dL", "system": "http://unitsofmeasure.org",
                              "code": "mg/dL"}, **extra}


def test_a_call_waits_for_the_workers_body_budget_then_is_told_to_retry(make_client, monkeypatch):
    import threading
    import time

    from service.protocol import jsonbody

    monkeypatch.setattr(jsonbody, "BODY_WAIT_SECONDS", 0.3)
    client = make_client(**{"limits.max_body_bytes": 60_000, "limits.worker_body_bytes": 100_000})
    body = json.dumps(patient_view_body()).encode()
    assert jsonbody.BODIES.capacity == 100_000
    assert jsonbody.BODIES.acquire(99_900, 0)  # another call's large body is being worked on
    try:
        began = time.monotonic()
        busy = client.post(HOOK, data=body, content_type="application/json")
        assert busy.status_code == 503 and busy.headers["Retry-After"] == "2"
        assert busy.get_json()["error"] == "unavailable" and "large requests" in busy.get_json()["message"]
        assert time.monotonic() - began >= 0.3
        # when the other finishes within the wait, the call goes through
        threading.Timer(0.1, jsonbody.BODIES.release, args=(99_900,)).start()
        assert client.post(HOOK, data=body, content_type="application/json").status_code == 200
    finally:
        if jsonbody.BODIES.in_use >= 99_900:
            jsonbody.BODIES.release(99_900)
    assert jsonbody.BODIES.in_use == 0


def test_a_body_alone_always_fits_and_every_answer_gives_its_bytes_back(make_client):
    from service.protocol import jsonbody

    client = make_client(**{"limits.max_body_bytes": 50_000, "limits.worker_body_bytes": 50_000})
    ok = patient_view_body()
    ok["prefetch"]["immunoglobulins"] = {"resourceType": "Bundle", "type": "searchset",
                                         "entry": [{"resource": _igg(i)} for i in range(130)]}
    raw = json.dumps(ok).encode()
    assert 40_000 < len(raw) <= 50_000
    calls = [
        (HOOK, raw, 200),
        (HOOK, b'{"hook": "patient-view", ', 400),  # not JSON
        (HOOK, json.dumps({"hook": "patient-view"}).encode(), 400),  # not a request
        (HOOK, b'{"a": "' + b"x" * 60_000 + b'"}', 413),
        (HOOK + "/feedback", json.dumps({"feedback": []}).encode(), 400),
    ]
    for url, data, status in calls:
        assert client.post(url, data=data, content_type="application/json").status_code == status, url
        assert jsonbody.BODIES.in_use == 0, (url, status)


def test_a_body_larger_than_the_workers_budget_is_refused_at_start():
    from service.settings import ConfigError, load_settings

    with pytest.raises(ConfigError, match="max_body_bytes .* must not exceed worker_body_bytes"):
        load_settings(environ={"IVIG_CDS_LIMITS_MAX_BODY_BYTES": str(8 * 1024 * 1024)})


@pytest.mark.parametrize("cache_entries", [4000, 0])  # with the cache on, and off as by default
def test_one_resource_too_large_to_read_is_skipped_and_named_not_validated_nor_kept(make_app, cache_entries):
    app = make_app(**{"limits.max_resource_bytes": 8192, "limits.resource_cache_entries": cache_entries})
    client = app.test_client()
    MODEL_CACHE = app.extensions["ivig_cds"].models  # the app's own cache
    huge = _igg(1, components=[{"code": {"text": f"part {j}"}, "valueQuantity": {"value": j}} for j in range(300)])
    assert len(json.dumps(huge)) > 8192
    body = patient_view_body()
    body["prefetch"]["immunoglobulins"] = {"resourceType": "Bundle", "type": "searchset",
                                           "entry": [{"resource": _igg(0)}, {"resource": huge}]}
    before = len(MODEL_CACHE)
    resp = client.post(HOOK, json=body)
    assert resp.status_code == 200
    text = json.dumps(resp.get_json())
    assert "too large to read" in text and "at most 8 KB" in text  # the card says what could not be used
    assert len(MODEL_CACHE) <= before + 2  # the Patient and the small result, not the large one
    assert all(len(key) <= 8192 for key in list(MODEL_CACHE._data))


def test_the_cache_of_validated_resources_is_bounded_in_bytes(make_app):
    app = make_app(**{"limits.resource_cache_bytes": 20_000, "limits.resource_cache_entries": 4000})
    client = app.test_client()
    MODEL_CACHE = app.extensions["ivig_cds"].models  # each app reads through its own cache
    for n in range(5):
        body = patient_view_body(patient_id=f"cache-{n}")
        body["prefetch"]["immunoglobulins"] = {"resourceType": "Bundle", "type": "searchset", "entry": [
            {"resource": _igg(i, f"cache-{n}")} for i in range(40)]}
        assert client.post(HOOK, json=body).status_code == 200
    assert MODEL_CACHE.max_weight == 20_000
    assert 0 < MODEL_CACHE.weight <= 20_000
    assert sum(len(key) for key in list(MODEL_CACHE._data)) == MODEL_CACHE.weight
