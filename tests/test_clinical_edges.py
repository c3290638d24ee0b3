"""The clinical edges a prescriber would catch us on: both sides of each one.

Trough or mid-interval level; monthly troughs during an active infection; isolated IgM deficiency
only with an adequate pneumococcal response; impossible values, results without a value or entered
in error; the same result or infection sent twice; doses in mL, weekly SCIG, multi-day courses and
doses that are not a mass.
"""

from __future__ import annotations

import math
from datetime import date, timedelta

import pytest

from fhir_fixtures.builder import REFERENCE_TODAY as TODAY, Record, ago, ivig_order
from hooks.config import GuidelineConfig
from hooks.dosing import interval_words
from hooks.engine import evaluate_patient
from hooks.facts import LevelTiming, extract_facts
from hooks.fhir_read import read_resources
from hooks.assessment import Assessment
from service.settings import ConfigError, load_settings

CFG = GuidelineConfig()


def facts_of(rec: Record, cfg: GuidelineConfig = CFG):
    read = read_resources([rec.bundle()], rec.patient_id)
    return extract_facts(read, TODAY, cfg, clinical_dates=read.clinical_dates)


def decision_of(rec: Record, cfg: GuidelineConfig = CFG, orders: list | None = None):
    ev = evaluate_patient([rec.bundle()], patient_id=rec.patient_id, today=TODAY, config=cfg, drafts=orders)
    return ev


def day(days_ago: int) -> str:
    return (TODAY - timedelta(days=days_ago)).isoformat()


# ------------------------------------------------------------------ trough or mid-interval


def on_ivig(*levels: tuple[float, str], infusions: tuple[str, ...] = (), subcutaneous: bool = False) -> Record:
    """A patient on IVIG (IgG deficiency, two pneumonias before it) with the given infusions and IgG levels."""
    rec = Record("t", birth="1968-12-01")
    rec.igm(20, when=ago(months=21)).igg(300, when=ago(months=21))
    rec.pneumonia(ago(months=24)).pneumonia(ago(months=28))
    for when in infusions or (day(63), day(35), day(7)):
        if subcutaneous:
            rec.ivig_given(when, product="Hizentra", hcpcs="J1559")
        else:
            date_part, _, time_part = when.partition("T")
            rec.ivig_given(date_part, at=time_part[:5] or None)
    for value, when in levels:
        rec.igg(value, when=when)
    return rec


@pytest.mark.parametrize(("drawn", "timing"), [
    (day(7), LevelTiming.TROUGH),                       # on the infusion day, time unknown
    (day(8), LevelTiming.TROUGH),                       # the day before
    (day(10), LevelTiming.TROUGH),                      # 3 days before: the margin
    (day(11), LevelTiming.MID_INTERVAL),                # 4 days before = 24 days after the previous one
    (day(6), LevelTiming.MID_INTERVAL),                 # the day after
    (day(0), LevelTiming.MID_INTERVAL),                 # 7 days after the last infusion, next not due
])
def test_a_level_is_a_trough_only_just_before_an_infusion(drawn, timing):
    f = facts_of(on_ivig((650, drawn)))
    assert f.treatment_levels[-1].timing is timing
    assert (f.trough is not None and f.trough.when.isoformat() == drawn) is (timing is LevelTiming.TROUGH)


@pytest.mark.parametrize(("level_at", "timing"), [("08:00", LevelTiming.TROUGH), ("14:00", LevelTiming.MID_INTERVAL)])
def test_on_the_infusion_day_the_clock_decides(level_at, timing):
    rec = on_ivig((650, f"{day(7)}T{level_at}:00Z"), infusions=(day(63), day(35), f"{day(7)}T09:00"))
    assert facts_of(rec).treatment_levels[-1].timing is timing


def test_after_the_last_infusion_a_level_is_the_next_trough_once_it_is_due():
    # infusions every 28 days, the last 25 days ago: due in 3 days, inside the margin -> a trough
    due = on_ivig((650, day(0)), infusions=(day(81), day(53), day(25)))
    assert facts_of(due).treatment_levels[-1].timing is LevelTiming.TROUGH
    # the last 24 days ago: due in 4 days -> still mid-interval
    early = on_ivig((650, day(0)), infusions=(day(80), day(52), day(24)))
    assert facts_of(early).treatment_levels[-1].timing is LevelTiming.MID_INTERVAL


def test_on_scig_every_level_is_a_steady_level():
    f = facts_of(on_ivig((650, day(2)), infusions=(day(16), day(9), day(2)), subcutaneous=True))
    assert f.treatment_levels[-1].timing is LevelTiming.STEADY_STATE and f.trough is not None


