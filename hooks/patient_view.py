"""patient-view: advice when a chart with low IgM (or IVIG treatment) is opened."""

from __future__ import annotations

from typing import Any

from hooks import data_needs
from hooks.assessment import Topic
from hooks.cards import CardContext, CardPlan, finalize, monitoring_plan, referral_suggestion, workup_plan
from hooks.engine import PatientEvaluation, evaluate_read, nothing_to_decide, nothing_to_decide_in
from hooks.fhir_read import ReadResult, bare_id, iter_resources, read_resources
from hooks.rules import PV
from hooks.service_def import HookRequest, HookResult, ServiceDefinition
from hooks.summaries import patient_view_summary

INDICATOR = {
    Topic.HYPER_IGM_PATTERN: "critical",
    Topic.IVIG_INDICATED: "info",
    Topic.WORKUP_INCOMPLETE: "info",
    Topic.ISOLATED_IGM_DEFICIENCY: "info",
    Topic.LABS_CONFOUNDED_BY_IVIG: "info",
    Topic.IVIG_MONITORING: "warning",
}


def card_context(request: HookRequest, ev: PatientEvaluation) -> CardContext:
    notes = ev.facts.problems
    return CardContext(
        hook_instance=request.hook_instance,
        service_id=request.service_id,
        patient_id=bare_id(str(request.context.get("patientId", ""))) or "",
        ruleset_version=request.ruleset_version,
        smart_url=request.smart_launch_url,
        data_notes=notes,
        config=request.config,
    )


def outside_igm_deficiency(ev: PatientEvaluation) -> bool:
    """No card for 'no replacement' conclusions about patients whose IgM is not low: the
    patient-view topic for them (isolated IgM deficiency) would misname the situation."""
    d = ev.decision
    return (d.outcome is not None and d.outcome.rule == "antibody_deficiency_without_infection_criterion"
            and not ev.facts.igm.is_low)


def plans_for(ev: PatientEvaluation, ctx: CardContext) -> list[CardPlan]:
    from hooks.cards import spec_of

    plans: list[CardPlan] = []
    d = ev.decision
    if d.outcome is not None and not outside_igm_deficiency(ev):
        spec = spec_of(d.outcome.rule)
        for topic in (spec.topics.get(PV, ()) if spec else ()):
            if topic is Topic.WORKUP_INCOMPLETE:
                plan = workup_plan(d.outcome, ctx, indicator=INDICATOR[topic], before_ivig=False)
                plan.summary = patient_view_summary(d.outcome, ev.facts, ctx.config)
            else:
                plan = CardPlan(topic, INDICATOR[topic], patient_view_summary(d.outcome, ev.facts, ctx.config), [d.outcome])
            if topic is Topic.HYPER_IGM_PATTERN:
                plan.suggestions = [referral_suggestion(ctx)]
            plans.append(plan)
    if d.gaps is not None and not outside_igm_deficiency(ev):
        plans.append(workup_plan(d.gaps, ctx, indicator="info", before_ivig=False))
    if d.monitoring is not None:
        plans.append(monitoring_plan(d.monitoring, ctx))
    return plans


def _record(request: HookRequest) -> list[Any]:
    return [*request.prefetch.values(), *request.extra_resources]


def _read(request: HookRequest) -> ReadResult:
    return read_resources(_record(request), bare_id(str(request.context.get("patientId", ""))))


def _evaluate(request: HookRequest, read: ReadResult) -> PatientEvaluation:
    return evaluate_read(read, today=request.today, config=request.config, unavailable=request.unavailable)


def answer_at_once(request: HookRequest) -> HookResult | None:
    """No cards for a record with nothing to decide, told from the resources as sent: most charts
    opened are such records, and their record is never read (the trace is made only if asked for)."""
    if nothing_to_decide_in(iter_resources(_record(request))):
        return HookResult(explain=lambda: _evaluate(request, _read(request)).trace())
    return None


def handle(request: HookRequest) -> HookResult:
    read = _read(request)
    if nothing_to_decide(read):
        return HookResult(explain=lambda: _evaluate(request, read).trace())
    ev = _evaluate(request, read)
    ctx = card_context(request, ev)
    return HookResult(cards=finalize(plans_for(ev, ctx), ctx), explain=ev.trace)


SERVICE = ServiceDefinition(
    id="ivig-patient-view",
    hook="patient-view",
    title="IgM deficiency and IVIG stewardship",
    description=(
        "When a chart is opened: recognises low IgM, hyper-IgM pattern, incomplete immunology work-up, "
        "labs confounded by recent IVIG, and trough monitoring for patients on IVIG, per the guideline "
        "for treatment of IgM deficiency."
    ),
    prefetch=data_needs.PREFETCH,
    usage_requirements=data_needs.USAGE,
    required_prefetch=data_needs.REQUIRED,
    handler=handle,
    at_once=answer_at_once,
)
