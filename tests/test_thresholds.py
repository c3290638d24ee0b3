"""Thresholds come from configuration: moving each one moves the decision on its edge scenario.

The edge scenarios in fhir_fixtures/ (edge-*) pin both sides of every default; here each
threshold is changed and the same record must decide the other way — proof that no rule
holds the number itself.
"""

from __future__ import annotations

from datetime import date

import pytest

import fhir_fixtures
import hooks
from fhir_fixtures.builder import Record, ago
from hooks.config import GuidelineConfig
from hooks.engine import evaluate_patient
from hooks.service_def import HookRequest
from tests.cds_validate import topics

TODAY = date(2026, 11, 24)
IND, ISO, WU, NI, MON, CONF, DOSE = ("ivig-indicated", "isolated-igm-deficiency", "workup-incomplete",
                                     "ivig-not-indicated", "ivig-monitoring", "labs-confounded-by-ivig",
                                     "ivig-dose-check")


def run(name: str, hook: str, **overrides) -> list[str]:
    body = fhir_fixtures.load_json(name, f"request-{hook}.json")
    service = next(s for s in hooks.SERVICES.values() if s.hook == hook)
    result = service.handler(HookRequest(hook=hook, hook_instance=body["hookInstance"], service_id=service.id,
                                         context=body["context"], prefetch=body["prefetch"], today=TODAY,
                                         config=GuidelineConfig(**overrides)))
    return sorted(topics(result.response_body()))


@pytest.mark.parametrize(("scenario", "hook", "overrides", "default", "moved"), [
    ("edge-igm-39", "patient-view", {"igm_low_mg_dl": 30}, [ISO], []),
    ("edge-igm-40", "patient-view", {"igm_low_mg_dl": 45}, [], [ISO]),
    ("edge-igg-499", "patient-view", {"igg_deficient_mg_dl": 450, "igg_borderline_from_mg_dl": 400}, [IND], [ISO]),
    ("edge-igg-500", "patient-view", {"igg_deficient_mg_dl": 550}, [ISO], [IND]),
    ("edge-ppsv23-16-of-23", "patient-view", {"ppsv23_protective_fraction": 0.65}, [IND], [ISO]),
    ("edge-ppsv23-17-of-23", "patient-view", {"titer_protective_ug_ml": 3.0}, [ISO], [IND]),
    ("edge-igg-399", "patient-view", {"recurrent_severe_infection_count": 3}, [IND], [ISO]),
    ("edge-infection-window-inside", "patient-view", {"infection_window_months": 11}, [IND], [ISO]),
    ("edge-infection-window-outside", "patient-view", {"infection_window_months": 13}, [ISO], [IND]),
    ("edge-trough-599", "patient-view", {"trough_target_mg_dl": 550}, [IND, MON], [IND]),
    ("edge-trough-600", "patient-view", {"trough_target_mg_dl": 650}, [IND], [IND, MON]),
    ("edge-trough-overdue", "patient-view", {"trough_overdue_months": 4}, [IND, MON], [IND]),
    ("edge-confounding-6-months", "patient-view", {"ivig_confounding_months": 5}, [CONF], [ISO]),
    ("edge-confounding-6-months-1-day", "patient-view", {"ivig_confounding_months": 7}, [ISO], [CONF]),
    ("edge-stale-12-months", "patient-view", {"stale_lab_months": 11}, [ISO], [WU]),
    ("edge-dose-0.39", "order-sign", {"dose_min_g_per_kg": 0.3}, [DOSE, IND], [IND]),
    ("edge-dose-0.61", "order-sign", {"dose_max_g_per_kg": 0.7}, [DOSE, IND], [IND]),
    ("edge-interval-5-weeks", "order-sign", {"interval_max_weeks": 5}, [DOSE, IND], [IND]),
    ("edge-interval-3-weeks", "order-sign", {"interval_min_weeks": 3.5}, [IND], [DOSE, IND]),
    ("consider-encapsulated", "patient-view", {"encapsulated_infection_count": 3}, [IND], [ISO]),
    ("consider-life-threatening", "patient-view", {"life_threatening_infection_count": 2}, [IND], [ISO]),
    ("titers-drawn-too-late", "patient-view", {"post_titer_max_days": 80}, [WU], [ISO]),
    # as an adult, IgM 30 is low; with normal IgG but no PPSV23 challenge that is an incomplete work-up
    ("child-igm-within-age-range", "patient-view", {"adult_age_years": 3}, [], [WU]),
])
def test_threshold_moves_the_decision(scenario, hook, overrides, default, moved):
    assert run(scenario, hook) == sorted(default)
    assert run(scenario, hook, **overrides) == sorted(moved)


