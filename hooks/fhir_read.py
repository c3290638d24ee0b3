"""From whatever the EHR sent to validated FHIR R4 resources, or a stated reason for skipping.

Real payloads are imperfect, so reading is lenient in a bounded, reported way:

* prefetch is a bag: every resource in every value (Bundles, nested Bundles, single
  resources), plus the draft orders and resources the service fetched, de-duplicated;
* what is not a resource at all (an empty or non-object Bundle entry, an entry without a
  resource, an object without a FHIR ``resourceType``) is skipped with the reason; resources of
  FHIR types the rules do not read (Practitioner, Organization ...) are passed over in silence;
* STU3/DSTU2 shapes of the elements the rules use are adapted (MedicationOrder, ``patient``,
  ``periodUnits``, ``doseQuantity`` outside ``doseAndRate``, string statuses, ``date``);
* ids such as ``Patient/x`` are cut to ``x``;
* an element that fails validation and that the rules can do without is dropped and the resource
  kept (so is an element FHIR does not define); a resource whose essential elements fail is
  skipped with the reason;
* a resource that names another patient is skipped.

Resources are selected on the parsed JSON first (type, codes, text), and only those the rules
can use are built into models (hooks/fhir_models.py): a long-standing patient's record is mostly
labs, visits and diagnoses the guideline never reads. An Observation becomes the flat result the
rules read (hooks/lab_results.py), straight from its JSON when it is well-formed. Built models can
be kept by the resource's content (``MODEL_CACHE``, ``models_cached_in``), so that a chart sent
again is not validated again.
"""

from __future__ import annotations

import json
import re
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import date
from typing import Any, Callable, Iterable, Iterator, Mapping, NamedTuple

import orjson
from pydantic import ValidationError

from hooks import valuesets as vs
from hooks import lab_results
from hooks.lab_results import LabResult
from hooks.classify import names_immune_globulin
from hooks.dates import as_date
from hooks.fhir_models import MODELS, RESOURCE_TYPES, Resource, unknown_elements
from hooks.lru import BoundedLRU, by_term

#: Fields whose failure makes a resource unusable; any other failing field is dropped.
ESSENTIAL: dict[str, frozenset[str]] = {
    "Patient": frozenset({"birthDate"}),
    "Observation": frozenset({"status", "code", "valueQuantity", "valueString", "effectiveDateTime",
                              "effectivePeriod", "effectiveInstant", "issued", "subject"}),
    "Condition": frozenset({"code", "subject", "onsetDateTime", "onsetPeriod", "recordedDate",
                            "verificationStatus", "clinicalStatus"}),
    "Encounter": frozenset({"class", "period", "subject", "status"}),
    "Immunization": frozenset({"status", "vaccineCode", "occurrenceDateTime", "patient"}),
    "MedicationRequest": frozenset({"status", "medicationCodeableConcept", "medicationReference", "subject",
                                    "dosageInstruction", "reasonCode", "authoredOn"}),
    "MedicationAdministration": frozenset({"status", "medicationCodeableConcept", "medicationReference",
                                           "subject", "effectiveDateTime", "effectivePeriod"}),
    "MedicationStatement": frozenset({"status", "medicationCodeableConcept", "medicationReference", "subject",
                                      "effectiveDateTime", "effectivePeriod"}),
    "MedicationDispense": frozenset({"status", "medicationCodeableConcept", "medicationReference", "subject",
                                     "whenHandedOver"}),
    "Procedure": frozenset({"status", "code", "subject", "performedDateTime", "performedPeriod"}),
    "Medication": frozenset({"code"}),
    "ServiceRequest": frozenset({"status", "code", "subject"}),
}

_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
_SUBJECT_FIELDS = ("subject", "patient")
#: Bundles nest at most this deep (a Bundle in a Bundle entry in a prefetch list ...).
_MAX_DEPTH = 6


@dataclass(frozen=True)
class Skipped:
    """A resource (or part of one) the rules could not use, and why. No patient data in it."""

    resource: str  # "Observation/abc", "Observation (no id)" or "Bundle entry 3"
    reason: str


