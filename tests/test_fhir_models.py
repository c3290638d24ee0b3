"""The rules' FHIR models against fhir.resources, the model of record.

hooks/fhir_models.py validates only what the rules read; these tests hold it to fhir.resources:
the same attribute names with the same values and types on every resource of every scenario,
the same element names per resource type, every R4B resource type known. fhir.resources also
validates every resource the service itself writes (the suggestions' ServiceRequests).
"""

from __future__ import annotations

import importlib
import pkgutil
from datetime import date, datetime
from decimal import Decimal
from typing import Any, Iterator

import pytest
from fhir.resources.R4B import get_fhir_model_class
from pydantic import BaseModel, ValidationError

import fhir_fixtures
import hooks
from hooks.fhir_models import ELEMENTS, MODELS, RESOURCE_TYPES
from hooks.fhir_read import RELEVANT, adapt_shape, iter_resources
from hooks.service_def import HookRequest

TODAY = fhir_fixtures.REFERENCE_TODAY


def _record_resources(name: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every resource the rules read in a scenario (its record and draft orders), adapted."""
    scenario = fhir_fixtures.load_scenario(name)
    for part in ("bundle", "draftOrders"):
        for raw in iter_resources(scenario.get(part)):
            rtype = "MedicationRequest" if raw["resourceType"] == "MedicationOrder" else raw["resourceType"]
            if rtype in MODELS and RELEVANT[rtype](raw):
                yield f"{name}/{raw['resourceType']}/{raw.get('id')}", adapt_shape(raw)


def _same(lean: Any, full: Any, where: str) -> None:
    """Every element of the rules' model has the same name, value and type in fhir.resources'."""
    if isinstance(lean, BaseModel):
        assert isinstance(full, BaseModel), f"{where}: {type(full).__name__} where a model is read"
        if hasattr(lean, "get_resource_type"):
            assert lean.get_resource_type() == full.get_resource_type(), where
        for name in type(lean).model_fields:
            assert name in type(full).model_fields, f"{where}.{name}: not an attribute of fhir.resources' model"
            _same(getattr(lean, name), getattr(full, name), f"{where}.{name}")
    elif isinstance(lean, list):
        assert isinstance(full, list) and len(full) == len(lean), where
        for i, (a, b) in enumerate(zip(lean, full)):
            _same(a, b, f"{where}[{i}]")
    elif isinstance(lean, datetime):
        assert isinstance(full, datetime) and lean == full and lean.utcoffset() == full.utcoffset(), where
        assert lean.tzinfo is not None, f"{where}: a time without its zone"
    else:
        assert type(lean) is type(full) and lean == full, f"{where}: {lean!r} ({type(lean).__name__}) " \
                                                          f"!= {full!r} ({type(full).__name__})"


@pytest.mark.parametrize("scenario", fhir_fixtures.scenario_names())
def test_every_element_read_is_named_and_typed_as_fhir_resources_has_it(scenario: str):
    resources = list(_record_resources(scenario))
    assert resources
    for key, data in resources:
        lean = MODELS[data["resourceType"]].model_validate(data)
        full = get_fhir_model_class(data["resourceType"]).model_validate(data)
        _same(lean, full, key)


def test_the_scenarios_cover_the_resource_types_the_rules_read():
    read = {data["resourceType"] for name in fhir_fixtures.scenario_names() for _, data in _record_resources(name)}
    assert set(MODELS) - read <= {"MedicationStatement", "MedicationDispense", "Procedure", "ServiceRequest"}


#: Elements FHIR gives one resource and the others a value of their own type: what the lead asked
#: to read beyond what the rules read today (time of day, absent values, product strength).
EXTRA = {
    "Observation": {
        "resourceType": "Observation", "id": "o", "status": "final",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                  "code": "laboratory"}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": "2472-9"}]},
        "subject": {"reference": "Patient/p"}, "effectiveDateTime": "2026-10-01T08:30:00+02:00",
        "issued": "2026-10-01T14:05:11.250Z", "dataAbsentReason": {"coding": [{"code": "error"}]},
        "valueCodeableConcept": {"text": "see comment"},
        "referenceRange": [{"low": {"value": 40, "unit": "mg/dL"}, "high": {"value": 230, "unit": "mg/dL"}}],
        "interpretation": [{"coding": [{"code": "L"}]}],
    },
    "MedicationAdministration": {
        "resourceType": "MedicationAdministration", "id": "a", "status": "completed",
        "medicationCodeableConcept": {"text": "Privigen 10 %"}, "subject": {"reference": "Patient/p"},
        "effectivePeriod": {"start": "2026-10-01T09:00:00+02:00", "end": "2026-10-01T13:00:00+02:00"},
        "dosage": {"dose": {"value": 300, "unit": "mL", "system": "http://unitsofmeasure.org", "code": "mL"}},
    },
    "MedicationRequest": {
        "resourceType": "MedicationRequest", "id": "r", "status": "draft", "intent": "order",
        "medicationReference": {"reference": "#ivig"}, "subject": {"reference": "Patient/p"},
        "contained": [{"resourceType": "Medication", "id": "ivig", "code": {"text": "Privigen"},
                       "form": {"text": "solution for infusion"},
                       "amount": {"numerator": {"value": 100, "unit": "mL"}, "denominator": {"value": 1, "unit": "vial"}},
                       "ingredient": [{"itemCodeableConcept": {"text": "immune globulin"},
                                       "strength": {"numerator": {"value": 10, "unit": "g"},
                                                    "denominator": {"value": 100, "unit": "mL"}}}]}],
        "dosageInstruction": [{"timing": {"repeat": {"count": 6, "duration": 3, "durationUnit": "h", "frequency": 1,
                                                     "period": 4, "periodUnit": "wk",
                                                     "boundsPeriod": {"start": "2026-12-01"}}},
                               "doseAndRate": [{"doseQuantity": {"value": 0.5, "unit": "g/kg"}}]}],
    },
    "MedicationStatement": {
        "resourceType": "MedicationStatement", "id": "s", "status": "completed",
        "medicationCodeableConcept": {"text": "Hizentra"}, "subject": {"reference": "Patient/p"},
        "effectivePeriod": {"start": "2025-01-01", "end": "2025-12-31"},
        "dosage": [{"text": "weekly", "doseAndRate": [{"doseQuantity": {"value": 8, "unit": "g"}}]}],
    },
    "MedicationDispense": {
        "resourceType": "MedicationDispense", "id": "d", "status": "completed",
        "medicationCodeableConcept": {"text": "Gammagard"}, "subject": {"reference": "Patient/p"},
        "whenHandedOver": "2026-09-30T16:00:00-05:00", "quantity": {"value": 300, "unit": "mL"},
    },
    "Procedure": {
        "resourceType": "Procedure", "id": "pr", "status": "completed", "code": {"text": "IVIG infusion"},
        "subject": {"reference": "Patient/p"}, "performedPeriod": {"start": "2026-08-01T10:00:00Z"},
    },
    "ServiceRequest": {
        "resourceType": "ServiceRequest", "id": "sr", "status": "draft", "intent": "order",
        "code": {"text": "Immune globulin infusion"}, "subject": {"reference": "Patient/p"},
        "authoredOn": "2026-11-20", "reasonCode": [{"text": "CVID"}],
    },
}


@pytest.mark.parametrize("rtype", sorted(EXTRA))
def test_times_of_day_absent_values_timing_and_strength_read_as_fhir_resources_reads_them(rtype: str):
    lean = MODELS[rtype].model_validate(EXTRA[rtype])
    _same(lean, get_fhir_model_class(rtype).model_validate(EXTRA[rtype]), rtype)


def test_what_the_lead_reads_is_there_with_its_time_of_day():
    obs = MODELS["Observation"].model_validate(EXTRA["Observation"])
    assert obs.effectiveDateTime.hour == 8 and obs.effectiveDateTime.utcoffset().total_seconds() == 7200
    assert obs.issued.microsecond == 250000 and obs.dataAbsentReason.coding[0].code == "error"
    order = MODELS["MedicationRequest"].model_validate(EXTRA["MedicationRequest"])
    repeat = order.dosageInstruction[0].timing.repeat
    assert (repeat.count, repeat.duration, repeat.durationUnit, repeat.frequency, repeat.period, repeat.periodUnit) \
        == (6, Decimal(3), "h", 1, Decimal(4), "wk")
    assert repeat.boundsPeriod.start == date(2026, 12, 1)
    (medication,) = order.contained
    strength = medication.ingredient[0].strength
    assert medication.get_resource_type() == "Medication" and medication.id == "ivig"
    assert (strength.numerator.value, strength.numerator.unit, strength.denominator.value) == (10, "g", 100)
    assert medication.amount.numerator.value == 100 and medication.form.text == "solution for infusion"


@pytest.mark.parametrize("value, expected", [
    ("2026", "2026"), ("2026-03", "2026-03"), ("2026-03-04", date(2026, 3, 4)),
    ("2026-03-04T10:00:00Z", datetime.fromisoformat("2026-03-04T10:00:00+00:00")),
])
def test_dates_keep_what_fhir_gives(value, expected):
    obs = MODELS["Observation"].model_validate({**EXTRA["Observation"], "effectiveDateTime": value})
    assert obs.effectiveDateTime == expected and type(obs.effectiveDateTime) is type(expected)


@pytest.mark.parametrize("field, value", [
    ("effectiveDateTime", "2026-03-04T10:00:00"),  # a time without its zone
    ("effectiveDateTime", "2026-02-30"),
    ("issued", "2026-03-04"),  # an instant needs its time
    ("status", "final "),
    ("status", 42),
])
def test_primitives_fhir_resources_rejects_are_rejected(field, value):
    data = {**EXTRA["Observation"], field: value}
    with pytest.raises(ValidationError):
        get_fhir_model_class("Observation").model_validate(data)
    with pytest.raises(ValidationError) as err:
        MODELS["Observation"].model_validate(data)
    assert err.value.errors()[0]["loc"][0] == field


def test_a_decimal_is_a_number_or_a_decimal_string_never_a_boolean():
    def value(v):
        return MODELS["Observation"].model_validate(
            {**EXTRA["Observation"], "valueQuantity": {"value": v}}).valueQuantity.value

    assert value(32) == Decimal(32) and value(0.1) == Decimal("0.1") and value("32.5") == Decimal("32.5")
    for bad in (True, "32,5", "abc", [1]):
        with pytest.raises(ValidationError):
            value(bad)


@pytest.mark.parametrize("rtype", sorted(MODELS))
def test_element_names_are_fhir_r4s(rtype: str):
    fields = get_fhir_model_class(rtype).model_fields
    names = {f.alias or name for name, f in fields.items()} - {"fhir_comments"}
    assert ELEMENTS[rtype] == {n for n in names if not n.startswith("_")}
    assert set(MODELS[rtype].model_fields) <= set(fields)


def test_every_r4b_resource_type_is_known():
    from fhir.resources import R4B
    from fhir.resources.R4B.resource import Resource

    found = set()
    for module in pkgutil.iter_modules(R4B.__path__):
        if module.name.startswith(("fhirtypes", "_")) or module.name == "tests":
            continue
        for value in vars(importlib.import_module(f"fhir.resources.R4B.{module.name}")).values():
            if isinstance(value, type) and issubclass(value, Resource) and value.__module__.endswith(module.name):
                found.add(value.get_resource_type())
    found -= {"Resource", "DomainResource"}
    assert len(found) > 130 and found <= RESOURCE_TYPES


def _suggestion_resources() -> Iterator[tuple[str, dict[str, Any]]]:
    for name in fhir_fixtures.scenario_names():
        for hook in ("patient-view", "order-select", "order-sign"):
            body = fhir_fixtures.load_json(name, f"request-{hook}.json")
            if body is None:
                continue
            service = next(s for s in hooks.SERVICES.values() if s.hook == hook)
            result = service.handler(HookRequest(hook=hook, hook_instance="h", service_id=service.id,
                                                 context=body["context"], prefetch=body["prefetch"], today=TODAY))
            for card in result.cards:
                for suggestion in card.get("suggestions", []):
                    for action in suggestion.get("actions", []):
                        if "resource" in action:
                            yield f"{name}/{hook}: {suggestion['label']}", action["resource"]


def test_every_resource_a_suggestion_creates_is_valid_fhir_r4():
    resources = list(_suggestion_resources())
    assert len(resources) > 10
    for where, resource in resources:
        try:
            get_fhir_model_class(resource["resourceType"]).model_validate(resource)
        except ValidationError as exc:
            pytest.fail(f"{where}: {exc}")
