"""CDS Hooks cards from assessments, following ../shared/contract/card-topics.md.

Every card carries ``source.topic`` (a code of the closed list), a summary under 140 characters
naming the conclusion, and a markdown detail of at most ``DETAIL_MAX`` characters a prescriber
reads at a glance: the conclusion, the guideline branch in clinical words with its thresholds, the
deciding facts (value, unit, date, why it counts), what to do, and the data not used. The
literature goes into ``links``; the rule names and ruleset version into ``extension`` (and the full
trace into the trend page the card links to). Cards are de-duplicated per topic, ordered critical >
warning > info, and have uuids stable for a hookInstance and topic so that feedback can refer to
them. No null or empty values leave this module.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass, field
from typing import Any, Iterable

from hooks import valuesets as vs
from hooks.assessment import TOPIC_DISPLAY, TOPIC_SYSTEM, Assessment, Evidence, Topic
from hooks.config import DEFAULT_CONFIG, GuidelineConfig
from hooks.references import GUIDELINE_URL, REFERENCES
from hooks.rules import DECISION_RULES, MONITORING_RULES, ORDER_RULES, WORKUP_RULES, RuleSpec

CARD_NAMESPACE = uuid.UUID("5b0e6f3c-6d1c-4f7e-9a55-1f3c2b9d7a10")
OVERRIDE_SYSTEM = "urn:ivig-cds:override-reason"
SOURCE_LABEL = "ivig-cds · IgM deficiency guideline"
SUMMARY_MAX = 139
#: The longest detail: what fits an EHR's card panel without scrolling past the point
DETAIL_MAX = 1200
INDICATOR_ORDER = {"critical": 0, "warning": 1, "info": 2}

OVERRIDE_REASONS = {
    "other-indication": "IVIG is for another indication (ITP, Kawasaki disease, GBS, CIDP, myasthenia)",
    "immunology-consulted": "Immunology already consulted",
    "established-elsewhere": "Patient already established on IVIG elsewhere",
    "results-outside-record": "Supporting results are outside this record",
}
DOSE_OVERRIDE_REASONS = {
    "other-indication": "Immunomodulatory dose for another indication",
    "immunology-consulted": "Dose set with immunology",
    "weight-verified": "Dose checked against a current weight",
}

#: Orderable work-up, by the keys rules put in ``Assessment.missing_keys``.
WORKUP_ORDERS: dict[str, tuple[str, dict[str, Any]]] = {
    "igg": ("Serum IgG", {"coding": [{"system": vs.LOINC, "code": "2465-3", "display": "IgG [Mass/volume] in Serum"}],
                          "text": "Serum IgG"}),
    "igm": ("Serum IgM", {"coding": [{"system": vs.LOINC, "code": "2472-9", "display": "IgM [Mass/volume] in Serum"}],
                          "text": "Serum IgM"}),
    "ppsv23": ("PPSV23 challenge with pre/post titers", {
        "text": "Streptococcus pneumoniae IgG antibodies, 23 serotypes: pre-vaccination, then PPSV23 (CVX 33), "
                "then 4–8 weeks after vaccination"}),
    "lymphocyte-subsets": ("Lymphocyte subsets", {
        "coding": [{"system": vs.LOINC, "code": "8116-6", "display": "CD19 cells [#/volume] in Blood"},
                   {"system": vs.LOINC, "code": "24467-3", "display": "CD4 cells [#/volume] in Blood"},
                   {"system": vs.LOINC, "code": "14135-8", "display": "CD8 cells [#/volume] in Blood"}],
        "text": "Lymphocyte subsets by flow cytometry: CD19, CD4, CD8, memory B cells"}),
}
TROUGH_ORDER = ("Trough IgG before the next infusion", {
    "coding": [{"system": vs.LOINC, "code": "2465-3", "display": "IgG [Mass/volume] in Serum"}],
    "text": "Trough IgG, drawn immediately before the next immune globulin infusion"})
IMMUNOLOGY_REFERRAL = ("Immunology referral", {"text": "Referral to clinical immunology"})


def spec_of(rule_name: str) -> RuleSpec | None:
    for spec in DECISION_RULES + MONITORING_RULES + WORKUP_RULES + ORDER_RULES:
        if spec.name == rule_name:
            return spec
    return None


@dataclass
class CardPlan:
    """One card before serialisation."""

    topic: Topic
    indicator: str
    summary: str
    assessments: list[Assessment]
    advice_heading: str = "What to do"
    extra_sections: list[tuple[str, list[str]]] = field(default_factory=list)
    suggestions: list[dict[str, Any]] = field(default_factory=list)
    selection_behavior: str | None = None
    override_reasons: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class CardContext:
    """Request-level facts a card needs: ids for uuids and actions, version, links."""

    hook_instance: str
    service_id: str
    patient_id: str
    ruleset_version: str
    smart_url: str | None = None
    data_notes: tuple[str, ...] = ()
    #: the thresholds, for advice text that quotes them
    config: GuidelineConfig = DEFAULT_CONFIG


# ------------------------------------------------------------------ text helpers


def clip(text: str, limit: int = SUMMARY_MAX) -> str:
    """A summary within the spec's 140 characters, cut at a word when it must be cut."""
    text = " ".join(text.split())
    if len(text) <= limit:
        return text
    cut = text[: limit - 1].rsplit(" ", 1)[0].rstrip(",;:—- ")
    return cut + "…"


