"""The caches on the hot path: bounded, keyed on exactly what they hold, and safe to share."""

from __future__ import annotations

import copy
from datetime import date

import fhir_fixtures
from hooks.config import GuidelineConfig
from hooks.engine import evaluate_patient
from hooks.fhir_read import MODEL_CACHE, ingest, read_resources
from hooks.lru import TERM_CHARS, TERMS, BoundedLRU, by_term
from service.app import create_app
from service.storage.feedback import MemoryFeedbackStore
from tests.conftest import make_settings

TODAY = date(2026, 11, 24)
CFG = GuidelineConfig()


def _record(name: str = "sample-igg-deficiency"):
    return fhir_fixtures.load_json(name, "bundle.json"), fhir_fixtures.load_json(name, "expected.json")["patientId"]


def test_a_record_sent_again_is_read_from_the_cache_and_decided_the_same():
    bundle, pid = _record()
    MODEL_CACHE.clear()
    first = evaluate_patient([bundle], patient_id=pid, today=TODAY, config=CFG)
    cached = len(MODEL_CACHE)
    assert cached > 0
    again = evaluate_patient([copy.deepcopy(bundle)], patient_id=pid, today=TODAY, config=CFG)
    assert len(MODEL_CACHE) == cached  # nothing validated twice
    assert again.trace() == first.trace()


def test_a_changed_resource_is_validated_afresh():
    bundle, pid = _record()
    base = evaluate_patient([bundle], patient_id=pid, today=TODAY, config=CFG)
    changed = copy.deepcopy(bundle)
    igg = next(e["resource"] for e in changed["entry"] if "2465-3" in str(e["resource"].get("code")))
    igg["valueQuantity"]["value"] = 900
    other = evaluate_patient([changed], patient_id=pid, today=TODAY, config=CFG)
    assert other.decision.outcome.rule != base.decision.outcome.rule


def test_a_cached_model_is_shared_and_cannot_be_changed():
    """Requests on other threads read the same model: it is frozen (a result as a named tuple,
    other resources as frozen pydantic models)."""
    import pydantic
    import pytest

    bundle, _ = _record()
    resources = [e["resource"] for e in bundle["entry"]]
    observation = next(r for r in resources if r["resourceType"] == "Observation")
    result = ingest(observation).model
    assert ingest(copy.deepcopy(observation)).model is result
    condition = next(r for r in resources if r["resourceType"] == "Condition")
    model = ingest(condition).model
    assert ingest(copy.deepcopy(condition)).model is model
    with pytest.raises(AttributeError):
        result.status = "cancelled"
    with pytest.raises(pydantic.ValidationError):
        model.id = "other"


def test_only_resources_the_rules_read_are_kept():
    MODEL_CACHE.clear()
    sodium = {"resourceType": "Observation", "id": "na", "status": "final", "subject": {"reference": "Patient/p"},
              "code": {"coding": [{"system": "http://loinc.org", "code": "2951-2"}], "text": "Sodium"},
              "effectiveDateTime": "2026-10-01", "valueQuantity": {"value": 140, "unit": "mmol/L"}}
    read_resources([{"resourceType": "Bundle", "entry": [{"resource": {**sodium, "id": f"na{i}"}} for i in range(50)]}], "p")
    assert len(MODEL_CACHE) == 0


def test_each_app_reads_through_its_own_cache_of_the_configured_size(tmp_path):
    """limits.resource_cache_entries sizes the app's cache (0, the default, keeps nothing); a hook
    call reads through it, and through the module's cache only outside a service."""
    body = fhir_fixtures.load_json("sample-impaired-ppsv23", "request-patient-view.json")  # 60+ resources
    MODEL_CACHE.clear()
    off = create_app(make_settings(tmp_path / "off"), store=MemoryFeedbackStore())
    on = create_app(make_settings(tmp_path / "on", **{"limits.resource_cache_entries": 10}),
                    store=MemoryFeedbackStore())
    try:
        for app in (off, on):
            response = app.test_client().post("/cds-services/ivig-patient-view", json=body)
            assert response.status_code == 200
        assert len(off.extensions["ivig_cds"].models) == 0
        assert len(on.extensions["ivig_cds"].models) == 10 == on.extensions["ivig_cds"].models.capacity
        assert len(MODEL_CACHE) == 0
    finally:
        for app in (off, on):
            app.extensions["ivig_cds"].close()


def test_a_weighed_cache_keeps_its_total_weight_within_bound():
    cache: BoundedLRU[str, str] = BoundedLRU(100, max_weight=10, weigh=lambda key, value: len(value))
    cache.put("a", "xxxx")
    cache.put("b", "xxxx")
    assert cache.get("a") == "xxxx"  # "b" is now the least recently used
    cache.put("c", "xxx")
    assert (cache.get("b"), cache.weight, len(cache)) == (None, 7, 2)
    cache.put("a", "x")  # replacing an entry replaces its weight
    assert cache.weight == 4
    cache.put("big", "x" * 11)  # heavier than the whole bound: not kept, nothing evicted for it
    assert (cache.get("big"), len(cache), cache.weight) == (None, 2, 4)
    cache.clear()
    assert (len(cache), cache.weight) == (0, 0)


def test_terms_are_matched_once_and_long_or_many_terms_stay_bounded():
    calls: list[str] = []

    @by_term
    def shout(text: str) -> str:
        calls.append(text)
        return text.upper()

    assert shout("igm") == shout("igm") == "IGM" and calls == ["igm"]
    long = "x" * (TERM_CHARS + 1)
    assert shout(long) == shout(long) == long.upper() and calls.count(long) == 2  # matched each time, not kept
    for n in range(TERMS + 10):
        shout(f"t{n}")
    assert shout.cache_info().currsize <= TERMS  # type: ignore[attr-defined]
