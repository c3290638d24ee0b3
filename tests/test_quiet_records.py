"""Records without anything the guideline decides on are answered without working out facts.

Most charts opened belong to patients with no immunoglobulin result and no immune globulin history:
patient-view answers them with no cards. ``nothing_to_decide`` lets it do so without extracting
facts, so it must never be true of a record the full evaluation would make a card of; and
``nothing_to_decide_in`` tells it from the resources as sent, so it must never be true of a record
that ``nothing_to_decide`` finds something in once read.
"""

from __future__ import annotations

from datetime import date

import pytest

import fhir_fixtures
from fhir_fixtures.builder import REFERENCE_TODAY as TODAY, Record, ago
from hooks.cards import CardContext
from hooks.config import DEFAULT_CONFIG
from hooks.engine import evaluate_read, nothing_to_decide, nothing_to_decide_in
from hooks.fhir_read import iter_resources, read_resources
from hooks.patient_view import plans_for

PV_CASES = [n for n in fhir_fixtures.scenario_names() if fhir_fixtures.load_json(n, "request-patient-view.json")]


def _plans(read, today: date):
    ev = evaluate_read(read, today=today, config=DEFAULT_CONFIG)
    return plans_for(ev, CardContext(hook_instance="h", service_id="s", patient_id="p", ruleset_version="v"))


@pytest.mark.parametrize("name", PV_CASES)
def test_a_record_with_nothing_to_decide_would_get_no_card(name):
    body = fhir_fixtures.load_json(name, "request-patient-view.json")
    today = date.fromisoformat(fhir_fixtures.load_json(name, "expected.json")["today"])
    read = read_resources(body["prefetch"].values(), body["context"]["patientId"])
    expected = fhir_fixtures.load_json(name, "expected.json")["expected"]["patient-view"]
    if nothing_to_decide(read):
        assert expected == [] and _plans(read, today) == []


HOOK_FILES = [(n, f) for n in fhir_fixtures.scenario_names()
              for f in ("request-patient-view.json", "request-order-sign.json") if fhir_fixtures.load_json(n, f)]


@pytest.mark.parametrize(("name", "file"), HOOK_FILES)
def test_what_the_resources_as_sent_tell_holds_once_they_are_read(name, file):
    body = fhir_fixtures.load_json(name, file)
    values = list(body["prefetch"].values())
    if nothing_to_decide_in(iter_resources(values)):
        assert nothing_to_decide(read_resources(values, body["context"]["patientId"]))


def test_the_fixtures_hold_records_with_nothing_to_decide():
    quiet = [n for n in PV_CASES if nothing_to_decide(read_resources(
        fhir_fixtures.load_json(n, "request-patient-view.json")["prefetch"].values(), None))]
    assert "no-immunoglobulin-data" in quiet and "sample-isolated-igm" not in quiet


def _read(rec: Record):
    return read_resources([rec.bundle()], rec.patient_id)


@pytest.mark.parametrize(("build", "decisive"), [
    (lambda r: r.weight(70).office_visit(ago(days=3)), False),
    (lambda r: r.diagnosis("I10", "Essential (primary) hypertension", ago(months=3)), False),
    (lambda r: r.igm(35, when=ago(days=3)), True),
    (lambda r: r.igg(900, when=ago(days=3)), True),
    (lambda r: r.lab("titer", 2.0, "ug/mL", ago(days=3), code=False,
                     text="Streptococcus pneumoniae Danish serotype 14 IgG Ab"), True),
    (lambda r: r.ivig_given(ago(days=10)), True),
    (lambda r: r.active_ivig_order(ago(months=2)), True),
    (lambda r: r.diagnosis("D80.5", "Immunodeficiency with increased immunoglobulin M [IgM]", ago(months=3)), True),
])
def test_what_makes_a_record_one_to_decide_on(build, decisive):
    rec = Record("q")
    build(rec)
    assert nothing_to_decide(_read(rec)) is not decisive
    assert nothing_to_decide_in(iter_resources([rec.bundle()])) is not decisive
    if not decisive:
        assert _plans(_read(rec), TODAY) == []


def _resource(rtype: str, **elements) -> dict:
    return {"resourceType": rtype, "id": "x1", "subject": {"reference": "Patient/q"}, **elements}


_IGM = {"coding": [{"system": "http://loinc.org", "code": "2472-9", "display": "IgM [Mass/volume] in Serum"}]}
_WEIGHT = {"coding": [{"system": "http://loinc.org", "code": "29463-7", "display": "Body weight"}]}