def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _evidence_table(evidence: Iterable[Evidence]) -> list[str]:
    rows = [e for e in evidence if e.value]
    if not rows:
        return []
    lines = ["| Fact | Value | Date | Why it counts |", "|---|---|---|---|"]
    for e in rows:
        lines.append(f"| {_md_cell(e.fact)} | {_md_cell(e.value)} | {_md_cell(e.date or '—')} | {_md_cell(e.note or '—')} |")
    return lines


def _guideline_line(a: Assessment, specs: list[RuleSpec | None], show_thresholds: bool) -> str:
    """'_Guideline: IgG deficiency with recurrent severe infections (IgG < 500 mg/dL; ...)._' — the
    branch as a clinician names it, with the thresholds that decided."""
    title = "; ".join(s.title for s in specs if s is not None and s.title) or "IgM deficiency guideline"
    if show_thresholds and a.thresholds:
        title += f" ({'; '.join(a.thresholds)})"
    return f"_Guideline: {title}._"


def _bullets(heading: str, lines: list[str] | tuple[str, ...], limit: int | None, more: str | None = None) -> str:
    """A bulleted section; past ``limit`` lines, the rest are dropped — or counted, when ``more`` says
    where to find them (data not used: the trend page lists every one)."""
    shown = list(lines if limit is None else lines[:limit])
    rest = len(lines) - len(shown)
    if rest > 0 and more is not None:
        shown.append(f"… and {rest} more{more}")
    return f"**{heading}:**\n" + "\n".join(f"- {x}" for x in shown)


def _render(plan: CardPlan, ctx: CardContext, *, data: int | None, advice: int | None, rows: int | None,
            thresholds: bool, notes: bool) -> str:
    parts: list[str] = []
    shown: set[str] = set()
    for a in plan.assessments:
        specs = [spec_of(name) for name in a.rule.split("+")]
        shown.update(f"{e.value} ({e.date})" for e in a.evidence if e.value and e.date)
        parts.append(f"**{a.conclusion[:1].upper() + a.conclusion[1:]}.**")
        parts.append(_guideline_line(a, specs, thresholds))
        evidence = [e for e in a.evidence if e.value]
        table = _evidence_table(evidence if rows is None else evidence[:rows])
        if table:
            parts.append("\n".join(table))
        if a.missing:
            parts.append(_bullets("Missing or too old", a.missing, None))
        if a.advice:
            parts.append(_bullets(plan.advice_heading, a.advice, advice))
        if notes and a.notes:
            parts.append("\n".join(f"_{n}_" for n in a.notes))
    for heading, lines in plan.extra_sections:
        if lines:
            parts.append(_bullets(heading, lines, None))
    # a result the table already shows (with why it counts) is not said again below it
    unused = [n for n in ctx.data_notes if not any(value in n for value in shown)]
    if unused:
        parts.append(_bullets("Data not used", unused, data, " (see the trend page)" if ctx.smart_url else ""))
    return "\n\n".join(parts)


