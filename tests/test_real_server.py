"""The service on a real socket: what an EHR or the sandbox actually talks to.

Flask's test client skips the HTTP server (chunked bodies, Content-Length, connection handling);
these tests call the real app on 127.0.0.1 with ``requests``, run the shared black-box
conformance check against it, and start ``ivig-cds serve`` as a real process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest
import requests

from service.app import create_app
from service.settings import LimitSettings
from tests.conftest import REFERENCE, SHARED, make_settings
from tests.servers import cli_server, live_app
from tests.test_protocol import (DEFINITION, HOOKS, NEEDS_SHARED, SERVICE_ID, SPEC, empty_values, loopback_only,
                                 valid_request)

CONFORMANCE = SHARED / "checks" / "cds_conformance.py"
TIMEOUT = 30


def _no_proxy_env() -> dict[str, str]:
    """The caller's environment without proxy settings: 127.0.0.1 must be reached directly."""
    return {k: v for k, v in os.environ.items() if k.lower() not in ("http_proxy", "https_proxy", "all_proxy")}


@pytest.fixture
def http() -> Iterator[requests.Session]:
    session = requests.Session()
    session.trust_env = False  # no proxy from the environment for loopback calls
    with session:
        yield session


@pytest.fixture(autouse=True)
def no_outside_network() -> Iterator[None]:
    with loopback_only() as attempts:
        yield
    assert attempts == [], f"something tried to reach outside this machine: {attempts}"


@pytest.fixture
def serve(tmp_path) -> Iterator:
    """Start the real app (default settings and store, data in tmp) on a free loopback port."""
    stack: list = []

    def start(**overrides) -> str:
        app = create_app(make_settings(tmp_path / f"app{len(stack)}", **overrides))
        context = live_app(app)
        base = context.__enter__()
        stack.append((app, context))
        return base

    yield start
    for app, context in reversed(stack):
        context.__exit__(None, None, None)
        app.extensions["ivig_cds"].close()


def _assert_card_response(resp: requests.Response) -> dict:
    assert resp.status_code == 200, resp.text[:500]
    assert resp.headers["Content-Type"].startswith("application/json")
    body = resp.json()
    assert isinstance(body.get("cards"), list) and empty_values(body) == []
    return body


def test_discovery_and_hook_calls_over_http(serve, http):
    base = serve()
    resp = http.get(f"{base}/cds-services", timeout=TIMEOUT, headers={"Origin": "https://sandbox.cds-hooks.org"})
    assert resp.status_code == 200
    assert resp.headers["Content-Type"].startswith("application/json")
    assert resp.headers.get("Access-Control-Allow-Origin") == "*"
    services = resp.json()["services"]
    assert sorted(s["hook"] for s in services) == sorted(HOOKS)
    for service in services:
        call = http.post(f"{base}/cds-services/{service['id']}", json=valid_request(service["hook"]), timeout=TIMEOUT)
        _assert_card_response(call)
        feedback = http.post(f"{base}/cds-services/{service['id']}/feedback", timeout=TIMEOUT, json={"feedback": [
            {"card": "4e0a3a1e-3283-4575-ab82-028d55fe2719", "outcome": "overridden",
             "outcomeTimestamp": "2026-01-01T12:00:00.000Z"}]})
        assert feedback.status_code == 200, feedback.text


def test_spec_order_sign_example_over_http(serve, http):
    """The spec's order-sign request orders no immune globulin: 200 and no cards, over a real socket."""
    if not SPEC.is_dir():
        pytest.skip(NEEDS_SHARED)
    base = serve()
    body = json.loads((SPEC / "request-order-sign.json").read_text(encoding="utf-8"))
    resp = http.post(f"{base}/cds-services/{SERVICE_ID['order-sign']}", json=body, timeout=TIMEOUT)
    assert _assert_card_response(resp) == {"cards": []}