def test_a_mid_interval_level_never_passes_for_a_trough_against_the_target():
    low_mid = on_ivig((700, day(35)), (550, day(25)))  # trough on an infusion day, then 550 ten days after one
    ev = decision_of(low_mid)
    assert ev.facts.trough.measured.value == 700 and ev.facts.mid_interval.value.measured.value == 550
    assert ev.decision.monitoring is None


def test_a_mid_interval_level_does_not_satisfy_the_three_monthly_trough():
    rec = on_ivig((700, day(120)), (1150, day(2)), infusions=(day(120), day(92), day(64), day(36), day(8)))
    ev = decision_of(rec)
    assert ev.decision.monitoring is not None and "trough_overdue" in ev.decision.monitoring.rule
    assert "mid-interval" in " ".join(e.note for e in ev.decision.monitoring.evidence)


# ------------------------------------------------------------------ active infection: monthly troughs


@pytest.mark.parametrize(("status", "trough_days_ago", "overdue"), [
    ("active", 36, True),      # older than a month during an active infection
    ("active", 8, False),
    ("resolved", 36, False),   # three-monthly once the infection is over
    ("recurrence", 36, True),
])
def test_an_active_severe_infection_makes_troughs_monthly(status, trough_days_ago, overdue):
    rec = on_ivig((700, day(trough_days_ago)), infusions=(day(91), day(63), day(35), day(7)))
    rec.pneumonia(day(4), clinical_status=status)
    monitoring = decision_of(rec).decision.monitoring
    assert (monitoring is not None) is overdue


@pytest.mark.parametrize(("onset_days_ago", "active"), [(30, True), (31, False)])
def test_an_infection_without_a_status_is_active_for_a_month_after_onset(onset_days_ago, active):
    rec = on_ivig((700, day(36)))
    rec.pneumonia(day(onset_days_ago))
    cond = next(r for r in rec.resources if r["resourceType"] == "Condition" and r["onsetDateTime"] == day(onset_days_ago))
    del cond["clinicalStatus"]
    assert bool(facts_of(rec).infections.active_severe) is active


def test_an_abated_infection_is_not_active():
    rec = on_ivig((700, day(36)))
    rec.pneumonia(day(10), clinical_status="active")
    next(r for r in reversed(rec.resources) if r["resourceType"] == "Condition")["abatementDateTime"] = day(2)
    assert facts_of(rec).infections.active_severe == ()


# ------------------------------------------------------------------ Decision 6 before 7


def _low_igm_normal_igg(pneumo: str) -> Record:
    rec = Record("p", birth="1981-03-02")
    rec.igm(30, when=ago(days=20)).igg(850, when=ago(days=20)).iga(150, when=ago(days=20))
    rec.lymphocyte_subsets()
    rec.office_visit(ago(months=1))
    if pneumo == "adequate":
        rec.ppsv23_challenge(protective_post=20)
    elif pneumo == "no-post-titers":
        rec.ppsv23_challenge(protective_post=20, post_days=14)
    elif pneumo == "too-late":
        rec.ppsv23_challenge(protective_post=20, post_days=70)
    elif pneumo == "no-pre-titers":
        rec.ppsv23_challenge(protective_post=20, pre=False)
    elif pneumo == "confounded":  # IVIG 7 months ago: the Ig levels are interpretable again, the titers are not
        rec.ivig_given(ago(months=7))
        rec.ppsv23_challenge(protective_post=20, vaccinated=ago(months=5))
    elif pneumo == "stale":
        rec.ppsv23_challenge(protective_post=20, vaccinated=ago(months=15))
    return rec


@pytest.mark.parametrize("pneumo", ["not-tested", "no-post-titers", "too-late", "no-pre-titers", "confounded", "stale"])
def test_isolated_igm_deficiency_is_never_diagnosed_without_an_adequate_response(pneumo):
    ev = decision_of(_low_igm_normal_igg(pneumo))
    assert ev.decision.outcome.rule == "workup_incomplete", pneumo
    assert "ppsv23" in ev.decision.outcome.missing_keys
    assert any("No immunoglobulin replacement now" in a for a in ev.decision.outcome.advice)


def test_with_an_adequate_response_it_is_isolated_igm_deficiency():
    assert decision_of(_low_igm_normal_igg("adequate")).decision.outcome.rule == "isolated_igm_deficiency"


def test_an_ivig_order_without_an_adequate_response_stays_not_indicated_with_the_work_up_listed():
    rec = _low_igm_normal_igg("not-tested")
    ev = decision_of(rec, orders=[ivig_order(rec.patient_id)])
    assert ev.decision.outcome.rule == "workup_incomplete" and ev.orders


# ------------------------------------------------------------------ what the data says


