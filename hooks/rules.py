"""The guideline's decision rules: one pure function per branch of criteria.md, in its order.

Each rule reads ``Facts`` and the ``GuidelineConfig`` and returns an ``Assessment`` (it applies,
with the facts that decided) or ``NotApplicable`` (and why not, for the trace). The registry
(``DECISION_RULES``, ``MONITORING_RULES``, ``ORDER_RULES``) is the single list the engine runs
and ``ivig-cds explain`` documents: a rule exists for the service only if it is registered here,
with its guideline branch, its topics and its literature.

What a rule says is read by a prescriber: conclusions, evidence and advice are clinical words with
values, units and dates; the rule's own name stays in the trace and the card's extension.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Mapping

from hooks.assessment import Assessment, Evidence, NotApplicable, RuleResult, Topic, Verdict
from hooks.config import GuidelineConfig
from hooks.dates import add_months, fmt_date
from hooks.facts import Analyte, Facts, Infection, LabValue
from hooks.references import REFERENCES

PV, OS = "patient-view", "order-sign"


@dataclass(frozen=True)
class RuleSpec:
    """A rule and what a review committee needs to know about it."""

    name: str
    func: Callable[..., RuleResult]
    kind: str  # "decision", "monitoring", "workup" or "order"
    branch: str
    checks: str
    reads: tuple[str, ...]
    thresholds: tuple[str, ...]
    topics: Mapping[str, tuple[Topic, ...]]
    references: tuple[str, ...]
    #: the guideline branch in a clinician's words, as the card names it
    title: str = ""


DECISION_RULES: list[RuleSpec] = []
MONITORING_RULES: list[RuleSpec] = []
WORKUP_RULES: list[RuleSpec] = []
ORDER_RULES: list[RuleSpec] = []
_REGISTRIES = {"decision": DECISION_RULES, "monitoring": MONITORING_RULES, "workup": WORKUP_RULES,
               "order": ORDER_RULES}


def rule(*, kind: str, branch: str, checks: str, title: str = "", reads: tuple[str, ...], thresholds: tuple[str, ...] = (),
         topics: Mapping[str, tuple[Topic, ...]], references: tuple[str, ...]):
    """Register a rule in evaluation order (the order of definition in this module)."""

    def register(func: Callable[..., RuleResult]) -> Callable[..., RuleResult]:
        _REGISTRIES[kind].append(RuleSpec(func.__name__, func, kind, branch, checks, reads, thresholds,
                                          dict(topics), references, title or checks))
        return func

    return register


# ------------------------------------------------------------------ evidence wording

_STATUS_WORDS = {"missing": "not on record", "stale": "too old to use", "confounded": "drawn after IVIG/SCIG",
                 "indeterminate": "cannot be judged"}


def _lab_evidence(analyte: Analyte, facts: Facts | None = None, label: str | None = None) -> Evidence:
    value = analyte.deciding or analyte.latest
    if value is None:
        return Evidence(label or analyte.name, "not on record")
    if analyte.deciding is value:
        note = analyte.basis
    elif analyte.status == "confounded" and value.confounded_by is not None:
        note = (f"drawn {(value.when - value.confounded_by).days} days after IVIG/SCIG of "
                f"{fmt_date(value.confounded_by)}: not interpretable")
    else:
        note = _STATUS_WORDS.get(analyte.status, analyte.status)
    if facts is not None and before_ivig(value, facts):
        note += "; before IVIG began"
    return Evidence(label or analyte.name, value.measured.display(value.unit), fmt_date(value.when), note)


def before_ivig(value: LabValue, facts: Facts) -> bool:
    """A result from before the first IVIG/SCIG dose of a patient on treatment (the baseline)."""
    first = facts.ivig.first_dose
    return facts.ivig.on_treatment and first is not None and value.when <= first


def _igg_evidence(facts: Facts, cfg: GuidelineConfig) -> Evidence:
    ev = _lab_evidence(facts.igg, facts)
    if is_borderline_igg(facts, cfg):
        return Evidence(ev.fact, ev.value, ev.date,
                        f"borderline ({cfg.igg_borderline_from_mg_dl:g}–{cfg.igg_deficient_mg_dl:g} mg/dL), "
                        f"counted as deficient")
    return ev


def _infection_evidence(episodes: Iterable[Infection], what: str) -> tuple[Evidence, ...]:
    return tuple(Evidence(what, e.label, fmt_date(e.when),
                          ", ".join(part for part in (
                              "life-threatening" if e.life_threatening else "severe" if e.severe else "minor",
                              "encapsulated organism" if e.encapsulated else "",
                              "hospitalised" if e.hospitalised else "",
                              "still active" if e.active else "") if part))
                 for e in episodes)


def _pneumo_evidence(facts: Facts) -> Evidence:
    p = facts.pneumococcal
    when = fmt_date(max(t.when for t in p.post)) if p.post else (fmt_date(p.vaccination) if p.vaccination else "")
    return Evidence("PPSV23 response", p.show(), when, PNEUMO_WORDS.get(p.status, p.status))


def _infusion_evidence(facts: Facts) -> tuple[Evidence, ...]:
    doses = facts.ivig.doses
    if not doses:
        return ()
    last = doses[-1]
    what = "Last SCIG dose" if last.subcutaneous else "Last IVIG infusion"
    return (Evidence(what, last.product or "immune globulin", fmt_date(last.when)),)


def _value(v: LabValue | None) -> str:
    return v.measured.display(v.unit) if v else "not on record"


#: what a PPSV23 response status means, in words
PNEUMO_WORDS = {
    "adequate": "adequate response",
    "impaired": "impaired response",
    "not-tested": "no PPSV23 challenge on record",
    "no-post-titers": "no titers in the post-vaccination window",
    "no-pre-titers": "no pre-vaccination titers",
    "confounded": "titers drawn after IVIG/SCIG",
    "stale": "titers too old to use",
}


# ------------------------------------------------------------------ shared predicates and wording


def recurrent_severe(facts: Facts, cfg: GuidelineConfig) -> bool:
    return facts.infections.known and len(facts.infections.severe) >= cfg.recurrent_severe_infection_count


def is_borderline_igg(facts: Facts, cfg: GuidelineConfig) -> bool:
    v = facts.igg.deciding
    return (facts.igg.is_low and v is not None and not facts.is_child and v.measured.comparator is None
            and cfg.igg_borderline_from_mg_dl <= v.measured.value < cfg.igg_deficient_mg_dl)


def window_text(facts: Facts, cfg: GuidelineConfig) -> str:
    """'in 12 months'; for a patient on IVIG, the window that made the indication: 'in the 12 months
    before IVIG began' (or '... and since' when infections on IVIG are counted too)."""
    if facts.infections.window_start < add_months(facts.today, -cfg.infection_window_months):
        first = facts.ivig.first_dose
        if first is not None and all(e.when <= first for e in facts.infections.episodes):
            return f"in the {cfg.infection_window_months} months before IVIG began"
        return f"from {cfg.infection_window_months} months before IVIG began to today"
    return f"in {cfg.infection_window_months} months"


