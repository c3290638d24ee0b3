"""Built-in sample patients: `ivig-cds serve` answers for them without an EHR (development only)."""

from __future__ import annotations

from datetime import date

import pytest

import fhir_fixtures
from fhir_fixtures import samples
from service.app import create_app
from service.storage.feedback import MemoryFeedbackStore
from tests.cds_validate import response_problems, topics
from tests.conftest import make_settings

SAMPLES = sorted(samples.sample_ids().items())


def test_the_five_situations_of_the_sandbox_issue_are_samples():
    assert set(samples.sample_ids()) == {"sample-isolated-igm", "sample-igg-deficiency", "sample-impaired-ppsv23",
                                        "sample-hyper-igm", "sample-on-ivig-low-trough"}


@pytest.mark.parametrize("today", [date(2026, 11, 24), date(2028, 2, 29)])
@pytest.mark.parametrize(("patient_id", "scenario"), SAMPLES)
def test_sample_patient_without_prefetch_gets_its_cards_on_any_day(client, monkeypatch, patient_id, scenario, today):
    """Dates move with today, so a sample decides the same way next year as on its reference day."""
    import service.protocol.cds as cds

    monkeypatch.setattr(cds, "today", lambda: today)
    resp = client.post("/cds-services/ivig-patient-view", json={
        "hook": "patient-view", "hookInstance": "6b7c3d0e-1f2a-4b5c-8d9e-0a1b2c3d4e5f",
        "context": {"userId": "Practitioner/example", "patientId": patient_id}})
    assert resp.status_code == 200, resp.get_json()
    expected = fhir_fixtures.load_json(scenario, "expected.json")["expected"]["patient-view"]
    assert sorted(topics(resp.get_json())) == sorted(expected)
    assert response_problems(resp.get_json()) == []


@pytest.mark.parametrize("profile", ["sandbox"])
def test_samples_are_never_used_outside_development(tmp_path, profile):
    app = create_app(make_settings(tmp_path, profile=profile, **{"security.require_token": False}),
                     store=MemoryFeedbackStore())
    resp = app.test_client().post("/cds-services/ivig-patient-view", json={
        "hook": "patient-view", "hookInstance": "6b7c3d0e-1f2a-4b5c-8d9e-0a1b2c3d4e5f",
        "context": {"userId": "Practitioner/example", "patientId": "sample-igg-deficiency"}})
    assert resp.status_code == 412


def test_unknown_patient_without_data_is_412_naming_the_keys(client):
    resp = client.post("/cds-services/ivig-patient-view", json={
        "hook": "patient-view", "hookInstance": "x", "context": {"userId": "Practitioner/1", "patientId": "nobody"}})
    assert resp.status_code == 412
    assert any("prefetch.patient" in d for d in resp.get_json()["details"])


def test_sample_transaction_shifts_dates():
    base = fhir_fixtures.sample_transaction()
    later = fhir_fixtures.sample_transaction(date(2027, 11, 24))
    first_obs = next(e["resource"] for e in base["entry"] if e["resource"]["resourceType"] == "Observation")
    moved = next(e["resource"] for e in later["entry"] if e["resource"]["id"] == first_obs["id"])
    assert (date.fromisoformat(moved["effectiveDateTime"]) - date.fromisoformat(first_obs["effectiveDateTime"])).days == 365