def test_igm_above_the_labs_range_is_high_not_normal():
    rec = Record("p").igm(310, when=ago(days=3), ref=(40, 230))
    f = facts_of(rec)
    assert f.igm.high and "high" in f.igm.basis and "normal" not in f.igm.basis
    within = facts_of(Record("p").igm(200, when=ago(days=3), ref=(40, 230)))
    assert not within.igm.high and "high" not in within.igm.basis


# ------------------------------------------------------------------ impossible values never become facts


@pytest.mark.parametrize(("analyte", "unit", "bound"), [("IgG", "mg/dL", 15000), ("IgM", "mg/dL", 10000),
                                                        ("IgA", "mg/dL", 10000)])
@pytest.mark.parametrize("beyond", [False, True])
def test_immunoglobulins_beyond_the_plausibility_bound_are_not_used(analyte, unit, bound, beyond):
    value = bound + 1 if beyond else bound
    rec = Record("p").lab(analyte, 300, unit, ago(days=30)).lab(analyte, value, unit, ago(days=2))
    a = getattr(facts_of(rec), analyte.lower())
    assert a.deciding.measured.value == (300 if beyond else value)
    assert any("not a possible value" in p for p in a.problems) is beyond


@pytest.mark.parametrize("value", [-5, -0.1])
def test_negative_values_are_not_used(value):
    f = facts_of(Record("p").igm(30, when=ago(days=30)).igm(value, when=ago(days=2)))
    assert f.igm.deciding.measured.value == 30 and any("not a possible value" in p for p in f.igm.problems)


def test_a_non_finite_value_is_not_used():
    rec = Record("p").igm(30, when=ago(days=30)).igm(1, when=ago(days=2))
    rec.resources[-1]["valueQuantity"]["value"] = 1e308 * 10  # inf once parsed
    f = facts_of(rec)
    assert f.igm.deciding.measured.value == 30


@pytest.mark.parametrize(("kg", "adult", "used"), [(20, True, True), (19.9, True, False), (3, False, True),
                                                    (0.29, False, False), (400, True, True), (401, True, False)])
def test_body_weights_outside_what_a_body_can_weigh_are_not_used(kg, adult, used):
    rec = Record("p", birth="1980-01-01" if adult else "2025-06-01").weight(70 if adult else 6, when=ago(days=60))
    rec.weight(kg, when=ago(days=2))
    f = facts_of(rec)
    assert (f.weight.measured.value == kg) is used


@pytest.mark.parametrize(("titer", "used"), [(500, True), (501, False)])
def test_titers_beyond_the_plausibility_bound_are_not_counted(titer, used):
    rec = Record("p", birth="1981-03-02")
    rec.ppsv23_challenge(protective_post=5, tested=10)
    vaccinated = next(r["occurrenceDateTime"] for r in rec.resources if r["resourceType"] == "Immunization")
    rec.lab("titer", titer, "ug/mL", (date.fromisoformat(vaccinated) + timedelta(days=35)).isoformat(), code=False,
            text="Streptococcus pneumoniae Danish serotype 22F IgG Ab")
    p = facts_of(rec).pneumococcal
    assert p.tested == (11 if used else 10)


def test_results_without_a_value_or_entered_in_error_are_said_and_skipped():
    rec = Record("p").igg(850, when=ago(days=30))
    rec.igg(None, when=ago(days=3), absent="not-performed").igg(350, when=ago(days=2), status="entered-in-error")
    f = facts_of(rec)
    assert f.igg.deciding.measured.value == 850
    assert any("no value (not performed)" in p for p in f.igg.problems)
    assert any("entered in error" in p for p in f.igg.problems)


@pytest.mark.parametrize("bad", [math.inf, -math.inf, math.nan])
def test_non_finite_thresholds_are_refused_at_start_up(bad):
    with pytest.raises(ValueError):
        GuidelineConfig(igm_low_mg_dl=bad)
    with pytest.raises(ConfigError) as err:
        load_settings(environ={"IVIG_CDS_IGG_PLAUSIBLE_MAX_MG_DL": str(bad)})
    assert "\n" not in str(err.value) and "IVIG_CDS_IGG_PLAUSIBLE_MAX_MG_DL" in str(err.value)


# ------------------------------------------------------------------ the same thing twice counts once


def test_the_same_result_sent_twice_counts_once():
    rec = Record("p").igm(30, when=ago(days=3)).igm(30, when=ago(days=3))
    assert len(facts_of(rec).igm.values) == 1


def test_one_infection_coded_twice_is_one_episode():
    rec = Record("p").pneumonia(ago(months=3))
    rec.condition("J13", "Pneumonia due to Streptococcus pneumoniae", ago(months=3))
    assert len(facts_of(rec).infections.severe) == 1


