"""``ivig-cds load-fixtures``: the transaction it posts, and its one-line errors.

The FHIR server is ``LocalFhir`` on 127.0.0.1 (it stores transaction PUTs and answers with a
transaction-response); faults are its scripted answers or a port with nothing listening.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from datetime import date, timedelta

import pytest

import fhir_fixtures
from fhir_fixtures import REFERENCE_TODAY
from service.governance.load_fixtures import LoadFixturesError, run_load_fixtures
from tests.servers import free_port
from tests.smart_support import LocalFhir

SAMPLES = ["sample-hyper-igm", "sample-igg-deficiency", "sample-impaired-ppsv23", "sample-isolated-igm",
           "sample-on-ivig-low-trough"]
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}")


def _cli(*args: str) -> subprocess.CompletedProcess:
    exe = os.path.join(os.path.dirname(sys.executable), "ivig-cds")
    env = {k: v for k, v in os.environ.items() if not k.startswith("IVIG_CDS_")}
    return subprocess.run([exe, "load-fixtures", *args], capture_output=True, text=True, timeout=120, env=env)


def _dates(value, path="") -> dict[str, str]:
    """path -> date-like string, for every date/dateTime in a JSON tree."""
    out: dict[str, str] = {}
    if isinstance(value, dict):
        for k, v in value.items():
            out.update(_dates(v, f"{path}/{k}"))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out.update(_dates(v, f"{path}/{i}"))
    elif isinstance(value, str) and _DATE.match(value):
        out[path] = value
    return out


def _raw_transaction() -> dict:
    from importlib import resources

    return json.loads(resources.files("fhir_fixtures").joinpath(fhir_fixtures.SAMPLE_TRANSACTION).read_text())


def test_cli_posts_the_sample_transaction_with_dates_moved_to_today():
    as_of = date(2027, 3, 9)
    with LocalFhir(require_token=False) as fhir:
        result = _cli("--fhir-server", fhir.base + "/", "--today", as_of.isoformat(), "--token", "s3cr3t-token")
    assert result.returncode == 0, result.stderr
    out = result.stdout.strip()
    assert "\n" not in out and "loaded 5 sample patients (228 resources: 228 created, 0 updated)" in out, out
    assert all(name in out for name in SAMPLES) and "s3cr3t-token" not in out + result.stderr

    posts = [s for s in fhir.seen if s.method == "POST"]
    assert len(posts) == 1
    post = posts[0]
    assert post.path == "/fhir"  # the base URL: a transaction is POSTed to the server's root
    assert post.headers["Content-Type"] == "application/fhir+json"
    assert post.headers["Authorization"] == "Bearer s3cr3t-token"
    bundle = json.loads(post.body)
    assert bundle["resourceType"] == "Bundle" and bundle["type"] == "transaction"
    raw = _raw_transaction()
    assert len(bundle["entry"]) == len(raw["entry"]) == 228
    for entry in bundle["entry"]:
        r = entry["resource"]
        assert entry["request"] == {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"}
    assert sorted(r["id"] for r in (e["resource"] for e in bundle["entry"]) if r["resourceType"] == "Patient") == SAMPLES

    # every date moved by the same number of days, so "6 weeks ago" stays 6 weeks before today
    shift = (as_of - REFERENCE_TODAY).days
    before, after = _dates(raw), _dates(bundle)
    assert before.keys() == after.keys() and len(before) > 200
    for path, old in before.items():
        assert date.fromisoformat(after[path][:10]) - date.fromisoformat(old[:10]) == timedelta(days=shift), path
        assert after[path][10:] == old[10:], path  # times and zones untouched


def test_loading_twice_updates_instead_of_duplicating():
    with LocalFhir(require_token=False) as fhir:
        first = run_load_fixtures(fhir.base, today=date(2026, 12, 1))
        second = run_load_fixtures(fhir.base, today=date(2026, 12, 2))
        assert "228 created, 0 updated" in first and "0 created, 228 updated" in second
        assert len(fhir.resources) == 228
        igg = fhir.resources[("Observation", "sample-igg-deficiency-igg-2")]
    raw = next(e["resource"] for e in _raw_transaction()["entry"] if e["resource"]["id"] == igg["id"])
    moved = date.fromisoformat(raw["effectiveDateTime"][:10]) + (date(2026, 12, 2) - REFERENCE_TODAY)
    assert igg["effectiveDateTime"][:10] == moved.isoformat()  # the second load's dates won


def test_loaded_patients_are_today_relative_for_the_service():
    """The loaded record, read back, gives the cards its sample is meant to show (dates fit today)."""
    from hooks.config import DEFAULT_CONFIG
    from hooks.engine import evaluate_patient

    today = date(2027, 6, 30)
    with LocalFhir(require_token=False) as fhir:
        run_load_fixtures(fhir.base, today=today)
        stored = list(fhir.resources.values())
    for name in SAMPLES:
        record = [r for r in stored if r.get("id") == name or r.get("subject", r.get("patient", {})).get(
            "reference") == f"Patient/{name}"]
        ev = evaluate_patient([record], patient_id=name, today=today, config=DEFAULT_CONFIG)
        reference = fhir_fixtures.load_scenario(name, today)
        ref_ev = evaluate_patient([reference["bundle"]], patient_id=name, today=today, config=DEFAULT_CONFIG)
        assert ev.trace()["decision"] == ref_ev.trace()["decision"] is not None, name


def _oo(text: str) -> bytes:
    return json.dumps({"resourceType": "OperationOutcome",
                       "issue": [{"severity": "error", "code": "processing", "diagnostics": text}]}).encode()


@pytest.mark.parametrize("reply, message", [
    (lambda b: (400, _oo("Invalid resource:\n  Observation.status is required"), "application/fhir+json"),
     r"rejected the transaction: HTTP 400: Invalid resource: Observation\.status is required$"),
    (lambda b: (404, b"<html>Not Found</html>", "text/html"), r"HTTP 404 \(is this the FHIR base URL of an R4 server\?\)"),
    (lambda b: (401, _oo("no token"), "application/fhir+json"), r"refused the transaction \(HTTP 401\): .*pass --token"),
    (lambda b: (200, b"<html>welcome</html>", "text/html"), r"not with a FHIR Bundle"),
    (lambda b: (200, json.dumps({"resourceType": "Bundle", "type": "transaction-response", "entry": [
        {"response": {"status": "201 Created"}}] * (len(b["entry"]) - 1) + [
        {"response": {"status": "422 Unprocessable Entity", "outcome": json.loads(_oo("bad code"))}}]}).encode(),
        "application/fhir+json"), r"did not store every resource: 1 of 228 failed .*: bad code$"),
    (lambda b: (302, b"", "text/plain"), r"redirect \(HTTP 302\)"),
])
def test_server_errors_are_one_clear_line(reply, message):
    with LocalFhir(require_token=False, transaction_reply=reply) as fhir:
        with pytest.raises(LoadFixturesError) as caught:
            run_load_fixtures(fhir.base, token=None)
    text = caught.value.message
    assert "\n" not in text and re.search(message, text), text
    assert text.startswith(fhir.base)


def test_cli_error_exit_and_message_when_nothing_listens():
    url = f"http://127.0.0.1:{free_port()}/fhir"
    result = _cli("--fhir-server", url, "--token", "s3cr3t-token")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert lines == [f"Error: cannot connect to {url}: is the FHIR server running and the URL right?"], result.stderr
    assert "s3cr3t-token" not in result.stderr + result.stdout


@pytest.mark.parametrize("url, message", [
    ("ftp://127.0.0.1/fhir", "must be an http(s) URL"),
    ("127.0.0.1:8080/fhir", "must be an http(s) URL"),
    ("http://user:pw@127.0.0.1/fhir", "must not carry credentials"),
    ("http://127.0.0.1/fhir?x=1", "without query"),
])
def test_bad_urls_are_refused_before_any_request(url, message):
    with pytest.raises(LoadFixturesError, match=re.escape(message)):
        run_load_fixtures(url)


def test_timeout_is_a_clear_error(monkeypatch):
    """Fault injection: a server that never answers; the read timeout is shortened for the test."""
    import threading
    import service.governance.load_fixtures as lf

    release = threading.Event()

    def hang(bundle):
        release.wait(10)
        return 200, b"{}", "application/json"

    monkeypatch.setattr(lf, "TIMEOUT", (2.0, 0.5))
    with LocalFhir(require_token=False, transaction_reply=hang) as fhir:
        try:
            with pytest.raises(LoadFixturesError, match=r"did not answer within 0\.5 s"):
                run_load_fixtures(fhir.base)
        finally:
            release.set()
