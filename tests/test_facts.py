"""Fact extraction: which results count, how they are classified, and what is reported as a problem."""

from __future__ import annotations

from datetime import date

import pytest

from fhir_fixtures.builder import REFERENCE_TODAY as TODAY, Record, ago
from hooks.config import GuidelineConfig
from hooks.facts import Level, extract_facts
from hooks.fhir_read import read_resources

CFG = GuidelineConfig()


def facts_of(rec: Record, today: date = TODAY, cfg: GuidelineConfig = CFG):
    read = read_resources([rec.bundle()], rec.patient_id)
    return extract_facts(read, today, cfg, clinical_dates=read.clinical_dates)


@pytest.mark.parametrize("status", ["entered-in-error", "cancelled", "preliminary", "registered"])
def test_only_final_results_count(status):
    rec = Record("p").igm(20, when=ago(days=5), status=status).igm(80, when=ago(days=30))
    f = facts_of(rec)
    assert f.igm.deciding.measured.value == 80


@pytest.mark.parametrize("status", ["final", "amended", "corrected"])
def test_final_amended_corrected_count(status):
    assert facts_of(Record("p").igm(20, when=ago(days=5), status=status)).igm.is_low


def test_latest_result_decides():
    f = facts_of(Record("p").igm(20, when=ago(months=3)).igm(60, when=ago(days=3)))
    assert f.igm.deciding.measured.value == 60 and f.igm.level is Level.NORMAL


def test_unknown_unit_is_missing_and_reported():
    f = facts_of(Record("p").igm(0.3, unit="mmol/L", when=ago(days=3)))
    assert f.igm.status == "missing"
    assert any("mmol/L" in p and "not known" in p for p in f.igm.problems)


def test_csf_igg_is_not_serum_igg():
    rec = Record("p").lab("IgG", 3, when=ago(days=3), code="2464-6", text="IgG [Mass/volume] in Cerebral spinal fluid")
    assert facts_of(rec).igg.status == "missing"


def test_text_only_results_are_recognised():
    rec = Record("p").lab("IgM", 25, when=ago(days=3), code=False, text="Immunoglobulin M, serum")
    rec.lab("IgG", 900, when=ago(days=3), code=False, text="IgG total")
    f = facts_of(rec)
    assert f.igm.is_low and f.igg.is_normal


def test_igg_subclass_and_specific_antibodies_are_not_total_igg():
    rec = Record("p").lab("IgG", 30, when=ago(days=3), code=False, text="IgG subclass 2")
    rec.lab("IgG", 5, when=ago(days=3), code=False, text="Tetanus IgG Ab")
    assert facts_of(rec).igg.status == "missing"


def test_child_uses_lab_range_not_adult_threshold():
    child = Record("c", birth="2022-06-01").igm(35, when=ago(days=3), ref=(40, 150))
    assert facts_of(child).igm.is_low  # 35 < 40 lab low
    child2 = Record("c", birth="2022-06-01").igm(30, when=ago(days=3), ref=(25, 120))
    assert facts_of(child2).igm.is_normal  # adult 40 would say low


def test_child_without_range_uses_lab_flag_else_cannot_judge():
    flagged = Record("c", birth="2022-06-01").igm(35, when=ago(days=3), flag="L")
    assert facts_of(flagged).igm.is_low
    bare = Record("c", birth="2022-06-01").igm(35, when=ago(days=3))
    f = facts_of(bare)
    assert f.igm.status == "indeterminate" and not f.igm.is_low


def test_iga_uses_lab_range_then_seven():
    assert facts_of(Record("p").iga(50, when=ago(days=3), ref=(70, 400))).iga.is_low
    assert not facts_of(Record("p").iga(50, when=ago(days=3))).iga.is_low
    assert facts_of(Record("p").iga(6, when=ago(days=3))).iga.is_low


def test_result_on_infusion_day_is_a_trough_not_confounded():
    rec = Record("p").ivig_given(ago(days=30)).igg(700, when=ago(days=30))
    f = facts_of(rec)
    assert f.igg.values[-1].confounded_by is None


def test_result_after_ivig_is_confounded():
    rec = Record("p").ivig_given(ago(days=30)).igm(20, when=ago(days=29))
    f = facts_of(rec)
    assert f.igm.status == "confounded"
    assert any("after IVIG" in p for p in f.igm.problems)


def test_baseline_before_first_dose_decides_for_a_patient_on_treatment_even_when_old():
    rec = Record("p").igg(300, when=ago(months=30)).ivig_every(ago(months=29), ago(days=10)).igg(650, when=ago(days=11))
    f = facts_of(rec)
    assert f.ivig.on_treatment
    assert f.igg.deciding.measured.value == 300
    assert f.trough.measured.value == 650


def test_hyperimmune_globulin_is_not_ivig_history():
    rec = Record("p")
    rec.add({"resourceType": "MedicationAdministration", "id": "rho", "status": "completed",
             "medicationCodeableConcept": {"text": "Rho(D) immune globulin 300 mcg"},
             "subject": rec.subject, "effectiveDateTime": ago(days=10)})
    assert not facts_of(rec).ivig.any


def test_infection_and_its_admission_are_one_episode():
    rec = Record("p").pneumonia(ago(months=2))  # a Condition plus an inpatient Encounter
    f = facts_of(rec)
    assert len(f.infections.episodes) == 1
    assert f.infections.episodes[0].severe and f.infections.episodes[0].hospitalised


def test_minor_infection_in_hospital_counts_as_severe():
    rec = Record("p").infection("J01.90", "Acute sinusitis", ago(months=2), hospitalised=True)
    assert len(facts_of(rec).infections.severe) == 1


