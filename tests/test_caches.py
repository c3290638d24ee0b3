"""The two caches on the hot path: bounded, keyed on exactly what a decision depends on, and safe."""

from __future__ import annotations

import copy

import pytest
from datetime import date

import fhir_fixtures
from hooks.config import GuidelineConfig
from hooks.engine import EVALUATIONS, evaluate_patient
from hooks.fhir_read import MODEL_CACHE, ingest
from service.app import create_app
from service.feedback import MemoryFeedbackStore
from tests.conftest import make_settings

TODAY = date(2026, 11, 24)
CFG = GuidelineConfig()


def _record(name: str = "sample-igg-deficiency"):
    return fhir_fixtures.load_json(name, "bundle.json"), fhir_fixtures.load_json(name, "expected.json")["patientId"]


def test_a_record_sent_again_reuses_its_evaluation():
    bundle, pid = _record()
    first = evaluate_patient([bundle], patient_id=pid, today=TODAY, config=CFG)
    again = evaluate_patient([copy.deepcopy(bundle)], patient_id=pid, today=TODAY, config=CFG)
    assert again is first


def test_anything_the_decision_depends_on_changes_the_key():
    bundle, pid = _record()
    base = evaluate_patient([bundle], patient_id=pid, today=TODAY, config=CFG)
    assert evaluate_patient([bundle], patient_id=pid, today=date(2026, 11, 25), config=CFG) is not base
    assert evaluate_patient([bundle], patient_id=pid, today=TODAY, config=GuidelineConfig(igm_low_mg_dl=30)) is not base
    assert evaluate_patient([bundle], patient_id=pid, today=TODAY, config=CFG,
                            unavailable={"conditions": "timed out"}) is not base
    changed = copy.deepcopy(bundle)
    igg = next(e["resource"] for e in changed["entry"] if "2465-3" in str(e["resource"].get("code")))
    igg["valueQuantity"]["value"] = 900
    other = evaluate_patient([changed], patient_id=pid, today=TODAY, config=CFG)
    assert other is not base and other.decision.outcome.rule != base.decision.outcome.rule


def test_a_resource_read_again_after_eviction_is_a_new_identity():
    """Memo keys use never-reused serials, so an evicted-and-recreated resource cannot hit a stale memo."""
    bundle, _ = _record()
    resource = bundle["entry"][1]["resource"]
    first = ingest(resource).serial
    MODEL_CACHE.clear()
    assert ingest(resource).serial != first


def test_a_memoised_evaluation_keeps_no_validated_models():
    bundle, pid = _record()
    evaluation = evaluate_patient([bundle], patient_id=pid, today=TODAY, config=CFG)
    assert not hasattr(evaluation, "read")

    def walk(value, depth=0):
        assert not (hasattr(value, "model_fields") and hasattr(value, "get_resource_type")), type(value)
        if depth > 6:
            return
        if isinstance(value, (list, tuple, set, frozenset)):
            for v in value:
                walk(v, depth + 1)
        elif isinstance(value, dict):
            for v in value.values():
                walk(v, depth + 1)
        elif hasattr(value, "__dataclass_fields__"):
            for name in value.__dataclass_fields__:
                walk(getattr(value, name), depth + 1)

    walk(evaluation)


def test_both_caches_are_bounded(tmp_path):
    try:
        create_app(make_settings(tmp_path, **{"limits.resource_cache_entries": 10}), store=MemoryFeedbackStore())
        assert MODEL_CACHE.capacity == 10
        bundle, pid = _record("sample-impaired-ppsv23")  # 60+ resources
        evaluate_patient([bundle], patient_id=pid, today=TODAY, config=CFG)
        assert len(MODEL_CACHE) <= 10
        for day in range(1, 300):  # 299 distinct evaluations
            evaluate_patient([bundle], patient_id=pid, today=date(2027, 1, 1).fromordinal(TODAY.toordinal() + day),
                             config=CFG)
        assert len(EVALUATIONS) <= EVALUATIONS.capacity
    finally:
        MODEL_CACHE.resize(4000)


def test_the_sync_table_answers_as_flask_does_and_stays_bounded(tmp_path):
    """CdsFlask remembers ensure_sync per function, up to its table size; new functions still work."""
    from flask import Flask

    from service.app import CdsFlask

    app = create_app(make_settings(tmp_path), store=MemoryFeedbackStore())
    assert isinstance(app, CdsFlask)
    plain = Flask("plain")

    def view() -> str:
        return "ok"

    assert app.ensure_sync(view) is view is plain.ensure_sync(view)
    made_per_request = [(lambda n=n: n) for n in range(CdsFlask.SYNC_TABLE_SIZE * 2)]
    assert [app.ensure_sync(f)() for f in made_per_request] == list(range(CdsFlask.SYNC_TABLE_SIZE * 2))
    assert len(app._sync_functions) == CdsFlask.SYNC_TABLE_SIZE

    async def coroutine() -> str:
        return "ok"

    try:
        expected = plain.ensure_sync(coroutine)()
    except RuntimeError as exc:  # Flask without its async extra says so, and so must ours
        with pytest.raises(RuntimeError, match=str(exc)[:40]):
            app.ensure_sync(coroutine)
    else:
        assert app.ensure_sync(coroutine)() == expected
    app.extensions["ivig_cds"].close()


def test_a_weighed_cache_keeps_its_total_weight_within_bound():
    from hooks.lru import BoundedLRU

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
