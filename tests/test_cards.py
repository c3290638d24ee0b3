"""Cards as the contract (../shared/contract/card-topics.md) and a clinician need them."""

from __future__ import annotations

import copy
import re
from datetime import date

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fhir_fixtures
import hooks
from fhir_fixtures.builder import amoxicillin_order, draft_orders, ivig_order
from hooks.cards import clip
from hooks.config import DEFAULT_CONFIG, GuidelineConfig
from hooks.service_def import HookRequest
from tests.cds_validate import response_problems, topics

TODAY = date(2026, 11, 24)


def cards_for(name: str, hook: str, hook_instance: str | None = None, context_patch=None,
              config: GuidelineConfig = DEFAULT_CONFIG) -> list[dict]:
    body = copy.deepcopy(fhir_fixtures.load_json(name, f"request-{hook}.json"))
    if context_patch:
        body["context"].update(context_patch)
    service = next(s for s in hooks.SERVICES.values() if s.hook == hook)
    result = service.handler(HookRequest(hook=hook, hook_instance=hook_instance or body["hookInstance"],
                                         service_id=service.id, context=body["context"], prefetch=body["prefetch"],
                                         today=TODAY, ruleset_version="9.9.9+cfg.test", config=config))
    assert response_problems(result.response_body()) == []
    return result.cards


def by_topic(cards: list[dict]) -> dict[str, dict]:
    return {c["source"]["topic"]["code"]: c for c in cards}


# a hospital's own regimen: every number differs from the guideline default
OWN_REGIMEN = GuidelineConfig(dose_min_g_per_kg=0.3, dose_max_g_per_kg=0.8, interval_min_weeks=2, interval_max_weeks=5,
                              trough_target_mg_dl=700, trough_overdue_months=2)


@pytest.mark.parametrize(("scenario", "hook", "topic"), [
    ("sample-igg-deficiency", "order-sign", "ivig-indicated"),
    ("sample-igg-deficiency", "patient-view", "ivig-indicated"),
    ("sample-hyper-igm", "patient-view", "hyper-igm-pattern"),
    ("sample-on-ivig-low-trough", "patient-view", "ivig-monitoring"),
])
def test_advice_quotes_the_configured_regimen_and_trough_target(scenario, hook, topic):
    """Cards restate dose, interval and trough target (card-topics.md) as the rules check them."""
    default = by_topic(cards_for(scenario, hook))[topic]
    own = by_topic(cards_for(scenario, hook, config=OWN_REGIMEN))[topic]
    assert "0.4–0.6 g/kg every 3–4 weeks" in default["summary"] + default["detail"]
    assert "0.3–0.8 g/kg every 2–5 weeks" in own["summary"] + own["detail"]
    assert "0.4–0.6" not in own["summary"] + own["detail"]
    if topic != "hyper-igm-pattern":
        assert "600" in default["summary"] + default["detail"]
        assert "700" in own["summary"] + own["detail"] and "600" not in own["summary"] + own["detail"]


def test_card_uuid_is_stable_per_hook_instance_and_topic():
    first = cards_for("sample-isolated-igm", "order-sign", "11111111-1111-4111-8111-111111111111")
    again = cards_for("sample-isolated-igm", "order-sign", "11111111-1111-4111-8111-111111111111")
    other = cards_for("sample-isolated-igm", "order-sign", "22222222-2222-4222-8222-222222222222")
    assert [c["uuid"] for c in first] == [c["uuid"] for c in again]
    assert {c["uuid"] for c in first}.isdisjoint({c["uuid"] for c in other})
    assert first[0]["suggestions"][0]["uuid"] == again[0]["suggestions"][0]["uuid"]