@dataclass
class ReadResult:
    by_type: dict[str, list[Any]] = field(default_factory=dict)
    #: raw id of each validated model (ids can be cut or missing in the model)
    raw_ids: dict[int, str] = field(default_factory=dict)
    #: results grouped by what they measure (hooks/lab_results.py ``LabResult.kind``)
    by_kind: dict[str, list[LabResult]] = field(default_factory=dict)
    labels: dict[int, str] = field(default_factory=dict)
    #: every resource read, relevant or not: what ``iter_clinical_dates`` dates
    resources: list[dict[str, Any]] = field(default_factory=list, repr=False)
    skipped: list[Skipped] = field(default_factory=list)
    notes: list[Skipped] = field(default_factory=list)

    def of(self, resource_type: str) -> list[Any]:
        return self.by_type.get(resource_type, [])

    def observations(self, kind: str) -> list[LabResult]:
        """Results of one kind: 'IgM', 'IgG', 'IgA', 'titer', 'CD19', ..., 'weight'."""
        return self.by_kind.get(kind, [])

    def raw_id(self, model: Any) -> str | None:
        return self.raw_ids.get(id(model))

    def label(self, model: Any) -> str | None:
        """'Observation/abc' as the EHR named it (for cards and the delete action's resourceId)."""
        return self.labels.get(id(model))

    def iter_clinical_dates(self) -> Iterator[date]:
        """The clinical date of every resource read, relevant or not, worked out as it is asked for:
        "is there any data in the window" stops at the first recent one, and a long record is mostly
        resources the rules read for nothing else."""
        for raw in self.resources:
            when = _clinical_date(raw)
            if when is not None:
                yield when

    @property
    def clinical_dates(self) -> list[date]:
        return list(self.iter_clinical_dates())


# ------------------------------------------------------------------ collecting


def _collect(value: Any, out: list[dict[str, Any]], problems: list[Skipped] | None, depth: int = 0,
             where: str = "prefetch value") -> None:
    """Every object with a ``resourceType`` in ``value``, in order, into ``out``; what is not a
    resource goes to ``problems``. (A list, not a generator: a large record's thousand entries
    would each pass through every level's generator.)"""
    if depth > _MAX_DEPTH:
        return
    if isinstance(value, list):  # prefetch values: mostly Bundles (or nothing), opened here without a call each
        for item in value:
            if item is None:
                continue  # a prefetch the EHR could not fill
            if type(item) is dict and item.get("resourceType") == "Bundle" and depth < _MAX_DEPTH:
                _entries(item, out, problems, depth + 1)
            else:
                _collect(item, out, problems, depth + 1, where)
        return
    if not isinstance(value, dict):
        if value is not None and problems is not None:  # None: a prefetch the EHR could not fill
            problems.append(Skipped(where, "not a FHIR resource"))
        return
    rtype = value.get("resourceType")
    if rtype == "Bundle":
        _entries(value, out, problems, depth)
    elif isinstance(rtype, str):
        out.append(value)
    elif problems is not None:
        problems.append(Skipped(where, "no resourceType: not a FHIR resource"))


def _entries(bundle: dict[str, Any], out: list[dict[str, Any]], problems: list[Skipped] | None, depth: int) -> None:
    entries = bundle.get("entry")
    if not isinstance(entries, list):
        if entries is not None and problems is not None:
            problems.append(Skipped(_label(bundle), "its entries are not a list"))
        return
    append = out.append
    for number, entry in enumerate(entries, 1):
        resource = entry.get("resource") if isinstance(entry, dict) else None
        rtype = resource.get("resourceType") if isinstance(resource, dict) else None
        if isinstance(rtype, str) and rtype != "Bundle":
            append(resource)
        elif isinstance(resource, (dict, list)):
            _collect(resource, out, problems, depth + 1, f"Bundle entry {number}")
        elif problems is not None:
            reason = ("empty" if entry is None else "no resource in it" if isinstance(entry, dict)
                      else "not a Bundle entry")
            problems.append(Skipped(f"Bundle entry {number}", reason))


