"""Records without anything the guideline decides on are answered without working out facts.

Most charts opened belong to patients with no immunoglobulin result and no immune globulin history:
patient-view answers them with no cards. ``nothing_to_decide`` lets it do so without extracting
facts, so it must never be true of a record the full evaluation would make a card of.
"""

from __future__ import annotations

from datetime import date

import pytest

import fhir_fixtures
from fhir_fixtures.builder import REFERENCE_TODAY as TODAY, Record, ago
from hooks.cards import CardContext
from hooks.config import DEFAULT_CONFIG
from hooks.engine import evaluate_read, nothing_to_decide
from hooks.fhir_read import read_resources
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
    if not decisive:
        assert _plans(_read(rec), TODAY) == []
