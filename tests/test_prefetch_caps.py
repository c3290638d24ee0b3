"""Bounded reads: a FHIR or SMART server that sends too much, never stops, or breaks off mid-answer.

The stub (tests/fhir_stub.py) sends what a real server sends only when it misbehaves: a 30 MB
searchset, an endless chunked stream, a chunked answer whose connection is cut mid-body, pages
padded to a known size. Everything else is the real completer, client and Flask app. Each call
may read ``prefetch.max_bytes_per_call`` bytes in all (every page of every query), one answer a
quarter of that: beyond it a first page is a failure of its key (said on the card), a later page
ends the paging with what was read kept and the record marked as possibly incomplete. The SMART launch's reads of the
smart-configuration and the token endpoint obey the same deadline and allowance, and any failure
there is the launch's error page, never a 500.
"""

from __future__ import annotations

import time
from urllib.parse import parse_qs, urlsplit

import pytest

from service.app import create_app
from service.storage.feedback import MemoryFeedbackStore
from tests.conftest import make_settings
from tests.fhir_stub import Behaviour, FhirStub, timed
from tests.test_prefetch import OPTIONAL_KEY, complete, request_body

CAP = 256 * 1024
DEADLINE = 2.0
SLACK = 1.0
MB = 1024 * 1024


def settings_for(tmp_path, **overrides):
    base = {"prefetch.deadline_seconds": DEADLINE, "prefetch.query_timeout_seconds": 1.5,
            "prefetch.max_bytes_per_call": CAP, "sample_patients": False}
    base.update(overrides)
    return make_settings(tmp_path, **base)


@pytest.fixture
def stub():
    with FhirStub() as s:
        yield s


# ------------------------------------------------------------------ FHIR reads

@pytest.mark.parametrize("fault", [Behaviour(kind="huge", size=30 * MB), Behaviour(kind="endless")],
                         ids=["30 MB answer", "endless chunked answer"])
def test_an_oversized_or_endless_answer_costs_the_cap_not_the_answer(tmp_path, stub, fault):
    stub.routes["Condition"] = fault
    out, seconds = timed(lambda: complete(settings_for(tmp_path), request_body(stub.base)))
    assert not isinstance(out, Exception), out
    assert out.unavailable == {OPTIONAL_KEY: "FHIR server answer too large"}
    assert OPTIONAL_KEY not in out.prefetch and "immunoglobulins" in out.prefetch
    assert seconds < DEADLINE  # cut at the allowance, long before the deadline


def test_a_broken_off_answer_is_a_defined_failure(tmp_path, stub):
    stub.routes["Condition"] = Behaviour(kind="truncated")
    out = complete(settings_for(tmp_path), request_body(stub.base))
    assert out.unavailable == {OPTIONAL_KEY: "FHIR server could not be reached"}


def test_the_allowance_is_per_call_across_pages(tmp_path, stub):
    """Pages of 40 kB under a 256 kB allowance: the pages that fit are read and kept, then paging stops."""
    stub.routes["Condition"] = Behaviour(kind="pages", pages=10, entries_per_page=1, size=40_000)
    out = complete(settings_for(tmp_path), request_body(stub.base))
    kept = [e["resource"]["id"] for e in out.prefetch[OPTIONAL_KEY]["entry"]]
    assert kept == [f"Condition-{p}-0" for p in range(1, len(kept) + 1)] and 5 <= len(kept) <= CAP // 40_000
    assert out.unavailable[OPTIONAL_KEY].startswith(f"may be incomplete: {len(kept)} records read")
    assert "exceeded what this service reads for one call" in out.unavailable[OPTIONAL_KEY]