_KINDS = (("pneumonia", "pneumonias"), ("meningitis", "episodes of meningitis"), ("sepsis", "episodes of sepsis"),
          ("bacter", "episodes of bacteremia"))


def episodes_text(episodes: tuple[Infection, ...], adjective: str = "severe") -> str:
    """'2 pneumonias', 'pneumonia', '3 severe infections' — what a clinician would say."""
    n = len(episodes)
    kinds = set()
    for e in episodes:
        label = e.label.lower()
        kinds.add(next((plural for word, plural in _KINDS if word in label), None))
    if len(kinds) == 1 and None not in kinds:
        plural = kinds.pop()
        singular = {"pneumonias": "pneumonia"}.get(plural, plural.replace("episodes of ", "an episode of "))
        return singular if n == 1 else f"{n} {plural}"
    return f"{n} {adjective} infection{'s' if n != 1 else ''}"


def infection_kind(episode: Infection) -> str:
    """'pneumonia', 'meningitis', ... or 'infection': what to call one episode in a sentence."""
    label = episode.label.lower()
    return next((word if word != "bacter" else "bacteremia" for word, _ in _KINDS if word in label), "infection")


def infection_count_text(facts: Facts, cfg: GuidelineConfig) -> str:
    """Each count once: '2 pneumonias in 12 months', '2 minor infections and no severe infection in 12 months'.

    For a patient on IVIG whose indication was made before it began, the infections before the first
    dose are the ones counted in words ("2 pneumonias in the 12 months before IVIG began").
    """
    if not facts.infections.known:
        return "infection history unknown"
    severe, minor = facts.infections.severe, facts.infections.minor
    window = window_text(facts, cfg)
    first = facts.ivig.first_dose
    if window.startswith("from") and first is not None:
        before = tuple(e for e in severe if e.when <= first)
        if len(before) >= cfg.recurrent_severe_infection_count:
            return f"{episodes_text(before)} in the {cfg.infection_window_months} months before IVIG began"
    if severe and minor:
        return f"{episodes_text(severe)} and {len(minor)} minor infection{'s' if len(minor) != 1 else ''} {window}"
    if severe:
        return f"{episodes_text(severe)} {window}"
    if minor:
        return f"{len(minor)} minor infection{'s' if len(minor) != 1 else ''} and no severe infection {window}"
    return f"no infections {window}"


def post_window_text(cfg: GuidelineConfig) -> str:
    """'4–8 weeks' (or days when the configured window is not whole weeks)."""
    low, high = cfg.post_titer_min_days, cfg.post_titer_max_days
    if low % 7 == 0 and high % 7 == 0:
        return f"{low // 7}–{high // 7} weeks"
    return f"{low}–{high} days"


def trough_target_text(cfg: GuidelineConfig) -> str:
    """The trough target, worded the same on every card: 'trough IgG ≥ 600–800 mg/dL'."""
    return f"trough IgG ≥ {cfg.trough_target_range()}"


def treatment_plan(cfg: GuidelineConfig) -> tuple[str, ...]:
    """The replacement regimen and its monitoring, with the configured dose, interval and trough."""
    return (
        f"IVIG {cfg.replacement_regimen()}",
        f"Target {trough_target_text(cfg)}, drawn just before an infusion: before each infusion at first, then "
        f"every {cfg.trough_overdue_months} months once stable, monthly during an active infection",
        "Track infection frequency as the primary outcome, not IgM",
    )


NO_REPLACEMENT_PLAN = (
    "No immunoglobulin replacement",
    "Prophylactic antibiotics for recurrent non-severe respiratory infections",
    "Prompt antimicrobial treatment of febrile illness",
    "Re-check IgG every 6–12 months for developing IgG deficiency",
)


# ------------------------------------------------------------------ 1. hyper-IgM pattern


def _igm_word(facts: Facts) -> str:
    return "high" if facts.igm.high else "normal"


@rule(kind="decision", branch="criteria.md Decision 1: Hyper-IgM pattern", title="Hyper-IgM pattern",
      checks="low IgG and low IgA with normal or high IgM (or a documented hyper-IgM syndrome)",
      reads=("IgG", "IgA", "IgM", "diagnoses"), thresholds=("igg_deficient_mg_dl", "iga_low_mg_dl", "igm_low_mg_dl"),
      topics={PV: (Topic.HYPER_IGM_PATTERN,), OS: (Topic.HYPER_IGM_PATTERN,)},
      references=("higm", "bonilla-2015"))
