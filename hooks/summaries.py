"""Card summaries: the conclusion in under 140 characters, worded per hook and rule.

A summary is the one line a prescriber reads in the middle of signing: it states the conclusion
first, with the value that decided it, and the same words for the same thing on every hook (the
trough target is always "trough IgG ≥ 600–800 mg/dL").
"""

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


def _trough(cfg: GuidelineConfig) -> str:
    from hooks.rules import trough_target_text

    return trough_target_text(cfg)


def patient_view_summary(a: Assessment, f: Facts, cfg: GuidelineConfig) -> str:
    rule = a.rule
    if rule == "hyper_igm_pattern":
        return f"Hyper-IgM pattern: {a.conclusion} — needs regular IVIG and immunology referral"
    if rule == "confounded_by_recent_ivig":
        return confounded_summary(a)
    if rule in ("indicated_by_igg_deficiency", "indicated_by_impaired_pneumococcal_response",
                "consider_ivig_regardless_of_igg"):
        return indicated_summary(a, cfg)
    if rule == "workup_incomplete":
        return f"Work-up incomplete ({_missing_short(a)} missing): no IVIG until it shows an indication"
    if rule == "isolated_igm_deficiency":
        return (f"Isolated IgM deficiency (IgM {_igm(f)}, normal IgG and PPSV23 response): no IVIG; "
                "IgG every 6–12 months")
    if rule == "incidental_low_igm":
        return f"No IVIG: {a.conclusion}; re-check IgG every 6–12 months"
    if rule == "recurrent_severe_infections_with_normal_workup":
        return "Low IgM, recurrent severe infections, normal IgG and PPSV23 response: immunology review, not IVIG"
    if rule == "antibody_deficiency_without_infection_criterion":
        return f"No IVIG now: {a.conclusion}"
    return a.conclusion


def not_indicated_summary(a: Assessment, f: Facts) -> str:
    rule = a.rule
    if rule == "confounded_by_recent_ivig":
        return "IVIG not indicated: low IgM measured after recent IVIG is no indication (IVIG contains no IgM)"
    if rule == "workup_incomplete":
        return f"IVIG not indicated now: work-up incomplete ({_missing_short(a)} missing)"
    if rule == "isolated_igm_deficiency":
        return f"IVIG not indicated: isolated low IgM ({_igm(f)}) with normal IgG and PPSV23 response"
    if rule == "recurrent_severe_infections_with_normal_workup":
        return "IVIG not indicated: recurrent infections with normal IgG and PPSV23 response — refer to immunology"
    return f"IVIG not indicated: {a.conclusion}"


def first_fitting(*candidates: str, limit: int = 139) -> str:
    """The most informative wording that fits a summary (the last one is clipped if none does)."""
    for text in candidates:
        if len(text) <= limit:
            return text
    return candidates[-1]


def indicated_summary(a: Assessment, cfg: GuidelineConfig) -> str:
    if a.rule == "consider_ivig_regardless_of_igg":
        return f"IVIG may be considered regardless of IgG: {a.conclusion}"
    return first_fitting(f"IVIG indicated: {a.conclusion}; {cfg.replacement_regimen()}, {_trough(cfg)}",
                         f"IVIG indicated: {a.conclusion}; {cfg.replacement_regimen()}",
                         f"IVIG indicated: {a.conclusion}")


def workup_summary(a: Assessment, before_ivig: bool) -> str:
    what = _missing_short(a)
    return f"Work-up incomplete before IVIG: {what} missing" if before_ivig else f"Immunology work-up incomplete: {what} missing"


def monitoring_summary(a: Assessment) -> str:
    return f"IVIG monitoring: {a.conclusion}"


def confounded_summary(a: Assessment) -> str:
    return f"{a.conclusion}: not interpretable — use pre-IVIG results or repeat later"


def dose_summary(a: Assessment) -> str:
    if a.conclusion.startswith("dose not checked: "):
        return f"IVIG dose not checked: {a.conclusion.removeprefix('dose not checked: ')}"
    return f"IVIG dose check: {a.conclusion}"
