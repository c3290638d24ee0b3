"""The benchmark's request bodies, generated from fhir_fixtures/ (never committed as data).

    .venv/bin/python bench/workloads.py OUT_DIR     # writes <name>.json (+ <name>.template.json)

Why generated: the fixtures are dated relative to ``REFERENCE_TODAY``; the service judges
against the real clock, so every body is moved to today (otherwise every lab would be stale and
the rules would take a cheaper path than they do in practice). The records:

* typical: order-sign with a draft IVIG order for the IgG-deficiency sample patient
  (fhir_fixtures/sample-igg-deficiency/request-order-sign.json) plus IgG/IgM/IgA history over
  four years: ~75 resources, Ig labs, 23 serotype titers before and after PPSV23, pneumonias
  with their admissions, weight.
* large: the same call with 1 000 Observations and 200 Conditions: the typical record plus
  unrelated labs (CBC, metabolic panel, lipids... over ten years) and unrelated diagnoses.
* quiet: the most frequent call, patient-view for a patient without any Ig data
  (fhir_fixtures/no-immunoglobulin-data/request-patient-view.json: a weight, a visit, a diagnosis).
* ordinary: the same patient with an ordinary primary-care record besides: chronic diagnoses,
  visits, vaccinations, medications, unrelated labs (68 resources), none of them read by the rules.

Each record is sent two ways. *Distinct* (``distinct-*``, the headline: every chart opened is
another patient's record): a template (``<name>.template.json``) in which every resource id,
every reference, the patient id, the hookInstance and every measured value (``"value"`` of a
quantity, reference ranges and doses included) carry ``@@V@@``; the wrk script puts a number
unique to each request there, so no body, resource or value repeats within a run, while the
clinical content stays what it was (values move by less than 1e-5). *Same body*: the record as
it is, on every request, as an EHR resends a chart.
"""

from __future__ import annotations

import json
import re
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

#: What the wrk script replaces per request in a template body (with 12 digits).
PLACEHOLDER = "@@V@@"
#: What stands in for a placeholder when the benchmark checks a template itself.
SAMPLE_TOKEN = "000000100001"

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
    """One benchmark scenario: which service it calls, with what body, and what it is held to."""

    name: str
    title: str
    service_id: str
    #: the request body as sent, or its template (``distinct``)
    body: bytes
    #: FHIR resources in the body, and how many of them the rules read (validated)
    resources: int
    relevant: int
    connections: int = 16
    #: every request carries another record (the body is a template the wrk script varies)
    distinct: bool = False
    #: the issue whose targets these are ("22": distinct records; "9": the same body), or None
    issue: str | None = None
    #: requests/s at least this times the floor's
    rps_ratio_min: float | None = None
    #: p99 at most this times the floor's
    p99_ratio_max: float | None = None
    #: p99 below this many milliseconds
    p99_bound_ms: float | None = None
    #: environment of the service for this workload only (a server of its own is started)
    service_env: tuple[tuple[str, str], ...] = ()
    #: the record itself, unvaried (distinct workloads: their cards must be its cards)
    plain: bytes = b""

    @property
    def path(self) -> str:
        return f"/cds-services/{self.service_id}"

    def sample(self, token: str | bytes = SAMPLE_TOKEN) -> bytes:
        """The body of one request (a template with ``token`` in every placeholder)."""
        return self.body.replace(PLACEHOLDER.encode(), token if isinstance(token, bytes) else token.encode()) if self.distinct else self.body


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


def quiet_request(today: date) -> dict[str, Any]:
    """patient-view for a patient without Ig data: the fixture's own chart (a weight, a visit, a
    diagnosis), as most charts opened look to this service."""
    return _fixture_request("no-immunoglobulin-data", "patient-view", today)


def patient_view_no_ig_request(today: date) -> dict[str, Any]:
    """patient-view for a patient without Ig data, with an ordinary primary-care record."""
    request = quiet_request(today)
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


_NUMBER = "@@NUMBER:"


def _varied(value: Any) -> Any:
    """``value`` with every id, reference and measured value marked to carry the placeholder."""
    if isinstance(value, list):
        return [_varied(v) for v in value]
    if not isinstance(value, dict):
        return value
    out: dict[str, Any] = {}
    for key, item in value.items():
        if key in ("id", "reference") and isinstance(item, str):
            out[key] = f"{item}-{PLACEHOLDER}"
        elif key == "value" and isinstance(item, (int, float)) and not isinstance(item, bool) \
                and "e" not in repr(item):
            # digits appended after five more zeros: 32 -> 32.00000<12 digits>, 0.35 -> 0.3500000<...>
            out[key] = f"{_NUMBER}{item}{'' if isinstance(item, float) else '.'}00000"
        else:
            out[key] = _varied(item)
    return out