def hyper_igm_pattern(facts: Facts, cfg: GuidelineConfig) -> RuleResult:
    """Pitfall #2: hyper-IgM syndrome is not selective IgM deficiency; it needs regular IVIG."""
    advice = (f"Regular IVIG replacement ({cfg.replacement_regimen()}) and prophylactic antibiotics",
              "Urgent immunology referral (CD40 ligand / AID work-up)",
              "Never manage as isolated IgM deficiency")
    labs = tuple(_lab_evidence(a, facts) for a in (facts.igg, facts.iga, facts.igm) if a.values)
    if facts.hyper_igm_diagnosis:
        return Assessment("hyper_igm_pattern", Verdict.SUPPORTS, f"documented {facts.hyper_igm_diagnosis}",
                          (Evidence("Diagnosis", facts.hyper_igm_diagnosis), *labs), advice)
    if not (facts.igg.is_low and facts.iga.is_low and facts.igm.is_normal):
        return NotApplicable("hyper_igm_pattern",
                             f"needs low IgG, low IgA and normal/high IgM (IgG {facts.igg.level if facts.igg.status == 'ok' else facts.igg.status}, "
                             f"IgA {facts.iga.level if facts.iga.status == 'ok' else facts.iga.status}, "
                             f"IgM {facts.igm.level if facts.igm.status == 'ok' else facts.igm.status})")
    iga_limit = facts.iga.deciding.ref_low if facts.iga.deciding and facts.iga.deciding.ref_low is not None else cfg.iga_low_mg_dl
    return Assessment(
        "hyper_igm_pattern", Verdict.SUPPORTS,
        f"low IgG {_value(facts.igg.deciding)} and IgA {_value(facts.iga.deciding)} with {_igm_word(facts)} IgM "
        f"{_value(facts.igm.deciding)}",
        labs, advice,
        thresholds=(f"IgG < {cfg.igg_deficient_mg_dl:g} mg/dL", f"IgA < {iga_limit:g} mg/dL",
                    f"IgM ≥ {cfg.igm_low_mg_dl:g} mg/dL"))


# ------------------------------------------------------------------ 2. confounded by recent IVIG


@rule(kind="decision", branch="criteria.md Decision 2: Confounded", title="Results confounded by recent IVIG/SCIG",
      checks="the IgM/IgG/titers that would decide were drawn within the confounding window after IVIG/SCIG "
             "(titers decide only with recurrent severe infections and IgG not deficient); results from before "
             "IVIG that establish Decisions 3–5 take precedence",
      reads=("IgM", "IgG", "PPSV23 titers", "IVIG history", "infections"),
      thresholds=("ivig_confounding_months", "recurrent_severe_infection_count"),
      topics={PV: (Topic.LABS_CONFOUNDED_BY_IVIG,), OS: (Topic.LABS_CONFOUNDED_BY_IVIG, Topic.IVIG_NOT_INDICATED)},
      references=("bonilla-2015", "guideline"))
def confounded_by_recent_ivig(facts: Facts, cfg: GuidelineConfig) -> RuleResult:
    """Donor IgG masks the patient's own; IVIG has no IgM, so a low IgM after it is no indication."""
    confounded = [a for a in (facts.igm, facts.igg) if a.status == "confounded"]
    titers_decide = (facts.pneumococcal.status == "confounded" and recurrent_severe(facts, cfg)
                     and not facts.igg.is_low)
    if not confounded and not titers_decide:
        return NotApplicable("confounded_by_recent_ivig", "no deciding result was drawn after IVIG/SCIG")
    for other in (indicated_by_igg_deficiency, indicated_by_impaired_pneumococcal_response,
                  consider_ivig_regardless_of_igg):
        if isinstance(other(facts, cfg), Assessment):
            return NotApplicable("confounded_by_recent_ivig",
                                 f"results before IVIG decide ({other.__name__})")
    evidence = [_lab_evidence(a) for a in confounded]
    if titers_decide:
        evidence.append(_pneumo_evidence(facts))
    last = facts.ivig.last_dose
    names = [a.name for a in confounded] + (["PPSV23 titers"] if titers_decide else [])
    repeat_after = add_months(last, cfg.ivig_confounding_months) if last else None
    return Assessment(
        "confounded_by_recent_ivig", Verdict.CONFOUNDED,
        f"{'/'.join(names)} drawn within {cfg.ivig_confounding_months} months after IVIG/SCIG",
        (*evidence, *_infusion_evidence(facts)),
        ("Do not start or continue IVIG on a low IgM measured after IVIG: IVIG contains no significant IgM",
         f"To judge the indication, use results from before the first IVIG dose, or repeat IgG/IgM/titers "
         f"{cfg.ivig_confounding_months} months after the last dose"
         + (f" (from {fmt_date(repeat_after)})" if repeat_after else "")),
        thresholds=(f"within {cfg.ivig_confounding_months} months after IVIG/SCIG",))


# ------------------------------------------------------------------ 3. indicated: IgG deficiency


@rule(kind="decision", branch="criteria.md Decision 3: Indicated — IgG deficiency",
      title="IgG deficiency with recurrent severe infections",
      checks="IgG below the deficiency threshold with recurrent severe bacterial infections, whatever the IgM "
             "(a patient who needs IVIG is never told it is not indicated)",
      reads=("IgG", "infections"),
      thresholds=("igg_deficient_mg_dl", "igg_borderline_from_mg_dl", "recurrent_severe_infection_count",
                  "infection_window_months"),
      topics={PV: (Topic.IVIG_INDICATED,), OS: (Topic.IVIG_INDICATED,)},
      references=("bonilla-2015", "gupta-2017"))
