"""The benchmark's request bodies, generated from fhir_fixtures/ (never committed as data).

    .venv/bin/python bench/workloads.py OUT_DIR     # writes <name>.json (+ <name>.template.json)

Why generated: the fixtures are dated relative to ``REFERENCE_TODAY``; the service judges
against the real clock, so every body is moved to today (otherwise every lab would be stale and
the rules would take a cheaper path than they do in practice). The records:

* ``typical``: order-sign with a draft IVIG order for the IgG-deficiency sample patient
  (fhir_fixtures/sample-igg-deficiency/request-order-sign.json) plus IgG/IgM/IgA history over
  four years: ~75 resources, Ig labs, 23 serotype titers before and after PPSV23, pneumonias
  with their admissions, weight.
* ``large``: the same call with 1 000 Observations and 200 Conditions: the typical record plus
  unrelated labs (CBC, metabolic panel, lipids... over ten years) and unrelated diagnoses.
* ``patient-view-no-ig``: the most frequent call, a chart opened for a patient without any Ig
  data (fhir_fixtures/no-immunoglobulin-data) and an ordinary record: chronic diagnoses, visits,
  vaccinations, medications.

A ``*.template.json`` holds the same body with the patient id replaced by ``<id>-@@V@@``: the
wrk script puts a different value there on every request, so every resource differs from any
seen before and the service's per-resource cache cannot help (the cold path).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from fhir_fixtures import REFERENCE_TODAY, load_json  # noqa: E402
from fhir_fixtures.builder import Record, coding, shift_dates  # noqa: E402

#: What the wrk script replaces per request in a template body.
PLACEHOLDER = "@@V@@"

#: Unrelated laboratory tests: (LOINC, display, unit, low, high). None of them is read by the rules.
UNRELATED_LABS: tuple[tuple[str, str, str, float, float], ...] = (
    ("718-7", "Hemoglobin [Mass/volume] in Blood", "g/dL", 11.5, 16.0),
    ("6690-2", "Leukocytes [#/volume] in Blood by Automated count", "10*3/uL", 3.8, 10.5),
    ("777-3", "Platelets [#/volume] in Blood by Automated count", "10*3/uL", 150, 400),
    ("4544-3", "Hematocrit [Volume Fraction] of Blood by Automated count", "%", 35, 47),
    ("2345-7", "Glucose [Mass/volume] in Serum or Plasma", "mg/dL", 70, 110),
    ("2160-0", "Creatinine [Mass/volume] in Serum or Plasma", "mg/dL", 0.6, 1.2),
    ("3094-0", "Urea nitrogen [Mass/volume] in Serum or Plasma", "mg/dL", 7, 20),
    ("2951-2", "Sodium [Moles/volume] in Serum or Plasma", "mmol/L", 135, 145),
    ("2823-3", "Potassium [Moles/volume] in Serum or Plasma", "mmol/L", 3.5, 5.1),
    ("2075-0", "Chloride [Moles/volume] in Serum or Plasma", "mmol/L", 98, 107),
    ("1742-6", "Alanine aminotransferase [Enzymatic activity/volume] in Serum or Plasma", "U/L", 7, 56),
    ("1920-8", "Aspartate aminotransferase [Enzymatic activity/volume] in Serum or Plasma", "U/L", 10, 40),
    ("2093-3", "Cholesterol [Mass/volume] in Serum or Plasma", "mg/dL", 120, 200),
    ("2571-8", "Triglyceride [Mass/volume] in Serum or Plasma", "mg/dL", 50, 150),
    ("4548-4", "Hemoglobin A1c/Hemoglobin.total in Blood", "%", 4.5, 5.7),
    ("3016-3", "Thyrotropin [Units/volume] in Serum or Plasma", "m[IU]/L", 0.4, 4.0),
    ("1988-5", "C reactive protein [Mass/volume] in Serum or Plasma", "mg/L", 0, 5),
    ("8867-4", "Heart rate", "/min", 55, 95),
    ("8480-6", "Systolic blood pressure", "mm[Hg]", 105, 145),
    ("8462-4", "Diastolic blood pressure", "mm[Hg]", 60, 90),
)

#: Unrelated diagnoses (ICD-10-CM): chronic disease, injuries, symptoms; no infection, no immune defect.
UNRELATED_DIAGNOSES: tuple[tuple[str, str], ...] = (
    ("I10", "Essential (primary) hypertension"),
    ("E11.9", "Type 2 diabetes mellitus without complications"),
    ("E78.5", "Hyperlipidemia, unspecified"),
    ("K21.9", "Gastro-esophageal reflux disease without esophagitis"),
    ("M17.11", "Unilateral primary osteoarthritis, right knee"),
    ("M54.50", "Low back pain, unspecified"),
    ("F32.A", "Depression, unspecified"),
    ("E03.9", "Hypothyroidism, unspecified"),
    ("G43.909", "Migraine, unspecified, not intractable, without status migrainosus"),
    ("N18.30", "Chronic kidney disease, stage 3 unspecified"),
    ("I48.91", "Unspecified atrial fibrillation"),
    ("E66.9", "Obesity, unspecified"),
    ("S93.401A", "Sprain of unspecified ligament of right ankle, initial encounter"),
    ("R51.9", "Headache, unspecified"),
    ("L40.0", "Psoriasis vulgaris"),
    ("H52.4", "Presbyopia"),
    ("K58.9", "Irritable bowel syndrome without diarrhea"),
    ("M81.0", "Age-related osteoporosis without current pathological fracture"),
    ("Z87.891", "Personal history of nicotine dependence"),
    ("R73.03", "Prediabetes"),
)

UNRELATED_MEDICATIONS: tuple[tuple[str, str], ...] = (
    ("314076", "lisinopril 10 MG Oral Tablet"),
    ("860975", "metformin hydrochloride 500 MG Extended Release Oral Tablet"),
    ("617312", "atorvastatin 10 MG Oral Tablet"),
    ("198211", "simvastatin 40 MG Oral Tablet"),
    ("310429", "furosemide 20 MG Oral Tablet"),
    ("966222", "levothyroxine sodium 0.05 MG Oral Tablet"),
    ("308136", "amlodipine 2.5 MG Oral Tablet"),
    ("311989", "nitrofurantoin 100 MG Oral Capsule"),
)

VACCINES: tuple[tuple[str, str], ...] = (
    ("141", "Influenza, seasonal, injectable"),
    ("115", "Tdap"),
    ("213", "SARS-COV-2 (COVID-19) vaccine, UNSPECIFIED FORMULATION"),
    ("187", "zoster vaccine recombinant"),
)


@dataclass(frozen=True)
class Workload:
    """One benchmark scenario: which service it calls, with what body, over how many connections."""

    name: str
    title: str
    service_id: str
    #: the request body as sent
    body: bytes
    #: FHIR resources in the body, and how many of them the rules read (validated)
    resources: int
    relevant: int
    connections: int = 4
    #: every request carries a different record (template body, wrk script varies it)
    cold: bool = False
    #: figures are held against the targets (else: reported only)
    targeted: bool = True
    #: the absolute p99 bound in milliseconds, when the issue sets one
    p99_bound_ms: float | None = None

    @property
    def path(self) -> str:
        return f"/cds-services/{self.service_id}"


# ------------------------------------------------------------------ building blocks


def _shifted(value: Any, today: date) -> Any:
    return shift_dates(value, (today - REFERENCE_TODAY).days)


def _ago(today: date, days: int) -> str:
    return (today - timedelta(days=days)).isoformat()


def _searchset(resources: list[dict[str, Any]]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": r} for r in resources]}


def _add_to(request: dict[str, Any], key: str, resources: list[dict[str, Any]]) -> None:
    bundle = request["prefetch"].setdefault(key, _searchset([]))
    bundle.setdefault("entry", []).extend({"resource": r} for r in resources)


class _Part(Record):
    """Resources of ``pid``'s record whose ids carry ``tag``, so they never collide with the fixture's."""

    def __init__(self, pid: str, tag: str) -> None:
        super().__init__(pid)
        self.tag = tag

    def _id(self, kind: str) -> str:
        self._n += 1
        return f"{self.patient_id}-{self.tag}{self._n}"


def _ig_history(pid: str, today: date, years: int = 4) -> list[dict[str, Any]]:
    """IgG, IgM and IgA once a year before the current work-up, drifting down (a slow decline)."""
    rec = _Part(pid, "h")
    for year in range(1, years + 1):
        when = _ago(today, 365 * year + 11)
        rec.igg(420 + 60 * year, when=when).igm(30 + 3 * year, when=when).iga(70 + 5 * year, when=when)
    return rec.resources[1:]


def _unrelated_labs(pid: str, today: date, count: int) -> list[dict[str, Any]]:
    rec = _Part(pid, "l")
    for i in range(count):
        code, display, unit, low, high = UNRELATED_LABS[i % len(UNRELATED_LABS)]
        value = round(low + (high - low) * ((i * 37) % 100) / 100, 2)
        rec.lab("other", value, unit, _ago(today, 3 + (i // len(UNRELATED_LABS)) * 73), code=code, text=display,
                ref=(low, high))
    return rec.resources[1:]


def _unrelated_conditions(pid: str, today: date, count: int) -> list[dict[str, Any]]:
    rec = _Part(pid, "d")
    for i in range(count):
        code, display = UNRELATED_DIAGNOSES[i % len(UNRELATED_DIAGNOSES)]
        rec.diagnosis(code, display, _ago(today, 30 + 17 * i),
                      clinical_status="active" if i < len(UNRELATED_DIAGNOSES) else "resolved")
    return rec.resources[1:]


def _visits(pid: str, today: date, count: int) -> list[dict[str, Any]]:
    rec = _Part(pid, "e")
    for i in range(count):
        rec.office_visit(_ago(today, 20 + 45 * i))
    return rec.resources[1:]


def _vaccinations(pid: str, today: date) -> list[dict[str, Any]]:
    return [{
        "resourceType": "Immunization", "id": f"{pid}-imm-{i}", "status": "completed",
        "vaccineCode": {"coding": [coding("http://hl7.org/fhir/sid/cvx", code, display)], "text": display},
        "patient": {"reference": f"Patient/{pid}"}, "occurrenceDateTime": _ago(today, 60 + 200 * i),
    } for i, (code, display) in enumerate(VACCINES)]


def _medications(pid: str, today: date) -> list[dict[str, Any]]:
    return [{
        "resourceType": "MedicationRequest", "id": f"{pid}-med-{i}", "status": "active", "intent": "order",
        "subject": {"reference": f"Patient/{pid}"}, "authoredOn": _ago(today, 90 + 120 * i),
        "medicationCodeableConcept": {"coding": [coding("http://www.nlm.nih.gov/research/umls/rxnorm", code, display)],
                                      "text": display},
        "dosageInstruction": [{"text": "1 tablet by mouth daily"}],
    } for i, (code, display) in enumerate(UNRELATED_MEDICATIONS)]


def _fixture_request(scenario: str, hook: str, today: date) -> dict[str, Any]:
    request = load_json(scenario, f"request-{hook}.json")
    if request is None:
        raise FileNotFoundError(f"fhir_fixtures/{scenario}/request-{hook}.json")
    return _shifted(request, today)


# ------------------------------------------------------------------ the workloads


def typical_request(today: date) -> dict[str, Any]:
    """order-sign, IVIG draft order, the IgG-deficiency patient with four years of Ig history."""
    request = _fixture_request("sample-igg-deficiency", "order-sign", today)
    pid = request["context"]["patientId"]
    _add_to(request, "immunoglobulins", _ig_history(pid, today))
    return request


def large_request(today: date, observations: int = 1000, conditions: int = 200) -> dict[str, Any]:
    """The typical call with ``observations`` Observations and ``conditions`` Conditions in all."""
    request = typical_request(today)
    pid = request["context"]["patientId"]
    have_obs = sum(1 for r in _resources(request) if r.get("resourceType") == "Observation")
    have_cond = sum(1 for r in _resources(request) if r.get("resourceType") == "Condition")
    # unrelated labs come under a key of their own: an EHR answering broader queries sends them too
    request["prefetch"]["otherLabs"] = _searchset(_unrelated_labs(pid, today, observations - have_obs))
    _add_to(request, "conditions", _unrelated_conditions(pid, today, conditions - have_cond))
    return request


def patient_view_no_ig_request(today: date) -> dict[str, Any]:
    """patient-view for a patient without Ig data, with an ordinary primary-care record."""
    request = _fixture_request("no-immunoglobulin-data", "patient-view", today)
    pid = request["context"]["patientId"]
    _add_to(request, "conditions", _unrelated_conditions(pid, today, 12))
    _add_to(request, "encounters", _visits(pid, today, 20))
    _add_to(request, "immunizations", _vaccinations(pid, today))
    _add_to(request, "medicationRequests", _medications(pid, today))
    request["prefetch"]["otherLabs"] = _searchset(_unrelated_labs(pid, today, 20))
    return request


def _resources(value: Any) -> list[dict[str, Any]]:
    """Every FHIR resource inside ``value`` (prefetch values, draft orders), flattened."""
    from hooks.fhir_read import iter_resources

    out: list[dict[str, Any]] = []
    for part in (value.get("prefetch", {}).values(), [value.get("context", {}).get("draftOrders")]):
        for item in part:
            out.extend(iter_resources(item))
    return out


def _relevant(request: dict[str, Any]) -> int:
    from hooks.fhir_read import RELEVANT

    return sum(1 for r in _resources(request) if RELEVANT.get(str(r.get("resourceType")), lambda _r: False)(r))


def as_template(request: dict[str, Any]) -> bytes:
    """The body with the patient id made variable: every resource then names the placeholder."""
    pid = request["context"]["patientId"]
    text = json.dumps(request, separators=(",", ":")).replace(f'"{pid}', f'"{pid}-{PLACEHOLDER}') \
        .replace(f"Patient/{pid}", f"Patient/{pid}-{PLACEHOLDER}")
    templated = json.loads(text)
    unvaried = [r for r in _resources(templated) if PLACEHOLDER not in json.dumps(r)]
    if unvaried:
        raise ValueError(f"{len(unvaried)} resources would be identical on every request")
    return text.encode()


def build_workloads(today: date | None = None) -> dict[str, Workload]:
    """Every workload of the benchmark, bodies included, for ``today`` (default: the real today)."""
    today = today or date.today()
    typical = typical_request(today)
    large = large_request(today)
    pv = patient_view_no_ig_request(today)

    def body(request: dict[str, Any]) -> bytes:
        return json.dumps(request, separators=(",", ":")).encode()

    def make(name: str, title: str, request: dict[str, Any], **kw: Any) -> Workload:
        service_id = "ivig-order-sign" if request["hook"] == "order-sign" else "ivig-patient-view"
        return Workload(name, title, service_id, as_template(request) if kw.get("cold") else body(request),
                        len(_resources(request)), _relevant(request), **kw)

    return {w.name: w for w in (
        make("typical", "order-sign, IVIG draft, ~75 resources", typical, p99_bound_ms=50.0),
        make("large", "order-sign, 1000 Observations + 200 Conditions", large, p99_bound_ms=200.0),
        make("patient-view-no-ig", "patient-view, no Ig data (most frequent call)", pv),
        make("concurrent-16", "typical at 16 connections", typical, connections=16),
        make("cold-typical", "typical, a different record every request", typical, cold=True, targeted=False),
        make("cold-large", "large, a different record every request", large, cold=True, targeted=False),
    )}


def write_workloads(out_dir: Path, today: date | None = None) -> dict[str, Workload]:
    """Write every body to ``out_dir/<name>.json`` (template bodies: ``<name>.template.json``)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    workloads = build_workloads(today)
    for w in workloads.values():
        (out_dir / f"{w.name}{'.template' if w.cold else ''}.json").write_bytes(w.body)
    return workloads


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    for w in write_workloads(Path(args[0])).values():
        print(f"{w.name:20} {w.service_id:18} {w.resources:5} resources ({w.relevant} read by the rules), "
              f"{len(w.body) / 1024:7.1f} KiB{' (template)' if w.cold else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
