"""Lenient reading of real-world payloads: adapt what can be adapted, skip the rest and say why."""

from __future__ import annotations

import json

import pytest

from hooks.fhir_read import MODEL_CACHE, adapt_shape, read_resources
from tests.conftest import reference

IGM = {"resourceType": "Observation", "id": "o1", "status": "final",
       "code": {"coding": [{"system": "http://loinc.org", "code": "2472-9"}]},
       "subject": {"reference": "Patient/p1"}, "effectiveDateTime": "2026-10-01",
       "valueQuantity": {"value": 32, "unit": "mg/dL"}}


def test_bundle_entries_nested_bundles_and_lists_are_all_read():
    bundle = {"resourceType": "Bundle", "entry": [{"resource": IGM},
                                                  {"resource": {"resourceType": "Bundle", "entry": [
                                                      {"resource": {**IGM, "id": "o2"}}]}}]}
    read = read_resources([bundle, [{**IGM, "id": "o3"}]], "p1")
    assert sorted(read.raw_id(o) for o in read.of("Observation")) == ["o1", "o2", "o3"]


def test_duplicates_across_prefetch_keys_count_once():
    read = read_resources([{"resourceType": "Bundle", "entry": [{"resource": IGM}]}, IGM, {**IGM, "id": "Observation/o1"}], "p1")
    assert len(read.of("Observation")) == 1


def test_ids_with_type_prefix_are_cut():
    read = read_resources([{**IGM, "id": "Observation/o9"}], "p1")
    assert read.of("Observation")[0].id == "o9"


def test_unknown_field_is_dropped_and_noted():
    read = read_resources([{**IGM, "vendorExtraField": {"x": 1}}], "p1")
    assert len(read.of("Observation")) == 1
    assert any("vendorExtraField" in n.reason for n in read.notes)


def test_resource_with_broken_essential_field_is_skipped_with_reason():
    read = read_resources([{**IGM, "status": 42}], "p1")
    assert read.of("Observation") == []
    assert read.skipped and "status" in read.skipped[0].reason


def test_resource_of_another_patient_is_skipped():
    read = read_resources([{**IGM, "subject": {"reference": "Patient/someone-else"}}], "p1")
    assert read.of("Observation") == []
    assert "another patient" in read.skipped[0].reason


def test_absolute_and_versioned_subject_references_are_the_same_patient():
    read = read_resources([{**IGM, "subject": {"reference": "https://ehr.example/fhir/Patient/p1/_history/3"}}], "p1")
    assert len(read.of("Observation")) == 1


def test_irrelevant_observations_are_not_validated():
    sodium = {**IGM, "id": "na", "code": {"coding": [{"system": "http://loinc.org", "code": "2951-2"}], "text": "Sodium"},
              "status": "not-a-status"}
    read = read_resources([sodium], "p1")
    assert read.of("Observation") == [] and read.skipped == []


def test_dstu2_medication_order_becomes_a_medication_request():
    data = json.loads(reference("spec-2.0.1", "request-order-sign-dstu2.json").read_text())
    order = next(e["resource"] for e in data["context"]["draftOrders"]["entry"]
                 if e["resource"]["resourceType"] == "MedicationOrder")
    adapted = adapt_shape({**order, "medicationCodeableConcept": {"text": "Privigen"}})
    assert adapted["resourceType"] == "MedicationRequest"
    assert adapted["subject"] == {"reference": "Patient/1288992"}
    dosage = adapted["dosageInstruction"][0]
    assert dosage["timing"]["repeat"]["periodUnit"] == "d"
    assert dosage["doseAndRate"][0]["doseQuantity"]["value"] == 5
    read = read_resources([{**order, "medicationCodeableConcept": {"text": "Privigen 10%"}}], "1288992")
    assert len(read.of("MedicationRequest")) == 1


def test_stu3_dose_and_rate_object_and_string_statuses_are_adapted():
    data = json.loads(reference("spec-2.0.1", "request-order-sign-stu3.json").read_text())
    order = next(e["resource"] for e in data["context"]["draftOrders"]["entry"]
                 if e["resource"]["resourceType"] == "MedicationRequest")
    read = read_resources([{**order, "medicationCodeableConcept": {"text": "IVIG"}}], "1288992")
    (mr,) = read.of("MedicationRequest")
    assert mr.dosageInstruction[0].doseAndRate[0].doseQuantity.value == 5
    cond = {"resourceType": "Condition", "id": "c", "clinicalStatus": "resolved", "verificationStatus": "confirmed",
            "code": {"text": "Pneumonia"}, "patient": {"reference": "Patient/1288992"}, "onsetDateTime": "2026-01-01"}
    (c,) = read_resources([cond], "1288992").of("Condition")
    assert c.clinicalStatus.coding[0].code == "resolved"