def indicated_by_igg_deficiency(facts: Facts, cfg: GuidelineConfig) -> RuleResult:
    if not facts.igg.is_low:
        return NotApplicable("indicated_by_igg_deficiency",
                             f"IgG not deficient ({facts.igg.basis or facts.igg.status})")
    if not recurrent_severe(facts, cfg):
        return NotApplicable("indicated_by_igg_deficiency",
                             f"{infection_count_text(facts, cfg)}; {cfg.recurrent_severe_infection_count} needed")
    igg = facts.igg.deciding
    borderline = " (borderline)" if is_borderline_igg(facts, cfg) else ""
    if igg is not None and before_ivig(igg, facts):  # the indication as it stood when IVIG began
        conclusion = f"{infection_count_text(facts, cfg)}, IgG {_value(igg)}{borderline} then"
    else:
        conclusion = f"IgG {_value(igg)}{borderline} with {infection_count_text(facts, cfg)}"
    return Assessment(
        "indicated_by_igg_deficiency", Verdict.SUPPORTS, conclusion,
        (_igg_evidence(facts, cfg), *_infection_evidence(facts.infections.severe, "Severe infection"),
         *((_lab_evidence(facts.igm, facts),) if facts.igm.values else ())),
        treatment_plan(cfg),
        thresholds=(f"IgG < {cfg.igg_deficient_mg_dl:g} mg/dL",
                    f"≥ {cfg.recurrent_severe_infection_count} severe infections in {cfg.infection_window_months} months"))


# ------------------------------------------------------------------ 4. indicated: impaired specific antibody


@rule(kind="decision", branch="criteria.md Decision 4: Indicated — impaired specific antibody",
      title="Impaired pneumococcal antibody response with recurrent severe infections",
      checks="impaired PPSV23 response (too few protective serotypes 4–8 weeks after vaccination) with "
             "recurrent severe infections, whatever the IgM",
      reads=("PPSV23 titers", "PPSV23 vaccination", "infections", "age"),
      thresholds=("titer_protective_ug_ml", "ppsv23_protective_fraction", "ppsv23_protective_fraction_young_child",
                  "young_child_age_years", "post_titer_min_days", "post_titer_max_days",
                  "recurrent_severe_infection_count", "infection_window_months"),
      topics={PV: (Topic.IVIG_INDICATED,), OS: (Topic.IVIG_INDICATED,)},
      references=("orange-2012", "bonilla-2015", "gupta-2017"))
def indicated_by_impaired_pneumococcal_response(facts: Facts, cfg: GuidelineConfig) -> RuleResult:
    p = facts.pneumococcal
    if p.status != "impaired":
        return NotApplicable("indicated_by_impaired_pneumococcal_response",
                             f"PPSV23 response {p.status.replace('-', ' ')}")
    if not recurrent_severe(facts, cfg):
        return NotApplicable("indicated_by_impaired_pneumococcal_response",
                             f"{infection_count_text(facts, cfg)}; {cfg.recurrent_severe_infection_count} needed")
    return Assessment(
        "indicated_by_impaired_pneumococcal_response", Verdict.SUPPORTS,
        f"impaired PPSV23 response ({p.protective}/{p.tested} serotypes protective) with "
        f"{infection_count_text(facts, cfg)}",
        (_pneumo_evidence(facts), *_infection_evidence(facts.infections.severe, "Severe infection"),
         _lab_evidence(facts.igm, facts), _lab_evidence(facts.igg, facts)),
        treatment_plan(cfg),
        thresholds=(f"protective ≥ {cfg.titer_protective_ug_ml:g} ug/mL per serotype",
                    f"impaired below {round(100 * (p.required_fraction or cfg.ppsv23_protective_fraction))} % protective",
                    f"≥ {cfg.recurrent_severe_infection_count} severe infections in {cfg.infection_window_months} months"))


# ------------------------------------------------------------------ 5. consider regardless of IgG


@rule(kind="decision", branch="criteria.md Decision 5: Consider IVIG regardless of IgG",
      title="Life-threatening or encapsulated-organism infections: IVIG may be considered regardless of IgG",
      checks="low IgM with a life-threatening infection, or with severe infections by encapsulated bacteria",
      reads=("IgM", "infections"),
      thresholds=("igm_low_mg_dl", "life_threatening_infection_count", "encapsulated_infection_count",
                  "infection_window_months"),
      topics={PV: (Topic.IVIG_INDICATED,), OS: (Topic.IVIG_INDICATED,)},
      references=("orange-2012", "bonilla-2015"))
def consider_ivig_regardless_of_igg(facts: Facts, cfg: GuidelineConfig) -> RuleResult:
    if not facts.igm.is_low:
        return NotApplicable("consider_ivig_regardless_of_igg", f"IgM not low ({facts.igm.basis or facts.igm.status})")
    life = facts.infections.life_threatening
    encapsulated = facts.infections.severe_encapsulated
    if len(life) >= cfg.life_threatening_infection_count:
        why = f"life-threatening {life[-1].label.lower()} ({fmt_date(life[-1].when)})"
        shown = life
    elif len(encapsulated) >= cfg.encapsulated_infection_count:
        why = f"{len(encapsulated)} severe infections by encapsulated bacteria"
        shown = encapsulated
    else:
        return NotApplicable("consider_ivig_regardless_of_igg",
                             f"{len(life)} life-threatening and {len(encapsulated)} severe encapsulated-organism "
                             f"infections in {cfg.infection_window_months} months")
    return Assessment(
        "consider_ivig_regardless_of_igg", Verdict.SUPPORTS, f"{why} with low IgM",
        (_lab_evidence(facts.igm, facts), *_infection_evidence(shown, "Infection"),
         *((_lab_evidence(facts.igg, facts),) if facts.igg.values else ())),
        ("Consider IVIG regardless of the IgG level, with immunology", *treatment_plan(cfg)),
        thresholds=(f"≥ {cfg.life_threatening_infection_count} life-threatening infection(s)",
                    f"or ≥ {cfg.encapsulated_infection_count} severe encapsulated-organism infections"))


# ------------------------------------------------------------------ 6. work-up incomplete


