"""Immune globulin orders among the draft orders: recognising them, their dose, their reason.

An order is recognised by HCPCS, by text or brand name (RxNorm displays included — RxNorm
product codes are unverified), inline or through ``medicationReference`` to a contained
Medication, one in the draftOrders Bundle, in prefetch, or one the service fetched. Statuses
other than draft are accepted (EHRs differ); cancelled/entered-in-error orders are ignored.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from hooks import valuesets as vs
from hooks.assessment import Assessment, Evidence, NotApplicable, RuleResult, Topic
from hooks.config import GuidelineConfig
from hooks.facts import (Facts, _code_of, _label, _medication_concepts, concept_in, concept_label,
                         is_immune_globulin, is_subcutaneous, medications_by_id)
from hooks.fhir_read import ReadResult, bare_id, iter_resources
from hooks.rules import OS, rule
from hooks.units import dose_in_grams

ORDER_TYPES = ("MedicationRequest", "MedicationOrder", "MedicationStatement", "ServiceRequest", "MedicationDispense")
_IGNORED_STATUSES = frozenset({"cancelled", "entered-in-error", "revoked", "stopped"})
_PERIOD_DAYS = {"s": 1 / 86400, "min": 1 / 1440, "h": 1 / 24, "d": 1, "wk": 7, "mo": 30.4375, "a": 365.25}
_EVERY_TEXT = re.compile(r"(?:every|q)\s*(\d+(?:\.\d+)?)\s*(w(?:ee)?ks?|wk|d(?:ays?)?|mo(?:nths?)?)\b", re.IGNORECASE)


@dataclass(frozen=True)
class IvigOrder:
    """One immune globulin order being selected or signed."""

    label: str  # "MedicationRequest/abc" (the resourceId a delete suggestion names)
    product: str
    subcutaneous: bool
    dose_value: float | None
    dose_unit: str | None
    dose_grams: float | None  # absolute dose
    dose_g_per_kg: float | None  # a per-kg dose as ordered
    interval_days: float | None
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
    if joined and vs.TEXT_NOT_REPLACEMENT_GLOBULIN.search(joined):
        return False
    codes = [(str(cd.get("system") or ""), str(cd.get("code") or "")) for c in concepts if isinstance(c, dict)
             for cd in c.get("coding") or () if isinstance(cd, dict)]
    if any(vs.coding_in(vs.IMMUNE_GLOBULIN_HCPCS, s, c) for s, c in codes) or vs.TEXT_IMMUNE_GLOBULIN.search(joined):
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
            out.append(f"Medication/{bare_id(target)}")
    return out


def _dose_and_interval(order: Any) -> tuple[float | None, str | None, float | None, str]:
    dosages = getattr(order, "dosageInstruction", None) or getattr(order, "dosage", None) or ()
    value = unit = interval = None
    text = ""
    for dosage in dosages:
        text = dosage.text or text
        for dr in dosage.doseAndRate or ():
            q = dr.doseQuantity
            if q is not None and q.value is not None:
                value, unit = float(q.value), (q.code if q.system == vs.UCUM and q.code else (q.unit or q.code))
                break
        repeat = getattr(getattr(dosage, "timing", None), "repeat", None)
        if repeat is not None and repeat.period and repeat.periodUnit:
            per = float(repeat.period) * _PERIOD_DAYS.get(str(repeat.periodUnit), 0)
            freq = float(repeat.frequency or 1)
            if per:
                interval = per / freq
        if interval is None and dosage.text:
            match = _EVERY_TEXT.search(dosage.text)
            if match:
                n = float(match.group(1))
                u = match.group(2).lower()
                interval = n * (7 if u.startswith("w") else 30.4375 if u.startswith("mo") else 1)
        if value is not None:
            break
    return value, unit, interval, text


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
            value, unit, interval, _ = _dose_and_interval(res)
            grams = per_kg = None
            if value is not None:
                converted = dose_in_grams(value, unit)
                if converted is not None:
                    amount, is_per_kg = converted
                    per_kg, grams = (amount, None) if is_per_kg else (None, amount)
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
                subcutaneous=is_subcutaneous(concepts), dose_value=value, dose_unit=unit, dose_grams=grams,
                dose_g_per_kg=per_kg, interval_days=interval, reasons=tuple(reasons),
                reason_other_indication=other))
    return orders


def order_g_per_kg(order: IvigOrder, facts: Facts) -> float | None:
    if order.dose_g_per_kg is not None:
        return order.dose_g_per_kg
    if order.dose_grams is not None and facts.weight is not None and facts.weight.measured.value > 0:
        return order.dose_grams / facts.weight.measured.value
    return None


# ------------------------------------------------------------------ order rules


@rule(kind="order", branch="criteria.md: IVIG ordered for a different indication",
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
        immunomodulatory = (g_per_kg is not None and cfg.immunomodulatory_dose_min_g_per_kg - 1e-9 <= g_per_kg
                            <= cfg.immunomodulatory_dose_max_g_per_kg + 1e-9)
        if immunomodulatory or not order.reasons:
            return Assessment("ordered_for_other_indication", None,
                              f"patient has {facts.other_indications[0]}{dose_note}",
                              (Evidence("Active diagnosis", facts.other_indications[0], "", "another IVIG indication"),))
    return NotApplicable("ordered_for_other_indication", "no other IVIG indication as reason or active diagnosis")


@rule(kind="order", branch="criteria.md On treatment: replacement dose 0.4–0.6 g/kg every 3–4 weeks",
      checks="a replacement IVIG order's dose (g/kg from the latest weight) or interval is outside the range; "
             "a dose that cannot be checked for lack of weight is said",
      reads=("order dose", "order timing", "weight"),
      thresholds=("dose_min_g_per_kg", "dose_max_g_per_kg", "interval_min_weeks", "interval_max_weeks",
                  "weight_stale_months"),
      topics={OS: (Topic.IVIG_DOSE_CHECK,)}, references=("bonilla-2015", "perez-2017"))
def dose_outside_replacement_range(order: IvigOrder, facts: Facts, cfg: GuidelineConfig) -> RuleResult:
    if order.subcutaneous:
        return NotApplicable("dose_outside_replacement_range", "subcutaneous product: weekly dosing, not checked here")
    problems: list[str] = []
    evidence: list[Evidence] = []
    g_per_kg = order_g_per_kg(order, facts)
    ordered = f"{order.dose_value:g} {order.dose_unit}" if order.dose_value is not None else "no dose"
    if order.dose_value is not None and order.dose_grams is None and order.dose_g_per_kg is None:
        problems.append(f"dose unit '{order.dose_unit}' is not a mass — cannot check g/kg")
    elif g_per_kg is None and order.dose_grams is not None:
        problems.append("no body weight on record" + (" (recent)" if any("weight" in p for p in facts.data_problems) else "")
                        + " — g/kg cannot be computed")
    elif g_per_kg is not None and not (cfg.dose_min_g_per_kg - 1e-9 <= g_per_kg <= cfg.dose_max_g_per_kg + 1e-9):
        problems.append(f"{g_per_kg:.2f} g/kg is outside {cfg.dose_min_g_per_kg:g}–{cfg.dose_max_g_per_kg:g} g/kg")
    if g_per_kg is not None:
        evidence.append(Evidence("Dose", f"{ordered} = {g_per_kg:.2f} g/kg",
                                 note=f"weight {facts.weight.show()}" if facts.weight and order.dose_grams is not None else "per kg as ordered"))
    else:
        evidence.append(Evidence("Dose", ordered))
    if order.interval_days is not None:
        weeks = order.interval_days / 7
        evidence.append(Evidence("Interval", f"every {weeks:.3g} weeks"))
        if not (cfg.interval_min_weeks - 1e-9 <= weeks <= cfg.interval_max_weeks + 1e-9):
            problems.append(f"every {weeks:.3g} weeks is outside every {cfg.interval_min_weeks:g}–{cfg.interval_max_weeks:g} weeks")
    if not problems:
        return NotApplicable("dose_outside_replacement_range",
                             "dose and interval within range" if g_per_kg is not None else "no dose to check")
    summary_dose = f"{g_per_kg:.2f} g/kg" if g_per_kg is not None else ordered
    return Assessment(
        "dose_outside_replacement_range", None, f"{summary_dose}: " + "; ".join(problems), tuple(evidence),
        (f"Replacement dose: {cfg.dose_min_g_per_kg:g}–{cfg.dose_max_g_per_kg:g} g/kg every "
         f"{cfg.interval_min_weeks:g}–{cfg.interval_max_weeks:g} weeks, adjusted to the trough IgG",
         "Record a current body weight" if g_per_kg is None and order.dose_grams is not None else
         "1–2 g/kg is an immunomodulatory dose: state the indication (ITP, Kawasaki, GBS, CIDP) as the order's reason"),
        thresholds=(f"{cfg.dose_min_g_per_kg:g}–{cfg.dose_max_g_per_kg:g} g/kg",
                    f"every {cfg.interval_min_weeks:g}–{cfg.interval_max_weeks:g} weeks"),
        notes=(f"weight {facts.weight.show()}",) if facts.weight else ())
