"""order-sign: intercepts immune globulin orders the guideline does not support.

Cards only when an immune globulin (IVIG/SCIG) order is among the draft orders: the signing
moment is about the orders, and an interruptive card about anything else is noise. Orders for
another indication (ITP, Kawasaki, GBS, CIDP, myasthenia) are outside the guideline: no card.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Mapping

from hooks import data_needs
from hooks.assessment import Topic, Verdict
from hooks.cards import (DOSE_OVERRIDE_REASONS, IMMUNOLOGY_REFERRAL, OVERRIDE_REASONS, CardContext, CardPlan,
                         create_action, delete_action, finalize, monitoring_plan, referral_suggestion, spec_of,
                         suggestion, workup_actions, workup_plan)
from hooks.dosing import interval_words
from hooks.engine import PatientEvaluation, evaluate_patient, is_other_indication
from hooks.fhir_read import bare_id, iter_resources
from hooks.orders import IvigOrder, draft_resources, may_be_immune_globulin, raw_medications, \
    unresolved_medication_references
from hooks.patient_view import card_context
from hooks.rules import OS
from hooks.service_def import HookRequest, HookResult, ServiceDefinition
from hooks.summaries import confounded_summary, dose_summary, indicated_summary, not_indicated_summary

RECHECK_RULES = frozenset({"isolated_igm_deficiency", "incidental_low_igm",
                           "antibody_deficiency_without_infection_criterion"})
IGG_RECHECK = ("IgG re-check in 6–12 months", {
    "coding": [{"system": "http://loinc.org", "code": "2465-3", "display": "IgG [Mass/volume] in Serum"}],
    "text": "Serum IgG in 6–12 months (monitoring for developing IgG deficiency)"})

INDICATOR = {
    Topic.IVIG_NOT_INDICATED: "warning",
    Topic.IVIG_INDICATED: "info",
    Topic.WORKUP_INCOMPLETE: "warning",
    Topic.HYPER_IGM_PATTERN: "critical",
    Topic.LABS_CONFOUNDED_BY_IVIG: "info",
    Topic.IVIG_DOSE_CHECK: "warning",
    Topic.IVIG_MONITORING: "warning",
}


def order_line(order: IvigOrder) -> str:
    """'Privigen 10% solution: 0.5 g/kg every 4 weeks' — the product and its dose as ordered."""
    r = order.regimen
    if not r.has_dose:
        return order.product
    how_often = r.course or (interval_words(r.every_days) if r.every_days is not None else "")
    return f"{order.product}: {r.ordered} {how_often}".rstrip()


def _not_indicated_plan(ev: PatientEvaluation, orders: list[IvigOrder], ctx: CardContext) -> CardPlan:
    outcome = ev.decision.outcome
    assert outcome is not None
    deletes = [delete_action(o.label, o.product) for o in orders]
    keys = list(outcome.missing_keys) or (list(ev.decision.gaps.missing_keys) if ev.decision.gaps else [])
    plan = CardPlan(Topic.IVIG_NOT_INDICATED, "warning", not_indicated_summary(outcome, ev.facts), [outcome],
                    advice_heading="Instead")
    plan.extra_sections.append(("Orders checked", [order_line(o) for o in orders]))
    creates = workup_actions(keys, ctx.patient_id)
    if outcome.rule == "recurrent_severe_infections_with_normal_workup":
        plan.suggestions.append(suggestion("Cancel the IVIG order and refer to clinical immunology",
                                           deletes + [create_action(*IMMUNOLOGY_REFERRAL, ctx.patient_id)],
                                           recommended=True))
        plan.suggestions.append(suggestion("Cancel the IVIG order", deletes))
    elif not creates and outcome.rule in RECHECK_RULES:
        plan.suggestions.append(suggestion("Cancel the IVIG order and re-check IgG in 6–12 months",
                                           deletes + [create_action(*IGG_RECHECK, ctx.patient_id)], recommended=True))
        plan.suggestions.append(suggestion("Cancel the IVIG order", deletes))
    elif creates:
        plan.suggestions.append(suggestion("Cancel the IVIG order and order the missing work-up",
                                           deletes + creates, recommended=True))
        plan.suggestions.append(suggestion("Cancel the IVIG order", deletes))
    else:
        plan.suggestions.append(suggestion("Cancel the IVIG order", deletes, recommended=True))
    plan.override_reasons = dict(OVERRIDE_REASONS)
    return plan


def plans_for_orders(ev: PatientEvaluation, orders: list[IvigOrder], ctx: CardContext) -> list[CardPlan]:
    """Cards for replacement-intent immune globulin orders."""
    plans: list[CardPlan] = []
    d = ev.decision
    outcome = d.outcome
    supports = outcome is not None and outcome.verdict is Verdict.SUPPORTS
    if outcome is not None:
        spec = spec_of(outcome.rule)
        for topic in (spec.topics.get(OS, ()) if spec else ()):
            if topic is Topic.IVIG_NOT_INDICATED:
                plans.append(_not_indicated_plan(ev, orders, ctx))
            elif topic is Topic.IVIG_INDICATED:
                plans.append(CardPlan(topic, "info", indicated_summary(outcome, ctx.config), [outcome]))
            elif topic is Topic.HYPER_IGM_PATTERN:
                plan = CardPlan(topic, "critical",
                                f"Hyper-IgM pattern: {outcome.conclusion} — this patient needs IVIG and immunology referral",
                                [outcome])
                plan.suggestions = [referral_suggestion(ctx)]
                plans.append(plan)
            elif topic is Topic.LABS_CONFOUNDED_BY_IVIG:
                plans.append(CardPlan(topic, "info", confounded_summary(outcome), [outcome]))
            elif topic is Topic.WORKUP_INCOMPLETE:
                # beside the "not indicated" card, which shows the facts: only what is missing, orderable
                beside = replace(outcome, evidence=(), advice=(), thresholds=())
                plans.append(workup_plan(beside, ctx, indicator="warning", before_ivig=True, overridable=True))
    if d.gaps is not None:
        plans.append(workup_plan(d.gaps, ctx, indicator="warning", before_ivig=True, overridable=True))
    if d.monitoring is not None:
        plans.append(monitoring_plan(d.monitoring, ctx))
    established = ev.facts.ivig.on_treatment
    for order in orders:
        for finding in ev.order_findings.get(order.label, []):
            if finding.rule != "dose_outside_replacement_range":
                continue
            unchecked = bool(finding.missing_keys)  # no weight, or a dose that is not a mass
            if unchecked and not (supports or established):
                continue  # the order is not supported anyway: its dose is beside the point
            plan = CardPlan(Topic.IVIG_DOSE_CHECK, "warning", dose_summary(finding), [finding])
            plan.extra_sections.append(("Order", [order.product]))
            plan.override_reasons = dict(DOSE_OVERRIDE_REASONS)
            plans.append(plan)
    return plans


def handle_orders(request: HookRequest, *, selections_only: bool) -> HookResult:
    drafts = draft_resources(request.context, selections_only)
    if not drafts:
        return HookResult(trace={"orders": [], "reason": "no medication or service orders among the drafts"})
    # the whole draftOrders Bundle goes in too: it may hold the Medication an order refers to
    others = [r for r in iter_resources(request.context.get("draftOrders")) if r.get("resourceType") == "Medication"]
    ev = evaluate_patient(
        [*request.prefetch.values(), *request.extra_resources, others],
        patient_id=bare_id(str(request.context.get("patientId", ""))),
        today=request.today, config=request.config, unavailable=request.unavailable, drafts=drafts)
    replacement = [o for o in ev.orders if not is_other_indication(ev, o)]
    if not replacement:
        return HookResult(explain=lambda: {**ev.trace(),
                                           "reason": "no immune globulin order for replacement among the drafts"})
    ctx = card_context(request, ev)
    return HookResult(cards=finalize(plans_for_orders(ev, replacement, ctx), ctx), explain=ev.trace)


def handle(request: HookRequest) -> HookResult:
    return handle_orders(request, selections_only=False)


def orders_at_once(request: HookRequest, selections_only: bool = False) -> HookResult | None:
    """No cards when no draft can be immune globulin (most orders signed): the record is not read."""
    if needs_patient_data(request.context, request.prefetch, selections_only):
        return None
    return HookResult(trace={"orders": [], "reason": "no immune globulin order among the drafts"})


def _medications(context: Mapping[str, Any], prefetch: Mapping[str, Any]):
    return raw_medications([context.get("draftOrders"), *prefetch.values()])


def _verdicts(context: Mapping[str, Any], prefetch: Mapping[str, Any], selections_only: bool):
    """(draft, may it be immune globulin?) — the bag is searched for Medications only when a draft
    names one it does not contain (most orders carry their product inline: no walk over the record)."""
    drafts = draft_resources(context, selections_only)
    verdicts = [(d, may_be_immune_globulin(d, {})) for d in drafts]
    if any(v is None for _, v in verdicts):
        meds = _medications(context, prefetch)
        verdicts = [(d, v if v is not None else may_be_immune_globulin(d, meds)) for d, v in verdicts]
    return verdicts


def needs_patient_data(context: Mapping[str, Any], prefetch: Mapping[str, Any], selections_only: bool = False) -> bool:
    """Only an immune globulin order (or one we cannot identify without the FHIR server) needs the record."""
    return any(v is not False for _, v in _verdicts(context, prefetch, selections_only))


def unresolved_references(context: Mapping[str, Any], prefetch: Mapping[str, Any],
                          selections_only: bool = False) -> list[str]:
    unresolved = [d for d, v in _verdicts(context, prefetch, selections_only) if v is None]
    return unresolved_medication_references(unresolved, {}) if unresolved else []


SERVICE = ServiceDefinition(
    id="ivig-order-sign",
    hook="order-sign",
    title="IVIG order check (IgM deficiency guideline)",
    description=(
        "When orders are signed: checks immune globulin (IVIG/SCIG) orders against the guideline for "
        "treatment of IgM deficiency — not indicated on low IgM alone, indicated for IgG deficiency or "
        "impaired pneumococcal response with recurrent severe infections, hyper-IgM pattern — and checks "
        "replacement dose (0.4–0.6 g/kg every 3–4 weeks) and trough monitoring."
    ),
    prefetch=data_needs.PREFETCH,
    usage_requirements=data_needs.USAGE,
    required_prefetch=data_needs.REQUIRED,
    handler=handle,
    at_once=orders_at_once,
    needs_patient_data=needs_patient_data,
    unresolved_references=unresolved_references,
)
