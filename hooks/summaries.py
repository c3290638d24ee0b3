"""Card summaries: the conclusion in under 140 characters, worded per hook and rule."""

from __future__ import annotations

from hooks.assessment import Assessment
from hooks.config import GuidelineConfig
from hooks.facts import Facts


def _missing_short(a: Assessment) -> str:
    from hooks.rules import short_missing

    return short_missing(a.missing_keys) if a.missing_keys else "results"


def _igm(f: Facts) -> str:
    v = f.igm.deciding
    return v.measured.display(v.unit) if v else "not on record"


def patient_view_summary(a: Assessment, f: Facts, cfg: GuidelineConfig) -> str:
    rule = a.rule
    if rule == "hyper_igm_pattern":
        return f"Hyper-IgM pattern: {a.conclusion} — needs regular IVIG and immunology referral"
    if rule == "confounded_by_recent_ivig":
        return f"{a.conclusion}: not interpretable — use pre-IVIG results or repeat later"
    if rule in ("indicated_by_igg_deficiency", "indicated_by_impaired_pneumococcal_response"):
        return f"IVIG indicated: {a.conclusion}; {cfg.replacement_regimen()}, trough >= {cfg.trough_target_mg_dl:g} mg/dL"
    if rule == "consider_ivig_regardless_of_igg":
        return f"Consider IVIG regardless of IgG: {a.conclusion}"
    if rule == "workup_incomplete":
        return f"IgM deficiency work-up incomplete ({_missing_short(a)} missing): IVIG indication cannot be judged"
    if rule == "isolated_igm_deficiency":
        return f"Isolated IgM deficiency (IgM {_igm(f)}, IgG normal): no IVIG; antibiotics for RTIs, IgG every 6–12 months"
    if rule == "incidental_low_igm":
        return f"Low IgM ({_igm(f)}) with {a.conclusion.split(' with ', 1)[-1]}: no IVIG; re-check IgG every 6–12 months"
    if rule == "recurrent_severe_infections_with_normal_workup":
        return "Low IgM, recurrent severe infections, normal IgG and PPSV23 response: immunology review, not empirical IVIG"
    if rule == "antibody_deficiency_without_infection_criterion":
        return f"No IVIG now: {a.conclusion}"
    return a.conclusion


def not_indicated_summary(a: Assessment, f: Facts) -> str:
    rule = a.rule
    if rule == "confounded_by_recent_ivig":
        return "IVIG not indicated: low IgM measured after recent IVIG is no indication (IVIG contains no IgM)"
    if rule == "workup_incomplete":
        return f"IVIG not supported yet: work-up incomplete ({_missing_short(a)} missing) — no functional antibody testing"
    if rule == "isolated_igm_deficiency":
        return f"IVIG not indicated: isolated low IgM ({_igm(f)}) with normal IgG"
    if rule == "incidental_low_igm":
        return f"IVIG not indicated: {a.conclusion}"
    if rule == "recurrent_severe_infections_with_normal_workup":
        return "IVIG not indicated: recurrent infections with normal IgG and PPSV23 response — refer to immunology"
    return f"IVIG not indicated: {a.conclusion}"


def indicated_summary(a: Assessment, cfg: GuidelineConfig) -> str:
    if a.rule == "consider_ivig_regardless_of_igg":
        return f"IVIG may be considered regardless of IgG: {a.conclusion}"
    return f"IVIG indicated: {a.conclusion}; {cfg.replacement_regimen()}, trough >= {cfg.trough_target_range()}"


def workup_summary(a: Assessment, before_ivig: bool) -> str:
    what = _missing_short(a)
    return f"Work-up incomplete before IVIG: {what}" if before_ivig else f"Immunology work-up incomplete: {what}"


def monitoring_summary(a: Assessment) -> str:
    return f"IVIG monitoring: {a.conclusion}"


def confounded_summary(a: Assessment) -> str:
    return f"{a.conclusion}: not interpretable — use pre-IVIG results or repeat later"
