"""Immune globulin orders among the draft orders: recognising them, their dose, their reason.

An order is recognised by HCPCS, by text or brand name (RxNorm displays included — RxNorm
product codes are unverified), inline or through ``medicationReference`` to a contained
Medication, one in the draftOrders Bundle, in prefetch, or one the service fetched. Statuses
other than draft are accepted (EHRs differ); cancelled/entered-in-error orders are ignored.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from hooks import valuesets as vs
from hooks.assessment import Assessment, Evidence, NotApplicable, RuleResult, Topic
from hooks.config import GuidelineConfig
from hooks.facts import (Facts, _code_of, _label, _medication_concepts, concept_in, concept_label,
                         is_immune_globulin, is_subcutaneous, medications_by_id)
from hooks.fhir_read import ReadResult, bare_id, iter_resources
from hooks.classify import names_immune_globulin, names_other_globulin
from hooks.dosing import Regimen, interval_words, read_regimen
from hooks.rules import OS, rule

ORDER_TYPES = ("MedicationRequest", "MedicationOrder", "MedicationStatement", "ServiceRequest", "MedicationDispense")
_IGNORED_STATUSES = frozenset({"cancelled", "entered-in-error", "revoked", "stopped"})


def _within(value: float, low: float, high: float) -> bool:
    """low <= value <= high, the bounds included despite float rounding (0.2 g/kg daily for 3 days is 0.6000000000000001 g/kg)."""
    return low - 1e-9 <= value <= high + 1e-9


@dataclass(frozen=True)
class IvigOrder:
    """One immune globulin order being selected or signed."""

    label: str  # "MedicationRequest/abc" (the resourceId a delete suggestion names)
    product: str
    subcutaneous: bool
    regimen: Regimen
    reasons: tuple[str, ...]
    reason_other_indication: str | None


def draft_resources(context: Mapping[str, Any], selections_only: bool = False) -> list[Mapping[str, Any]]:
    """The order resources in ``context.draftOrders`` (only the selected ones for order-select)."""
    drafts = [r for r in iter_resources(context.get("draftOrders")) if r.get("resourceType") in ORDER_TYPES]
    if selections_only:
        wanted = {s.split("/_history/")[0] for s in context.get("selections") or () if isinstance(s, str)}
        drafts = [r for r in drafts if f"{r.get('resourceType')}/{bare_id(r.get('id'))}" in wanted
                  or f"{'MedicationRequest' if r.get('resourceType') == 'MedicationOrder' else r.get('resourceType')}/{bare_id(r.get('id'))}" in wanted]
    return drafts


def _raw_texts(concept: Any) -> list[str]:
    texts = []
    if isinstance(concept, dict):
        if isinstance(concept.get("text"), str):
            texts.append(concept["text"])
        for coding in concept.get("coding") or ():
            if isinstance(coding, dict):
                texts += [str(coding.get(k)) for k in ("display", "code") if isinstance(coding.get(k), str)]
    return texts


def may_be_immune_globulin(raw: Mapping[str, Any], medications: Mapping[str, Mapping[str, Any]]) -> bool | None:
    """True/False from the raw order; None when it names a Medication we do not have."""
    concepts = [raw.get("medicationCodeableConcept"), raw.get("code")]
    ref = raw.get("medicationReference")
    unresolved = False
    if isinstance(ref, dict):
        if isinstance(ref.get("display"), str):
            concepts.append({"text": ref["display"]})
        target = ref.get("reference")
        if isinstance(target, str) and target.startswith("#"):
            for contained in raw.get("contained") or ():
                if isinstance(contained, dict) and contained.get("id") == target[1:]:
                    concepts.append(contained.get("code"))
        elif isinstance(target, str):
            med = medications.get(bare_id(target) or "")
            if med is not None:
                concepts.append(med.get("code"))
            else:
                unresolved = True
    texts = [t for c in concepts for t in _raw_texts(c)]
    joined = " ".join(texts)
    if joined and names_other_globulin(joined):
        return False
    codes = [(str(cd.get("system") or ""), str(cd.get("code") or "")) for c in concepts if isinstance(c, dict)
             for cd in c.get("coding") or () if isinstance(cd, dict)]
    if any(vs.coding_in(vs.IMMUNE_GLOBULIN_HCPCS, s, c) for s, c in codes) or names_immune_globulin(joined):
        return True
    return None if unresolved else False


def raw_medications(values: Iterable[Any]) -> dict[str, Mapping[str, Any]]:
    out = {}
    for value in values:
        for raw in iter_resources(value):
            if raw.get("resourceType") == "Medication" and isinstance(raw.get("id"), str):
                out[bare_id(raw["id"]) or raw["id"]] = raw
    return out


def unresolved_medication_references(drafts: list[Mapping[str, Any]], medications) -> list[str]:
    """'Medication/x' for drafts whose product we cannot know without reading the FHIR server."""
    out = []
    for raw in drafts:
        if may_be_immune_globulin(raw, medications) is None:
            target = raw["medicationReference"]["reference"]
            # an absolute URL stays whole: the service reads it only if it names fhirServer's data
            out.append(target if target.startswith(("http://", "https://")) else f"Medication/{bare_id(target)}")
    return out


def _medication_of(res: Any, medications: Mapping[str, Any]) -> Any | None:
    """The Medication an order names (contained or by reference), for its ingredient strength."""
    ref = getattr(res, "medicationReference", None)
    target = getattr(ref, "reference", None) or ""
    if target.startswith("#"):
        return next((c for c in getattr(res, "contained", None) or ()
                     if getattr(c, "id", None) == target[1:] and c.get_resource_type() == "Medication"), None)
    return medications.get(bare_id(target) or "") if target else None


def find_ivig_orders(drafts: list[Mapping[str, Any]], read: ReadResult) -> list[IvigOrder]:
    """The immune globulin orders among ``drafts`` (validated models taken from ``read``)."""
    # labels keep the EHR's own resource type (a DSTU2 MedicationOrder is deleted as MedicationOrder/x)
    wanted = {f"{r.get('resourceType')}/{bare_id(r.get('id'))}" for r in drafts if isinstance(r.get("id"), str)}
    meds = medications_by_id(read)
    conditions = {bare_id(read.raw_id(c) or c.id or ""): c for c in read.of("Condition")}
    orders: list[IvigOrder] = []
    for rtype in ("MedicationRequest", "MedicationStatement", "MedicationDispense", "ServiceRequest"):
        for res in read.of(rtype):
            label = _label(res, read)
            if label not in wanted:
                continue
            if _code_of(res.status) in _IGNORED_STATUSES:
                continue
            concepts = [res.code] if rtype == "ServiceRequest" and res.code else _medication_concepts(res, meds)
            if not is_immune_globulin(concepts):
                continue
            regimen = read_regimen(res, _medication_of(res, meds), concepts)
            reasons: list[str] = []
            other = None
            reason_concepts = list(getattr(res, "reasonCode", None) or ())
            for ref in getattr(res, "reasonReference", None) or ():
                target = conditions.get(bare_id(ref.reference) or "")
                if target is not None:
                    reason_concepts.append(target.code)
                elif ref.display:
                    reason_concepts.append(type("C", (), {"text": ref.display, "coding": None})())
            for concept in reason_concepts:
                reasons.append(concept_label(concept))
                if other is None and concept_in(concept, vs.OTHER_IVIG_INDICATIONS):
                    other = concept_label(concept)
            orders.append(IvigOrder(
                label=label, product=concept_label(concepts[0]) if concepts else "immune globulin",
                subcutaneous=is_subcutaneous(concepts), regimen=regimen, reasons=tuple(reasons),
                reason_other_indication=other))
    return orders


def order_g_per_kg(order: IvigOrder, facts: Facts) -> float | None:
    """The dose per infusion (or course) in g/kg: as ordered, or grams over the latest weight."""
    r = order.regimen
    if r.g_per_kg is not None:
        return r.g_per_kg
    if r.grams is not None and facts.weight is not None and facts.weight.measured.value > 0:
        return r.grams / facts.weight.measured.value
    return None


# ------------------------------------------------------------------ order rules


@rule(kind="order", branch="criteria.md: IVIG ordered for a different indication",
      title="IVIG for another indication (outside this guideline)",
      checks="the order's reason is another IVIG indication — ITP, Kawasaki disease, Guillain–Barré, CIDP, "
             "myasthenia — or the patient has such an active diagnosis and the order gives no reason or an "
             "immunomodulatory dose (within the configured g/kg range): outside this guideline, never "
             "'not indicated'",
      reads=("order reason", "diagnoses", "order dose", "weight"),
      thresholds=("immunomodulatory_dose_min_g_per_kg", "immunomodulatory_dose_max_g_per_kg"),
      topics={OS: ()}, references=("perez-2017", "guideline"))
def ordered_for_other_indication(order: IvigOrder, facts: Facts, cfg: GuidelineConfig) -> RuleResult:
    if order.reason_other_indication:
        return Assessment("ordered_for_other_indication", None,
                          f"ordered for {order.reason_other_indication}",
                          (Evidence("Order reason", order.reason_other_indication),))
    if facts.other_indications:
        g_per_kg = order_g_per_kg(order, facts)
        dose_note = f", dose {g_per_kg:.2g} g/kg" if g_per_kg is not None else ""
        immunomodulatory = (g_per_kg is not None and _within(g_per_kg, cfg.immunomodulatory_dose_min_g_per_kg,
                                                                cfg.immunomodulatory_dose_max_g_per_kg))
        if immunomodulatory or not order.reasons:
            return Assessment("ordered_for_other_indication", None,
                              f"patient has {facts.other_indications[0]}{dose_note}",
                              (Evidence("Active diagnosis", facts.other_indications[0], "", "another IVIG indication"),))
    return NotApplicable("ordered_for_other_indication", "no other IVIG indication as reason or active diagnosis")


@rule(kind="order", branch="criteria.md On treatment: replacement dose 0.4–0.6 g/kg every 3–4 weeks",
      title="Replacement dose and interval",
      checks="a replacement IVIG order's dose per infusion or course (g/kg from the latest weight; mL of a product "
             "of known concentration) or its interval is outside the range; weekly SCIG by its dose per week; a "
             "dose that cannot be checked (no weight, not a mass) is said",
      reads=("order dose", "order timing", "weight"),
      thresholds=("dose_min_g_per_kg", "dose_max_g_per_kg", "interval_min_weeks", "interval_max_weeks",
                  "weight_stale_months", "immunomodulatory_dose_min_g_per_kg"),
      topics={OS: (Topic.IVIG_DOSE_CHECK,)}, references=("bonilla-2015", "perez-2017"))
def dose_outside_replacement_range(order: IvigOrder, facts: Facts, cfg: GuidelineConfig) -> RuleResult:
    r = order.regimen
    regimen = cfg.replacement_regimen()
    if not r.has_dose:
        return NotApplicable("dose_outside_replacement_range", "no dose to check")
    frequent_scig = order.subcutaneous and r.every_days is not None and r.every_days < 7 * cfg.interval_min_weeks
    if order.subcutaneous and r.every_days is None:
        return NotApplicable("dose_outside_replacement_range", "subcutaneous dose without an interval")
    how_often = f" {interval_words(r.every_days)}" if r.every_days is not None else ""
    ordered = (r.derived or r.ordered) + ("" if r.course else how_often)
    if r.not_a_mass:
        return Assessment(
            "dose_outside_replacement_range", None, f"dose not checked: {r.not_a_mass}",
            (Evidence("Dose ordered", ordered),),
            (f"Order the dose in g or g/kg (replacement: {regimen})",), missing_keys=("dose-unit",))
    g_per_kg = order_g_per_kg(order, facts)
    if g_per_kg is None:
        return Assessment(
            "dose_outside_replacement_range", None,
            f"dose not checked: no body weight in the last {cfg.weight_stale_months} months to express "
            f"{r.grams:g} g as g/kg",
            (Evidence("Dose ordered", ordered),),
            (f"Record a current body weight (replacement: {regimen})",), missing_keys=("weight",))
    per_course = " per course" if r.course else ""
    weight = (f"weight {facts.weight.measured.display('kg')} ({facts.weight.when.isoformat()})"
              if facts.weight is not None and r.g_per_kg is None else "")
    amount = f"{r.grams:g} g = {g_per_kg:.2f} g/kg" if r.grams is not None else f"{g_per_kg:.2f} g/kg"
    # the table says how the ordered dose becomes g/kg, unless it was ordered in g/kg as one dose
    derivation = "; ".join(x for x in (f"{amount}{per_course}" if (r.grams is not None or r.course) else "", weight) if x)
    evidence = [Evidence("Dose ordered", ordered, note=derivation)]
    problems: list[str] = []
    if frequent_scig:
        weeks = r.every_days / 7
        per_week = g_per_kg / weeks
        low, high = cfg.dose_min_g_per_kg / cfg.interval_max_weeks, cfg.dose_max_g_per_kg / cfg.interval_min_weeks
        if not _within(per_week, low, high):
            problems.append(f"{4 * per_week:.2f} g/kg per 4 weeks is {'above' if per_week > high else 'below'} {regimen}")
    else:
        if not _within(g_per_kg, cfg.dose_min_g_per_kg, cfg.dose_max_g_per_kg):
            side = "above" if g_per_kg > cfg.dose_max_g_per_kg else "below"
            problems.append(f"{side} the replacement dose {cfg.dose_min_g_per_kg:g}–{cfg.dose_max_g_per_kg:g} g/kg")
        if r.every_days is not None:
            weeks = r.every_days / 7
            if not _within(weeks, cfg.interval_min_weeks, cfg.interval_max_weeks):
                problems.append(f"the interval is {'shorter' if weeks < cfg.interval_min_weeks else 'longer'} than "
                                f"{cfg.interval_min_weeks:g}–{cfg.interval_max_weeks:g} weeks")
    if not problems:
        return NotApplicable("dose_outside_replacement_range", f"{amount}{per_course}{how_often}: within {regimen}")
    dose = f"{g_per_kg:.2f} g/kg{per_course}{how_often}"
    advice = [f"Replacement dose: {regimen}, adjusted to the trough IgG"]
    if g_per_kg >= cfg.immunomodulatory_dose_min_g_per_kg - 1e-9:
        advice.append(f"{cfg.immunomodulatory_dose_min_g_per_kg:g}–{cfg.immunomodulatory_dose_max_g_per_kg:g} g/kg "
                      "is an immunomodulatory dose: give the indication (ITP, Kawasaki disease, GBS, CIDP) as the "
                      "order's reason")
    return Assessment("dose_outside_replacement_range", None, f"{dose}: " + "; ".join(problems), tuple(evidence),
                      tuple(advice), thresholds=(regimen,))