# ------------------------------------------------------------------ doses as they are ordered


def _indicated() -> Record:
    rec = Record("d", birth="1981-03-02")
    rec.igm(25, when=ago(days=20)).igg(310, when=ago(days=20))
    rec.pneumonia(ago(months=2)).pneumonia(ago(months=6))
    rec.weight(70)
    return rec


def _dose_finding(order: dict) -> Assessment | None:
    rec = _indicated()
    ev = decision_of(rec, orders=[order])
    found = [a for a in ev.order_findings[ev.orders[0].label] if a.rule == "dose_outside_replacement_range"]
    return found[0] if found else None


@pytest.mark.parametrize(("ml", "flagged"), [(280, False), (420, False), (270, True), (430, True)])
def test_a_dose_in_ml_of_a_10_percent_product_is_its_mass(ml, flagged):
    # 70 kg: 0.4–0.6 g/kg is 28–42 g, i.e. 280–420 mL of a 10 % solution
    finding = _dose_finding(ivig_order("d", dose=ml, unit="mL"))
    assert (finding is not None) is flagged


def test_a_volume_of_unknown_concentration_is_said_not_checked():
    order = ivig_order("d", dose=350, unit="mL", product="Octagam", hcpcs="J1568", text="Octagam immune globulin")
    finding = _dose_finding(order)
    assert finding is not None and "unknown concentration" in finding.conclusion and finding.missing_keys


@pytest.mark.parametrize(("per_week", "flagged"), [(0.1, False), (0.2, False), (0.09, True), (0.21, True)])
def test_weekly_scig_is_checked_by_its_dose_per_week(per_week, flagged):
    order = ivig_order("d", dose=per_week, product="Hizentra", hcpcs="J1559", every_weeks=1,
                       text="Hizentra immune globulin subcutaneous 20%")
    assert (_dose_finding(order) is not None) is flagged


@pytest.mark.parametrize(("per_day", "flagged"), [(0.2, False), (0.3, False), (0.15, True), (0.35, True)])
def test_a_two_day_course_counts_as_one_infusion(per_day, flagged):
    order = ivig_order("d", dose=per_day, repeat={"frequency": 1, "period": 1, "periodUnit": "d", "count": 2},
                       dosage_text="daily for 2 days, every 4 weeks")
    finding = _dose_finding(order)
    assert (finding is not None) is flagged
    if finding is not None:
        assert "per course" in finding.conclusion and "daily for 2 days" in finding.evidence[0].value


def test_a_dose_that_is_not_a_mass_is_said_once_without_its_annotation():
    finding = _dose_finding(ivig_order("d", dose=2, unit="{pill}"))
    assert finding is not None and finding.conclusion == "dose not checked: 2 pill is not a mass or volume"


@pytest.mark.parametrize(("days", "words"), [(28, "every 4 weeks"), (7, "weekly"), (21, "every 3 weeks"),
                                             (10, "every 10 days"), (1, "daily"), (0.5, "twice a day"),
                                             (1 / 3, "three times a day"), (0.25, "four times a day"),
                                             (1 / 6, "every 4 hours"), (30.4375, "every 30 days")])
def test_intervals_are_worded_as_prescribed(days, words):
    assert interval_words(days) == words



def test_unusable_titers_of_one_draw_are_said_once_with_their_serotypes():
    """Titers entered in error on one day are one "not used" line naming the serotypes, not one per
    serotype; a titer without a date is said on its own line."""
    rec = Record("p", birth="1981-03-02")
    rec.ppsv23_challenge(protective_post=5, tested=10)
    vaccinated = next(r["occurrenceDateTime"] for r in rec.resources if r["resourceType"] == "Immunization")
    drawn = (date.fromisoformat(vaccinated) + timedelta(days=40)).isoformat()
    for serotype in ("14", "22F"):
        rec.lab("titer", 2.0, "ug/mL", drawn, code=False, status="entered-in-error",
                text=f"Streptococcus pneumoniae Danish serotype {serotype} IgG Ab")
    rec.lab("titer", 2.0, "ug/mL", code=False, text="Streptococcus pneumoniae Danish serotype 9V IgG Ab")
    del rec.resources[-1]["effectiveDateTime"]
    p = facts_of(rec).pneumococcal
    grouped = [line for line in p.problems if "serotypes 14, 22F" in line]
    assert grouped == [f"pneumococcal titers of {drawn} (serotypes 14, 22F): entered in error — not used"]
    assert [line for line in p.problems if "without a date" in line] == [
        "pneumococcal titer without a date (serotype 9V): no date — not used"]
    assert p.tested == 10