@pytest.mark.parametrize(("resource", "decisive"), [
    (_resource("Observation", status="final", code=_WEIGHT, valueQuantity={"value": 70, "unit": "kg"}), False),
    # an IgM result whose other elements are odd still counts until it is read
    (_resource("Observation", status=7, code=_IGM), True),
    (_resource("Observation", status="final", code={"text": "Immunoglobulin M"}), True),
    (_resource("Observation", status="final", code={"coding": [{"system": 5, "code": "2472-9"}]}), True),
    # DSTU2 order of immune globulin, and one naming its medication by reference
    (_resource("MedicationOrder", medicationCodeableConcept={"text": "Immune globulin (human) IV"}), True),
    (_resource("MedicationRequest", medicationReference={"reference": "Medication/m1"}), True),
    (_resource("Procedure", code={"text": "IVIG infusion"}), True),
    # hyper-IgM by name only, by SNOMED, and a code that is not plainly a concept
    (_resource("Condition", code={"text": "Hyper-IgM syndrome"}), True),
    (_resource("Condition", code={"coding": [{"system": "http://snomed.info/sct", "code": "403835002"}]}), True),
    (_resource("Condition", code={"coding": [{"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": "J18.9",
                                              "display": 5}]}), True),
    (_resource("Condition", code={"coding": [{"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": "J18.9",
                                              "display": "Pneumonia, unspecified organism"}]}), False),
    (_resource("Condition", code={"coding": [{"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": "I10"}]}), False),
])
def test_what_the_resources_as_sent_tell(resource, decisive):
    assert nothing_to_decide_in([resource]) is not decisive
    if not decisive:
        assert nothing_to_decide(read_resources([resource], "q"))


HOOK_SERVICES = {"request-patient-view.json": "ivig-patient-view", "request-order-sign.json": "ivig-order-sign"}


@pytest.mark.parametrize(("name", "file"), HOOK_FILES)
def test_an_answer_given_at_once_is_the_one_the_rules_would_give(name, file):
    """``at_once`` answers without reading the record: only ever with no cards, and only where
    the full decision on the same call gives none either."""
    from hooks import SERVICES
    from hooks.service_def import HookRequest

    body = fhir_fixtures.load_json(name, file)
    today = date.fromisoformat(fhir_fixtures.load_json(name, "expected.json")["today"])
    service = SERVICES[HOOK_SERVICES[file]]
    request = HookRequest(hook=service.hook, hook_instance="h", service_id=service.id, context=body["context"],
                          prefetch=body["prefetch"], today=today)
    plain = service.at_once(request)
    if plain is not None:
        assert plain.cards == [] and service.handler(request).cards == []
        assert plain.trace, "the trace says why there is nothing to decide"


def test_the_fixtures_hold_calls_answered_at_once_and_calls_decided():
    from hooks import SERVICES
    from hooks.service_def import HookRequest

    def at_once(name: str, file: str) -> bool:
        body = fhir_fixtures.load_json(name, file)
        service = SERVICES[HOOK_SERVICES[file]]
        return service.at_once(HookRequest(hook=service.hook, hook_instance="h", service_id=service.id,
                                           context=body["context"], prefetch=body["prefetch"], today=TODAY)) is not None

    assert at_once("no-immunoglobulin-data", "request-patient-view.json")
    assert not at_once("sample-isolated-igm", "request-patient-view.json")
    assert at_once("order-anti-d-not-ivig", "request-order-sign.json")
    assert not at_once("sample-igg-deficiency", "request-order-sign.json")


def test_order_select_is_answered_at_once_only_when_no_selected_draft_is_immune_globulin():
    """order-select looks at the selected drafts alone: an IVIG draft signed later, but not selected
    now, does not need the record; selecting it does."""
    from copy import deepcopy

    from hooks import SERVICES
    from hooks.service_def import HookRequest

    body = fhir_fixtures.load_json("sample-igg-deficiency", "request-order-sign.json")
    context = deepcopy(body["context"])
    ivig = context["draftOrders"]["entry"][0]["resource"]
    other = {"resourceType": "MedicationRequest", "id": "amox-1", "status": "draft", "intent": "order",
             "subject": ivig["subject"], "medicationCodeableConcept": {"text": "amoxicillin 500 mg oral capsule"}}
    context["draftOrders"]["entry"].append({"resource": other})
    service = SERVICES["ivig-order-select"]

    def at_once(selected: str):
        return service.at_once(HookRequest(hook=service.hook, hook_instance="h", service_id=service.id,
                                           context={**context, "selections": [selected]},
                                           prefetch=body["prefetch"], today=TODAY))

    assert at_once("MedicationRequest/amox-1") is not None
    assert at_once(f"MedicationRequest/{ivig['id']}") is None