def test_the_allowance_is_per_call_across_queries(tmp_path, stub):
    """Every search but the Observations answers ~60 kB: the call as a whole stops at the allowance,
    not each query. (The Observations, the required data, are small: which of the concurrent
    queries comes first is the network's choice, and a required key left out is a 412.)"""
    stub.default = Behaviour(kind="pages", pages=1, entries_per_page=1, size=60_000)
    stub.routes["Patient"] = Behaviour()
    stub.routes["Observation"] = Behaviour(kind="pages", pages=1, entries_per_page=1)
    out = complete(settings_for(tmp_path), request_body(stub.base))
    observations = {"immunoglobulins", "pneumococcalTiters", "weight"}
    searches = {k for k in [*out.prefetch, *out.unavailable] if k != "patient"}
    large = searches - observations
    read = {k for k in out.prefetch if k in large and k not in out.unavailable}
    assert len(searches) == 9 and observations <= set(out.prefetch) - set(out.unavailable)
    assert 1 <= len(read) <= (CAP - 3 * 1024) // 60_000  # what fits in the allowance, and no more
    assert all(out.unavailable[k] == "FHIR server answer too large" for k in large - read)


def test_without_a_cap_setting_the_default_allowance_still_bounds_a_30_mb_answer(tmp_path, stub):
    stub.routes["Condition"] = Behaviour(kind="huge", size=30 * MB)
    settings = make_settings(tmp_path, **{"prefetch.deadline_seconds": 10.0, "prefetch.query_timeout_seconds": 8.0})
    assert settings.prefetch.max_bytes_per_call < 30 * MB
    out = complete(settings, request_body(stub.base))
    assert out.unavailable == {OPTIONAL_KEY: "FHIR server answer too large"}


# ------------------------------------------------------------------ SMART launch

@pytest.fixture
def smart_client(tmp_path):
    app = create_app(settings_for(tmp_path), store=MemoryFeedbackStore())
    try:
        yield app.test_client()
    finally:
        app.extensions["ivig_cds"].close()


CONFIG = ".well-known/smart-configuration"


def _smart_config(stub: FhirStub) -> dict:
    return {"authorization_endpoint": f"{stub.base}/authorize", "token_endpoint": f"{stub.base}/token",
            "code_challenge_methods_supported": ["S256"]}


def _launch(client, stub):
    return client.get("/smart/launch", query_string={"iss": stub.base, "launch": "launch-1"})


@pytest.mark.parametrize("fault", [Behaviour(kind="huge", size=30 * MB), Behaviour(kind="endless"),
                                   Behaviour(kind="truncated"), Behaviour(kind="trickle")],
                         ids=["30 MB", "endless", "cut off", "trickle"])
def test_a_misbehaving_smart_configuration_gets_the_error_page_in_time(smart_client, stub, fault):
    stub.routes[CONFIG] = fault
    resp, seconds = timed(lambda: _launch(smart_client, stub))
    assert resp.status_code == 502 and resp.mimetype == "text/html"
    assert "SMART configuration" in resp.get_data(as_text=True)
    assert seconds < DEADLINE + SLACK


@pytest.mark.parametrize("fault", [Behaviour(kind="huge", size=30 * MB), Behaviour(kind="endless"),
                                   Behaviour(kind="truncated"), Behaviour(kind="trickle"), Behaviour(kind="hang")],
                         ids=["30 MB", "endless", "cut off", "trickle", "hang"])
def test_a_misbehaving_token_endpoint_gets_the_error_page_in_time(smart_client, stub, fault):
    stub.routes[CONFIG] = Behaviour(body=_smart_config(stub))
    stub.routes["token"] = fault
    launched = _launch(smart_client, stub)
    assert launched.status_code == 302
    state = parse_qs(urlsplit(launched.headers["Location"]).query)["state"][0]
    start = time.monotonic()
    resp = smart_client.get("/smart/app", query_string={"code": "code-1", "state": state})
    seconds = time.monotonic() - start
    assert resp.status_code == 502 and resp.mimetype == "text/html", resp.get_data(as_text=True)[:300]
    assert "token" in resp.get_data(as_text=True)
    assert [r.method for r in stub.requests if r.path == "token"] == ["POST"]
    assert seconds < DEADLINE + SLACK
