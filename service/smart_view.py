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
from hooks.facts import Analyte, LabValue
from hooks.fhir_read import bare_id
from hooks.service_def import HookResult


def _num(value: float) -> float:
    return round(float(value), 3)


def thresholds(config: GuidelineConfig) -> list[dict[str, Any]]:
    """The lines drawn on the charts, in the order of the legend."""
    return [
        {"key": "igm_low_mg_dl", "chart": "ig", "value": config.igm_low_mg_dl, "unit": "mg/dL",
         "label": f"IgM low (< {config.igm_low_mg_dl:g} mg/dL)"},
        {"key": "igg_borderline_from_mg_dl", "chart": "ig", "value": config.igg_borderline_from_mg_dl,
         "unit": "mg/dL", "label": f"IgG borderline from {config.igg_borderline_from_mg_dl:g} mg/dL"},
        {"key": "igg_deficient_mg_dl", "chart": "ig", "value": config.igg_deficient_mg_dl, "unit": "mg/dL",
         "label": f"IgG deficient (< {config.igg_deficient_mg_dl:g} mg/dL)"},
        {"key": "trough_target_mg_dl", "chart": "ig", "value": config.trough_target_mg_dl, "unit": "mg/dL",
         "label": f"IVIG trough target (≥ {config.trough_target_mg_dl:g} mg/dL)"},
        {"key": "titer_protective_ug_ml", "chart": "titers", "value": config.titer_protective_ug_ml,
         "unit": "ug/mL", "label": f"Protective titer (≥ {config.titer_protective_ug_ml:g} µg/mL)"},
    ]


def _lab_point(v: LabValue, deciding: LabValue | None, trough: LabValue | None,
               first_dose: date | None) -> dict[str, Any]:
    notes = []
    on_treatment = first_dose is not None and v.when >= first_dose
    if v.confounded_by is not None:
        days = (v.when - v.confounded_by).days
        notes.append(f"{days} days after IVIG of {v.confounded_by.isoformat()}: "
                     + ("a level on treatment, not a diagnostic one" if on_treatment else "not interpretable"))
    if deciding is not None and v == deciding:
        notes.append("deciding result" + (" (baseline before IVIG)" if first_dose and v.when <= first_dose else ""))
    elif v.stale:
        notes.append("stale")
    if trough is not None and v == trough:
        notes.append("latest trough")
    return {"date": v.when.isoformat(), "value": _num(v.measured.value), "comparator": v.measured.comparator,
            "display": v.measured.display(v.unit), "unit": v.unit, "confounded": v.confounded, "stale": v.stale,
            "notes": notes}


def _series(a: Analyte, trough: LabValue | None, first_dose: date | None) -> dict[str, Any]:
    return {"status": a.status, "level": a.level.value, "basis": a.basis,
            "points": [_lab_point(v, a.deciding, trough if a.name == "IgG" else None, first_dose) for v in a.values]}


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
    """One marker per infusion day: an order and its administration on one day are one infusion."""
    by_day: dict[date, bool] = {}
    for dose in ev.facts.ivig.doses:
        by_day[dose.when] = by_day.get(dose.when, False) or dose.subcutaneous
    return [{"date": day.isoformat(), "subcutaneous": sc} for day, sc in sorted(by_day.items())]


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
        out.append({"summary": card.get("summary"), "indicator": card.get("indicator"), "topic": topic.get("code"),
                    "topic_display": topic.get("display"), "detail": card.get("detail", "")})
    return out


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
        "thresholds": thresholds(config),
        "series": {name: _series(a, f.trough, f.ivig.first_dose) for name, a in (("IgG", f.igg), ("IgM", f.igm), ("IgA", f.iga))},
        "trough": f.trough.show() if f.trough else None,
        "ivig": {"on_treatment": f.ivig.on_treatment, "infusions": _infusions(ev)},
        "infections": _infections(ev),
        "pneumococcal": _titers(ev),
        "decision": {"in_scope": trace.get("in_scope"), "rule": trace.get("decision"),
                     "branch": (spec_of(trace["decision"]).branch if trace.get("decision") and spec_of(trace["decision"]) else None),
                     "rules": _trace_rows(trace), "facts": trace.get("facts", {}),
                     "data_problems": trace.get("data_problems", []), "notes": trace.get("notes", [])},
        "cards": _cards(result),
        "unavailable": dict(f.unavailable),
    }