def _facts(rec: Record, **overrides):
    return evaluate_patient([rec.bundle()], patient_id=rec.patient_id, today=TODAY,
                            config=GuidelineConfig(**overrides)).facts


def test_young_child_age_threshold():
    rec = Record("c", birth="2022-06-01").ppsv23_challenge(protective_post=12)  # 52 %
    assert _facts(rec).pneumococcal.status == "adequate"
    assert _facts(rec, young_child_age_years=4).pneumococcal.status == "impaired"


def test_iga_threshold_when_the_lab_gives_no_range():
    rec = Record("p").iga(10, when=ago(days=3))
    assert not _facts(rec).iga.is_low
    assert _facts(rec, iga_low_mg_dl=12).iga.is_low


def test_on_treatment_window():
    rec = Record("p").ivig_given(ago(days=100))
    assert not _facts(rec).ivig.on_treatment
    assert _facts(rec, on_treatment_days=120).ivig.on_treatment


def test_weight_age_limit():
    rec = Record("p").weight(70, when=ago(months=8))
    assert _facts(rec).weight is not None
    assert _facts(rec, weight_stale_months=6).weight is None


def test_infection_episode_merge_window():
    rec = Record("p").pneumonia(ago(days=10)).pneumonia(ago(days=30))
    assert len(_facts(rec).infections.episodes) == 2
    assert len(_facts(rec, infection_episode_merge_days=30).infections.episodes) == 1


def test_borderline_igg_is_said():
    detail_450 = " ".join(c.get("detail", "") for c in _cards("edge-igg-499"))
    detail_399 = " ".join(c.get("detail", "") for c in _cards("edge-igg-399"))
    assert "borderline" in detail_450 and "borderline" not in detail_399


def test_immunomodulatory_dose_threshold_decides_whether_an_active_other_indication_explains_the_order():
    """The order gives a non-specific reason; the patient has active ITP. A 1 g/kg dose is
    immunomodulatory (outside this guideline); below the configured range it is replacement."""
    from fhir_fixtures.builder import ICD, draft_orders, ivig_order

    rec = Record("itp-2").igm(30, when=ago(days=5)).igg(900, when=ago(days=5)).weight(60)
    rec.diagnosis("D69.3", "Immune thrombocytopenic purpura", ago(days=6))
    order = ivig_order("itp-2", dose=1, unit="g/kg", every_weeks=None,
                       reason=(ICD, "R76.8", "Other specified abnormal immunological findings in serum"))
    service = hooks.SERVICES["ivig-order-sign"]

    def card_topics(**overrides):
        return sorted(topics(service.handler(HookRequest(
            hook="order-sign", hook_instance="x", service_id=service.id,
            context={"userId": "Practitioner/1", "patientId": "itp-2", "draftOrders": draft_orders(order)},
            prefetch={"record": rec.bundle()}, today=TODAY, config=GuidelineConfig(**overrides))).response_body()))

    assert card_topics() == []
    moved = card_topics(immunomodulatory_dose_min_g_per_kg=1.5, immunomodulatory_dose_max_g_per_kg=2.5)
    assert NI in moved and DOSE in moved


def _cards(name: str):
    body = fhir_fixtures.load_json(name, "request-patient-view.json")
    service = hooks.SERVICES["ivig-patient-view"]
    return service.handler(HookRequest(hook="patient-view", hook_instance="x", service_id=service.id,
                                       context=body["context"], prefetch=body["prefetch"], today=TODAY)).cards


@pytest.mark.parametrize("bad", [
    {"igg_borderline_from_mg_dl": 600},
    {"dose_min_g_per_kg": 0.7},
    {"post_titer_min_days": 60},
    {"ppsv23_protective_fraction": 1.5},
    {"igm_low_mg_dl": -1},
    {"unknown_threshold": 3},
])
def test_invalid_configuration_is_refused(bad):
    with pytest.raises(ValueError):
        GuidelineConfig(**bad)