def iter_resources(value: Any) -> Iterator[dict[str, Any]]:
    """Every resource in a prefetch value: a resource, a Bundle (entries, nested Bundles), a list."""
    out: list[dict[str, Any]] = []
    _collect(value, out, None)
    return iter(out)


def bare_id(reference: Any) -> str | None:
    """'Patient/123', 'https://x/fhir/Patient/123/_history/2' and '123' -> '123'."""
    if not isinstance(reference, str) or not reference:
        return None
    if "/" not in reference:
        return reference
    text = reference.split("/_history/", 1)[0].rstrip("/")
    return text.rsplit("/", 1)[-1]


def _label(raw: Mapping[str, Any]) -> str:
    rid = raw.get("id")
    return f"{raw.get('resourceType')}/{bare_id(rid)}" if isinstance(rid, str) and rid else f"{raw.get('resourceType')} (no id)"


# ------------------------------------------------------------------ relevance (raw, cheap)


_OBS_LOINC = (vs.LOINC_IGG | vs.LOINC_IGM | vs.LOINC_IGA | vs.LOINC_IGG_SUBCLASSES | vs.LOINC_LYMPHOCYTE_SUBSETS
              | vs.LOINC_BODY_WEIGHT | vs.LOINC_PNEUMOCOCCAL_SEROTYPES)
_OBS_TEXT = re.compile(
    r"\big[gma]\b|immunoglobulin|pneumo|cd\s?19|cd\s?4\b|cd\s?8\b|memory\s*b|weight", re.IGNORECASE)
_CONDITION_SETS = (vs.SEVERE_INFECTIONS, vs.LIFE_THREATENING_INFECTIONS, vs.ENCAPSULATED_ORGANISM_INFECTIONS,
                   vs.MINOR_INFECTIONS, vs.IMMUNODEFICIENCY, vs.OTHER_IVIG_INDICATIONS)

@by_term
def _observation_text(text: str) -> bool:
    return _OBS_TEXT.search(text) is not None


@by_term
def _condition_coding(system: str, code: str) -> bool:
    return any(vs.coding_in(valueset, system, code) for valueset in _CONDITION_SETS)


@by_term
def _condition_text(text: str) -> bool:
    return any(vs.text_in(valueset, text) for valueset in _CONDITION_SETS)


@by_term
def _immune_globulin_coding(system: str, code: str) -> bool:
    return vs.coding_in(vs.IMMUNE_GLOBULIN_HCPCS, system, code)


@by_term
def _ivig_procedure_text(text: str) -> bool:
    return vs.TEXT_IVIG_PROCEDURE.search(text) is not None


def _concept_matches(concept: Any, coding: Callable[[str, str], bool] | None, text: Callable[[str], bool]) -> bool:
    """Whether a raw CodeableConcept's codes or names match. Read in place, without collecting
    them first: a long record's diagnoses and visits are almost all checked for nothing."""
    if not isinstance(concept, dict):
        return False
    codings = concept.get("coding")
    codings = [c for c in codings if isinstance(c, dict)] if isinstance(codings, list) else ()
    if coding is not None:
        for item in codings:
            code = item.get("code")
            if isinstance(code, str) and coding(str(item.get("system") or ""), code):
                return True
    name = concept.get("text")
    if isinstance(name, str) and text(name):
        return True
    # a display that repeats the text (as most do) has been answered already
    return any(isinstance(display := item.get("display"), str) and display != name and text(display)
               for item in codings)


def observation_may_matter(raw: Mapping[str, Any]) -> bool:
    """An Ig, titer, lymphocyte subset or weight by LOINC (any system) or by name. Most of a long
    record is Observations, so this reads the codings in place rather than through lists."""
    concept = raw.get("code")
    if not isinstance(concept, dict):
        return False
    codings = concept.get("coding")
    display = None
    if isinstance(codings, list):
        for coding in codings:
            if isinstance(coding, dict) and isinstance(code := coding.get("code"), str) and code in _OBS_LOINC:
                return True
        for coding in codings:
            if isinstance(coding, dict) and isinstance(display := coding.get("display"), str) \
                    and _observation_text(display):
                return True
    text = concept.get("text")
    # a text that repeats the last display (as most do) has been answered already
    return isinstance(text, str) and text != display and _observation_text(text)


