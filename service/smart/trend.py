"""What the SMART trend page draws: one JSON document from the engine's facts, cards and trace.

Why a module of its own: the page must show the numbers the rules decided on, so everything
here is read from ``hooks`` objects (``Facts``, the patient-view ``HookResult``, the
``GuidelineConfig`` in force) and nothing is recomputed; thresholds in particular come from
the configuration, so a local change of a threshold moves its line on the chart.
"""

from __future__ import annotations

from datetime import date
from typing import Any, Iterable, Mapping

from hooks.cards import spec_of
from hooks.config import GuidelineConfig
from hooks.engine import PatientEvaluation
from hooks.facts import Analyte, Facts, LabValue, TreatmentLevel
from hooks.fhir_read import bare_id
from hooks.service_def import HookResult
from service.smart.card_html import detail_html


def _num(value: float) -> float:
    return round(float(value), 3)


#: The lines the Ig and titer charts can draw: GuidelineConfig field -> (chart, analyte it is
#: compared with, legend wording). Which of them are drawn for a patient: ``thresholds``.
LINES: dict[str, tuple[str, str | None, str]] = {
    "igm_low_mg_dl": ("ig", "IgM", "IgM low (< {v} mg/dL)"),
    "igg_borderline_from_mg_dl": ("ig", "IgG", "IgG borderline from {v} mg/dL"),
    "igg_deficient_mg_dl": ("ig", "IgG", "IgG deficient (< {v} mg/dL)"),
    "iga_low_mg_dl": ("ig", "IgA", "IgA low (< {v} mg/dL)"),
    "trough_target_mg_dl": ("ig", "IgG", "IVIG trough target (≥ {v} mg/dL, troughs only)"),
    "titer_protective_ug_ml": ("titers", None, "Protective titer (≥ {v} µg/mL)"),
}
#: Drawn for every patient: the diagnostic thresholds the page is about.
ALWAYS = ("igm_low_mg_dl", "igg_borderline_from_mg_dl", "igg_deficient_mg_dl", "titer_protective_ug_ml")
#: Only the fixed adult threshold has a borderline; a level judged by the lab's range has none.
FIXED_ONLY = ("igg_borderline_from_mg_dl",)


def _judged_by_lab_range(a: Analyte, f: Facts, config: GuidelineConfig) -> bool:
    """Whether the deciding result was compared with the lab's lower limit, not the fixed threshold.

    The same condition as hooks.facts._level: children, patients of unknown age, and IgA at any
    age are judged by the lab's range when the result carries one.
    """
    v = a.deciding
    if v is None or v.ref_low is None:
        return False
    child = f.age is not None and f.age < config.adult_age_years
    return a.name == "IgA" or child or f.age is None


def _deciding_keys(cards: Iterable[Mapping[str, Any]]) -> dict[str, list[str]]:
    """Threshold field -> topics of the cards whose rules compared with it."""
    out: dict[str, list[str]] = {}
    for card in cards:
        topic = card.get("source", {}).get("topic", {}).get("code", "")
        for name in (card.get("extension") or {}).get("ivig-cds-rules") or []:
            for part in str(name).split("+"):
                spec = spec_of(part)
                for key in spec.thresholds if spec else ():
                    topics = out.setdefault(key, [])
                    if topic and topic not in topics:
                        topics.append(topic)
    return out


def thresholds(config: GuidelineConfig, facts: Facts | None = None,
               cards: Iterable[Mapping[str, Any]] = ()) -> list[dict[str, Any]]:
    """The lines drawn on the charts, in the order of the legend.

    Every threshold that decided a card is drawn (``decided`` names the cards' topics), besides
    the diagnostic ones drawn for everyone; the trough target only for a patient on IVIG/SCIG.
    A level the rules judged by the lab's reference range gets the lab's lower limit as its
    line (``source`` "lab range"), because that is the number it was compared with.
    """
    decided = _deciding_keys(cards)
    on_treatment = facts is not None and facts.ivig.on_treatment
    analytes = {"IgM": facts.igm, "IgG": facts.igg, "IgA": facts.iga} if facts is not None else {}
    out = []
    for key, (chart, analyte, label) in LINES.items():
        wanted = key in ALWAYS or key in decided
        if key == "trough_target_mg_dl":
            wanted = on_treatment
        if not wanted:
            continue
        value, source = float(getattr(config, key)), "guideline"
        a = analytes.get(analyte or "")
        if a is not None and key != "trough_target_mg_dl" and _judged_by_lab_range(a, facts, config):
            if key in FIXED_ONLY:
                continue
            value, source = float(a.deciding.ref_low), "lab range"
            label = f"{analyte} lower limit of the lab's range ({{v}} mg/dL)"
        unit = "ug/mL" if chart == "titers" else "mg/dL"
        out.append({"key": key, "chart": chart, "analyte": analyte, "value": _num(value), "unit": unit,
                    "label": label.format(v=f"{value:g}"), "source": source, "decided": decided.get(key, [])})
    return out


