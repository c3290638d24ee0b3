"""Every clinical scenario in fhir_fixtures/ decides as the guideline says, on every hook it names.

The expected topics in each ``expected.json`` were written from criteria.md, not from the
engine's output; the comparison is exact, so an extra card fails as surely as a missing one.
"""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import pytest

import fhir_fixtures
import hooks
from fhir_fixtures.scenarios import SCENARIOS, materialise
from hooks.service_def import HookRequest
from tests.cds_validate import response_problems, topics

ROOT = Path(fhir_fixtures.__file__).parent
CASES = [
    (name, hook)
    for name in fhir_fixtures.scenario_names()
    for hook in (fhir_fixtures.load_json(name, "expected.json") or {})["expected"]
    if fhir_fixtures.load_json(name, f"request-{hook}.json") is not None
]


def _service(hook: str):
    return next(s for s in hooks.SERVICES.values() if s.hook == hook)


def run_request(body: dict, today: date) -> dict:
    service = _service(body["hook"])
    result = service.handler(HookRequest(
        hook=body["hook"], hook_instance=body["hookInstance"], service_id=service.id, context=body["context"],
        prefetch=body.get("prefetch", {}), today=today))
    return result.response_body()


@pytest.mark.parametrize(("name", "hook"), CASES, ids=[f"{n}:{h}" for n, h in CASES])
def test_scenario_decides_as_the_guideline_says(name, hook):
    expected = fhir_fixtures.load_json(name, "expected.json")
    body = run_request(fhir_fixtures.load_json(name, f"request-{hook}.json"), date.fromisoformat(expected["today"]))
    assert sorted(topics(body)) == sorted(expected["expected"][hook]), expected["summary"]
    assert response_problems(body) == []


@pytest.mark.parametrize(("name", "hook"), CASES, ids=[f"{n}:{h}" for n, h in CASES])
def test_scenario_over_http(client, name, hook):
    """The same decision through the real app (envelope checks, prefetch handling, serialisation)."""
    expected = fhir_fixtures.load_json(name, "expected.json")
    body = fhir_fixtures.load_json(name, f"request-{hook}.json")
    service = _service(hook)
    import service.protocol.cds as cds

    original = cds.today
    cds.today = lambda: date.fromisoformat(expected["today"])
    try:
        resp = client.post(f"/cds-services/{service.id}", json=body)
    finally:
        cds.today = original
    assert resp.status_code == 200, resp.get_data(as_text=True)
    assert sorted(topics(resp.get_json())) == sorted(expected["expected"][hook])
    assert response_problems(resp.get_json()) == []


def test_every_branch_of_the_criteria_has_a_scenario():
    tags = {t for s in SCENARIOS for t in s.tags}
    for branch in ("decision-1", "decision-2", "decision-3", "decision-4", "decision-5", "decision-6",
                   "decision-7", "decision-8", "decision-9", "monitoring", "dose", "other-indication", "children",
                   "units", "stale", "edge", "no-data"):
        assert branch in tags, f"no scenario for {branch}"


def test_every_topic_is_expected_somewhere_on_each_of_its_hooks():
    seen: dict[str, set[str]] = {}
    for s in SCENARIOS:
        for hook, expected in s.expected.items():
            for topic in expected:
                seen.setdefault(topic, set()).add(hook)
    contract = {
        "ivig-not-indicated": {"order-sign"}, "ivig-indicated": {"order-sign", "patient-view"},
        "workup-incomplete": {"order-sign", "patient-view"}, "hyper-igm-pattern": {"order-sign", "patient-view"},
        "isolated-igm-deficiency": {"patient-view"}, "labs-confounded-by-ivig": {"order-sign", "patient-view"},
        "ivig-dose-check": {"order-sign"}, "ivig-monitoring": {"order-sign", "patient-view"},
    }
    for topic, hooks_ in contract.items():
        assert hooks_ <= seen.get(topic, set()), f"{topic} not exercised on {hooks_ - seen.get(topic, set())}"


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name for s in SCENARIOS])
def test_fixture_folders_are_generated_from_the_catalogue(scenario):
    """fhir_fixtures/<name>/ equals what scenarios.py generates (regenerate: python -m fhir_fixtures.scenarios)."""
    for filename, content in materialise(scenario).items():
        on_disk = json.loads((ROOT / scenario.name / filename).read_text(encoding="utf-8"))
        assert on_disk == json.loads(json.dumps(content)), f"{scenario.name}/{filename} is stale"


def test_sample_transaction_bundle_is_current():
    from fhir_fixtures.scenarios import sample_transaction_bundle

    on_disk = json.loads((ROOT / fhir_fixtures.SAMPLE_TRANSACTION).read_text(encoding="utf-8"))
    assert on_disk == sample_transaction_bundle()
    assert on_disk["type"] == "transaction"
    assert {e["request"]["method"] for e in on_disk["entry"]} == {"PUT"}


def _one_scenario_per_topic_and_hook() -> list[tuple[str, str]]:
    chosen: dict[tuple[str, str], tuple[str, str]] = {}
    for name, hook in CASES:
        for topic in fhir_fixtures.load_json(name, "expected.json")["expected"][hook]:
            chosen.setdefault((topic, hook), (name, hook))
    return sorted(set(chosen.values()))


def test_every_topic_on_every_hook_over_a_real_http_server(app, monkeypatch):
    """Real sockets, real serialisation: each topic on each hook at least once, plus a no-card case."""
    import requests

    import service.protocol.cds as cds
    from tests.servers import live_app

    monkeypatch.setattr(cds, "today", lambda: date(2026, 11, 24))
    cases = _one_scenario_per_topic_and_hook() + [("no-ig-data-non-ivig-order", "order-sign")]
    seen: set[tuple[str, str]] = set()
    with live_app(app) as base, requests.Session() as http:
        http.trust_env = False
        for name, hook in cases:
            body = fhir_fixtures.load_json(name, f"request-{hook}.json")
            resp = http.post(f"{base}/cds-services/{_service(hook).id}", json=body, timeout=30)
            assert resp.status_code == 200 and resp.headers["Content-Type"] == "application/json", name
            expected = fhir_fixtures.load_json(name, "expected.json")["expected"][hook]
            assert sorted(topics(resp.json())) == sorted(expected), name
            assert response_problems(resp.json()) == []
            seen |= {(t, hook) for t in expected}
    assert len({t for t, _ in seen}) == 8  # all eight topics of the contract