def _pneumo_missing(facts: Facts, cfg: GuidelineConfig) -> str | None:
    """What the PPSV23 challenge lacks, in words; None when its response is known."""
    p = facts.pneumococcal
    window = post_window_text(cfg)
    return {
        "not-tested": f"PPSV23 challenge: pre-vaccination titers, PPSV23, titers {window} later",
        "no-post-titers": f"PPSV23 post-vaccination titers {window} after the vaccine",
        "no-pre-titers": "PPSV23 pre-vaccination titers (post titers alone may reflect earlier exposure)",
        "confounded": f"PPSV23 challenge at least {cfg.ivig_confounding_months} months after the last IVIG/SCIG "
                      "(titers on record reflect donor antibody)",
        "stale": f"PPSV23 titers (those on record are older than {cfg.stale_lab_months} months)",
    }.get(p.status)


def missing_workup(facts: Facts, cfg: GuidelineConfig) -> tuple[list[str], list[str]]:
    """Every standard work-up item that is missing or stale: (wording, orderable keys)."""
    items: list[str] = []
    keys: list[str] = []

    def add(text: str, key: str) -> None:
        items.append(text)
        if key not in keys:
            keys.append(key)

    for analyte, key in ((facts.igm, "igm"), (facts.igg, "igg")):
        if analyte.status in ("missing", "stale", "indeterminate"):
            add(f"serum {analyte.name} ({_STATUS_WORDS[analyte.status]})", key)
    pneumo = _pneumo_missing(facts, cfg)
    if pneumo:
        add(pneumo, "ppsv23")
    if not facts.infections.known:
        add(f"infection history of the last {cfg.infection_window_months} months", "infection-history")
    if facts.lymphocyte_subsets_missing:
        add("lymphocyte subsets (" + ", ".join(facts.lymphocyte_subsets_missing) + ", memory B cells)",
            "lymphocyte-subsets")
    return items, keys


SHORT_NAMES = {"igm": "IgM", "igg": "IgG", "ppsv23": "PPSV23 titers", "infection-history": "infection history",
               "lymphocyte-subsets": "lymphocyte subsets"}


def short_missing(keys) -> str:
    return ", ".join(SHORT_NAMES.get(k, k) for k in keys)


def response_not_shown_adequate(facts: Facts, cfg: GuidelineConfig) -> bool:
    """Low IgM with normal IgG and no recurrent severe infections, but no PPSV23 challenge that shows an
    adequate response: isolated IgM deficiency cannot be diagnosed yet (criteria Decision 7 needs it)."""
    return (facts.igm.is_low and facts.igg.is_normal and not recurrent_severe(facts, cfg)
            and facts.pneumococcal.status not in ("adequate", "impaired"))


@rule(kind="decision", branch="criteria.md Decision 6: Work-up incomplete",
      title="Work-up incomplete: the indication cannot be judged",
      checks="the indication cannot be judged: infection history unknown, IgG (or IgM) missing or stale, or no "
             "interpretable PPSV23 pre/post titers — with recurrent severe infections and IgG not deficient, or "
             "with low IgM and normal IgG (isolated IgM deficiency needs an adequate response)",
      reads=("IgM", "IgG", "PPSV23 titers", "infections", "lymphocyte subsets"),
      thresholds=("stale_lab_months", "infection_window_months", "recurrent_severe_infection_count",
                  "post_titer_min_days", "post_titer_max_days"),
      topics={PV: (Topic.WORKUP_INCOMPLETE,), OS: (Topic.IVIG_NOT_INDICATED, Topic.WORKUP_INCOMPLETE)},
      references=("bonilla-2015", "orange-2012"))
def workup_incomplete(facts: Facts, cfg: GuidelineConfig) -> RuleResult:
    """Pitfalls #1 and #3: never start IVIG on low IgM without IgG and functional antibody testing.

    Titers decide when recurrent severe infections are documented and IgG is not deficient (rule 4
    could apply), and for a low IgM with normal IgG (rule 7 needs an adequate response); without
    them and with a deficient IgG their absence is listed beside the decision, not decisive.
    """
    blocking: list[str] = []
    if not facts.infections.known:
        blocking.append("infection history unknown")
    for analyte in (facts.igg, facts.igm):
        if analyte.status in ("missing", "stale", "indeterminate"):
            blocking.append(f"{analyte.name} {analyte.status}")
    if recurrent_severe(facts, cfg) and not facts.igg.is_low and not facts.pneumococcal.judgeable:
        blocking.append(f"PPSV23 response {facts.pneumococcal.status.replace('-', ' ')}")
    elif response_not_shown_adequate(facts, cfg):
        blocking.append(f"PPSV23 response not shown adequate ({facts.pneumococcal.status.replace('-', ' ')})")
    if not blocking:
        return NotApplicable("workup_incomplete", "IgG, IgM and infection history are known"
                             + ("" if not recurrent_severe(facts, cfg) else ", PPSV23 response interpretable"))
    items, keys = missing_workup(facts, cfg)
    evidence = [_lab_evidence(a, facts) for a in (facts.igm, facts.igg) if a.values]
    if facts.pneumococcal.status != "not-tested":
        evidence.append(_pneumo_evidence(facts))
    evidence.append(Evidence("Infections", infection_count_text(facts, cfg)))
    return Assessment(
        "workup_incomplete", Verdict.CANNOT_JUDGE,
        "work-up incomplete: " + short_missing(keys) + " missing",
        tuple(evidence),
        ("No immunoglobulin replacement now: the work-up does not show an indication",
         "Complete the missing work-up before any immunoglobulin therapy",
         "Starting IVIG on a low IgM without IgG and functional antibody testing is the guideline's pitfall #1"),
        missing=tuple(items), missing_keys=tuple(keys),
        thresholds=(f"results older than {cfg.stale_lab_months} months are stale",
                    f"post-vaccination titers {post_window_text(cfg)} after PPSV23"))


