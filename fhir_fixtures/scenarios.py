"""The clinical scenarios: one per branch of criteria.md and per edge, with the topics expected.

``python -m fhir_fixtures.scenarios`` writes each to ``fhir_fixtures/<name>/`` (bundle.json,
draft-orders.json, expected.json, and ready-to-send request-*.json); a test checks the
folders are what this module generates. Expected topics are what the guideline says, decided
by a clinician-informaticist reading criteria.md — not by running the engine.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any, Callable

from fhir_fixtures.builder import (ICD, REFERENCE_TODAY, Record, ago, amoxicillin_order, draft_orders,
                                   ivig_order, medication)

HERE = Path(__file__).resolve().parent

PV, OS, OSEL = "patient-view", "order-sign", "order-select"
NI, IND, WU, HIGM, ISO, CONF, DOSE, MON = (
    "ivig-not-indicated", "ivig-indicated", "workup-incomplete", "hyper-igm-pattern", "isolated-igm-deficiency",
    "labs-confounded-by-ivig", "ivig-dose-check", "ivig-monitoring")


@dataclass
class Scenario:
    name: str
    summary: str
    build: Callable[[], Record]
    #: hook -> topics expected, exactly (order-sign / order-select only when there are draft orders)
    expected: dict[str, list[str]]
    orders: Callable[[str], list[dict[str, Any]]] | None = None
    extra_in_drafts: Callable[[], list[dict[str, Any]]] | None = None
    sample: bool = False  # one of the built-in sample patients
    notes: str = ""
    tags: list[str] = field(default_factory=list)
    #: raw entries an imperfect EHR sends among the Observations (null, unknown types, invalid resources)
    garbage: list[Any] = field(default_factory=list)


def standard_ivig(pid: str, **kw) -> list[dict[str, Any]]:
    return [ivig_order(pid, **kw)]


def complete_adult(pid: str, *, igm: float = 32, igg: float = 850, iga: float = 150,
                   protective: int = 20, birth: str = "1981-03-02") -> Record:
    """An adult with the whole work-up on record; scenarios change one thing at a time."""
    rec = Record(pid, birth=birth)
    rec.igm(igm, when=ago(days=20)).igg(igg, when=ago(days=20)).iga(iga, when=ago(days=20))
    rec.ppsv23_challenge(protective_post=protective)
    rec.lymphocyte_subsets(ago(months=2))
    rec.weight(70)
    rec.office_visit(ago(months=1))
    return rec


# ------------------------------------------------------------------ branches

def _isolated() -> Record:
    rec = complete_adult("sample-isolated-igm", igm=32)
    rec.sinusitis(ago(months=3)).uri(ago(months=7))
    return rec


def _igg_deficiency() -> Record:
    rec = complete_adult("sample-igg-deficiency", igm=25, igg=320, iga=60, protective=19, birth="1974-09-09")
    rec.pneumonia(ago(months=2), code="J13", display="Pneumonia due to Streptococcus pneumoniae")
    rec.pneumonia(ago(months=8))
    return rec


def _impaired_ppsv23() -> Record:
    rec = complete_adult("sample-impaired-ppsv23", igm=30, igg=720, protective=8, birth="1990-01-20")
    rec.pneumonia(ago(months=3))
    rec.infection("R78.81", "Bacteremia", ago(months=9), hospitalised=True)
    return rec


def _hyper_igm() -> Record:
    rec = Record("sample-hyper-igm", birth="2004-02-11", gender="male")
    rec.igm(310, when=ago(days=12), ref=(40, 230)).igg(150, when=ago(days=12), ref=(700, 1600))
    rec.iga(3, when=ago(days=12), ref=(70, 400))
    rec.pneumonia(ago(months=4))
    rec.weight(68)
    return rec


def _on_ivig_low_trough() -> Record:
    rec = Record("sample-on-ivig-low-trough", birth="1968-12-01")
    start = ago(months=26)
    rec.igm(20, when=ago(months=27)).igg(290, when=ago(months=27)).iga(45, when=ago(months=27))
    rec.pneumonia(ago(months=30))
    rec.pneumonia(ago(months=34), code="J13", display="Pneumonia due to Streptococcus pneumoniae")
    rec.ivig_every(start, ago(days=20), weeks=4)
    rec.active_ivig_order(start)
    rec.igg(520, when=ago(days=21))  # the day before the last infusion: its trough
    rec.igg(610, when=rec.infusion_days()[4])  # the trough of the infusion four cycles earlier
    rec.weight(72)
    return rec


def _confounded() -> Record:
    rec = Record("confounded-igm-after-ivig", birth="1985-07-07")
    rec.ivig_given(ago(months=2), product="Gamunex-C", hcpcs="J1561")
    rec.igm(24, when=ago(months=1)).igg(1150, when=ago(months=1))
    rec.office_visit(ago(months=1))
    return rec


def _workup_incomplete() -> Record:
    rec = Record("workup-incomplete-no-igg", birth="1977-04-04")
    rec.igm(28, when=ago(days=30))
    rec.otitis(ago(months=2))
    return rec


def _life_threatening() -> Record:
    rec = complete_adult("consider-life-threatening", igm=30, igg=760)
    rec.infection("G00.1", "Pneumococcal meningitis", ago(months=3), icu=True)
    return rec


def _encapsulated() -> Record:
    rec = complete_adult("consider-encapsulated", igm=31, igg=800)
    rec.pneumonia(ago(months=2), code="J13", display="Pneumonia due to Streptococcus pneumoniae")
    rec.pneumonia(ago(months=7), code="J14", display="Pneumonia due to Hemophilus influenzae")
    return rec


def _incidental() -> Record:
    rec = Record("incidental-low-igm", birth="1963-10-10")
    rec.igm(35, when=ago(days=15)).igg(900, when=ago(days=15))
    rec.office_visit(ago(days=15))
    return rec


def _minor_only() -> Record:
    rec = complete_adult("minor-uris-only", igm=30, igg=800)
    for months in (1, 3, 5, 8):
        rec.uri(ago(months=months))
    rec.sinusitis(ago(months=6))
    return rec


def _rule9() -> Record:
    rec = complete_adult("recurrent-severe-normal-workup", igm=30, igg=820)
    rec.pneumonia(ago(months=2))
    rec.pneumonia(ago(months=9))
    return rec


def _deficiency_no_infection_criterion() -> Record:
    rec = complete_adult("low-igg-without-recurrent-infections", igm=30, igg=380)
    rec.pneumonia(ago(months=5))
    return rec


def _no_ig_data() -> Record:
    rec = Record("no-immunoglobulin-data", birth="1955-05-05")
    rec.diagnosis("I10", "Essential (primary) hypertension", ago(months=30))
    rec.office_visit(ago(months=2))
    rec.weight(80)
    return rec


def _normal_igs() -> Record:
    return complete_adult("normal-immunoglobulins", igm=95, igg=1050)


def _itp() -> Record:
    rec = Record("other-indication-itp", birth="1992-08-08")
    rec.igm(35, when=ago(days=10)).igg(950, when=ago(days=10))
    rec.diagnosis("D69.3", "Immune thrombocytopenic purpura", ago(days=12))
    rec.weight(60)
    return rec


def _on_ivig_for_itp() -> Record:
    rec = Record("on-ivig-for-itp", birth="1988-02-02")
    rec.diagnosis("D69.3", "Immune thrombocytopenic purpura", ago(months=10))
    rec.ivig_every(ago(months=6), ago(days=12), weeks=4)
    rec.igm(95, when=ago(days=40)).igg(1450, when=ago(days=40))
    rec.weight(64)
    return rec


def _low_igg_normal_igm() -> Record:
    rec = complete_adult("low-igg-normal-igm-no-infections", igm=90, igg=420)
    return rec


def _kawasaki_child() -> Record:
    rec = Record("other-indication-kawasaki", birth="2023-05-05", gender="male")
    rec.diagnosis("M30.3", "Mucocutaneous lymph node syndrome [Kawasaki]", ago(days=3))
    rec.weight(14)
    return rec


# ------------------------------------------------------------------ children, units, comparators

def _child_low_by_range() -> Record:
    rec = Record("child-igm-below-age-range", birth="2022-06-01")
    rec.igm(30, when=ago(days=10), ref=(33, 150)).igg(610, when=ago(days=10), ref=(460, 1240))
    rec.iga(60, when=ago(days=10), ref=(27, 195))
    rec.ppsv23_challenge(protective_post=12)  # 52 %: adequate under 6 y (>= 50 %)
    rec.lymphocyte_subsets()
    rec.otitis(ago(months=2))
    return rec


def _child_normal_by_range() -> Record:
    rec = Record("child-igm-within-age-range", birth="2022-06-01")
    rec.igm(30, when=ago(days=10), ref=(25, 120)).igg(610, when=ago(days=10), ref=(460, 1240))
    rec.otitis(ago(months=2))
    return rec


def _child_impaired_under6() -> Record:
    rec = Record("child-under-6-impaired-ppsv23", birth="2022-06-01")
    rec.igm(28, when=ago(days=10), ref=(33, 150)).igg(650, when=ago(days=10), ref=(460, 1240))
    rec.ppsv23_challenge(protective_post=11)  # 48 %: impaired under 6 y
    rec.lymphocyte_subsets()
    rec.pneumonia(ago(months=2))
    rec.pneumonia(ago(months=6))
    rec.weight(16)
    return rec


def _g_per_l() -> Record:
    rec = Record("units-g-per-l", birth="1970-01-01")
    rec.igm(0.32, unit="g/L", when=ago(days=20)).igg(8.5, unit="g/L", when=ago(days=20)).iga(1.2, unit="g/L", when=ago(days=20))
    rec.ppsv23_challenge(protective_post=21)
    rec.lymphocyte_subsets()
    rec.office_visit(ago(months=1))
    return rec


def _mg_per_l() -> Record:
    rec = Record("units-mg-per-l", birth="1970-01-01")
    rec.igm(320, unit="mg/L", when=ago(days=20)).igg(3500, unit="mg/L", when=ago(days=20))
    rec.pneumonia(ago(months=2))
    rec.pneumonia(ago(months=6))
    rec.lymphocyte_subsets()
    rec.weight(75)
    return rec


def _unknown_unit() -> Record:
    rec = Record("unknown-unit-igm", birth="1970-01-01")
    rec.igm(0.35, unit="mmol/L", when=ago(days=20)).igg(900, when=ago(days=20))
    rec.office_visit(ago(months=1))
    return rec


def _comparator() -> Record:
    rec = complete_adult("igm-below-detection-limit", igm=7, igg=830)
    rec.resources[1]["valueQuantity"]["comparator"] = "<"
    rec.uri(ago(months=2))
    return rec


def _stale_igg() -> Record:
    rec = Record("stale-igg", birth="1970-01-01")
    rec.igm(30, when=ago(days=20)).igg(850, when=ago(months=14))
    rec.pneumonia(ago(months=2))
    rec.pneumonia(ago(months=7))
    return rec


def _titers_after_ivig(name: str, pneumonias_months_ago: tuple[int, ...]) -> Callable[[], Record]:
    """Low IgM, normal IgG drawn before an IVIG dose 5 months ago; the PPSV23 challenge came after it."""
    def build() -> Record:
        rec = Record(name, birth="1980-01-01")
        rec.igm(30, when=ago(months=8)).igg(780, when=ago(months=8))
        rec.ivig_given(ago(months=5))
        rec.ppsv23_challenge(protective_post=22, vaccinated=ago(months=4))
        rec.lymphocyte_subsets()
        for months in pneumonias_months_ago:
            rec.pneumonia(ago(months=months))
        return rec
    return build


def _challenge_drawn_after(name: str, post_days: int) -> Record:
    """A complete adult (low IgM, normal IgG) whose post-PPSV23 titers were drawn ``post_days`` after it."""
    rec = complete_adult(name, igm=30, igg=800)
    rec.resources = [r for r in rec.resources if not (r["resourceType"] in ("Observation", "Immunization")
                                                       and ("Streptococcus" in json.dumps(r) or r["resourceType"] == "Immunization"))]
    return rec.ppsv23_challenge(protective_post=22, post_days=post_days)


def _titers_too_late() -> Record:
    rec = _challenge_drawn_after("titers-drawn-too-late", 70)
    rec.pneumonia(ago(months=2))
    rec.pneumonia(ago(months=7))
    return rec


def _indicated_dose(pid: str) -> Record:
    rec = complete_adult(pid, igm=25, igg=310, iga=50, protective=18)
    rec.pneumonia(ago(months=2))
    rec.pneumonia(ago(months=6))
    return rec


def _indicated_no_weight() -> Record:
    rec = _indicated_dose("dose-check-no-weight")
    rec.resources = [r for r in rec.resources if "weight" not in json.dumps(r.get("code", {})).lower()]
    return rec


def _edge(name: str, igm: float = 32, igg: float = 850, protective: int = 20, infections: int = 0,
          tested: int = 23) -> Callable[[], Record]:
    def build() -> Record:
        rec = Record(name, birth="1981-03-02")
        rec.igm(igm, when=ago(days=20)).igg(igg, when=ago(days=20)).iga(150, when=ago(days=20))
        rec.ppsv23_challenge(protective_post=protective, tested=tested)
        rec.lymphocyte_subsets()
        rec.weight(70)
        rec.office_visit(ago(months=1))
        for i in range(infections):
            rec.pneumonia(ago(months=2 + 4 * i))
        return rec
    return build


def _window_edge(name: str, months_ago_second: int, extra_days: int) -> Callable[[], Record]:
    def build() -> Record:
        rec = complete_adult(name, igm=30, igg=420)
        rec.pneumonia(ago(months=2))
        rec.pneumonia(ago(months=months_ago_second, days=extra_days))
        return rec
    return build


def _trough_edge(name: str, trough: float, trough_months_ago: int = 0, trough_days_ago: int = 20) -> Callable[[], Record]:
    def build() -> Record:
        rec = Record(name, birth="1968-12-01")
        start = ago(months=20)
        rec.igm(20, when=ago(months=21)).igg(300, when=ago(months=21))
        rec.pneumonia(ago(months=24))
        rec.pneumonia(ago(months=28))
        drawn = ago(months=trough_months_ago, days=trough_days_ago)
        rec.ivig_every(start, ago(days=7), weeks=4, on=drawn)  # the trough is drawn on an infusion day
        rec.active_ivig_order(start)
        rec.igg(trough, when=drawn)
        rec.weight(72)
        return rec
    return build


def _confounding_edge(name: str, months_after: int, days_after: int) -> Callable[[], Record]:
    def build() -> Record:
        rec = Record(name, birth="1985-07-07")
        rec.ivig_given(ago(months=12))
        rec.igm(24, when=ago(months=12 - months_after, days=-days_after)).igg(850, when=ago(days=5))
        rec.office_visit(ago(months=1))
        rec.lymphocyte_subsets()
        rec.ppsv23_challenge(protective_post=20)
        return rec
    return build


def _stale_edge(name: str, months: int, days: int) -> Callable[[], Record]:
    def build() -> Record:
        rec = complete_adult(name, igm=30, igg=820)
        rec.resources = [r for r in rec.resources if "2465-3" not in json.dumps(r.get("code", {}))]
        rec.igg(820, when=ago(months=months, days=days))
        return rec
    return build


# ------------------------------------------------------------------ on treatment: troughs and mid-interval levels


def _on_ivig(name: str, *, levels: tuple[tuple[float, int, int, str | None], ...], infusion_at: str | None = None,
             infections: tuple[tuple[int, str], ...] = ()) -> Callable[[], Record]:
    """On 4-weekly IVIG for IgG deficiency since 20 months. ``levels``: (IgG, cycles before the last
    infusion, days after that infusion, time of the draw 'HH:MM' or None). The last infusion is 7
    days ago, at ``infusion_at`` when given. ``infections``: (days ago, clinical status) pneumonias."""
    def build() -> Record:
        rec = Record(name, birth="1968-12-01")
        rec.igm(20, when=ago(months=21)).igg(300, when=ago(months=21))
        rec.pneumonia(ago(months=24))
        rec.pneumonia(ago(months=28))
        rec.ivig_every(ago(months=20), ago(days=35), weeks=4, on=ago(days=7))
        rec.ivig_given(ago(days=7), at=infusion_at)
        rec.active_ivig_order(ago(months=20))
        infusions = rec.infusion_days()
        for value, cycles, days_after, at in levels:
            day = (date.fromisoformat(infusions[cycles]) + timedelta(days=days_after)).isoformat()
            rec.igg(value, when=f"{day}T{at}:00Z" if at else day)
        for days_ago, status in infections:
            rec.pneumonia(ago(days=days_ago), clinical_status=status)
        rec.weight(72)
        return rec
    return build


# ------------------------------------------------------------------ results that are not facts


def _implausible_igg() -> Record:
    rec = complete_adult("implausible-igg-tens-of-thousands", igm=25, igg=310, iga=50, protective=18)
    rec.igg(85000, when=ago(days=3))  # a typing or unit error: 850 g/L entered as mg/dL
    rec.pneumonia(ago(months=2))
    rec.pneumonia(ago(months=6))
    return rec


def _implausible_igm() -> Record:
    rec = complete_adult("implausible-igm-negative", igm=32)
    rec.igm(-5, when=ago(days=2))
    rec.sinusitis(ago(months=3))
    return rec


def _implausible_iga() -> Record:
    rec = Record("implausible-iga-hyper-igm", birth="2004-02-11", gender="male")
    rec.igm(310, when=ago(days=12), ref=(40, 230)).igg(150, when=ago(days=12), ref=(700, 1600))
    rec.iga(3, when=ago(days=12), ref=(70, 400))
    rec.iga(50000, when=ago(days=2), ref=(70, 400))
    rec.pneumonia(ago(months=4))
    rec.weight(68)
    return rec


def _implausible_weight() -> Record:
    rec = _indicated_dose("implausible-weight-adult-3-kg")
    rec.weight(3, when=ago(days=1))  # an adult of 3 kg: 35 g would read as 11.7 g/kg
    return rec


def _implausible_titer() -> Record:
    rec = Record("implausible-titer-excluded", birth="1981-03-02")
    rec.igm(30, when=ago(days=20)).igg(800, when=ago(days=20)).iga(150, when=ago(days=20))
    rec.ppsv23_challenge(protective_post=6, tested=9)  # 6/9 = 67 %: impaired
    vaccinated = next(r["occurrenceDateTime"] for r in rec.resources if r["resourceType"] == "Immunization")
    rec.lab("titer", 5000, "ug/mL", (date.fromisoformat(vaccinated) + timedelta(days=35)).isoformat(), code=False,
            text="Streptococcus pneumoniae Danish serotype 14 IgG Ab [Mass/volume] in Serum")
    rec.lymphocyte_subsets()
    rec.weight(70)
    rec.pneumonia(ago(months=2))
    rec.pneumonia(ago(months=6))
    return rec


def _edge_plausible(name: str, igg: float) -> Callable[[], Record]:
    def build() -> Record:
        rec = complete_adult(name, igm=25, igg=310, iga=50, protective=18)
        rec.igg(igg, when=ago(days=3))
        rec.pneumonia(ago(months=2))
        rec.pneumonia(ago(months=6))
        return rec
    return build


def _absent_and_in_error() -> Record:
    rec = complete_adult("data-absent-and-entered-in-error", igm=30, igg=850)
    rec.igg(None, when=ago(days=5), absent="not-performed")
    rec.igg(350, when=ago(days=4), status="entered-in-error")
    rec.sinusitis(ago(months=3))
    return rec


def _duplicates() -> Record:
    rec = complete_adult("duplicate-results-and-infections", igm=30, igg=420)
    rec.igm(30, when=ago(days=20))  # the same result again under another id
    rec.pneumonia(ago(months=3))
    rec.condition("J13", "Pneumonia due to Streptococcus pneumoniae", ago(months=3))  # the same episode coded twice
    return rec


def _titers_too_early() -> Record:
    rec = _challenge_drawn_after("titers-drawn-too-early-no-infections", 14)
    rec.uri(ago(months=2))
    return rec


def _no_pre_titers() -> Record:
    rec = Record("ppsv23-no-pre-titers", birth="1981-03-02")
    rec.igm(30, when=ago(days=20)).igg(850, when=ago(days=20)).iga(150, when=ago(days=20))
    rec.ppsv23_challenge(protective_post=22, pre=False)
    rec.lymphocyte_subsets()
    rec.office_visit(ago(months=1))
    return rec


GARBAGE_ENTRIES: list[Any] = [
    None,
    {"fullUrl": "urn:uuid:nothing"},
    {"resource": {"resourceType": "NotAResource", "id": "x1"}},
    {"resource": {"id": "no-type"}},
    {"resource": {"resourceType": "Observation", "id": "bad-value", "status": "final",
                  "code": {"coding": [{"system": "http://loinc.org", "code": "2465-3"}]},
                  "subject": {"reference": "Patient/unreadable-entries"}, "effectiveDateTime": "2026-11-01",
                  "valueQuantity": {"value": "eight hundred", "unit": "mg/dL"}}},
]


def _scig_order(pid: str, dose: float) -> list[dict[str, Any]]:
    return [ivig_order(pid, product="Hizentra", hcpcs="J1559", dose=dose, every_weeks=1,
                       text="Hizentra (immune globulin subcutaneous, human) 20% liquid", dosage_text="SC weekly")]


SCENARIOS: list[Scenario] = [
    # --- the sample patients (also loaded into FHIR servers for the sandbox)
    Scenario("sample-isolated-igm", "Isolated IgM deficiency: IgM 32 mg/dL, normal IgG, adequate PPSV23 response, "
             "minor infections only; IVIG ordered", _isolated,
             {PV: [ISO], OS: [NI], OSEL: [NI]}, standard_ivig, sample=True, tags=["decision-7"]),
    Scenario("sample-igg-deficiency", "IgG deficiency (320 mg/dL) with low IgM and two pneumonias in 12 months",
             _igg_deficiency, {PV: [IND], OS: [IND]}, standard_ivig, sample=True, tags=["decision-3"]),
    Scenario("sample-impaired-ppsv23", "Low IgM, normal IgG, impaired PPSV23 response (8/23) with pneumonia and "
             "bacteremia", _impaired_ppsv23, {PV: [IND], OS: [IND]}, standard_ivig, sample=True, tags=["decision-4"]),
    Scenario("sample-hyper-igm", "Hyper-IgM pattern: low IgG and IgA with high IgM in a young man with pneumonia",
             _hyper_igm, {PV: [HIGM], OS: [HIGM]}, standard_ivig, sample=True, tags=["decision-1"]),
    Scenario("sample-on-ivig-low-trough", "On IVIG for IgG deficiency for two years; last trough IgG 520 mg/dL",
             _on_ivig_low_trough, {PV: [IND, MON], OS: [IND, MON]},
             lambda pid: [ivig_order(pid, order_id="ivig-maintenance", dose=35, unit="g")], sample=True,
             tags=["monitoring"]),
    # --- other branches
    Scenario("confounded-igm-after-ivig", "Low IgM measured one month after an IVIG dose given elsewhere",
             _confounded, {PV: [CONF], OS: [CONF, NI]}, standard_ivig, tags=["decision-2"]),
    Scenario("workup-incomplete-no-igg", "Low IgM with one otitis; no IgG, no PPSV23 titers, no lymphocyte subsets",
             _workup_incomplete, {PV: [WU], OS: [NI, WU]}, standard_ivig, tags=["decision-6"]),
    Scenario("consider-life-threatening", "Low IgM, normal IgG, pneumococcal meningitis needing ICU care",
             _life_threatening, {PV: [IND], OS: [IND]}, standard_ivig, tags=["decision-5"]),
    Scenario("consider-encapsulated", "Low IgM, normal IgG, two pneumonias by encapsulated bacteria (J13, J14)",
             _encapsulated, {PV: [IND], OS: [IND]}, standard_ivig, tags=["decision-5"]),
    Scenario("incidental-low-igm", "Incidental low IgM (35 mg/dL), normal IgG, no infections, no PPSV23 challenge: "
             "work-up incomplete, not yet isolated IgM deficiency",
             _incidental, {PV: [WU], OS: [NI, WU]}, standard_ivig, tags=["decision-6", "decision-8"]),
    Scenario("minor-uris-only", "Low IgM, complete normal work-up, only minor upper respiratory infections",
             _minor_only, {PV: [ISO], OS: [NI]}, standard_ivig, tags=["decision-7"]),
    Scenario("recurrent-severe-normal-workup", "Low IgM, two pneumonias, normal IgG and adequate PPSV23 response",
             _rule9, {PV: [ISO], OS: [NI]}, standard_ivig, tags=["decision-9"]),
    Scenario("low-igg-without-recurrent-infections", "Low IgM and IgG 380 mg/dL with a single pneumonia",
             _deficiency_no_infection_criterion, {PV: [ISO], OS: [NI]}, standard_ivig, tags=["decision-10"]),
    Scenario("no-immunoglobulin-data", "No immunoglobulin results; IVIG ordered", _no_ig_data,
             {PV: [], OS: [NI, WU]}, standard_ivig, tags=["no-data"]),
    Scenario("no-ig-data-non-ivig-order", "No immunoglobulin results; only an amoxicillin order", _no_ig_data,
             {PV: [], OS: []}, lambda pid: [amoxicillin_order(pid)], tags=["no-data"]),
    Scenario("normal-immunoglobulins", "Normal IgM and IgG; IVIG ordered without another indication", _normal_igs,
             {PV: [], OS: [NI]}, standard_ivig, tags=["decision-11"]),
    Scenario("other-indication-itp", "IVIG 1 g/kg for immune thrombocytopenia (reasonCode D69.3), low IgM",
             _itp, {PV: [WU], OS: []},
             lambda pid: [ivig_order(pid, dose=1, unit="g/kg", every_weeks=None,
                                     reason=(ICD, "D69.3", "Immune thrombocytopenic purpura"))],
             tags=["other-indication"]),
    Scenario("other-indication-kawasaki", "IVIG 2 g/kg for Kawasaki disease (active diagnosis, no order reason)",
             _kawasaki_child, {PV: [], OS: []},
             lambda pid: [ivig_order(pid, dose=2, unit="g/kg", every_weeks=None)], tags=["other-indication"]),
    Scenario("on-ivig-for-itp", "On monthly IVIG for ITP; IgG 1450 after infusions, normal IgM: not this guideline",
             _on_ivig_for_itp, {PV: []}, tags=["other-indication"]),
    Scenario("low-igg-normal-igm-no-infections", "Normal IgM, IgG 420 mg/dL, no infections: no IgM deficiency card",
             _low_igg_normal_igm, {PV: [], OS: [NI]}, standard_ivig, tags=["decision-10"]),
    # --- order recognition
    Scenario("order-via-contained-medication", "Isolated IgM deficiency; the IVIG product is a contained Medication",
             _isolated, {OS: [NI]}, lambda pid: [ivig_order(pid, via="contained")], tags=["orders"]),
    Scenario("order-via-bundled-medication", "Isolated IgM deficiency; the IVIG product is a Medication in draftOrders",
             _isolated, {OS: [NI]}, lambda pid: [ivig_order(pid, via="gammagard-1")],
             extra_in_drafts=lambda: [medication("gammagard-1")], tags=["orders"]),
    Scenario("order-text-only", "Isolated IgM deficiency; the order names 'IVIG 10%' in text only", _isolated,
             {OS: [NI]}, lambda pid: [ivig_order(pid, hcpcs=None, text="IVIG 10% infusion")], tags=["orders"]),
    Scenario("order-among-several", "Isolated IgM deficiency; IVIG and amoxicillin signed together", _isolated,
             {OS: [NI]}, lambda pid: [amoxicillin_order(pid), ivig_order(pid)], tags=["orders"]),
    Scenario("order-active-status", "Isolated IgM deficiency; the EHR sends the order as 'active', not 'draft'",
             _isolated, {OS: [NI]}, lambda pid: [ivig_order(pid, status="active")], tags=["orders"]),
    Scenario("order-anti-d-not-ivig", "Rho(D) immune globulin is not IgG replacement: no card", _isolated,
             {OS: []}, lambda pid: [ivig_order(pid, hcpcs=None, text="Rho(D) immune globulin (WinRho) 1500 IU")],
             tags=["orders"]),
    # --- dose checks
    Scenario("dose-in-range-g", "IVIG indicated; 35 g every 4 weeks for 70 kg (0.5 g/kg)",
             lambda: _indicated_dose("dose-in-range-g"), {OS: [IND]},
             lambda pid: [ivig_order(pid, dose=35, unit="g")], tags=["dose"]),
    Scenario("dose-too-high-mg-per-kg", "IVIG indicated; 1000 mg/kg every 4 weeks",
             lambda: _indicated_dose("dose-too-high-mg-per-kg"), {OS: [IND, DOSE]},
             lambda pid: [ivig_order(pid, dose=1000, unit="mg/kg")], tags=["dose"]),
    Scenario("dose-interval-too-short", "IVIG indicated; 0.5 g/kg every 2 weeks",
             lambda: _indicated_dose("dose-interval-too-short"), {OS: [IND, DOSE]},
             lambda pid: [ivig_order(pid, every_weeks=2)], tags=["dose"]),
    Scenario("dose-check-no-weight", "IVIG indicated; 35 g ordered but no body weight on record",
             _indicated_no_weight, {OS: [IND, DOSE]}, lambda pid: [ivig_order(pid, dose=35, unit="g")],
             tags=["dose"]),
    # --- children, units, comparators, staleness
    Scenario("child-igm-below-age-range", "4-year-old: IgM 30 mg/dL below the lab's range 33–150; PPSV23 12/23 "
             "(adequate under 6 y)", _child_low_by_range, {PV: [ISO], OS: [NI]}, standard_ivig, tags=["children"]),
    Scenario("child-igm-within-age-range", "4-year-old: IgM 30 mg/dL within the lab's range 25–120 (below the adult "
             "40)", _child_normal_by_range, {PV: []}, tags=["children"]),
    Scenario("child-under-6-impaired-ppsv23", "4-year-old: PPSV23 11/23 (48 %, impaired under 6 y) with two "
             "pneumonias", _child_impaired_under6, {PV: [IND], OS: [IND]}, standard_ivig, tags=["children"]),
    Scenario("units-g-per-l", "IgM 0.32 g/L (= 32 mg/dL), IgG 8.5 g/L", _g_per_l, {PV: [ISO], OS: [NI]},
             standard_ivig, tags=["units"]),
    Scenario("units-mg-per-l", "IgM 320 mg/L (= 32 mg/dL), IgG 3500 mg/L (= 350 mg/dL), two pneumonias", _mg_per_l,
             {PV: [IND, WU], OS: [IND, WU]}, standard_ivig, tags=["units"]),
    Scenario("unknown-unit-igm", "IgM reported in mmol/L: not guessed, treated as missing", _unknown_unit,
             {PV: [], OS: [NI, WU]}, standard_ivig, tags=["units"]),
    Scenario("igm-below-detection-limit", "IgM '<7 mg/dL' (a bound) with normal IgG", _comparator,
             {PV: [ISO], OS: [NI]}, standard_ivig, tags=["units"]),
    Scenario("stale-igg", "IgG from 14 months ago (stale) with two pneumonias: work-up incomplete", _stale_igg,
             {PV: [WU], OS: [NI, WU]}, standard_ivig, tags=["stale"]),
    Scenario("titers-drawn-after-ivig", "Post-PPSV23 titers drawn within 6 months after IVIG, two pneumonias",
             _titers_after_ivig("titers-drawn-after-ivig", (3, 9)), {PV: [CONF], OS: [CONF, NI]}, standard_ivig,
             tags=["decision-2"]),
    Scenario("titers-drawn-too-late", "Post-PPSV23 titers drawn 70 days after vaccination, two pneumonias",
             _titers_too_late, {PV: [WU], OS: [NI, WU]}, standard_ivig, tags=["pneumococcal"]),
    # --- both sides of every threshold
    Scenario("edge-igm-39", "IgM 39 mg/dL (just below 40)", _edge("edge-igm-39", igm=39), {PV: [ISO]}, tags=["edge"]),
    Scenario("edge-igm-40", "IgM 40 mg/dL (at the threshold: not low)", _edge("edge-igm-40", igm=40), {PV: []},
             tags=["edge"]),
    Scenario("edge-igg-399", "IgG 399 mg/dL, two pneumonias", _edge("edge-igg-399", igg=399, infections=2),
             {PV: [IND]}, tags=["edge"]),
    Scenario("edge-igg-400-borderline", "IgG 400 mg/dL (borderline, still below 500), two pneumonias",
             _edge("edge-igg-400-borderline", igg=400, infections=2), {PV: [IND]}, tags=["edge"]),
    Scenario("edge-igg-499", "IgG 499 mg/dL (borderline), two pneumonias",
             _edge("edge-igg-499", igg=499, infections=2), {PV: [IND]}, tags=["edge"]),
    Scenario("edge-igg-500", "IgG 500 mg/dL (normal), two pneumonias, adequate PPSV23",
             _edge("edge-igg-500", igg=500, infections=2), {PV: [ISO]}, tags=["edge"]),
    Scenario("edge-ppsv23-16-of-23", "PPSV23 16/23 protective (69.6 %: impaired), two pneumonias",
             _edge("edge-ppsv23-16-of-23", protective=16, infections=2), {PV: [IND]}, tags=["edge"]),
    Scenario("edge-ppsv23-17-of-23", "PPSV23 17/23 protective (73.9 %: adequate), two pneumonias",
             _edge("edge-ppsv23-17-of-23", protective=17, infections=2), {PV: [ISO]}, tags=["edge"]),
    Scenario("edge-ppsv23-7-of-10", "PPSV23 7/10 protective (exactly 70 %: adequate), two pneumonias",
             _edge("edge-ppsv23-7-of-10", protective=7, tested=10, infections=2), {PV: [ISO]}, tags=["edge"]),
    Scenario("edge-one-severe-infection", "One pneumonia (recurrent needs two), low IgG 420",
             _edge("edge-one-severe-infection", igg=420, infections=1), {PV: [ISO]}, tags=["edge"]),
    Scenario("edge-infection-window-inside", "Second pneumonia exactly 12 months ago (inside the window), IgG 420",
             _window_edge("edge-infection-window-inside", 12, 0), {PV: [IND]}, tags=["edge"]),
    Scenario("edge-infection-window-outside", "Second pneumonia 12 months and 1 day ago (outside), IgG 420",
             _window_edge("edge-infection-window-outside", 12, 1), {PV: [ISO]}, tags=["edge"]),
    Scenario("edge-trough-599", "On IVIG, trough IgG 599 mg/dL", _trough_edge("edge-trough-599", 599),
             {PV: [IND, MON]}, tags=["edge"]),
    Scenario("edge-trough-600", "On IVIG, trough IgG 600 mg/dL", _trough_edge("edge-trough-600", 600),
             {PV: [IND]}, tags=["edge"]),
    Scenario("edge-trough-3-months", "On IVIG, last trough exactly 3 months ago",
             _trough_edge("edge-trough-3-months", 700, trough_months_ago=3, trough_days_ago=0), {PV: [IND]},
             tags=["edge"]),
    Scenario("edge-trough-overdue", "On IVIG, last trough 3 months and 1 day ago",
             _trough_edge("edge-trough-overdue", 700, trough_months_ago=3, trough_days_ago=1), {PV: [IND, MON]},
             tags=["edge"]),
    Scenario("edge-confounding-6-months", "IgM drawn exactly 6 months after IVIG (still confounded)",
             _confounding_edge("edge-confounding-6-months", 6, 0), {PV: [CONF]}, tags=["edge"]),
    Scenario("edge-confounding-6-months-1-day", "IgM drawn 6 months and 1 day after IVIG (interpretable)",
             _confounding_edge("edge-confounding-6-months-1-day", 6, 1), {PV: [ISO]}, tags=["edge"]),
    Scenario("edge-stale-12-months", "IgG drawn exactly 12 months ago (not stale)",
             _stale_edge("edge-stale-12-months", 12, 0), {PV: [ISO]}, tags=["edge"]),
    Scenario("edge-stale-12-months-1-day", "IgG drawn 12 months and 1 day ago (stale)",
             _stale_edge("edge-stale-12-months-1-day", 12, 1), {PV: [WU]}, tags=["edge"]),
    Scenario("edge-dose-0.4", "IVIG indicated; 0.4 g/kg (lower bound)", lambda: _indicated_dose("edge-dose-0.4"),
             {OS: [IND]}, lambda pid: [ivig_order(pid, dose=0.4)], tags=["edge"]),
    Scenario("edge-dose-0.39", "IVIG indicated; 0.39 g/kg (below)", lambda: _indicated_dose("edge-dose-0.39"),
             {OS: [IND, DOSE]}, lambda pid: [ivig_order(pid, dose=0.39)], tags=["edge"]),
    Scenario("edge-dose-0.6", "IVIG indicated; 0.6 g/kg (upper bound)", lambda: _indicated_dose("edge-dose-0.6"),
             {OS: [IND]}, lambda pid: [ivig_order(pid, dose=0.6)], tags=["edge"]),
    Scenario("edge-dose-0.61", "IVIG indicated; 0.61 g/kg (above)", lambda: _indicated_dose("edge-dose-0.61"),
             {OS: [IND, DOSE]}, lambda pid: [ivig_order(pid, dose=0.61)], tags=["edge"]),
    Scenario("edge-interval-3-weeks", "IVIG indicated; every 3 weeks (lower bound)",
             lambda: _indicated_dose("edge-interval-3-weeks"), {OS: [IND]},
             lambda pid: [ivig_order(pid, every_weeks=3)], tags=["edge"]),
    Scenario("edge-interval-5-weeks", "IVIG indicated; every 5 weeks (above)",
             lambda: _indicated_dose("edge-interval-5-weeks"), {OS: [IND, DOSE]},
             lambda pid: [ivig_order(pid, every_weeks=5)], tags=["edge"]),
    # --- on treatment: a trough is drawn just before an infusion; days after one it is a mid-interval level
    Scenario("on-ivig-mid-interval-level", "On IVIG; IgG 1150 drawn 5 days after the last infusion (mid-interval), "
             "last trough 4 cycles ago: trough overdue",
             _on_ivig("on-ivig-mid-interval-level", levels=((700, 4, 0, None), (1150, 0, 5, None))),
             {PV: [IND, MON]}, tags=["trough"]),
    Scenario("on-ivig-low-mid-interval-level", "On IVIG; trough 700 two cycles ago, then IgG 550 drawn 10 days "
             "after an infusion (mid-interval, never compared with the target)",
             _on_ivig("on-ivig-low-mid-interval-level", levels=((700, 2, 0, None), (550, 1, 10, None))),
             {PV: [IND]}, tags=["trough"]),
    Scenario("on-ivig-trough-on-infusion-day", "On IVIG; IgG 650 drawn on the day of the last infusion, time not "
             "recorded: its trough", _on_ivig("on-ivig-trough-on-infusion-day", levels=((650, 0, 0, None),)),
             {PV: [IND]}, tags=["trough"]),
    Scenario("on-ivig-level-after-infusion-same-day", "On IVIG; IgG 1400 drawn at 14:00 after the 09:00 infusion "
             "(not a trough); last trough 4 cycles ago: overdue",
             _on_ivig("on-ivig-level-after-infusion-same-day", levels=((700, 4, 0, None), (1400, 0, 0, "14:00")),
                      infusion_at="09:00"), {PV: [IND, MON]}, tags=["trough"]),
    Scenario("on-ivig-level-before-infusion-same-day", "On IVIG; IgG 560 drawn at 08:00 before the 09:00 "
             "infusion: a trough below target",
             _on_ivig("on-ivig-level-before-infusion-same-day", levels=((560, 0, 0, "08:00"),), infusion_at="09:00"),
             {PV: [IND, MON]}, tags=["trough"]),
    Scenario("on-ivig-active-infection-trough-5-weeks", "On IVIG with an active pneumonia; last trough 5 weeks "
             "ago: monthly troughs during active infection, overdue",
             _on_ivig("on-ivig-active-infection-trough-5-weeks", levels=((700, 1, -1, None),),
                      infections=((4, "active"),)), {PV: [IND, MON]}, tags=["trough", "edge"]),
    Scenario("on-ivig-active-infection-trough-8-days", "On IVIG with an active pneumonia; last trough 8 days "
             "ago, the day before the last infusion (within a month)",
             _on_ivig("on-ivig-active-infection-trough-8-days", levels=((700, 0, -1, None),),
                      infections=((4, "active"),)), {PV: [IND]}, tags=["trough", "edge"]),
    Scenario("on-ivig-resolved-infection-trough-5-weeks", "On IVIG; pneumonia two months ago, resolved; last "
             "trough 5 weeks ago (within 3 months)",
             _on_ivig("on-ivig-resolved-infection-trough-5-weeks", levels=((700, 1, -1, None),),
                      infections=((60, "resolved"),)), {PV: [IND]}, tags=["trough"]),
    # --- results that are not facts: said under "data not used", the next valid result decides
    Scenario("implausible-igg-tens-of-thousands", "Latest IgG 85 000 mg/dL (impossible: unit or typing error); "
             "the IgG before it, 310 mg/dL, decides", _implausible_igg, {PV: [IND], OS: [IND]}, standard_ivig,
             tags=["plausibility"]),
    Scenario("edge-igg-plausible-15000", "Latest IgG 15 000 mg/dL, at the plausibility bound: used (normal IgG)",
             _edge_plausible("edge-igg-plausible-15000", 15000), {PV: [ISO]}, tags=["plausibility", "edge"]),
    Scenario("edge-igg-implausible-15001", "Latest IgG 15 001 mg/dL, above the plausibility bound: not used; "
             "IgG 310 decides", _edge_plausible("edge-igg-implausible-15001", 15001), {PV: [IND]},
             tags=["plausibility", "edge"]),
    Scenario("implausible-igm-negative", "Latest IgM -5 mg/dL (impossible); the IgM before it, 32 mg/dL, decides",
             _implausible_igm, {PV: [ISO], OS: [NI]}, standard_ivig, tags=["plausibility"]),
    Scenario("implausible-iga-hyper-igm", "Latest IgA 50 000 mg/dL (impossible); IgA 3 mg/dL before it: "
             "hyper-IgM pattern", _implausible_iga, {PV: [HIGM], OS: [HIGM]}, standard_ivig, tags=["plausibility"]),
    Scenario("implausible-weight-adult-3-kg", "IVIG indicated, 35 g ordered; latest weight 3 kg in an adult "
             "(impossible): the 70 kg before it gives 0.5 g/kg", _implausible_weight, {OS: [IND]},
             lambda pid: [ivig_order(pid, dose=35, unit="g")], tags=["plausibility"]),
    Scenario("implausible-titer-excluded", "PPSV23 6/9 protective plus one titer of 5 000 ug/mL (impossible, not "
             "counted): impaired, two pneumonias", _implausible_titer, {PV: [IND], OS: [IND]}, standard_ivig,
             tags=["plausibility"]),
    Scenario("data-absent-and-entered-in-error", "Latest IgG not performed (dataAbsentReason) and one entered in "
             "error (350): the valid IgG 850 decides", _absent_and_in_error, {PV: [ISO], OS: [NI]}, standard_ivig,
             tags=["plausibility"]),
    Scenario("duplicate-results-and-infections", "IgM sent twice; one pneumonia coded twice (J18.9 and J13, same "
             "onset): one episode, not recurrent; IgG 420", _duplicates, {PV: [ISO], OS: [NI]}, standard_ivig,
             tags=["duplicates"]),
    Scenario("unreadable-entries", "Isolated IgM deficiency; the EHR also sends null entries, unknown resource "
             "types and an invalid Observation: skipped and named", lambda: complete_adult("unreadable-entries"),
             {PV: [ISO], OS: [NI]}, standard_ivig, garbage=GARBAGE_ENTRIES, tags=["lenient"]),
    # --- isolated low IgM whose pneumococcal response is not shown adequate: work-up incomplete
    Scenario("titers-drawn-too-early-no-infections", "Low IgM, normal IgG, post-PPSV23 titers drawn 14 days after "
             "the vaccine (too early): work-up incomplete", _titers_too_early, {PV: [WU], OS: [NI, WU]},
             standard_ivig, tags=["decision-6"]),
    Scenario("titers-after-ivig-no-recurrent-infections", "Low IgM, normal IgG, post-PPSV23 titers drawn within 6 "
             "months after IVIG, one pneumonia: work-up incomplete",
             _titers_after_ivig("titers-after-ivig-no-recurrent-infections", (3,)), {PV: [WU], OS: [NI, WU]},
             standard_ivig, tags=["decision-6"]),
    Scenario("ppsv23-no-pre-titers", "Low IgM, normal IgG, protective post-PPSV23 titers but no pre-vaccination "
             "titers: work-up incomplete", _no_pre_titers, {PV: [WU], OS: [NI, WU]}, standard_ivig,
             tags=["decision-6"]),
    # --- dose: mL of a known concentration, weekly SCIG, multi-day courses, doses that are not a mass
    Scenario("dose-in-ml-10-percent", "IVIG indicated; 350 mL of Privigen 10 % for 70 kg (35 g = 0.5 g/kg)",
             lambda: _indicated_dose("dose-in-ml-10-percent"), {OS: [IND]},
             lambda pid: [ivig_order(pid, dose=350, unit="mL")], tags=["dose"]),
    Scenario("dose-in-ml-too-high", "IVIG indicated; 700 mL of Privigen 10 % for 70 kg (70 g = 1.0 g/kg)",
             lambda: _indicated_dose("dose-in-ml-too-high"), {OS: [IND, DOSE]},
             lambda pid: [ivig_order(pid, dose=700, unit="mL")], tags=["dose"]),
    Scenario("scig-weekly-in-range", "IVIG indicated; Hizentra 0.125 g/kg weekly (0.5 g/kg per 4 weeks)",
             lambda: _indicated_dose("scig-weekly-in-range"), {OS: [IND]}, lambda pid: _scig_order(pid, 0.125),
             tags=["dose"]),
    Scenario("scig-weekly-too-high", "IVIG indicated; Hizentra 0.3 g/kg weekly (1.2 g/kg per 4 weeks)",
             lambda: _indicated_dose("scig-weekly-too-high"), {OS: [IND, DOSE]}, lambda pid: _scig_order(pid, 0.3),
             tags=["dose"]),
    Scenario("dose-course-over-2-days", "IVIG indicated; 0.25 g/kg daily for 2 days every 4 weeks (0.5 g/kg a "
             "course)", lambda: _indicated_dose("dose-course-over-2-days"), {OS: [IND]},
             lambda pid: [ivig_order(pid, dose=0.25, repeat={"frequency": 1, "period": 1, "periodUnit": "d",
                                                             "count": 2},
                                     dosage_text="0.25 g/kg daily for 2 days, every 4 weeks")], tags=["dose"]),
    Scenario("dose-unit-not-mass", "IVIG indicated; the dose is ordered as '2 {pill}': it cannot be checked",
             lambda: _indicated_dose("dose-unit-not-mass"), {OS: [IND, DOSE]},
             lambda pid: [ivig_order(pid, dose=2, unit="{pill}")], tags=["dose"]),
]

# ------------------------------------------------------------------ writing the folders


def _request(hook: str, scenario: Scenario, record: dict[str, Any], drafts: dict[str, Any] | None) -> dict[str, Any]:
    from hooks.data_needs import PREFETCH

    resources = [e["resource"] for e in record["entry"]]
    patient = next(r for r in resources if r["resourceType"] == "Patient")

    def searchset(rtype: str) -> dict[str, Any]:
        return {"resourceType": "Bundle", "type": "searchset",
                "entry": [{"resource": r} for r in resources if r["resourceType"] == rtype]}

    prefetch = {}
    for key, template in PREFETCH.items():
        rtype = template.split("?")[0].split("/")[0]
        prefetch[key] = patient if rtype == "Patient" else searchset(rtype)
    # each Observation once: the Ig key carries them all (a service must not rely on key names)
    for key, template in PREFETCH.items():
        if template.startswith("Observation") and key != "immunoglobulins":
            prefetch[key] = {"resourceType": "Bundle", "type": "searchset", "entry": []}
    if scenario.garbage:
        prefetch["immunoglobulins"]["entry"] += scenario.garbage
    context: dict[str, Any] = {"userId": "Practitioner/example", "patientId": patient["id"]}
    if drafts is not None:
        context["draftOrders"] = drafts
    if hook == OSEL and drafts is not None:
        context["selections"] = [f"{e['resource']['resourceType']}/{e['resource']['id']}" for e in drafts["entry"]
                                 if e["resource"]["resourceType"] != "Medication"]
    return {"hookInstance": _stable_hook_instance(scenario.name, hook),
            "hook": hook, "context": context, "prefetch": prefetch}


def materialise(scenario: Scenario) -> dict[str, Any]:
    """The files of one scenario folder, as JSON-ready objects."""
    record = scenario.build().bundle()
    pid = next(e["resource"]["id"] for e in record["entry"] if e["resource"]["resourceType"] == "Patient")
    files: dict[str, Any] = {"bundle.json": record}
    drafts = None
    if scenario.orders is not None:
        orders = scenario.orders(pid) + (scenario.extra_in_drafts() if scenario.extra_in_drafts else [])
        drafts = draft_orders(*orders)
        files["draft-orders.json"] = drafts
    files["expected.json"] = {
        "today": REFERENCE_TODAY.isoformat(),
        "summary": scenario.summary,
        "patientId": pid,
        "sample": scenario.sample,
        "tags": scenario.tags,
        "expected": scenario.expected,
    }
    if scenario.garbage:  # sent in the requests only: no FHIR server holds entries like these
        files["expected.json"]["unreadableEntries"] = len(scenario.garbage)
    for hook in scenario.expected:
        if hook in (OS, OSEL) and drafts is None:
            continue
        files[f"request-{hook}.json"] = _request(hook, scenario, record, drafts if hook != PV else None)
    return files


def _stable_hook_instance(name: str, hook: str) -> str:
    import uuid

    return str(uuid.uuid5(uuid.UUID("0b4c8a52-5a0e-4bf0-9a3c-6f1e2d3c4b5a"), f"{name}|{hook}"))


def write_all(root: Path = HERE) -> list[str]:
    written = []
    for scenario in SCENARIOS:
        folder = root / scenario.name
        folder.mkdir(parents=True, exist_ok=True)
        files = materialise(scenario)
        for name in list(folder.glob("*.json")):
            if name.name not in files:
                name.unlink()
        for name, content in files.items():
            (folder / name).write_text(json.dumps(content, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        written.append(scenario.name)
    (root / "sample-patients.transaction.json").write_text(
        json.dumps(sample_transaction_bundle(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return written


def sample_transaction_bundle() -> dict[str, Any]:
    """The sample patients as a FHIR transaction Bundle: PUT by id, loadable into any R4 server."""
    entries = []
    for scenario in SCENARIOS:
        if not scenario.sample:
            continue
        for entry in scenario.build().bundle()["entry"]:
            res = entry["resource"]
            entries.append({"fullUrl": f"{res['resourceType']}/{res['id']}", "resource": res,
                            "request": {"method": "PUT", "url": f"{res['resourceType']}/{res['id']}"}})
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


if __name__ == "__main__":
    names = write_all()
    print(f"wrote {len(names)} scenarios to {HERE}")
