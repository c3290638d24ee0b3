"""Properties of the engine over all scenarios: unrelated data changes nothing; bad data never crashes."""

from __future__ import annotations

import copy
from datetime import date

from hypothesis import HealthCheck, given, settings, strategies as st

import fhir_fixtures
import hooks
from hooks.config import DEFAULT_CONFIG
from hooks.engine import evaluate_patient
from hooks.service_def import HookRequest
from tests.cds_validate import response_problems, topics

TODAY = date(2026, 11, 24)
NAMES = list(fhir_fixtures.scenario_names())

UNRELATED_LABS = [("2951-2", "Sodium [Moles/volume] in Serum or Plasma", "mmol/L"),
                  ("718-7", "Hemoglobin [Mass/volume] in Blood", "g/dL"),
                  ("2160-0", "Creatinine [Mass/volume] in Serum or Plasma", "mg/dL"),
                  ("2345-7", "Glucose [Mass/volume] in Serum or Plasma", "mg/dL"),
                  ("1742-6", "Alanine aminotransferase [Enzymatic activity/volume] in Serum or Plasma", "U/L")]
UNRELATED_CONDITIONS = [("I10", "Essential (primary) hypertension"), ("E11.9", "Type 2 diabetes mellitus"),
                        ("M54.50", "Low back pain, unspecified"), ("K21.9", "Gastro-esophageal reflux disease")]
DATES = st.dates(min_value=date(2020, 1, 1), max_value=TODAY).map(lambda d: d.isoformat())


def _unrelated(pid: str):
    subject = {"reference": f"Patient/{pid}"}
    lab = st.builds(lambda i, lab, value, when: {
        "resourceType": "Observation", "id": f"unrelated-obs-{i}", "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": lab[0], "display": lab[1]}]},
        "subject": subject, "effectiveDateTime": when, "valueQuantity": {"value": value, "unit": lab[2]}},
        st.integers(0, 10**6), st.sampled_from(UNRELATED_LABS), st.floats(0.1, 500, allow_nan=False), DATES)
    condition = st.builds(lambda i, c, when: {
        "resourceType": "Condition", "id": f"unrelated-cond-{i}", "code": {"coding": [
            {"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": c[0], "display": c[1]}]},
        "subject": subject, "onsetDateTime": when}, st.integers(0, 10**6), st.sampled_from(UNRELATED_CONDITIONS), DATES)
    drug = st.builds(lambda i, when: {
        "resourceType": "MedicationRequest", "id": f"unrelated-med-{i}", "status": "active", "intent": "order",
        "medicationCodeableConcept": {"text": "Lisinopril 10 mg tablet"}, "subject": subject, "authoredOn": when},
        st.integers(0, 10**6), DATES)
    other = st.builds(lambda i: {"resourceType": "AllergyIntolerance", "id": f"unrelated-allergy-{i}",
                                 "patient": subject, "code": {"text": "Penicillin"}}, st.integers(0, 10**6))
    return st.lists(st.one_of(lab, condition, drug, other), min_size=1, max_size=6)


def _decide(name: str, extra: list[dict]) -> tuple:
    hook = "order-sign" if fhir_fixtures.load_json(name, "request-order-sign.json") else "patient-view"
    body = fhir_fixtures.load_json(name, f"request-{hook}.json")
    if body is None:
        return ()
    prefetch = copy.deepcopy(body["prefetch"])
    prefetch["conditions"]["entry"] += [{"resource": r} for r in extra]
    service = next(s for s in hooks.SERVICES.values() if s.hook == hook)
    result = service.handler(HookRequest(hook=hook, hook_instance=body["hookInstance"], service_id=service.id,
                                         context=body["context"], prefetch=prefetch, today=TODAY))
    return tuple(sorted(topics(result.response_body()))), result.trace.get("decision")


def _infection_history_known(name: str) -> bool:
    bundle = fhir_fixtures.load_json(name, "bundle.json")
    pid = fhir_fixtures.load_json(name, "expected.json")["patientId"]
    return evaluate_patient([bundle], patient_id=pid, today=TODAY, config=DEFAULT_CONFIG).facts.infections.known


KNOWN = [n for n in NAMES if _infection_history_known(n)]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(KNOWN), st.data())
def test_an_unrelated_resource_never_changes_a_decision(name, data):
    """Scenarios whose infection history is already known: extra dated data cannot flip 'unknown'."""
    pid = fhir_fixtures.load_json(name, "expected.json")["patientId"]
    extra = data.draw(_unrelated(pid))
    assert _decide(name, extra) == _decide(name, [])


FHIRISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(
        st.sampled_from(["resourceType", "id", "status", "code", "coding", "system", "value", "valueQuantity",
                         "effectiveDateTime", "subject", "reference", "unit", "text", "entry", "resource",
                         "medicationCodeableConcept", "dosageInstruction", "doseAndRate", "onsetDateTime"]),
        children, max_size=5),
    max_leaves=25)
RESOURCE_TYPES = st.sampled_from(["Observation", "Condition", "Encounter", "MedicationRequest", "Immunization",
                                  "MedicationAdministration", "Procedure", "Patient", "Medication", "Bundle"])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(RESOURCE_TYPES, st.dictionaries(st.text(max_size=12), FHIRISH, max_size=6)), max_size=8),
       st.sampled_from(["patient-view", "order-sign"]))
def test_malformed_resources_never_crash_and_yield_valid_cards(resources, hook):
    junk = [{**fields, "resourceType": rtype} for rtype, fields in resources]
    context = {"userId": "Practitioner/1", "patientId": "p1"}
    if hook == "order-sign":
        context["draftOrders"] = {"resourceType": "Bundle", "entry": [
            {"resource": {"resourceType": "MedicationRequest", "id": "d1", "status": "draft", "intent": "order",
                          "medicationCodeableConcept": {"text": "IVIG"}, "subject": {"reference": "Patient/p1"}}},
            *({"resource": r} for r in junk)]}
    service = next(s for s in hooks.SERVICES.values() if s.hook == hook)
    result = service.handler(HookRequest(hook=hook, hook_instance="h", service_id=service.id, context=context,
                                         prefetch={"junk": {"resourceType": "Bundle", "entry": [{"resource": r} for r in junk]}},
                                         today=TODAY))
    assert response_problems(result.response_body()) == []