# ------------------------------------------------------------------ 7. isolated IgM deficiency


@rule(kind="decision", branch="criteria.md Decision 7: Isolated IgM deficiency",
      title="Isolated IgM deficiency: no immunoglobulin replacement",
      checks="low IgM, normal IgG, adequate pneumococcal response, no recurrent severe infections",
      reads=("IgM", "IgG", "PPSV23 titers", "infections"),
      thresholds=("igm_low_mg_dl", "igg_deficient_mg_dl", "recurrent_severe_infection_count",
                  "infection_window_months", "ppsv23_protective_fraction"),
      topics={PV: (Topic.ISOLATED_IGM_DEFICIENCY,), OS: (Topic.IVIG_NOT_INDICATED,)},
      references=("taietti-2023", "gupta-2017", "bonilla-2015"))
def isolated_igm_deficiency(facts: Facts, cfg: GuidelineConfig) -> RuleResult:
    if not facts.igm.is_low:
        return NotApplicable("isolated_igm_deficiency", "IgM not low")
    if not facts.igg.is_normal:
        return NotApplicable("isolated_igm_deficiency", "IgG not normal")
    if facts.pneumococcal.status != "adequate":
        return NotApplicable("isolated_igm_deficiency",
                             f"PPSV23 response not shown adequate ({facts.pneumococcal.status.replace('-', ' ')})")
    if recurrent_severe(facts, cfg):
        return NotApplicable("isolated_igm_deficiency", "recurrent severe infections")
    return Assessment(
        "isolated_igm_deficiency", Verdict.AGAINST,
        f"isolated low IgM ({_value(facts.igm.deciding)}) with normal IgG and an adequate PPSV23 response",
        (_lab_evidence(facts.igm, facts), _lab_evidence(facts.igg, facts), _pneumo_evidence(facts),
         Evidence("Infections", infection_count_text(facts, cfg))),
        NO_REPLACEMENT_PLAN,
        thresholds=(f"IgM < {cfg.igm_low_mg_dl:g} mg/dL in adults", f"IgG ≥ {cfg.igg_deficient_mg_dl:g} mg/dL"))


# ------------------------------------------------------------------ 8. incidental / minor infections only


@rule(kind="decision", branch="criteria.md Decision 8: Incidental low IgM / minor infections only",
      title="Low IgM without severe infections: no immunoglobulin replacement",
      checks="low IgM with no infections, or only minor upper respiratory infections, in the window "
             "(pneumococcal response not impaired)",
      reads=("IgM", "infections"), thresholds=("igm_low_mg_dl", "infection_window_months"),
      topics={PV: (Topic.ISOLATED_IGM_DEFICIENCY,), OS: (Topic.IVIG_NOT_INDICATED,)},
      references=("orange-2012", "taietti-2023"))
def incidental_low_igm(facts: Facts, cfg: GuidelineConfig) -> RuleResult:
    if not facts.igm.is_low:
        return NotApplicable("incidental_low_igm", "IgM not low")
    if facts.infections.severe:
        return NotApplicable("incidental_low_igm", f"{len(facts.infections.severe)} severe infection(s)")
    if facts.pneumococcal.status == "impaired":
        return NotApplicable("incidental_low_igm", "PPSV23 response impaired")
    what = infection_count_text(facts, cfg)
    igg_note = f"; IgG {_value(facts.igg.deciding)} is low" if facts.igg.is_low else ""
    return Assessment(
        "incidental_low_igm", Verdict.AGAINST,
        f"low IgM ({_value(facts.igm.deciding)}) with {what}{igg_note}",
        (_lab_evidence(facts.igm, facts), _igg_evidence(facts, cfg),
         *_infection_evidence(facts.infections.minor, "Minor infection")),
        NO_REPLACEMENT_PLAN + (("Low IgG without recurrent severe infections: immunology review",) if facts.igg.is_low else ()),
        thresholds=(f"IgM < {cfg.igm_low_mg_dl:g} mg/dL in adults",))


# ------------------------------------------------------------------ 9. recurrent severe infections, normal work-up


@rule(kind="decision", branch="criteria.md Decision 9: Recurrent severe infections with a normal work-up",
      title="Recurrent severe infections with a normal antibody work-up: immunology review, not IVIG",
      checks="low IgM with recurrent severe infections but normal IgG and adequate PPSV23 response, "
             "no life-threatening or encapsulated-organism criterion",
      reads=("IgM", "IgG", "PPSV23 titers", "infections"),
      thresholds=("igm_low_mg_dl", "recurrent_severe_infection_count", "infection_window_months",
                  "igg_deficient_mg_dl", "ppsv23_protective_fraction"),
      topics={PV: (Topic.ISOLATED_IGM_DEFICIENCY,), OS: (Topic.IVIG_NOT_INDICATED,)},
      references=("bonilla-2015", "guideline"))
def recurrent_severe_infections_with_normal_workup(facts: Facts, cfg: GuidelineConfig) -> RuleResult:
    if not (facts.igm.is_low and facts.igg.is_normal and recurrent_severe(facts, cfg)):
        return NotApplicable("recurrent_severe_infections_with_normal_workup",
                             "needs low IgM, normal IgG and recurrent severe infections")
    if facts.pneumococcal.status != "adequate":
        return NotApplicable("recurrent_severe_infections_with_normal_workup",
                             f"PPSV23 response {facts.pneumococcal.status.replace('-', ' ')}")
    return Assessment(
        "recurrent_severe_infections_with_normal_workup", Verdict.AGAINST,
        f"{infection_count_text(facts, cfg)} with normal IgG and an adequate PPSV23 response",
        (_lab_evidence(facts.igm, facts), _lab_evidence(facts.igg, facts), _pneumo_evidence(facts),
         *_infection_evidence(facts.infections.severe, "Severe infection")),
        ("No empirical IVIG: no criterion for replacement is met",
         "Immunology review and an infection-focused evaluation (anatomy, exposures, other immune defects)",
         *NO_REPLACEMENT_PLAN[1:]),
        thresholds=(f"IgG ≥ {cfg.igg_deficient_mg_dl:g} mg/dL",
                    f"PPSV23 ≥ {round(100 * (facts.pneumococcal.required_fraction or cfg.ppsv23_protective_fraction))} % protective"))