#: Ever shorter renderings, tried in order until one fits ``DETAIL_MAX``: fewer data-not-used lines,
#: fewer advice lines, then no thresholds and notes, then fewer evidence rows.
_SHORTER = (
    dict(data=6, advice=None, rows=None, thresholds=True, notes=True),
    dict(data=3, advice=None, rows=None, thresholds=True, notes=True),
    dict(data=3, advice=2, rows=None, thresholds=True, notes=False),
    dict(data=2, advice=2, rows=None, thresholds=False, notes=False),
    dict(data=1, advice=2, rows=4, thresholds=False, notes=False),
    dict(data=1, advice=1, rows=3, thresholds=False, notes=False),
)


def render_detail(plan: CardPlan, ctx: CardContext) -> str:
    """The card's markdown, as short as it must be to stay within ``DETAIL_MAX`` characters."""
    text = ""
    for limits in _SHORTER:
        text = _render(plan, ctx, **limits)
        if len(text) <= DETAIL_MAX:
            return text
    cut = text[: DETAIL_MAX - 2].rsplit("\n", 1)[0]
    return cut + "\n…"


def literature_links(plan: CardPlan) -> list[dict[str, str]]:
    """The literature behind the card's rules, as absolute links (the guideline's reference 1 first)."""
    keys = ["bonilla-2015"]
    for a in plan.assessments:
        for name in a.rule.split("+"):
            spec = spec_of(name)
            keys += [k for k in (spec.references if spec else ()) if k not in keys]
    return [{"label": REFERENCES[k].short, "url": REFERENCES[k].url, "type": "absolute"}
            for k in keys if REFERENCES[k].url]


# ------------------------------------------------------------------ suggestions


_NAMESPACE_BYTES = CARD_NAMESPACE.bytes


def _uuid(*parts: str) -> str:
    """``str(uuid.uuid5(CARD_NAMESPACE, "|".join(parts)))``, without building UUID objects.

    Every answer, remembered ones included, derives its card and suggestion uuids here.
    """
    digest = bytearray(hashlib.sha1(_NAMESPACE_BYTES + "|".join(parts).encode()).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50  # version 5
    digest[8] = (digest[8] & 0x3F) | 0x80  # RFC 4122 variant
    h = digest.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def service_request(code: dict[str, Any], patient_id: str, note: str | None = None) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "ServiceRequest",
        "status": "draft",
        "intent": "order",
        "code": code,
        "subject": {"reference": f"Patient/{patient_id}"},
    }
    if note:
        resource["note"] = [{"text": note}]
    return resource


def create_action(label: str, code: dict[str, Any], patient_id: str) -> dict[str, Any]:
    return {"type": "create", "description": f"Order {label}", "resource": service_request(code, patient_id)}


def delete_action(order_label: str, product: str) -> dict[str, Any]:
    return {"type": "delete", "description": f"Remove the draft order for {product}", "resourceId": order_label}


def workup_actions(keys: Iterable[str], patient_id: str) -> list[dict[str, Any]]:
    return [create_action(WORKUP_ORDERS[k][0], WORKUP_ORDERS[k][1], patient_id) for k in keys if k in WORKUP_ORDERS]


def suggestion(label: str, actions: list[dict[str, Any]], recommended: bool = False) -> dict[str, Any]:
    """A suggestion; its uuid is derived from the card's when the card is built."""
    out: dict[str, Any] = {"label": clip(label, 120)}
    if recommended:
        out["isRecommended"] = True
    if actions:
        out["actions"] = actions
    return out


# ------------------------------------------------------------------ serialisation


def prune(value: Any) -> Any:
    """Drop None, "", [] and {} recursively (CDS Hooks forbids them)."""
    if isinstance(value, dict):
        out = {k: prune(v) for k, v in value.items()}
        return {k: v for k, v in out.items() if v not in (None, "", [], {})}
    if isinstance(value, list):
        return [v for v in (prune(v) for v in value) if v not in (None, "", [], {})]
    return value


def _with_uuids(card: dict[str, Any], hook_instance: str, service_id: str) -> dict[str, Any]:
    """The card (a shallow copy) with its uuid and its suggestions' uuids for this call.

    A card's uuid is derived from the hookInstance, service and topic, a suggestion's from the
    card's uuid and its label: the same call gets the same uuids, another call other ones.
    """
    card_uuid = _uuid(hook_instance, service_id, card["source"]["topic"]["code"])
    out = {**card, "uuid": card_uuid}
    if "suggestions" in card:
        out["suggestions"] = [{**s, "uuid": _uuid(card_uuid, s["label"])} for s in card["suggestions"]]
    return out