def _lab_point(v: LabValue, deciding: LabValue | None, trough: LabValue | None,
               first_dose: date | None, timing: TreatmentLevel | None = None) -> dict[str, Any]:
    notes = []
    on_treatment = first_dose is not None and v.when >= first_dose
    if timing is not None:
        notes.append(timing.describe())
    elif v.confounded_by is not None:
        days = (v.when - v.confounded_by).days
        notes.append(f"{days} days after IVIG of {v.confounded_by.isoformat()}: "
                     + ("a level on treatment, not a diagnostic one" if on_treatment else "not interpretable"))
    if deciding is not None and v == deciding:
        notes.append("deciding result" + (" (baseline before IVIG)" if first_dose and v.when <= first_dose else ""))
    elif v.stale:
        notes.append("stale")
    if trough is not None and v == trough:
        notes.append("latest trough")
    return {"date": v.when.isoformat(), "time": v.at.isoformat() if v.at else None, "value": _num(v.measured.value),
            "comparator": v.measured.comparator, "display": v.measured.display(v.unit), "unit": v.unit,
            "confounded": v.confounded, "stale": v.stale,
            # on treatment: "trough", "mid-interval" or "steady-state"; None before treatment
            "timing": timing.timing.value if timing is not None else None,
            "ref_low": v.ref_low, "ref_high": v.ref_high, "notes": notes}


def _series(a: Analyte, f: Facts) -> dict[str, Any]:
    timings = {id(level.value): level for level in f.treatment_levels} if a.name == "IgG" else {}
    return {"status": a.status, "level": a.level.value, "basis": a.basis, "high": a.high,
            "points": [_lab_point(v, a.deciding, f.trough if a.name == "IgG" else None, f.ivig.first_dose,
                                  timings.get(id(v))) for v in a.values]}


def _titers(ev: PatientEvaluation) -> dict[str, Any]:
    p = ev.facts.pneumococcal
    rows: dict[str, dict[str, Any]] = {}
    for phase, titers in (("pre", p.pre), ("post", p.post)):
        for t in titers:
            row = rows.setdefault(t.serotype, {"serotype": t.serotype, "pre": None, "post": None})
            row[phase] = {"value": _num(t.measured.value), "comparator": t.measured.comparator,
                          "display": t.measured.display("ug/mL", 2), "date": t.when.isoformat(),
                          "confounded": t.confounded_by is not None}
    order = [t.serotype for t in p.pre] + [t.serotype for t in p.post]
    serotypes = [rows[s] for s in dict.fromkeys(order)]
    return {"status": p.status, "summary": p.show(), "vaccination": p.vaccination.isoformat() if p.vaccination else None,
            "protective": p.protective, "tested": p.tested, "required_fraction": p.required_fraction,
            "problems": list(p.problems), "serotypes": serotypes}


def _infusions(ev: PatientEvaluation) -> list[dict[str, Any]]:
    """One marker per infusion day: an order and its administration on one day are one infusion.

    An order's or a statement's date is not an infusion, so only infusions on record are drawn;
    a history of orders or statements alone is drawn by those dates, marked ``recorded``.
    """
    doses = [d for d in ev.facts.ivig.doses if d.infusion] or list(ev.facts.ivig.doses)
    by_day: dict[date, bool] = {}
    for dose in doses:
        by_day[dose.when] = by_day.get(dose.when, False) or dose.subcutaneous
    recorded = not any(d.infusion for d in doses)
    return [{"date": day.isoformat(), "subcutaneous": sc, "recorded": recorded} for day, sc in sorted(by_day.items())]


def _infections(ev: PatientEvaluation) -> dict[str, Any]:
    inf = ev.facts.infections
    episodes = [{
        "date": e.when.isoformat(), "label": e.label,
        "kind": "life-threatening" if e.life_threatening else "severe" if e.severe else "minor",
        "encapsulated": e.encapsulated, "hospitalised": e.hospitalised,
    } for e in inf.episodes]
    return {"known": inf.known, "window_start": inf.window_start.isoformat(), "episodes": episodes,
            "problems": list(inf.problems)}