def test_patient_view_without_data_is_412_over_http(serve, http):
    base = serve()
    resp = http.post(f"{base}/cds-services/{SERVICE_ID['patient-view']}",
                     json=valid_request("patient-view", prefetch=False), timeout=TIMEOUT)
    assert resp.status_code == 412
    details = resp.json()["details"]
    for key in DEFINITION["patient-view"].required_prefetch:
        assert any(f"prefetch.{key}" in d for d in details), details


def _chunks(total: int, size: int = 64 * 1024) -> Iterator[bytes]:
    """A JSON body of ``total`` bytes, sent with Transfer-Encoding: chunked (no Content-Length)."""
    yield b'{"pad": "'
    left = total - len(b'{"pad": "') - len(b'"}')
    while left > 0:
        yield b"x" * min(size, left)
        left -= size
    yield b'"}'


@pytest.mark.parametrize("limit", [4096, None], ids=["small", "default"])
def test_too_large_bodies_are_413_over_http(serve, http, limit):
    base = serve(**{"limits.max_body_bytes": limit}) if limit else serve()
    limit = limit or LimitSettings().max_body_bytes
    url = f"{base}/cds-services/{SERVICE_ID['order-sign']}"
    headers = {"Content-Type": "application/json"}
    for data in (b"".join(_chunks(limit + 1)), _chunks(limit + 1), _chunks(limit + 1024 * 1024)):
        resp = http.post(url, data=data, headers=headers, timeout=TIMEOUT)
        assert resp.status_code == 413, resp.text[:300]
        assert resp.json()["error"] == "payload_too_large"
    # exactly at the limit, streamed: read whole, and judged as a (here: invalid) CDS request
    resp = http.post(url, data=_chunks(limit), headers=headers, timeout=TIMEOUT)
    assert resp.status_code == 400 and "hook" in json.dumps(resp.json()["details"])


def test_cors_preflight_over_http(serve, http):
    base = serve()
    resp = http.options(f"{base}/cds-services/{SERVICE_ID['order-sign']}", timeout=TIMEOUT, headers={
        "Origin": "https://sandbox.cds-hooks.org", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type"})
    assert resp.status_code == 204
    assert resp.headers["Access-Control-Allow-Origin"] == "*"
    allowed = resp.headers["Access-Control-Allow-Headers"].lower()
    assert "authorization" in allowed and "content-type" in allowed


@pytest.mark.slow
def test_shared_conformance_check_passes(serve):
    """The outer contract's black-box check (stdlib only) against the real app on a real port."""
    if not CONFORMANCE.is_file() or not REFERENCE.is_dir():
        pytest.skip(NEEDS_SHARED)
    base = serve()
    proc = subprocess.run([sys.executable, str(CONFORMANCE), base, str(REFERENCE)], capture_output=True, text=True,
                          timeout=300, env=_no_proxy_env())
    output = proc.stdout + proc.stderr
    print(output)
    assert proc.returncode == 0, output
    assert "checks pass" in proc.stdout


@pytest.mark.slow
def test_cli_serve_answers_discovery(tmp_path: Path, http):
    """``ivig-cds serve`` as a real process, data in tmp; the home directory stays untouched."""
    home = tmp_path / "home"
    home.mkdir()
    data_dir = tmp_path / "data"
    env = {**_no_proxy_env(), "IVIG_CDS_DATA_DIR": str(data_dir), "HOME": str(home)}
    with cli_server(["serve", "--host", "127.0.0.1"], env=env, cwd=str(tmp_path)) as (base, proc):
        assert base.startswith("http://127.0.0.1:")
        resp = http.get(f"{base}/cds-services", timeout=TIMEOUT)
        assert resp.status_code == 200, resp.text
        assert sorted(s["hook"] for s in resp.json()["services"]) == sorted(HOOKS)
        call = http.post(f"{base}/cds-services/{SERVICE_ID['patient-view']}", json=valid_request("patient-view"),
                         timeout=TIMEOUT)
        _assert_card_response(call)
        assert proc.poll() is None, "the server must still be running"
    assert data_dir.is_dir()
    assert not (home / ".local" / "share" / "ivig-cds").exists()