def test_validated_models_are_cached_by_content():
    MODEL_CACHE.clear()
    read_resources([IGM], "p1")
    size = len(MODEL_CACHE)
    read_resources([json.loads(json.dumps(IGM))], "p1")
    assert len(MODEL_CACHE) == size == 1
    read_resources([{**IGM, "valueQuantity": {"value": 33, "unit": "mg/dL"}}], "p1")
    assert len(MODEL_CACHE) == 2


def test_record_dates_cover_any_clinical_resource():
    dates = read_resources([{"resourceType": "AllergyIntolerance", "recordedDate": "2026-05-01"},
                            {"resourceType": "Encounter", "period": {"start": "2026-06-01T10:00:00Z"}},
                            {"resourceType": "Patient", "birthDate": "1970-01-01"}]).clinical_dates
    assert [d.isoformat() for d in dates] == ["2026-05-01", "2026-06-01"]


def test_garbage_never_raises():
    junk = [None, 1, "x", [], {"resourceType": 5}, {"resourceType": "Observation"}, {"resourceType": "Bundle", "entry": "x"},
            {"resourceType": "Observation", "code": "nope", "status": "final"}]
    read = read_resources(junk, "p1")
    assert read.of("Observation") == []


def test_what_is_not_a_resource_is_listed_with_one_reason_each():
    bundle = {"resourceType": "Bundle", "entry": [
        None, 7, {"fullUrl": "urn:uuid:1"}, {"resource": None}, {"resource": {"id": "x", "status": "final"}},
        {"resource": {"resourceType": "Obsrvation", "id": "typo"}}, {"resource": IGM},
        {"resource": {"resourceType": "Practitioner", "id": "dr"}}, {"resource": {"resourceType": "Organization"}}]}
    read = read_resources([bundle], "p1")
    assert len(read.of("Observation")) == 1
    assert [(s.resource, s.reason) for s in read.skipped] == [
        ("Bundle entry 1", "empty"),
        ("Bundle entry 2", "not a Bundle entry"),
        ("Bundle entry 3", "no resource in it"),
        ("Bundle entry 4", "no resource in it"),
        ("Bundle entry 5", "no resourceType: not a FHIR resource"),
        ("Obsrvation/typo", "not a FHIR resource type"),
    ]  # Practitioner and Organization are FHIR, only not read: nothing to say about them


def test_bundle_entries_that_are_not_a_list_and_stray_values_are_said():
    read = read_resources([{"resourceType": "Bundle", "id": "b", "entry": {"resource": IGM}}, "text", None], "p1")
    assert [(s.resource, s.reason) for s in read.skipped] == [
        ("Bundle/b", "its entries are not a list"), ("prefetch value", "not a FHIR resource")]


def test_reading_never_changes_the_request():
    data = json.loads(reference("spec-2.0.1", "request-order-sign-stu3.json").read_text())
    order = next(e["resource"] for e in data["context"]["draftOrders"]["entry"]
                 if e["resource"]["resourceType"] == "MedicationRequest")
    order = {**order, "medicationCodeableConcept": {"text": "IVIG"}}
    order["dosageInstruction"][0]["doseAndRate"] = [{"type": {"text": "ordered"}}]  # and doseQuantity beside it
    order["dosageInstruction"][0]["doseQuantity"] = {"value": 30, "unit": "g"}
    before = json.dumps(order, sort_keys=True)
    (mr,) = read_resources([order], "1288992").of("MedicationRequest")
    assert json.dumps(order, sort_keys=True) == before
    assert [dr.doseQuantity.value if dr.doseQuantity else None for dr in mr.dosageInstruction[0].doseAndRate] == [None, 30]


def test_a_missing_required_element_skips_the_resource_and_names_it():
    order = {"resourceType": "MedicationRequest", "id": "m", "status": "draft", "subject": {"reference": "Patient/p1"},
             "medicationCodeableConcept": {"text": "Privigen"}}
    read = read_resources([order], "p1")
    assert read.of("MedicationRequest") == [] and "intent" in read.skipped[0].reason
    nothing = read_resources([{**order, "intent": "order", "medicationCodeableConcept": None}], "p1")
    assert nothing.of("MedicationRequest") == [] and nothing.skipped == []  # names no product: not immune globulin