# ------------------------------------------------------------------ 10. deficiency without the infection criterion


@rule(kind="decision", branch="criteria.md Decisions 3–5 (their infection criterion not met)",
      title="Antibody deficiency without recurrent severe infections: no replacement now",
      checks="low IgM, low IgG or impaired PPSV23 response, but neither recurrent severe, life-threatening nor "
             "encapsulated-organism infections: replacement not supported (no patient-view card when IgM is "
             "not low: that is outside the IgM-deficiency guideline)",
      reads=("IgM", "IgG", "PPSV23 titers", "infections"),
      thresholds=("igm_low_mg_dl", "igg_deficient_mg_dl", "recurrent_severe_infection_count",
                  "infection_window_months"),
      topics={PV: (Topic.ISOLATED_IGM_DEFICIENCY,), OS: (Topic.IVIG_NOT_INDICATED,)},
      references=("bonilla-2015", "guideline"))
def antibody_deficiency_without_infection_criterion(facts: Facts, cfg: GuidelineConfig) -> RuleResult:
    if not (facts.igm.is_low or facts.igg.is_low or facts.pneumococcal.status == "impaired"):
        return NotApplicable("antibody_deficiency_without_infection_criterion", "no antibody deficiency")
    parts = []
    if facts.igm.is_low:
        parts.append(f"low IgM ({_value(facts.igm.deciding)})")
    if facts.igg.is_low:
        parts.append(f"low IgG ({_value(facts.igg.deciding)})")
    if facts.pneumococcal.status == "impaired":
        parts.append("an impaired PPSV23 response")
    joined = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    evidence = [_lab_evidence(facts.igm, facts), _igg_evidence(facts, cfg)]
    if facts.pneumococcal.status != "not-tested":
        evidence.append(_pneumo_evidence(facts))
    evidence.extend(_infection_evidence(facts.infections.episodes, "Infection")
                    or (Evidence("Infections", infection_count_text(facts, cfg)),))
    return Assessment(
        "antibody_deficiency_without_infection_criterion", Verdict.AGAINST,
        f"{joined} with {infection_count_text(facts, cfg)}",
        tuple(evidence),
        ("No immunoglobulin replacement now: the guideline's infection criterion is not met",
         "Immunology review; re-check IgG every 6–12 months; treat infections promptly"),
        thresholds=(f"≥ {cfg.recurrent_severe_infection_count} severe infections in {cfg.infection_window_months} months needed",))


# ------------------------------------------------------------------ 11. no immunoglobulin deficiency


@rule(kind="decision", branch="Outside the guideline's indications: no immunoglobulin deficiency",
      title="No immunoglobulin deficiency on record",
      checks="IgM not low and IgG normal: an immune globulin order for replacement has no basis",
      reads=("IgM", "IgG"), thresholds=("igm_low_mg_dl", "igg_deficient_mg_dl"),
      topics={OS: (Topic.IVIG_NOT_INDICATED,)},
      references=("guideline", "perez-2017"))
def no_immunoglobulin_deficiency(facts: Facts, cfg: GuidelineConfig) -> RuleResult:
    if not (facts.igm.is_normal and facts.igg.is_normal):
        return NotApplicable("no_immunoglobulin_deficiency", "IgM or IgG not normal")
    return Assessment(
        "no_immunoglobulin_deficiency", Verdict.AGAINST,
        f"no immunoglobulin deficiency on record (IgM {_value(facts.igm.deciding)}, IgG {_value(facts.igg.deciding)})",
        (_lab_evidence(facts.igm, facts), _lab_evidence(facts.igg, facts)),
        ("No immunoglobulin replacement: IgM and IgG are not low",
         "If IVIG is meant for another indication (ITP, Kawasaki disease, GBS, CIDP, myasthenia), state it as the "
         "order's reason"),
        thresholds=(f"IgM ≥ {cfg.igm_low_mg_dl:g} mg/dL", f"IgG ≥ {cfg.igg_deficient_mg_dl:g} mg/dL"))


# ------------------------------------------------------------------ on treatment: trough monitoring


def _treatment_applies(facts: Facts) -> bool:
    return facts.ivig.on_treatment


def _mid_interval_evidence(facts: Facts) -> tuple[Evidence, ...]:
    mid = facts.mid_interval
    if mid is None:
        return ()
    return (Evidence("IgG (mid-interval)", mid.value.measured.display(mid.value.unit), fmt_date(mid.value.when),
                     mid.describe()),)


def trough_interval_months(facts: Facts, cfg: GuidelineConfig) -> int:
    """How often a trough is due: every 3 months once stable, monthly during an active severe infection."""
    return cfg.trough_overdue_months_active_infection if facts.infections.active_severe else cfg.trough_overdue_months


@rule(kind="monitoring", branch="criteria.md On treatment: trough target", title="Trough IgG below target on treatment",
      checks="on IVIG, the latest trough IgG (drawn just before an infusion; a level drawn days after an infusion "
             "is a mid-interval level and never compared) is below the target",
      reads=("IVIG history", "IgG"),
      thresholds=("trough_target_mg_dl", "on_treatment_days", "trough_max_days_before_infusion"),
      topics={PV: (Topic.IVIG_MONITORING,), OS: (Topic.IVIG_MONITORING,)},
      references=("bonilla-2015",))
