"""A result read straight from its JSON equals the result read through the model.

hooks/lab_results.py reads a well-formed Observation without the pydantic model and answers None
at the first doubt; these tests hold it to the model path (hooks/fhir_read.py ``validate`` then
``from_model``) on every Observation of every scenario and on variants that break or bend each
element the model declares: whenever the straight read answers, it answers what the model path
does, and the model path kept every element (nothing was dropped to read it).
"""

from __future__ import annotations

import copy
from typing import Any, Iterator

import pytest

import fhir_fixtures
from hooks.fhir_read import adapt_shape, iter_resources, observation_may_matter, validate
from hooks.lab_results import from_json, from_model


def _observations(name: str) -> list[tuple[str, dict[str, Any]]]:
    return [(f"{name}/{raw.get('id')}", raw) for raw in iter_resources(fhir_fixtures.load_scenario(name).get("bundle"))
            if raw.get("resourceType") == "Observation" and observation_may_matter(raw)]


SCENARIOS = fhir_fixtures.scenario_names()
OBSERVATIONS = [item for name in SCENARIOS for item in _observations(name)]

#: values that are wrong, or right, for some element: each is put in every place below
ODD_VALUES: tuple[Any, ...] = (
    None, "", " ", "x", "a  b", " lead", "trail ", "a b", 5, 2 ** 60, 25.5, True, [], {}, [None], ["x"], [{}],
    {"coding": "x"}, {"coding": [None]}, {"coding": [{"code": 5}]}, {"text": 5},
    "2026-13-01", "2026-11-12T10:00:00", "2026-11-12T10:00:00Z", "2026-11", "2026", "2026-02-30",
    "2026-11-12T10:00:60+01:00", "25", "<", "~",
)


def _paths(value: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every element's path in a resource (keys and list positions), parents before children."""
    if isinstance(value, dict):
        for key, child in value.items():
            if key != "resourceType":
                yield path + (key,)
                yield from _paths(child, path + (key,))
    elif isinstance(value, list):
        for i, child in enumerate(value):
            yield path + (i,)
            yield from _paths(child, path + (i,))


def _get(resource: dict[str, Any], path: tuple[Any, ...]) -> Any:
    for step in path:
        resource = resource[step]
    return resource


def _set(resource: dict[str, Any], path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    out = copy.deepcopy(resource)
    node = out
    for step in path[:-1]:
        node = node[step]
    node[path[-1]] = copy.deepcopy(value)
    return out


#: elements of the data types inside a result (Coding, CodeableConcept, Quantity, Reference, Period, ranges)
NESTED = ("system", "version", "code", "display", "text", "coding", "value", "comparator", "unit", "reference",
          "type", "start", "end", "low", "high", "appliesTo", "age")


def _variants(raw: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for path in _paths(raw):
        for value in ODD_VALUES:
            yield _set(raw, path, value)
    objects = [p for p in _paths(raw) if isinstance(_get(raw, p), dict)]
    for path in objects:
        for key in NESTED:
            for value in ODD_VALUES[:16]:
                yield _set(raw, path + (key,), value)
    for extra in ("valueString", "effectiveInstant", "issued", "dataAbsentReason", "valueCodeableConcept",
                  "encounter", "contained", "patient", "notAnElement", "_status", "effectivePeriod"):
        for value in ("12 mg/dL", "<5 mg/dL", "2026-11-12T10:00:00+01:00", {"start": "2026-11-01"},
                      {"coding": [{"code": "unknown"}]}, {"reference": "Encounter/e"}, [{"resourceType": "Medication"}]):
            yield {**raw, extra: value}


def _model_result(raw: dict[str, Any]):
    model, dropped, reason = validate(raw)
    return (from_model(model, adapt_shape(raw).get("id")) if model is not None else None), dropped, reason


def test_every_scenario_has_results_to_check():
    assert len(OBSERVATIONS) > 300


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_a_scenario_result_reads_the_same_both_ways(scenario):
    for where, raw in _observations(scenario):
        straight = from_json(raw)
        through_model, dropped, reason = _model_result(raw)
        if (reason, dropped) != (None, ()):  # a scenario about unreadable data
            assert straight is None, where
            continue
        assert straight is not None, f"{where}: a well-formed result should not need the model"
        assert straight == through_model, where


def test_variants_read_the_same_both_ways_or_go_through_the_model():
    """Thousands of broken and bent results: each either reads as the model path reads it, or is left to it."""
    checked = straight_reads = 0
    for where, raw in OBSERVATIONS[::25]:
        assert from_json(raw) is not None  # its shared elements are now known: variants of the rest must still be checked
        for variant in _variants(raw):
            checked += 1
            straight = from_json(variant)
            assert from_json(variant) == straight, f"{where}: read again, read otherwise: {variant}"
            if straight is None:
                continue
            straight_reads += 1
            through_model, dropped, reason = _model_result(variant)
            assert (reason, dropped) == (None, ()), f"{where}: read straight, but the model had to drop {dropped} ({reason}): {variant}"
            assert straight == through_model, f"{where}: {variant}"
    assert checked > 20000 and 0.2 * checked < straight_reads < 0.9 * checked


@pytest.mark.parametrize("change,why", [
    ({"id": "Observation/abc"}, "an id with its type is cut by the model path"),
    ({"patient": {"reference": "Patient/p"}}, "a STU3 subject"),
    ({"valueQuantity": {"value": "25", "unit": "mg/dL"}}, "a decimal sent as text"),
    ({"valueQuantity": {"value": True}}, "a boolean is no decimal"),
    ({"status": "final "}, "a code with a trailing space"),
    ({"effectiveDateTime": "2026-11-12T10:00:00"}, "a time without its zone"),
    ({"contained": [{"resourceType": "Specimen"}]}, "a contained resource"),
    ({"madeUp": 1}, "an element FHIR does not define"),
    ({"interpretation": [None]}, "a null in a list"),
])
def test_what_is_outside_the_common_shape_is_left_to_the_model(change, why):
    where, raw = OBSERVATIONS[0]
    assert from_json(raw) is not None
    assert from_json({**raw, **change}) is None, why


def test_results_alike_but_for_one_element_each_read_their_own():
    """What every patient's result of a test shares is interpreted once; each result still reads
    its own flags, ranges and status, and its own id, subject, times and value are checked."""
    where, raw = OBSERVATIONS[0]
    low = {**raw, "interpretation": [{"coding": [{"code": "L"}]}]}
    high = {**raw, "interpretation": [{"coding": [{"code": "H"}]}]}
    assert from_json(low).flags == {"L"} and from_json(high).flags == {"H"}
    assert from_json({**raw, "interpretation": [{"coding": [{"code": "L "}]}]}) is None
    ranged = {**raw, "referenceRange": [{"low": {"value": 40, "unit": "mg/dL"}}]}
    assert from_json(ranged).ranges == (((40.0, "mg/dL"), None),)
    assert from_json({**ranged, "referenceRange": [{"low": {"value": 40.5, "unit": "mg/dL"}}]}).ranges == (
        ((40.5, "mg/dL"), None),)
    assert from_json({**raw, "status": "amended"}).status == "amended"
    assert from_json(raw) is not None
    for change in ({"subject": {"reference": 5}}, {"id": "a b"}, {"effectiveDateTime": "2026-13-01"},
                   {"valueQuantity": {"value": "25"}}, {"encounter": []}):
        assert from_json({**raw, **change}) is None, change