def test_a_time_without_its_zone_makes_an_observation_unreadable_and_says_why():
    read = read_resources([{**IGM, "effectiveDateTime": "2026-10-01T08:00:00"}], "p1")
    assert read.of("Observation") == []
    assert read.skipped[0].resource == "Observation/o1" and "effectiveDateTime" in read.skipped[0].reason


def test_a_resource_too_large_is_refused_unless_the_text_it_came_in_was_within_the_bound(monkeypatch):
    """With no cache, a record sent in a body within the bound is read without serialising each
    resource again; a body beyond it has each resource measured."""
    from hooks import fhir_read
    from hooks.lru import BoundedLRU

    monkeypatch.setattr(fhir_read, "MAX_RESOURCE_BYTES", 2048)
    big = {"resourceType": "Observation", "id": "o1", "status": "final",
           "code": {"coding": [{"system": "http://loinc.org", "code": "2465-3"}], "text": "IgG " + "x" * 3000},
           "valueQuantity": {"value": 900, "unit": "mg/dL", "system": "http://unitsofmeasure.org", "code": "mg/dL"}}
    off = BoundedLRU(0)
    with fhir_read.models_cached_in(off, sent_within=5000):
        assert "too large to read" in (fhir_read.ingest(big).reason or "")
    with fhir_read.models_cached_in(off):
        assert "too large to read" in (fhir_read.ingest(big).reason or "")
    small = {**big, "code": {"coding": big["code"]["coding"]}}
    with fhir_read.models_cached_in(off, sent_within=2000):
        assert fhir_read.ingest(small).model is not None


# ------------------------------------------------------------------ collecting: lists of Bundles opened in place

def _collected_by_the_rule(value, out, depth=0):
    """The collecting rule, one call per level: lists and Bundles opened to a depth of _MAX_DEPTH."""
    from hooks.fhir_read import _MAX_DEPTH

    if depth > _MAX_DEPTH:
        return
    if isinstance(value, list):
        for item in value:
            _collected_by_the_rule(item, out, depth + 1)
    elif isinstance(value, dict) and value.get("resourceType") == "Bundle":
        for entry in value.get("entry") or ():
            resource = entry.get("resource") if isinstance(entry, dict) else None
            kind = resource.get("resourceType") if isinstance(resource, dict) else None
            if isinstance(kind, str) and kind != "Bundle":
                out.append(resource)
            elif isinstance(resource, (dict, list)):
                _collected_by_the_rule(resource, out, depth + 1)
    elif isinstance(value, dict) and isinstance(value.get("resourceType"), str):
        out.append(value)


def _nested(levels: int, leaf: dict) -> object:
    value: object = leaf
    for level in range(levels):
        value = [None, value] if level % 2 else {"resourceType": "Bundle", "entry": [{"resource": value}]}
    return value


@pytest.mark.parametrize("levels", range(0, 12))
def test_nested_lists_and_bundles_are_opened_to_the_same_depth_as_the_rule(levels):
    """Prefetch values opened in place collect what the one-call-per-level rule collects, no deeper."""
    from hooks.fhir_read import iter_resources

    leaf = {"resourceType": "Observation", "id": f"o{levels}"}
    for value in (_nested(levels, leaf), [_nested(levels, leaf)], [None, _nested(levels, leaf), None]):
        expected: list = []
        _collected_by_the_rule(value, expected)
        assert list(iter_resources(value)) == expected


@pytest.mark.parametrize(("text", "display", "matters"), [
    ("Chest illness", "Pneumonia", True),          # only the display names it
    ("Pneumonia", "Chest illness", True),          # only the text
    ("Pneumonia", "Pneumonia", True),              # the display repeats the text
    ("Chest illness", "Chest illness", False),
    (None, "Pneumonia", True),
    ("Chest illness", None, False),
])
def test_a_diagnosis_matters_by_its_text_or_any_display(text, display, matters):
    from hooks.fhir_read import condition_may_matter, observation_may_matter

    coding = {"system": "urn:local:codes", "code": "X1", **({"display": display} if display else {})}
    code = {"coding": [coding], **({"text": text} if text else {})}
    assert condition_may_matter({"resourceType": "Condition", "code": code}) is matters
    def lab_words(words: str | None) -> str | None:
        return words and words.replace("Pneumonia", "IgM [Mass/volume] in Serum").replace("Chest illness", "Panel 3")

    lab_coding = {"system": "urn:local:codes", "code": "X1", **({"display": lab_words(display)} if display else {})}
    lab_code = {"coding": [lab_coding], **({"text": lab_words(text)} if text else {})}
    assert observation_may_matter({"resourceType": "Observation", "code": lab_code}) is matters