def test_icu_stay_makes_an_infection_life_threatening():
    rec = Record("p").infection("J18.9", "Pneumonia", ago(months=2), icu=True)
    assert len(facts_of(rec).infections.life_threatening) == 1


def test_refuted_conditions_do_not_count():
    rec = Record("p").condition("J18.9", "Pneumonia", ago(months=2), verification="refuted")
    rec.office_visit(ago(months=1))
    assert facts_of(rec).infections.episodes == ()


def test_no_infections_known_versus_unknown():
    with_visit = Record("p").igm(30, when=ago(months=14)).office_visit(ago(months=3))
    assert facts_of(with_visit).infections.known
    nothing_recent = Record("p").igm(30, when=ago(months=14))
    f = facts_of(nothing_recent)
    assert not f.infections.known
    assert any("infection history unknown" in p for p in f.infections.problems)


def test_ppsv23_post_window_and_age_fraction():
    rec = Record("p", birth="1990-01-01").ppsv23_challenge(protective_post=16)
    p = facts_of(rec).pneumococcal
    assert p.status == "impaired" and p.tested == 23 and p.protective == 16 and p.required_fraction == 0.7
    young = Record("c", birth="2022-06-01").ppsv23_challenge(protective_post=12)
    y = facts_of(young).pneumococcal
    assert y.status == "adequate" and y.required_fraction == 0.5


@pytest.mark.parametrize(("days", "status"), [(27, "no-post-titers"), (28, "adequate"), (56, "adequate"), (57, "no-post-titers")])
def test_post_titers_must_be_4_to_8_weeks_after_vaccination(days, status):
    rec = Record("p").ppsv23_challenge(protective_post=20, post_days=days)
    assert facts_of(rec).pneumococcal.status == status


def test_titers_without_vaccination_cannot_be_classified():
    rec = Record("p").titers(ago(months=1), protective=20)
    p = facts_of(rec).pneumococcal
    assert p.status == "not-tested" and any("no PPSV23" in x for x in p.problems)


def test_adequate_post_titers_without_pre_titers_are_not_a_complete_challenge():
    rec = Record("p").ppsv23_challenge(protective_post=20, pre=False)
    assert facts_of(rec).pneumococcal.status == "no-pre-titers"


def test_impaired_post_titers_need_no_pre_titers():
    rec = Record("p").ppsv23_challenge(protective_post=5, pre=False)
    assert facts_of(rec).pneumococcal.status == "impaired"


def test_weight_older_than_the_limit_is_not_used_and_said():
    rec = Record("p").weight(70, when=ago(months=13))
    f = facts_of(rec)
    assert f.weight is None and any("weight" in p for p in f.data_problems)


def test_lymphocyte_subsets_missing_are_listed():
    rec = Record("p").lab("CD19", 250, "/uL", ago(months=1))
    assert facts_of(rec).lymphocyte_subsets_missing == ("CD4", "CD8")


def test_other_indication_from_active_diagnosis():
    rec = Record("p").diagnosis("D69.3", "Immune thrombocytopenic purpura", ago(days=5))
    assert facts_of(rec).other_indications == ("Immune thrombocytopenic purpura",)
    resolved = Record("p").diagnosis("D69.3", "ITP", ago(months=30), clinical_status="resolved")
    assert facts_of(resolved).other_indications == ()


@pytest.mark.parametrize(("text", "serotype"), [
    ("Streptococcus pneumoniae Danish serotype 6B IgG Ab [Mass/volume] in Serum", "6B"),
    ("S. pneumoniae type 14 IgG Ab", "14"),
    ("Strep pneumo IgG serotype 9N", "9N"),
    ("Pneumococcal Ab serotype 23F", "23F"),
    ("S pneumoniae 19A IgG", "19A"),
])
def test_pneumococcal_titers_recognised_by_text(text, serotype):
    from hooks.fhir_read import read_resources

    rec = Record("p").lab("titer", 2.0, "ug/mL", ago(days=3), code=False, text=text)
    read = read_resources([rec.bundle()], "p")
    assert [(r.kind, r.serotype) for r in read.of("Observation")] == [("titer", serotype)]
    assert read.observations("titer") == read.of("Observation")


@pytest.mark.parametrize("text", ["Mycoplasma pneumoniae IgG Ab", "Klebsiella pneumoniae culture",
                                  "Chlamydia pneumoniae IgG", "Streptococcus pyogenes Ab"])
def test_other_organisms_are_not_pneumococcal_titers(text):
    from hooks.fhir_read import read_resources

    rec = Record("p").lab("titer", 2.0, "ug/mL", ago(days=3), code=False, text=text)
    read = read_resources([rec.bundle()], "p")
    assert all(r.kind != "titer" for r in read.of("Observation")) and read.observations("titer") == []


@pytest.mark.parametrize("cls", ["LabValue", "Titer"])
def test_hand_written_constructor_takes_the_declared_fields(cls):
    """LabValue and Titer set their fields in their own ``__init__``: it must take exactly the
    dataclass's fields, in order, with the same defaults, and set every one of them."""
    import dataclasses
    import inspect

    from hooks import facts as facts_module

    klass = getattr(facts_module, cls)
    fields = dataclasses.fields(klass)
    params = list(inspect.signature(klass.__init__).parameters.values())[1:]
    assert [p.name for p in params] == [f.name for f in fields]
    for param, f in zip(params, fields):
        expected = f.default if f.default is not dataclasses.MISSING else inspect.Parameter.empty
        assert param.default == expected, f.name
    values = {f.name: object() for f in fields}
    made = klass(**values)
    assert all(getattr(made, name) is value for name, value in values.items())
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(made, fields[0].name, None)