def condition_may_matter(raw: Mapping[str, Any]) -> bool:
    return _concept_matches(raw.get("code"), _condition_coding, _condition_text)


def medication_use_may_matter(raw: Mapping[str, Any]) -> bool:
    """Immune globulin by code/text, or a reference to a Medication we must look at."""
    return (_concept_matches(raw.get("medicationCodeableConcept"), _immune_globulin_coding, names_immune_globulin)
            or isinstance(raw.get("medicationReference"), dict))


def procedure_may_matter(raw: Mapping[str, Any]) -> bool:
    return _concept_matches(raw.get("code"), None, _ivig_procedure_text)


@by_term
def _hospital_text(text: str) -> bool:
    return vs.TEXT_INPATIENT.search(text) is not None or vs.TEXT_INTENSIVE_CARE.search(text) is not None


def _intensive_care_coding(system: str, code: str) -> bool:
    return code in vs.SNOMED_INTENSIVE_CARE


def encounter_may_matter(raw: Mapping[str, Any]) -> bool:
    """An admission: the infection history reads only encounters that may be inpatient or
    intensive care (hooks/facts.py ``_encounter_flags``), by class, type, service type or ward.
    An office visit is none of these; it still dates the record (``clinical_dates``)."""
    cls = raw.get("class")
    terms = [cls] if isinstance(cls, str) else [cls.get("code"), cls.get("display")] if isinstance(cls, dict) else []
    if any(isinstance(t, str) and (t in vs.INPATIENT_CLASSES or _hospital_text(t)) for t in terms):
        return True
    types = raw.get("type")
    for concept in [*(types if isinstance(types, list) else ()), raw.get("serviceType")]:
        if _concept_matches(concept, _intensive_care_coding, _hospital_text):
            return True
    locations = raw.get("location")
    for location in locations if isinstance(locations, list) else ():
        place = location.get("location") if isinstance(location, dict) else None
        if isinstance(place, dict) and isinstance(place.get("display"), str) and _hospital_text(place["display"]):
            return True
    return False


@by_term
def _ppsv23_coding(system: str, code: str) -> bool:
    return code in vs.CVX_PPSV23


@by_term
def _ppsv23_text(text: str) -> bool:
    return vs.text_in(vs.VACCINES, text)


def immunization_may_matter(raw: Mapping[str, Any]) -> bool:
    """PPSV23, by CVX code or name: the only vaccination the guideline reads (the pneumococcal
    challenge, hooks/facts.py ``_ppsv23_dates``)."""
    return _concept_matches(raw.get("vaccineCode"), _ppsv23_coding, _ppsv23_text)


RELEVANT = {
    "Patient": lambda raw: True,
    "Observation": observation_may_matter,
    "Condition": condition_may_matter,
    "Encounter": encounter_may_matter,
    "Immunization": immunization_may_matter,
    "MedicationRequest": medication_use_may_matter,
    "MedicationAdministration": medication_use_may_matter,
    "MedicationStatement": medication_use_may_matter,
    "MedicationDispense": medication_use_may_matter,
    "Procedure": procedure_may_matter,
    "Medication": lambda raw: True,
    "ServiceRequest": lambda raw: True,
}


# ------------------------------------------------------------------ shape adaptation (STU3 / DSTU2)


def _coding_concept(value: Any, system: str) -> Any:
    if isinstance(value, str):
        return {"coding": [{"system": system, "code": value}]}
    return value