def to_card(plan: CardPlan, ctx: CardContext) -> dict[str, Any]:
    rules = [a.rule for a in plan.assessments]
    literature = literature_links(plan)
    links = literature[:1]  # the guideline's practice parameter, then the patient's trend page, then the rest
    if ctx.smart_url:
        links.append({"label": "Ig trend and decision trace (SMART app)", "url": ctx.smart_url, "type": "smart"})
    links += literature[1:]
    card: dict[str, Any] = {
        "uuid": None,  # set by _with_uuids, here so that it comes first
        "summary": clip(plan.summary),
        "indicator": plan.indicator,
        "detail": render_detail(plan, ctx),
        "source": {
            "label": SOURCE_LABEL,
            "url": GUIDELINE_URL,
            "topic": {"system": TOPIC_SYSTEM, "code": plan.topic.value, "display": TOPIC_DISPLAY[plan.topic]},
        },
        "links": links,
        "extension": {"ivig-cds-ruleset-version": ctx.ruleset_version, "ivig-cds-rules": rules},
    }
    if plan.suggestions:
        card["suggestions"] = plan.suggestions
        card["selectionBehavior"] = plan.selection_behavior or "at-most-one"
    if plan.override_reasons:
        card["overrideReasons"] = [{"system": OVERRIDE_SYSTEM, "code": code, "display": display}
                                   for code, display in plan.override_reasons.items()]
    return prune(_with_uuids(card, ctx.hook_instance, ctx.service_id))


def reissue(cards: list[dict[str, Any]], hook_instance: str, service_id: str) -> list[dict[str, Any]]:
    """The same cards for another call, with that call's uuids (as ``to_card`` gives them).

    A memoised answer (service/protocol/answers.py) is given to a later call with the same request; its
    cards must carry that call's uuids so that feedback names them. Only the card and its
    suggestions are copied; everything below them is shared and never mutated.
    """
    return [_with_uuids(card, hook_instance, service_id) for card in cards]


def workup_plan(assessment: Assessment, ctx: CardContext, *, indicator: str, before_ivig: bool,
                overridable: bool = False) -> CardPlan:
    """The work-up card (both hooks): what is missing, with the orders for it one click away."""
    from hooks.summaries import workup_summary

    plan = CardPlan(Topic.WORKUP_INCOMPLETE, indicator, workup_summary(assessment, before_ivig), [assessment])
    creates = workup_actions(assessment.missing_keys, ctx.patient_id)
    if creates:
        plan.suggestions = [suggestion("Order the missing work-up", creates, recommended=True)]
    if overridable:
        plan.override_reasons = dict(OVERRIDE_REASONS)
    return plan


def monitoring_plan(assessment: Assessment, ctx: CardContext) -> CardPlan:
    """The trough-monitoring card (both hooks), with the trough IgG order one click away."""
    from hooks.summaries import monitoring_summary

    plan = CardPlan(Topic.IVIG_MONITORING, "warning", monitoring_summary(assessment), [assessment])
    plan.suggestions = [suggestion("Order a trough IgG before the next infusion",
                                   [create_action(*TROUGH_ORDER, ctx.patient_id)], True)]
    return plan


def referral_suggestion(ctx: CardContext) -> dict[str, Any]:
    return suggestion("Refer to clinical immunology", [create_action(*IMMUNOLOGY_REFERRAL, ctx.patient_id)], True)


def finalize(plans: list[CardPlan], ctx: CardContext) -> list[dict[str, Any]]:
    """One card per topic (the first plan wins, later findings are merged in), ordered by urgency."""
    by_topic: dict[Topic, CardPlan] = {}
    for plan in plans:
        if plan.topic in by_topic:
            kept = by_topic[plan.topic]
            kept.assessments.extend(a for a in plan.assessments if a not in kept.assessments)
            if INDICATOR_ORDER[plan.indicator] < INDICATOR_ORDER[kept.indicator]:
                kept.indicator = plan.indicator
            continue
        by_topic[plan.topic] = plan
    cards = [to_card(p, ctx) for p in by_topic.values()]
    cards.sort(key=lambda c: INDICATOR_ORDER[c["indicator"]])
    return cards
