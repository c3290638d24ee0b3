"""Running the guideline: rules in order, first that applies decides; monitoring and gaps beside it.

``evaluate_patient`` is the whole pipeline from a CDS Hooks request's data to a ``Decision``
with its trace; hook modules call it and render cards. No I/O, no clock.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from typing import Any, Iterable, Mapping

from hooks import lab_results
from hooks import orders as order_rules
from hooks import valuesets as vs
from hooks.assessment import Assessment, Decision, NotApplicable
from hooks.config import GuidelineConfig
from hooks.facts import Facts, concept_in, extract_facts
from hooks.fhir_read import RELEVANT, ReadResult, Skipped, condition_may_matter, observation_may_matter, \
    read_resources
from hooks.rules import DECISION_RULES, MONITORING_RULES, ORDER_RULES, WORKUP_RULES

#: Decision outcomes beside which missing work-up is shown as its own finding.
_GAPS_BESIDE = frozenset({
    "indicated_by_igg_deficiency", "indicated_by_impaired_pneumococcal_response", "consider_ivig_regardless_of_igg",
    "isolated_igm_deficiency", "incidental_low_igm", "recurrent_severe_infections_with_normal_workup",
    "antibody_deficiency_without_infection_criterion",
})


def antibody_deficiency_clue(facts: Facts) -> bool:
    return facts.igm.is_low or facts.igg.is_low or facts.hyper_igm_diagnosis is not None


def explained_by_other_indication(facts: Facts) -> bool:
    """IVIG history of a patient with an active other indication (ITP, Kawasaki...) and no antibody
    deficiency: immunomodulation, outside this guideline — no confounding or trough advice."""
    return bool(facts.other_indications) and not antibody_deficiency_clue(facts)


def in_scope(facts: Facts, ivig_ordered: bool) -> bool:
    """Whether the IVIG question arises: always with an immune globulin order; otherwise low IgM or IgG,
    a hyper-IgM diagnosis, IVIG history, an IgM drawn after IVIG or an impaired PPSV23 response —
    unless the IVIG history is explained by another active indication without antibody deficiency."""
    if ivig_ordered:
        return True
    if explained_by_other_indication(facts):
        return False
    return (antibody_deficiency_clue(facts) or facts.ivig.any or facts.igm.status == "confounded"
            or facts.pneumococcal.status == "impaired")


def _trace_entry(result: Assessment | NotApplicable) -> dict[str, str]:
    if isinstance(result, Assessment):
        return {"rule": result.rule, "result": "applies", "conclusion": result.conclusion}
    return {"rule": result.rule, "result": "not applicable", "reason": result.reason}


def decide(facts: Facts, config: GuidelineConfig, *, ivig_ordered: bool = False) -> Decision:
    """The IVIG question (first rule that applies), trough monitoring, and work-up gaps."""
    decision = Decision(outcome=None, in_scope=in_scope(facts, ivig_ordered))
    if decision.in_scope:
        for spec in DECISION_RULES:
            result = spec.func(facts, config)
            decision.trace.append(_trace_entry(result))
            if isinstance(result, Assessment):
                decision.outcome = result
                break
    else:
        decision.trace.append({"rule": "(scope)", "result": "not applicable",
                               "reason": "no low IgM/IgG, no hyper-IgM clue, no IVIG order or history"})
    if explained_by_other_indication(facts):
        decision.trace.append({"rule": "(monitoring)", "result": "not applicable",
                               "reason": "IVIG for another indication: " + ", ".join(facts.other_indications)})
        return decision
    monitoring = [spec.func(facts, config) for spec in MONITORING_RULES]
    decision.trace.extend(_trace_entry(r) for r in monitoring)
    applied = [r for r in monitoring if isinstance(r, Assessment)]
    if applied:
        decision.monitoring = applied[0] if len(applied) == 1 else _combine(applied)
    if decision.outcome is not None and decision.outcome.rule in _GAPS_BESIDE and not facts.ivig.on_treatment:
        for spec in WORKUP_RULES:
            result = spec.func(facts, config)
            decision.trace.append(_trace_entry(result))
            if isinstance(result, Assessment):
                decision.gaps = result
    return decision


def _combine(results: list[Assessment]) -> Assessment:
    first = results[0]
    return Assessment(
        "+".join(r.rule for r in results), first.verdict, "; ".join(r.conclusion for r in results),
        tuple(e for r in results for e in r.evidence), tuple(dict.fromkeys(a for r in results for a in r.advice)),
        thresholds=tuple(t for r in results for t in r.thresholds))


@dataclass
class PatientEvaluation:
    """Everything a hook needs to render cards for one request."""

    facts: Facts
    decision: Decision
    #: fields dropped to read a resource
    notes: list[Skipped]
    orders: list[order_rules.IvigOrder] = field(default_factory=list)
    #: order label -> order-rule results that applied
    order_findings: dict[str, list[Assessment]] = field(default_factory=dict)
    order_trace: list[dict[str, str]] = field(default_factory=list)

    def trace(self) -> dict[str, Any]:
        f = self.facts
        return {
            "today": f.today.isoformat(),
            "in_scope": self.decision.in_scope,
            "decision": self.decision.outcome.rule if self.decision.outcome else None,
            "rules": self.decision.trace,
            "orders": [
                {"order": o.label, "product": o.product, "findings": [a.rule for a in self.order_findings.get(o.label, [])]}
                for o in self.orders
            ],
            "order_rules": self.order_trace,
            "facts": facts_summary(f),
            "data_problems": list(f.problems),
            "notes": [f"{n.resource}: {n.reason}" for n in self.notes],
        }


def facts_summary(f: Facts) -> dict[str, Any]:
    def lab(a):
        v = a.deciding or a.latest
        return {"status": a.status, "level": a.level.value, "value": v.measured.display(v.unit) if v else None,
                "date": v.when.isoformat() if v else None, "basis": a.basis or None}

    return {
        "age": round(f.age, 1) if f.age is not None else None,
        "IgM": lab(f.igm), "IgG": lab(f.igg), "IgA": lab(f.iga),
        "pneumococcal": {"status": f.pneumococcal.status, "protective": f.pneumococcal.protective,
                         "tested": f.pneumococcal.tested,
                         "vaccination": f.pneumococcal.vaccination.isoformat() if f.pneumococcal.vaccination else None},
        "infections": {"known": f.infections.known, "episodes": [e.show() for e in f.infections.episodes]},
        "ivig": {"on_treatment": f.ivig.on_treatment, "doses": len(f.ivig.doses),
                 "last_dose": f.ivig.last_dose.isoformat() if f.ivig.last_dose else None},
        "trough": f.trough.show() if f.trough else None,
        "weight": f.weight.show() if f.weight else None,
        "lymphocyte_subsets": sorted(f.lymphocyte_subsets),
        "other_indications": list(f.other_indications),
    }


def evaluate_patient(values: Iterable[Any], *, patient_id: str | None, today: date, config: GuidelineConfig,
                     unavailable: Mapping[str, str] | None = None,
                     drafts: list[Mapping[str, Any]] | None = None) -> PatientEvaluation:
    """From raw FHIR (prefetch values, draft orders, fetched resources) to facts, decision and order findings."""
    read = read_resources(values, patient_id, drafts or ())
    return evaluate_read(read, today=today, config=config, unavailable=unavailable, drafts=drafts)


#: Results that can bring a patient into the guideline's scope (see ``in_scope``)
_DECISIVE_RESULTS = ("IgM", "IgG", "titer")
#: Resources that can hold immune globulin use (history, an active order, an infusion)
_IMMUNE_GLOBULIN_USE = ("MedicationRequest", "MedicationAdministration", "MedicationStatement",
                        "MedicationDispense", "Procedure")


def nothing_to_decide(read: ReadResult) -> bool:
    """No card can come of this record without an order: no IgM, IgG or pneumococcal titer, no
    possible immune globulin use and no hyper-IgM diagnosis (``in_scope`` needs one of them, trough
    monitoring needs IVIG history). Most charts opened are such records; they need no facts."""
    if any(read.observations(kind) for kind in _DECISIVE_RESULTS):
        return False
    if any(read.of(rtype) for rtype in _IMMUNE_GLOBULIN_USE):
        return False
    return not any(concept_in(cond.code, vs.HYPER_IGM_DIAGNOSES) for cond in read.of("Condition"))


def nothing_to_decide_in(resources: Iterable[Mapping[str, Any]]) -> bool:
    """``nothing_to_decide`` told from the resources as sent, before any of them is read: a quiet
    chart's record is never built. True only when the read record would be found so too; a
    resource that may count, or that reads oddly, answers False and the record is read."""
    for raw in resources:
        rtype = raw.get("resourceType")
        if rtype == "Observation":
            if observation_may_matter(raw) and lab_results.may_measure(raw, _DECISIVE_RESULTS):
                return False
        elif rtype in _IMMUNE_GLOBULIN_USE or rtype == "MedicationOrder":
            if RELEVANT["MedicationRequest" if rtype == "MedicationOrder" else rtype](raw):
                return False
        elif rtype == "Condition" and condition_may_matter(raw) and _may_name_hyper_igm(raw.get("code")):
            return False
    return True


def _may_name_hyper_igm(concept: Any) -> bool:
    """``concept_in(code, HYPER_IGM_DIAGNOSES)`` on a raw code; True when it is not plainly a concept."""
    if concept is None:
        return False
    if not isinstance(concept, dict):
        return True
    codings = concept.get("coding", [])
    if not isinstance(codings, list) or not all(isinstance(c, dict) for c in codings):
        return True
    texts = [concept.get("text"), *(c.get("display") for c in codings)]
    codes = [(c.get("system"), c.get("code")) for c in codings]
    if any(t is not None and not isinstance(t, str) for t in texts) \
            or any(v is not None and not isinstance(v, str) for pair in codes for v in pair):
        return True
    return any(vs.coding_in(vs.HYPER_IGM_DIAGNOSES, s, c) for s, c in codes) \
        or any(vs.text_in(vs.HYPER_IGM_DIAGNOSES, t) for t in texts)


def evaluate_read(read: ReadResult, *, today: date, config: GuidelineConfig,
                  unavailable: Mapping[str, str] | None = None,
                  drafts: list[Mapping[str, Any]] | None = None) -> PatientEvaluation:
    """Facts, decision and order findings of a record already read."""
    draft_labels = frozenset()
    ivig_orders: list[order_rules.IvigOrder] = []
    if drafts:
        ivig_orders = order_rules.find_ivig_orders(drafts, read)
        draft_labels = frozenset(o.label for o in ivig_orders)
    facts = extract_facts(read, today, config, clinical_dates=read.iter_clinical_dates(), unavailable=unavailable,
                          exclude_orders=draft_labels)
    evaluation = PatientEvaluation(facts, decide(facts, config, ivig_ordered=bool(ivig_orders)), list(read.notes),
                                   ivig_orders)
    for order in ivig_orders:
        found = []
        for spec in ORDER_RULES:
            result = spec.func(order, facts, config)
            evaluation.order_trace.append({"order": order.label, **_trace_entry(result)})
            if isinstance(result, Assessment):
                found.append(result)
                if spec.name == "ordered_for_other_indication":
                    break  # outside this guideline: no replacement checks
        evaluation.order_findings[order.label] = found
    return evaluation


def is_other_indication(evaluation: PatientEvaluation, order: order_rules.IvigOrder) -> bool:
    return any(a.rule == "ordered_for_other_indication" for a in evaluation.order_findings.get(order.label, []))