def _adapt_dosage(dosage: Any) -> Any:
    if not isinstance(dosage, dict):
        return dosage
    dosage = dict(dosage)
    timing = dosage.get("timing")
    if isinstance(timing, dict) and isinstance(timing.get("repeat"), dict) and "periodUnits" in timing["repeat"]:
        repeat = dict(timing["repeat"])
        repeat["periodUnit"] = repeat.pop("periodUnits")
        dosage["timing"] = {**timing, "repeat": repeat}
    dose_and_rate = dosage.get("doseAndRate")
    if isinstance(dose_and_rate, dict):
        dosage["doseAndRate"] = [dose_and_rate]
    moved = {k: dosage.pop(k) for k in ("doseQuantity", "doseRange", "rateQuantity", "rateRatio") if k in dosage}
    if moved:
        existing = dosage.get("doseAndRate")
        dosage["doseAndRate"] = [*existing, moved] if isinstance(existing, list) else [moved] if existing is None \
            else [existing, moved]
    return dosage


def adapt_shape(raw: Mapping[str, Any]) -> dict[str, Any]:
    """``raw`` in R4 shape where STU3/DSTU2 differ in elements the rules read: a copy, or ``raw``
    itself when nothing differs.

    The copy is shallow: whatever is changed below a resource's top level (a dosage, its timing)
    is copied where it is changed, so the request's own JSON is never altered.
    """
    if raw.get("resourceType") == "Observation" and "patient" not in raw:
        rid = raw.get("id")
        if not isinstance(rid, str) or ("/" not in rid and _ID.match(rid)):
            return raw  # nothing to adapt, as for most of a record (validate copies before it changes one)
    res = dict(raw)
    rtype = res.get("resourceType")
    if rtype == "MedicationOrder":  # DSTU2
        res["resourceType"] = rtype = "MedicationRequest"
        res.setdefault("intent", "order")
        if "dateWritten" in res:
            res.setdefault("authoredOn", res.pop("dateWritten"))
        if "reasonCodeableConcept" in res:
            res.setdefault("reasonCode", [res.pop("reasonCodeableConcept")])
        if "reasonReference" in res and isinstance(res["reasonReference"], dict):
            res["reasonReference"] = [res["reasonReference"]]
        if "prescriber" in res:
            res.setdefault("requester", res.pop("prescriber"))
    if isinstance(res.get("id"), str):
        res["id"] = bare_id(res["id"])
        if not _ID.match(res["id"] or ""):
            res.pop("id")
    if rtype not in ("Immunization", "Patient") and "patient" in res and "subject" not in res:
        res["subject"] = res.pop("patient")
    if rtype in ("MedicationRequest", "MedicationStatement", "MedicationDispense"):
        if isinstance(res.get("dosageInstruction"), list):
            res["dosageInstruction"] = [_adapt_dosage(d) for d in res["dosageInstruction"]]
        if isinstance(res.get("dosage"), list):
            res["dosage"] = [_adapt_dosage(d) for d in res["dosage"]]
        if "context" in res and rtype == "MedicationRequest":
            res.setdefault("encounter", res.pop("context"))
    if rtype == "Condition":
        res["clinicalStatus"] = _coding_concept(
            res.get("clinicalStatus"), "http://terminology.hl7.org/CodeSystem/condition-clinical")
        status = res.get("verificationStatus")
        res["verificationStatus"] = _coding_concept(
            {"provisional": "provisional", "differential": "differential", "confirmed": "confirmed",
             "refuted": "refuted", "entered-in-error": "entered-in-error"}.get(status, status)
            if isinstance(status, str) else status,
            "http://terminology.hl7.org/CodeSystem/condition-ver-status")
        for old, new in (("dateRecorded", "recordedDate"), ("assertedDate", "recordedDate")):
            if old in res:
                res.setdefault(new, res.pop(old))
        if res.get("clinicalStatus") is None:
            res.pop("clinicalStatus", None)
        if res.get("verificationStatus") is None:
            res.pop("verificationStatus", None)
    if rtype == "Encounter":
        cls = res.get("class")
        if isinstance(cls, str):
            res["class"] = {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": cls}
        if isinstance(res.get("reason"), list):
            res.setdefault("reasonCode", res.pop("reason"))
    if rtype == "Immunization":
        if "date" in res:
            res.setdefault("occurrenceDateTime", res.pop("date"))
        not_given = res.pop("notGiven", None)
        was_not_given = res.pop("wasNotGiven", None)
        if not_given or was_not_given:
            res["status"] = "not-done"
    if rtype == "MedicationAdministration":
        if "effectiveTimeDateTime" in res:
            res.setdefault("effectiveDateTime", res.pop("effectiveTimeDateTime"))
        if "effectiveTimePeriod" in res:
            res.setdefault("effectivePeriod", res.pop("effectiveTimePeriod"))
        if res.pop("notGiven", None) or res.pop("wasNotGiven", None):
            res["status"] = "not-done"
    if rtype == "Procedure":
        if res.pop("notDone", None) or res.pop("notPerformed", None):
            res["status"] = "not-done"
    return res


# ------------------------------------------------------------------ validation, cached by content


class Ingest(NamedTuple):
    """What one resource the rules can use reads as: the same for every request that sends it."""

    #: the validated model; for an Observation, the result the rules read (hooks/lab_results.py)
    model: Any
    #: elements dropped to read it (unreadable, or not FHIR)
    dropped: tuple[str, ...] = ()
    #: why it could not be read (``model`` is None)
    reason: str | None = None


#: Ingested resources by their serialised form, for readers without a cache of their own
#: (``ivig-cds evaluate``, tests). The service gives each app its own (``models_cached_in``),
#: sized by ``limits.resource_cache_entries``.
MODEL_CACHE: BoundedLRU[bytes, Ingest] = BoundedLRU(capacity=4000)
#: A resource larger than this, serialised, is skipped with the reason, never validated nor
#: cached: reading one costs time and memory in proportion to its size, and no resource the rules
#: read is near it in real records. The service sets it from ``limits.max_resource_bytes``.
MAX_RESOURCE_BYTES = 64 * 1024
#: The cache read through, and the length of the text every resource read came in (None: not known)
_READING: ContextVar[tuple[BoundedLRU[bytes, Ingest], int | None]] = ContextVar(
    "ivig_cds_reading", default=(MODEL_CACHE, None))


@contextmanager
def models_cached_in(cache: BoundedLRU[bytes, Ingest], *, sent_within: int | None = None) -> Iterator[None]:
    """Read through ``cache`` (in this thread or task) instead of ``MODEL_CACHE``. ``sent_within``:
    the length of the text all the resources came in (a request body), when the caller knows it."""
    token = _READING.set((cache, sent_within))
    try:
        yield
    finally:
        _READING.reset(token)


_MAX_REPAIRS = 4


def _short_error(err: Mapping[str, Any]) -> str:
    loc = ".".join(str(p) for p in err.get("loc", ()) if not isinstance(p, int))
    return f"{loc or 'resource'}: {str(err.get('msg', 'invalid'))[:80]}"


def _read_straight() -> bool:
    """Whether this reading needs neither a cache key nor a size check per resource: no cache is
    kept, and every resource came in a text within the resource bound (so its work is within it)."""
    cache, sent_within = _READING.get()
    return cache.capacity == 0 and sent_within is not None and sent_within <= MAX_RESOURCE_BYTES


def ingest(raw: dict[str, Any]) -> Ingest:
    """The validated model of one resource the rules can use, or the reason it cannot be read."""
    if _read_straight():
        return _ingest(raw)
    # The serialised resource bounds the work (``MAX_RESOURCE_BYTES``) and, when a cache is kept, is
    # its key: exact, and cheap beside validation. Key order is kept as sent: an EHR resends its
    # resources byte-identical; a reordering just misses.
    try:
        key = orjson.dumps(raw)
    except TypeError:  # e.g. an integer beyond 64 bits: slower, but exact
        key = json.dumps(raw, default=repr).encode()
    if len(key) > MAX_RESOURCE_BYTES:
        return Ingest(None, reason=f"too large to read ({len(key) // 1024} KB; at most {MAX_RESOURCE_BYTES // 1024} KB)")
    cache = _READING.get()[0]
    if cache.capacity == 0:
        return _ingest(raw)
    cached = cache.get(key)
    if cached is None:
        cached = _ingest(raw)
        cache.put(key, cached)
    return cached


def _ingest(raw: dict[str, Any]) -> Ingest:
    if raw.get("resourceType") == "Observation":
        result = lab_results.from_json(raw)
        if result is not None:
            return Ingest(result)
    return _ingest_model(raw)


def _ingest_model(raw: dict[str, Any]) -> Ingest:
    """Through the model: what cannot be read straight from the JSON."""
    model, dropped, reason = validate(raw)
    if model is not None and model.get_resource_type() == "Observation":
        model = lab_results.from_model(model)
    return Ingest(model, dropped, reason)


def validate(raw: Mapping[str, Any]) -> tuple[Resource | None, tuple[str, ...], str | None]:
    """(model, elements dropped, None) or (None, elements dropped, why it cannot be read)."""
    data = adapt_shape(raw)
    rtype = data.get("resourceType")
    model = MODELS.get(rtype)  # type: ignore[arg-type]
    if model is None:
        return None, (), f"resource type {rtype} is not used"
    essential = ESSENTIAL.get(rtype, frozenset())  # type: ignore[arg-type]
    dropped = unknown_elements(data)
    for _ in range(_MAX_REPAIRS):
        try:
            return model.model_validate(data), tuple(dropped), None
        except ValidationError as exc:
            errors = exc.errors()
            # a missing required element cannot be dropped; an essential one must not be
            blocking = [e for e in errors if not e.get("loc") or e.get("type") == "missing"
                        or str(e["loc"][0]) in essential]
            if blocking:
                return None, tuple(dropped), "not valid FHIR R4: " + "; ".join(_short_error(e) for e in blocking[:2])
            if data is raw:
                data = dict(raw)  # the request's own JSON is never altered
            for name in {str(e["loc"][0]) for e in errors}:
                data.pop(name, None)
                dropped.append(name)
    return None, tuple(dropped), "not valid FHIR R4 after dropping unreadable fields"


def _names_other_patient(raw: Mapping[str, Any], patient_id: str, own_reference: str) -> bool:
    """Whether a resource's subject is another patient than ``patient_id`` (``own_reference`` is
    'Patient/<patient_id>', what nearly every resource of a record says)."""
    for name in _SUBJECT_FIELDS:
        ref = raw.get(name)
        if isinstance(ref, dict) and isinstance(ref.get("reference"), str):
            if ref["reference"] == own_reference:
                return False
            break
    subject = _subject_patient(raw)
    return subject is not None and subject != patient_id


def _subject_patient(raw: Mapping[str, Any]) -> str | None:
    """The Patient id a resource names as its subject (None: none, contained or urn)."""
    if raw.get("resourceType") == "Patient":
        rid = raw.get("id")
        return bare_id(rid) if isinstance(rid, str) else None
    for name in _SUBJECT_FIELDS:
        ref = raw.get(name)
        if isinstance(ref, dict) and isinstance(ref.get("reference"), str):
            text = ref["reference"]
            if text.startswith(("#", "urn:")):
                return None
            parts = text.split("/_history/", 1)[0].rstrip("/").split("/")
            if len(parts) >= 2 and parts[-2] == "Patient":
                return parts[-1]
    return None


# ------------------------------------------------------------------ reading


def read_resources(values: Iterable[Any], patient_id: str | None = None,
                   drafts: Iterable[dict[str, Any]] = ()) -> ReadResult:
    """Read every usable resource found in ``values`` (prefetch values, Bundles, lists) and the
    already flat ``drafts``; what is not a resource at all is listed in ``skipped``."""
    problems: list[Skipped] = []
    resources: list[dict[str, Any]] = []
    _collect(list(values), resources, problems)
    resources.extend(drafts)
    read = read_raw(resources, patient_id)
    read.skipped[:0] = problems
    return read


def read_raw(resources: Iterable[dict[str, Any]], patient_id: str | None = None) -> ReadResult:
    """Read every usable resource of an already flattened list (see ``iter_resources``).

    When the reading needs no cache key nor size check per resource (``_read_straight``), each
    resource is read without them: the question is asked once per record, not once per resource."""
    out = ReadResult()
    seen: set[tuple[str, str]] = set()
    own_reference = f"Patient/{patient_id}"
    straight = _read_straight()
    keep = out.resources.append
    by_type, by_kind, raw_ids, labels = out.by_type, out.by_kind, out.raw_ids, out.labels
    for raw in resources:
        rtype = raw.get("resourceType")
        if rtype not in RESOURCE_TYPES:
            name = rtype[:40] if isinstance(rtype, str) else "resource"
            out.skipped.append(Skipped(_label({**raw, "resourceType": name}), "not a FHIR resource type"))
            continue
        keep(raw)
        if rtype == "MedicationOrder":
            rtype = "MedicationRequest"
        relevant = RELEVANT.get(rtype)
        if relevant is None or not relevant(raw):
            continue
        rid = raw.get("id")
        if type(rid) is str and rid and "/" not in rid:
            bid = rid  # a plain id, as nearly every resource sends
        else:
            bid = bare_id(rid) if isinstance(rid, str) and rid else None
        if bid is not None:
            dedupe = (raw["resourceType"], bid or rid)
            if dedupe in seen:
                continue
            seen.add(dedupe)
        label = f"{raw['resourceType']}/{bid}" if bid is not None else f"{raw['resourceType']} (no id)"
        subject = raw.get("subject")  # 'Patient/<patient_id>', what nearly every resource says, needs no more
        if patient_id and not (type(subject) is dict and subject.get("reference") == own_reference) \
                and _names_other_patient(raw, patient_id, own_reference):
            out.skipped.append(Skipped(label, "belongs to another patient than context.patientId"))
            continue
        if straight and rtype == "Observation":  # most of a record: a result read straight is taken as it is
            model = lab_results.from_json(raw)
            item = _ingest_model(raw) if model is None else None
        else:
            item = _ingest(raw) if straight else ingest(raw)
        if item is not None:
            model = item.model
            if model is None:
                out.skipped.append(Skipped(label, item.reason or "not readable"))
                continue
            if item.dropped:
                out.notes.append(Skipped(label, "ignored unreadable field(s): " + ", ".join(sorted(item.dropped))))
        key = id(model)
        by_type.setdefault(rtype, []).append(model)
        if rtype == "Observation" and model.kind is not None:
            by_kind.setdefault(model.kind, []).append(model)
        if isinstance(rid, str):
            raw_ids[key] = rid
        labels[key] = label
    return out


_DATE_FIELDS = ("effectiveDateTime", "onsetDateTime", "recordedDate", "authoredOn", "occurrenceDateTime",
                "performedDateTime", "issued", "dateWritten", "date", "whenHandedOver", "effectiveInstant")
_PERIOD_FIELDS = ("period", "effectivePeriod", "onsetPeriod", "performedPeriod")
_UNDATED = frozenset({"Patient", "Medication", "Practitioner", "Organization"})


def _clinical_date(raw: Mapping[str, Any]) -> date | None:
    """The first clinical date of a raw resource (None for Patient, Medication and the like).

    ``ReadResult.iter_clinical_dates`` gives them for every resource read, relevant or not: they tell
    "no infections" (data in the window, none an infection) from "infection history unknown" (no
    data in the window at all) — criteria.md, rule 6.
    """
    if raw.get("resourceType") in _UNDATED:
        return None
    for name in _DATE_FIELDS:
        value = raw.get(name)
        if isinstance(value, str):
            d = _day(value)
            if d is not None:
                return d
    for name in _PERIOD_FIELDS:
        period = raw.get(name)
        if isinstance(period, dict) and isinstance(period.get("start"), str):
            d = _day(period["start"])
            if d is not None:
                return d
    return None


#: A record's results share their days (a panel of twenty labs, drawn at once).
_day = by_term(as_date)