def trough_below_target(facts: Facts, cfg: GuidelineConfig) -> RuleResult:
    if not _treatment_applies(facts):
        return NotApplicable("trough_below_target", "not on IVIG/SCIG")
    trough = facts.trough
    if trough is None:
        return NotApplicable("trough_below_target", "no trough IgG since treatment started")
    below = trough.measured.certainly_below(cfg.trough_target_mg_dl)
    if not below:
        return NotApplicable("trough_below_target", f"trough {trough.show()} at or above {cfg.trough_target_mg_dl:g} mg/dL")
    level = facts.trough_level()
    timing = level.describe() if level is not None else "trough"
    return Assessment(
        "trough_below_target", Verdict.SUPPORTS,
        f"trough IgG {trough.measured.display(trough.unit)} ({fmt_date(trough.when)}) below the target "
        f"≥ {cfg.trough_target_range()}",
        (Evidence("Trough IgG", trough.measured.display(trough.unit), fmt_date(trough.when), timing),
         *_mid_interval_evidence(facts), *_infusion_evidence(facts)),
        (f"Review dose and interval ({cfg.replacement_regimen()}) to reach a {trough_target_text(cfg)}",
         "Look for active infection (it shortens IVIG half-life) and protein loss",
         "Re-measure the trough just before the next infusion"),
        thresholds=(f"target {trough_target_text(cfg)}",))


@rule(kind="monitoring", branch="criteria.md On treatment: trough monitoring interval",
      title="Trough IgG monitoring on treatment",
      checks="on IVIG, no trough IgG within the monitoring interval (monthly during an active severe infection); "
             "a mid-interval level does not count",
      reads=("IVIG history", "IgG", "infections"),
      thresholds=("trough_overdue_months", "trough_overdue_months_active_infection", "active_infection_days",
                  "interval_max_weeks", "on_treatment_days"),
      topics={PV: (Topic.IVIG_MONITORING,), OS: (Topic.IVIG_MONITORING,)},
      references=("bonilla-2015",))
def trough_overdue(facts: Facts, cfg: GuidelineConfig) -> RuleResult:
    if not _treatment_applies(facts):
        return NotApplicable("trough_overdue", "not on IVIG/SCIG")
    months = trough_interval_months(facts, cfg)
    since = add_months(facts.today, -months)
    trough = facts.trough
    if trough is not None and trough.when >= since:
        return NotApplicable("trough_overdue", f"trough {trough.show()} within {months} month(s)")
    first = facts.ivig.first_dose
    if trough is None and first is not None and (facts.today - first).days <= 7 * cfg.interval_max_weeks:
        return NotApplicable("trough_overdue", "treatment started within one dosing interval")
    period = "month" if months == 1 else f"{months} months"
    active = facts.infections.active_severe
    during = f" during an active {infection_kind(active[-1])} since {fmt_date(active[-1].when)}" if active else ""
    last_seen = (f"last trough {trough.measured.display(trough.unit)} on {fmt_date(trough.when)}" if trough
                 else "none since treatment started")
    evidence = [Evidence("Trough IgG", _value(trough), fmt_date(trough.when) if trough else "",
                         f"none since {fmt_date(since)}")]
    evidence += _mid_interval_evidence(facts)
    evidence += _infection_evidence(active[-1:], "Active infection")
    evidence += _infusion_evidence(facts)
    return Assessment(
        "trough_overdue", Verdict.SUPPORTS,
        f"no trough IgG in the last {period}{during}; {last_seen}",
        tuple(evidence),
        ("Measure trough IgG immediately before the next infusion",
         f"Then every {cfg.trough_overdue_months} months once stable, monthly during an active infection "
         "(IVIG is consumed faster)"),
        thresholds=(f"a trough at least every {period}",))


# ------------------------------------------------------------------ work-up gaps beside the decision


@rule(kind="workup", branch="criteria.md Facts: lymphocyte subsets; Diagnostic evaluation before treatment",
      title="The work-up before any immunoglobulin therapy",
      checks="standard work-up items missing or stale while another rule decided (their absence makes the "
             "work-up incomplete, not the indication false)",
      reads=("IgG", "PPSV23 titers", "infections", "lymphocyte subsets"),
      thresholds=("stale_lab_months", "infection_window_months"),
      topics={PV: (Topic.WORKUP_INCOMPLETE,), OS: (Topic.WORKUP_INCOMPLETE,)},
      references=("bonilla-2015",))
def workup_gaps(facts: Facts, cfg: GuidelineConfig) -> RuleResult:
    items, keys = missing_workup(facts, cfg)
    if not items:
        return NotApplicable("workup_gaps", "work-up complete")
    return Assessment(
        "workup_gaps", Verdict.CANNOT_JUDGE, "work-up incomplete: " + short_missing(keys) + " missing",
        (), (),
        missing=tuple(items), missing_keys=tuple(keys))


def check_registry() -> list[str]:
    """Problems with the registry itself (a rule without a reference, an unknown threshold)."""
    from hooks.config import GuidelineConfig as _Cfg

    problems = []
    for spec in DECISION_RULES + MONITORING_RULES + WORKUP_RULES + ORDER_RULES:
        if not spec.references or any(r not in REFERENCES for r in spec.references):
            problems.append(f"{spec.name}: references {spec.references} not all known")
        if not spec.branch or not spec.checks:
            problems.append(f"{spec.name}: branch/checks undocumented")
        for name in spec.thresholds:
            if name not in _Cfg.model_fields:
                problems.append(f"{spec.name}: unknown threshold {name}")
        if not spec.topics:
            problems.append(f"{spec.name}: no topics")
        if set(spec.topics) - {PV, OS}:
            problems.append(f"{spec.name}: topics for unknown hooks {sorted(set(spec.topics) - {PV, OS})}")
        if not spec.reads:
            problems.append(f"{spec.name}: reads no facts")
    return problems