def test_not_indicated_card_names_the_reason_and_offers_one_click_alternatives():
    card = by_topic(cards_for("sample-isolated-igm", "order-sign"))["ivig-not-indicated"]
    assert card["indicator"] == "warning"
    assert card["summary"] == "IVIG not indicated: isolated low IgM (32 mg/dL) with normal IgG and PPSV23 response"
    actions = [a for s in card["suggestions"] for a in s.get("actions", [])]
    assert {"type": "delete", "resourceId": "MedicationRequest/ivig-draft-1"}.items() <= actions[0].items()
    assert any(a["type"] == "create" and a["resource"]["code"]["coding"][0]["code"] == "2465-3" for a in actions)
    assert {r["code"] for r in card["overrideReasons"]} >= {"other-indication", "immunology-consulted",
                                                            "established-elsewhere"}
    detail = card["detail"]
    for expected in ("32 mg/dL", "850 mg/dL", "below 40 mg/dL", "Isolated IgM deficiency", "Prophylactic antibiotics",
                     "Re-check IgG every 6–12 months"):
        assert expected in detail
    assert re.search(r"\| IgM \| 32 mg/dL \| \d{4}-\d{2}-\d{2} \|", detail)
    # the machine's words stay out of what the prescriber reads: rule names and version in the extension,
    # the literature in links
    for machine in ("isolated_igm_deficiency", "doi.org", "9.9.9+cfg.test", "criteria.md"):
        assert machine not in detail
    assert "isolated_igm_deficiency" in card["extension"]["ivig-cds-rules"]
    assert card["extension"]["ivig-cds-ruleset-version"] == "9.9.9+cfg.test"
    assert any("doi.org" in link["url"] for link in card["links"])


def test_missing_workup_becomes_orderable_service_requests():
    card = by_topic(cards_for("workup-incomplete-no-igg", "order-sign"))["ivig-not-indicated"]
    recommended = next(s for s in card["suggestions"] if s.get("isRecommended"))
    creates = [a["resource"] for a in recommended["actions"] if a["type"] == "create"]
    assert {r["resourceType"] for r in creates} == {"ServiceRequest"}
    assert all(r["subject"] == {"reference": "Patient/workup-incomplete-no-igg"} and r["status"] == "draft" for r in creates)
    texts = " ".join(r["code"]["text"] for r in creates)
    assert "IgG" in texts and "PPSV23" in texts and "CD19" in texts
    assert [a["type"] for a in recommended["actions"]][0] == "delete"


def test_several_orders_one_card_deleting_only_the_ivig_order():
    cards = cards_for("order-among-several", "order-sign")
    assert topics({"cards": cards}) == ["ivig-not-indicated"]
    deletes = [a["resourceId"] for s in cards[0]["suggestions"] for a in s.get("actions", []) if a["type"] == "delete"]
    assert set(deletes) == {"MedicationRequest/ivig-draft-1"}


def test_two_ivig_orders_are_both_deleted_by_one_card():
    body = fhir_fixtures.load_json("sample-isolated-igm", "request-order-sign.json")
    pid = body["context"]["patientId"]
    drafts = draft_orders(ivig_order(pid, "a"), ivig_order(pid, "b", product="Octagam", hcpcs="J1568"),
                          amoxicillin_order(pid))
    cards = cards_for("sample-isolated-igm", "order-sign", context_patch={"draftOrders": drafts})
    deletes = {a["resourceId"] for s in cards[0]["suggestions"] for a in s.get("actions", []) if a["type"] == "delete"}
    assert deletes == {"MedicationRequest/a", "MedicationRequest/b"}


def test_hyper_igm_is_critical_and_first_even_on_an_ivig_order():
    cards = cards_for("sample-hyper-igm", "order-sign")
    assert cards[0]["indicator"] == "critical" and cards[0]["source"]["topic"]["code"] == "hyper-igm-pattern"
    assert "needs IVIG" in cards[0]["summary"]
    assert "ivig-not-indicated" not in topics({"cards": cards})


def test_patients_who_need_ivig_are_never_told_it_is_not_indicated():
    for name in fhir_fixtures.scenario_names():
        expected = fhir_fixtures.load_json(name, "expected.json")["expected"]
        if "ivig-indicated" in expected.get("order-sign", []) or "hyper-igm-pattern" in expected.get("order-sign", []):
            assert "ivig-not-indicated" not in topics({"cards": cards_for(name, "order-sign")}), name


def test_dose_check_shows_the_computed_dose():
    card = by_topic(cards_for("dose-too-high-mg-per-kg", "order-sign"))["ivig-dose-check"]
    assert "1.00 g/kg" in card["summary"] and card["indicator"] == "warning"
    no_weight = by_topic(cards_for("dose-check-no-weight", "order-sign"))["ivig-dose-check"]
    assert "no body weight" in no_weight["summary"]