def as_template(request: dict[str, Any]) -> bytes:
    """The request as a template: every id, reference, measured value, the patient id and the
    hookInstance carry the placeholder (checked: no resource is left unvaried)."""
    templated = dict(request)
    templated["hookInstance"] = request["hookInstance"].rsplit("-", 1)[0] + "-" + PLACEHOLDER
    templated["context"] = {**request["context"], "patientId": f"{request['context']['patientId']}-{PLACEHOLDER}",
                            "draftOrders": _varied(request["context"].get("draftOrders"))}
    if templated["context"]["draftOrders"] is None:
        del templated["context"]["draftOrders"]
    templated["prefetch"] = _varied(request["prefetch"])
    text = json.dumps(templated, separators=(",", ":"))
    text = re.sub(f'"{_NUMBER}([0-9.]+)"', lambda m: m.group(1) + PLACEHOLDER, text)
    sample = json.loads(text.replace(PLACEHOLDER, SAMPLE_TOKEN))
    unvaried = [r for r in _resources(sample) if SAMPLE_TOKEN not in json.dumps(r)]
    if unvaried:
        raise ValueError(f"{len(unvaried)} resources would be identical on every request")
    return text.encode()


def build_workloads(today: date | None = None) -> dict[str, Workload]:
    """Every workload of the benchmark, bodies included, for ``today`` (default: the real today)."""
    today = today or date.today()
    records = {"typical": typical_request(today), "large": large_request(today), "quiet": quiet_request(today),
               "ordinary": patient_view_no_ig_request(today)}

    def make(name: str, record: str, title: str, *, distinct: bool = False, **kw: Any) -> Workload:
        request = records[record]
        service_id = "ivig-order-sign" if request["hook"] == "order-sign" else "ivig-patient-view"
        plain = json.dumps(request, separators=(",", ":")).encode()
        return Workload(name, title, service_id, as_template(request) if distinct else plain, len(_resources(request)),
                        _relevant(request), distinct=distinct, plain=plain, **kw)

    return {w.name: w for w in (
        make("distinct-typical", "typical", "order-sign, IVIG draft, ~75 resources", distinct=True, issue="22",
             rps_ratio_min=0.25),
        make("distinct-large", "large", "order-sign, 1000 Observations + 200 Conditions", distinct=True, issue="22",
             rps_ratio_min=0.5, p99_bound_ms=500.0),
        make("distinct-quiet", "quiet", "patient-view, no Ig data (most frequent call)", distinct=True, issue="22",
             rps_ratio_min=0.8),
        make("distinct-ordinary", "ordinary", "patient-view, no Ig data, an ordinary record", distinct=True),
        make("typical", "typical", "the same body on every call", connections=4, issue="9", rps_ratio_min=0.67,
             p99_ratio_max=1.5, p99_bound_ms=50.0),
        make("large", "large", "the same body on every call", connections=4, issue="9", rps_ratio_min=0.67,
             p99_ratio_max=1.5, p99_bound_ms=200.0),
        make("quiet", "quiet", "the same body on every call", connections=4, issue="9", rps_ratio_min=0.67,
             p99_ratio_max=1.5),
        make("quiet-16", "quiet", "the same body, 16 connections", issue="9", rps_ratio_min=0.67,
             p99_ratio_max=1.5),
        make("typical-16", "typical", "the same body, 16 connections", issue="9", rps_ratio_min=0.67,
             p99_ratio_max=1.5),
        make("typical-no-memo", "typical", "the same body, answer memo off", connections=4,
             service_env=(("IVIG_CDS_LIMITS_ANSWER_CACHE_ENTRIES", "0"),)),
    )}


#: The mixed run's share of each distinct workload (quiet charts are the most frequent call).
MIX = (("distinct-quiet", 4), ("distinct-ordinary", 2), ("distinct-typical", 3), ("distinct-large", 1))


def write_workloads(out_dir: Path, today: date | None = None) -> dict[str, Workload]:
    """Write every body to ``out_dir/<name>.json`` (templates: ``<name>.template.json``) and the
    mixed run's list to ``out_dir/mix.txt``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    workloads = build_workloads(today)
    for w in workloads.values():
        body_file(out_dir, w).write_bytes(w.body)
    (out_dir / "mix.txt").write_text("".join(
        f"{weight} {workloads[name].path} {body_file(out_dir, workloads[name])}\n" for name, weight in MIX))
    return workloads


def body_file(out_dir: Path, workload: Workload) -> Path:
    return out_dir / f"{workload.name}{'.template' if workload.distinct else ''}.json"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    for w in write_workloads(Path(args[0])).values():
        print(f"{w.name:20} {w.service_id:18} {w.resources:5} resources ({w.relevant} read by the rules), "
              f"{len(w.body) / 1024:7.1f} KiB{' (template)' if w.distinct else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