def _trace_rows(trace: Mapping[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for entry in [*trace.get("rules", []), *trace.get("order_rules", [])]:
        first = str(entry.get("rule", "")).split("+")[0]
        spec = spec_of(first)
        rows.append({**entry, "branch": spec.branch if spec else None})
    return rows


def _cards(result: HookResult) -> list[dict[str, Any]]:
    out = []
    for card in result.cards:
        topic = card.get("source", {}).get("topic", {})
        detail = card.get("detail", "")
        out.append({"summary": card.get("summary"), "indicator": card.get("indicator"), "topic": topic.get("code"),
                    "topic_display": topic.get("display"), "detail": detail, "detail_html": detail_html(detail),
                    "rules": list((card.get("extension") or {}).get("ivig-cds-rules") or [])})
    return out


#: How the decision trace's facts are named on the page (keys of hooks.engine.facts_summary).
FACT_LABELS = {
    "age": "Age", "IgM": "IgM", "IgG": "IgG", "IgA": "IgA",
    "pneumococcal": "Pneumococcal response (PPSV23)", "infections": "Infections counted",
    "ivig": "IVIG / SCIG", "trough": "Latest trough IgG", "weight": "Body weight",
    "lymphocyte_subsets": "Lymphocyte subsets measured", "other_indications": "Other IVIG indications",
}


def _words(key: str) -> str:
    return str(key).replace("_", " ")


def _text(value: Any) -> str:
    if value is None:
        return "none on record"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (list, tuple)):
        return "; ".join(_text(v) for v in value) if value else "none"
    if isinstance(value, Mapping):
        return "; ".join(f"{_words(k)}: {_text(v)}" for k, v in value.items())
    return str(value)


def fact_rows(facts: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The trace's facts as table rows (fact, value, date, how it was judged) a committee can read.

    A result ({status, level, value, date, basis}) becomes its value, date and judgement; a list
    of several things (infection episodes) its ``items``; any other fact its words. Keys the page
    does not know yet are shown with their own name.
    """
    rows = []
    for key, value in facts.items():
        label = FACT_LABELS.get(key, _words(key))
        if key == "age":
            rows.append({"fact": label, "value": f"{value:g} years" if isinstance(value, (int, float)) else "unknown",
                         "date": "", "judged": ""})
        elif isinstance(value, Mapping) and {"status", "level", "value"} <= set(value):
            judged = value.get("level") if value.get("status") == "ok" else value.get("status")
            basis = value.get("basis")
            rows.append({"fact": label, "value": value.get("value") or "not on record", "date": value.get("date") or "",
                         "judged": f"{judged}: {basis}" if basis else str(judged or "")})
        elif isinstance(value, Mapping) and "episodes" in value:
            episodes = value.get("episodes") or []
            known = value.get("known", True)
            rows.append({"fact": label, "value": "" if episodes else ("none" if known else "unknown"),
                         "items": [str(e) for e in episodes], "date": "",
                         "judged": "" if known else "infection history unknown"})
        elif isinstance(value, (list, tuple)) and len(value) > 1:
            rows.append({"fact": label, "value": "", "items": [_text(v) for v in value], "date": "", "judged": ""})
        else:
            rows.append({"fact": label, "value": _text(value), "date": "", "judged": ""})
    return rows


def patient_from(values: Iterable[Any], patient_id: str | None) -> dict[str, Any] | None:
    """The Patient resource among the record's values (a resource or Bundles of them)."""
    for value in values:
        candidates = [value] if isinstance(value, Mapping) and value.get("resourceType") == "Patient" else []
        if isinstance(value, Mapping) and value.get("resourceType") == "Bundle":
            candidates = [e.get("resource") for e in value.get("entry") or [] if isinstance(e, Mapping)]
        for res in candidates:
            if isinstance(res, Mapping) and res.get("resourceType") == "Patient":
                if patient_id is None or bare_id(str(res.get("id", ""))) == patient_id:
                    return dict(res)
    return None


def _patient_header(patient: Mapping[str, Any] | None, ev: PatientEvaluation) -> dict[str, Any]:
    name = None
    if patient:
        for entry in patient.get("name") or []:
            if not isinstance(entry, Mapping):
                continue
            name = entry.get("text") or " ".join(
                [*[str(g) for g in entry.get("given") or []], str(entry.get("family") or "")]).strip() or None
            if name:
                break
    f = ev.facts
    return {"name": name, "gender": (patient or {}).get("gender"),
            "birthDate": f.birth_date.isoformat() if f.birth_date else None,
            "age": round(f.age, 1) if f.age is not None else None}


def build_view(ev: PatientEvaluation, result: HookResult, config: GuidelineConfig,
               patient: Mapping[str, Any] | None, *, source: str, fixture: str | None,
               ruleset_version: str) -> dict[str, Any]:
    """The page's JSON: patient, thresholds in force, Ig series, infusions, infections, titers, trace, cards."""
    f = ev.facts
    trace = result.trace or ev.trace()
    return {
        "source": source,
        "fixture": fixture,
        "today": f.today.isoformat(),
        "ruleset_version": ruleset_version,
        "patient": _patient_header(patient, ev),
        "thresholds": thresholds(config, f, result.cards),
        "series": {a.name: _series(a, f) for a in (f.igg, f.igm, f.iga)},
        "trough": f.trough.show() if f.trough else None,
        "mid_interval": f.mid_interval.value.show() if f.mid_interval else None,
        "ivig": {"on_treatment": f.ivig.on_treatment, "infusions": _infusions(ev)},
        "infections": _infections(ev),
        "pneumococcal": _titers(ev),
        "decision": {"in_scope": trace.get("in_scope"), "rule": trace.get("decision"),
                     "branch": (spec_of(trace["decision"]).branch if trace.get("decision") and spec_of(trace["decision"]) else None),
                     "rules": _trace_rows(trace), "facts": trace.get("facts", {}),
                     "fact_rows": fact_rows(trace.get("facts", {})),
                     "data_problems": trace.get("data_problems", []), "notes": trace.get("notes", [])},
        "cards": _cards(result),
        "unavailable": dict(f.unavailable),
    }