def test_unreadable_data_is_said_in_the_card():
    card = by_topic(cards_for("unknown-unit-igm", "order-sign"))["workup-incomplete"]
    assert "mmol/L" in card["detail"] and "not known" in card["detail"]


def test_cards_link_to_the_guideline():
    card = cards_for("sample-igg-deficiency", "patient-view")[0]
    assert card["links"][0]["type"] == "absolute" and card["links"][0]["url"].startswith("https://doi.org/")
    assert card["source"]["topic"]["system"] and card["extension"]["ivig-cds-ruleset-version"] == "9.9.9+cfg.test"


def test_smart_link_when_the_service_publishes_the_app():
    body = fhir_fixtures.load_json("sample-igg-deficiency", "request-patient-view.json")
    service = hooks.SERVICES["ivig-patient-view"]
    result = service.handler(HookRequest(hook="patient-view", hook_instance="h", service_id=service.id,
                                         context=body["context"], prefetch=body["prefetch"], today=TODAY,
                                         smart_launch_url="http://127.0.0.1:8080/smart/launch"))
    assert {"label", "url", "type"} <= result.cards[0]["links"][1].keys()
    assert result.cards[0]["links"][1]["type"] == "smart"


def test_summary_clip_keeps_under_140_and_cuts_at_a_word():
    text = "IVIG not indicated: " + "very long reason " * 20
    clipped = clip(text)
    assert len(clipped) < 140 and clipped.endswith("…") and not clipped[:-1].endswith(" ")
    assert clip("short") == "short"


def _dstu2_and_stu3_orders(pid: str) -> list[dict]:
    import json as _json

    from tests.conftest import reference

    out = []
    for name, rtype in (("request-order-sign-dstu2.json", "MedicationOrder"), ("request-order-sign-stu3.json", "MedicationRequest")):
        data = _json.loads(reference("spec-2.0.1", name).read_text())
        order = next(e["resource"] for e in data["context"]["draftOrders"]["entry"] if e["resource"]["resourceType"] == rtype)
        order = {**order, "medicationCodeableConcept": {"text": "Privigen 10% immune globulin"}}
        order["patient" if rtype == "MedicationOrder" else "subject"] = {"reference": f"Patient/{pid}"}
        out.append(order)
    return out


def test_dstu2_and_stu3_shaped_ivig_orders_are_recognised_and_deleted_by_their_own_ids():
    body = fhir_fixtures.load_json("sample-isolated-igm", "request-order-sign.json")
    pid = body["context"]["patientId"]
    dstu2, stu3 = _dstu2_and_stu3_orders(pid)
    for order, resource_id in ((dstu2, "MedicationOrder/smart-MedicationOrder-103"),
                               (stu3, "MedicationRequest/smart-MedicationRequest-103")):
        cards = cards_for("sample-isolated-igm", "order-sign",
                          context_patch={"draftOrders": {"resourceType": "Bundle", "entry": [{"resource": order}]}})
        found = by_topic(cards)
        assert "ivig-not-indicated" in found, resource_id
        # the example's "5 mL bid x 10 days" of a 10 % product is a 10-day course of 10 g (0.14 g/kg at 70 kg),
        # worded as written, never as a fraction of weeks
        dose = found["ivig-dose-check"]
        assert "twice a day for 10 days" in dose["detail"] and "10 g = 0.14 g/kg" in dose["detail"]
        assert "below the replacement dose" in dose["summary"] and "weeks" not in dose["summary"].split(":")[1]
        deletes = [a["resourceId"] for s in found["ivig-not-indicated"]["suggestions"]
                   for a in s.get("actions", []) if a["type"] == "delete"]
        assert set(deletes) == {resource_id}


@settings(max_examples=300, deadline=None)
@given(parts=st.lists(st.text(max_size=40), min_size=1, max_size=3))
def test_card_uuids_are_uuid5_of_their_parts(parts):
    """The uuid derivation is RFC 4122 version 5 in the card namespace, as uuid.uuid5 gives it."""
    import uuid

    from hooks.cards import CARD_NAMESPACE, _uuid

    assert _uuid(*parts) == str(uuid.uuid5(CARD_NAMESPACE, "|".join(parts)))
