"""From whatever the EHR sent to validated FHIR R4 resources, or a stated reason for skipping.

The only importer of ``fhir.resources.R4B``. Real payloads are imperfect, so reading is
lenient in a bounded, reported way:

* prefetch is a bag: every resource in every value (Bundles, nested Bundles, single
  resources), plus the draft orders and resources the service fetched, de-duplicated;
* STU3/DSTU2 shapes of the elements the rules use are adapted (MedicationOrder, ``patient``,
  ``periodUnits``, ``doseQuantity`` outside ``doseAndRate``, string statuses, ``date``);
* ids such as ``Patient/x`` are cut to ``x``;
* a field the rules do not use that fails validation is dropped and the resource kept;
  a resource whose essential fields fail is skipped with the reason;
* a resource that names another patient is skipped.

Only resources the rules can use are validated at all (raw filtering first: validating every
Observation of a large record costs far more than the rest of the request), and validated
models are cached by content hash, because EHRs send the same record again and again.
"""

from __future__ import annotations

import copy
import itertools
import json
import re
from dataclasses import dataclass, field
from datetime import date
from typing import Any, Iterable, Iterator, Mapping

import orjson
from fhir.resources.R4B.condition import Condition
from fhir.resources.R4B.encounter import Encounter
from fhir.resources.R4B.immunization import Immunization
from fhir.resources.R4B.medication import Medication
from fhir.resources.R4B.medicationadministration import MedicationAdministration
from fhir.resources.R4B.medicationdispense import MedicationDispense
from fhir.resources.R4B.medicationrequest import MedicationRequest
from fhir.resources.R4B.medicationstatement import MedicationStatement
from fhir.resources.R4B.observation import Observation
from fhir.resources.R4B.patient import Patient
from fhir.resources.R4B.procedure import Procedure
from fhir.resources.R4B.servicerequest import ServiceRequest
from pydantic import ValidationError

from hooks import valuesets as vs
from hooks.classify import classify_observation, serotype_of
from hooks.lru import BoundedLRU

MODELS = {
    "Patient": Patient,
    "Observation": Observation,
    "Condition": Condition,
    "Encounter": Encounter,
    "Immunization": Immunization,
    "MedicationRequest": MedicationRequest,
    "MedicationAdministration": MedicationAdministration,
    "MedicationStatement": MedicationStatement,
    "MedicationDispense": MedicationDispense,
    "Procedure": Procedure,
    "Medication": Medication,
    "ServiceRequest": ServiceRequest,
}

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


@dataclass(frozen=True)
class Skipped:
    """A resource (or part of one) the rules could not use, and why. No patient data in it."""

    resource: str  # "Observation/abc" or "Observation (no id)"
    reason: str


@dataclass
class ReadResult:
    by_type: dict[str, list[Any]] = field(default_factory=dict)
    #: raw id of each validated model (ids can be cut or missing in the model)
    raw_ids: dict[int, str] = field(default_factory=dict)
    #: Observations grouped by what they measure (hooks/classify.py), and their serotype
    by_kind: dict[str, list[Any]] = field(default_factory=dict)
    serotypes: dict[int, str] = field(default_factory=dict)
    labels: dict[int, str] = field(default_factory=dict)
    #: clinical dates of every resource read (relevant or not), for "is there data in the window"
    clinical_dates: list[date] = field(default_factory=list)
    #: the serials of every resource read, in order: identifies the record exactly (see Ingest.serial)
    serials: list[int] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    notes: list[Skipped] = field(default_factory=list)

    def of(self, resource_type: str) -> list[Any]:
        return self.by_type.get(resource_type, [])

    def observations(self, kind: str) -> list[Any]:
        """Observations of one kind: 'IgM', 'IgG', 'IgA', 'titer', 'CD19', ..., 'weight'."""
        return self.by_kind.get(kind, [])

    def serotype(self, obs: Any) -> str | None:
        return self.serotypes.get(id(obs))

    def raw_id(self, model: Any) -> str | None:
        return self.raw_ids.get(id(model))

    def label(self, model: Any) -> str | None:
        """'Observation/abc' as the EHR named it (for cards and the delete action's resourceId)."""
        return self.labels.get(id(model))


# ------------------------------------------------------------------ collecting


def iter_resources(value: Any, depth: int = 0) -> Iterator[dict[str, Any]]:
    """Every resource in a prefetch value: a resource, a Bundle (entries, nested Bundles), a list."""
    if depth > 6:
        return
    if isinstance(value, list):
        for item in value:
            yield from iter_resources(item, depth + 1)
        return
    if not isinstance(value, dict):
        return
    rtype = value.get("resourceType")
    if rtype == "Bundle":
        entries = value.get("entry")
        if isinstance(entries, list):
            for entry in entries:
                if isinstance(entry, dict):
                    resource = entry.get("resource")
                    if isinstance(resource, dict) and resource.get("resourceType") != "Bundle":
                        if isinstance(resource.get("resourceType"), str):
                            yield resource
                    else:
                        yield from iter_resources(resource, depth + 1)
        return
    if isinstance(rtype, str):
        yield value


def bare_id(reference: Any) -> str | None:
    """'Patient/123', 'https://x/fhir/Patient/123/_history/2' and '123' -> '123'."""
    if not isinstance(reference, str) or not reference:
        return None
    text = reference.split("/_history/", 1)[0].rstrip("/")
    return text.rsplit("/", 1)[-1]


def _label(raw: Mapping[str, Any]) -> str:
    rid = raw.get("id")
    return f"{raw.get('resourceType')}/{bare_id(rid)}" if isinstance(rid, str) and rid else f"{raw.get('resourceType')} (no id)"


# ------------------------------------------------------------------ relevance (raw, cheap)


def _texts_and_codes(concept: Any) -> tuple[list[str], list[tuple[str, str]]]:
    texts: list[str] = []
    codes: list[tuple[str, str]] = []
    if isinstance(concept, dict):
        if isinstance(concept.get("text"), str):
            texts.append(concept["text"])
        codings = concept.get("coding")
        for coding in codings if isinstance(codings, list) else ():
            if isinstance(coding, dict):
                if isinstance(coding.get("display"), str):
                    texts.append(coding["display"])
                if isinstance(coding.get("code"), str):
                    codes.append((str(coding.get("system") or ""), coding["code"]))
    return texts, codes


_OBS_LOINC = (vs.LOINC_IGG | vs.LOINC_IGM | vs.LOINC_IGA | vs.LOINC_IGG_SUBCLASSES | vs.LOINC_LYMPHOCYTE_SUBSETS
              | vs.LOINC_BODY_WEIGHT)
_OBS_TEXT = re.compile(
    r"\big[gma]\b|immunoglobulin|pneumo|cd\s?19|cd\s?4\b|cd\s?8\b|memory\s*b|weight", re.IGNORECASE)


def observation_may_matter(raw: Mapping[str, Any]) -> bool:
    texts, codes = _texts_and_codes(raw.get("code"))
    if any(code in _OBS_LOINC for _, code in codes):
        return True
    return any(_OBS_TEXT.search(t) for t in texts)


_CONDITION_SETS = (vs.SEVERE_INFECTIONS, vs.LIFE_THREATENING_INFECTIONS, vs.ENCAPSULATED_ORGANISM_INFECTIONS,
                   vs.MINOR_INFECTIONS, vs.IMMUNODEFICIENCY, vs.OTHER_IVIG_INDICATIONS)


def concept_matches(concept: Any, *valuesets: vs.ValueSet) -> bool:
    texts, codes = _texts_and_codes(concept)
    for valueset in valuesets:
        if any(vs.coding_in(valueset, system, code) for system, code in codes):
            return True
        if any(vs.text_in(valueset, t) for t in texts):
            return True
    return False


def condition_may_matter(raw: Mapping[str, Any]) -> bool:
    return concept_matches(raw.get("code"), *_CONDITION_SETS)


def _medication_concept_may_matter(concept: Any) -> bool:
    texts, codes = _texts_and_codes(concept)
    if any(vs.coding_in(vs.IMMUNE_GLOBULIN_HCPCS, s, c) for s, c in codes):
        return True
    return any(vs.TEXT_IMMUNE_GLOBULIN.search(t) for t in texts)


def medication_use_may_matter(raw: Mapping[str, Any]) -> bool:
    """Immune globulin by code/text, or a reference to a Medication we must look at."""
    if _medication_concept_may_matter(raw.get("medicationCodeableConcept")):
        return True
    return isinstance(raw.get("medicationReference"), dict)


def procedure_may_matter(raw: Mapping[str, Any]) -> bool:
    texts, _ = _texts_and_codes(raw.get("code"))
    return any(vs.TEXT_IVIG_PROCEDURE.search(t) for t in texts)


RELEVANT = {
    "Patient": lambda raw: True,
    "Observation": observation_may_matter,
    "Condition": condition_may_matter,
    "Encounter": lambda raw: True,
    "Immunization": lambda raw: True,
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
        dosage.setdefault("doseAndRate", []).append(moved)
    return dosage


def adapt_shape(raw: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``raw`` in R4 shape where STU3/DSTU2 differ in elements the rules read."""
    res = copy.deepcopy(dict(raw))
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


# ------------------------------------------------------------------ validation with a cache


#: Ingested resources by their serialised form. A validated model with its key costs ~12 KB, so
#: the default 4 000 entries is ~50 MB per worker; the service sets the bound from its settings.
MODEL_CACHE: BoundedLRU[bytes, "Ingest"] = BoundedLRU(capacity=4000)
_MAX_REPAIRS = 4


def _short_error(err: Mapping[str, Any]) -> str:
    loc = ".".join(str(p) for p in err.get("loc", ()) if not isinstance(p, int))
    return f"{loc or 'resource'}: {str(err.get('msg', 'invalid'))[:80]}"


@dataclass(frozen=True, slots=True)
class Ingest:
    """Everything about one raw resource that does not depend on the request: computed once per
    distinct resource and cached, so a resent record costs a serialisation and a lookup."""

    #: never reused: a resource evicted and read again gets a new one (memo keys rely on it)
    serial: int
    rtype: str
    relevant: bool
    dedupe: tuple[str, str] | None
    #: the Patient id the resource names as its subject (None: none, contained or urn)
    subject: str | None
    label: str
    raw_id: str | None
    clinical_date: "date | None"
    model: Any | None = None
    dropped: tuple[str, ...] = ()
    reason: str | None = None
    kind: str | None = None
    serotype: str | None = None


def _subject_patient(raw: Mapping[str, Any]) -> str | None:
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


_SERIALS = itertools.count(1)


def ingest(raw: dict[str, Any]) -> Ingest:
    """The cached ingest of one raw resource (validated only when the rules can use it)."""
    # The serialised resource itself is the key: exact (no hash collisions), and cheap. Key
    # order is kept as sent: an EHR resends its resources byte-identical; a reordering just misses.
    try:
        key = orjson.dumps(raw)
    except TypeError:  # e.g. an integer beyond 64 bits: slower, but exact
        key = json.dumps(raw, default=repr).encode()
    cached = MODEL_CACHE.get(key)
    if cached is not None:
        return cached
    rtype = raw.get("resourceType")
    rtype = "MedicationRequest" if rtype == "MedicationOrder" else str(rtype)
    relevant_check = RELEVANT.get(rtype)
    relevant = relevant_check is not None and bool(relevant_check(raw))
    rid = raw.get("id")
    base = dict(serial=next(_SERIALS), rtype=rtype, relevant=relevant, dedupe=_dedupe_key(raw), subject=_subject_patient(raw),
                label=_label(raw), raw_id=rid if isinstance(rid, str) else None, clinical_date=_clinical_date(raw))
    if not relevant:
        result = Ingest(**base)
    else:
        model, dropped, reason = _validate_uncached(raw)
        kind = serotype = None
        if model is not None and model.get_resource_type() == "Observation":
            kind = classify_observation(model)
            serotype = serotype_of(model) if kind == "titer" else None
        result = Ingest(**base, model=model, dropped=dropped, reason=reason, kind=kind, serotype=serotype)
    MODEL_CACHE.put(key, result)
    return result


def _validate_uncached(raw: Mapping[str, Any]) -> tuple[Any | None, tuple[str, ...], str | None]:
    data = adapt_shape(raw)
    rtype = data.get("resourceType")
    model = MODELS.get(rtype)  # type: ignore[arg-type]
    if model is None:
        return None, (), f"resource type {rtype} is not used"
    essential = ESSENTIAL.get(rtype, frozenset())
    dropped: list[str] = []
    for _ in range(_MAX_REPAIRS):
        try:
            return model.model_validate(data), tuple(dropped), None
        except ValidationError as exc:
            errors = exc.errors()
            fields = {str(e["loc"][0]) for e in errors if e.get("loc")}
            blocking = [e for e in errors if not e.get("loc") or str(e["loc"][0]) in essential
                        or str(e["loc"][0]) == "resourceType"]
            if blocking:
                return None, tuple(dropped), "not valid FHIR R4: " + "; ".join(_short_error(e) for e in blocking[:2])
            for name in fields:
                data.pop(name, None)
                dropped.append(name)
        except (TypeError, ValueError) as exc:  # pragma: no cover - pydantic wraps nearly everything
            return None, tuple(dropped), f"not readable: {type(exc).__name__}"
    return None, tuple(dropped), "not valid FHIR R4 after dropping unreadable fields"


def _dedupe_key(raw: Mapping[str, Any]) -> tuple[str, str] | None:
    rid = raw.get("id")
    if isinstance(rid, str) and rid:
        return (str(raw.get("resourceType")), bare_id(rid) or rid)
    return None


def read_resources(values: Iterable[Any], patient_id: str | None = None) -> ReadResult:
    """Validate every usable resource found in ``values`` (prefetch values, Bundles, lists)."""
    return read_raw(iter_resources(list(values)), patient_id)


def read_raw(resources: Iterable[dict[str, Any]], patient_id: str | None = None) -> ReadResult:
    """Validate every usable resource of an already flattened list (see ``iter_resources``)."""
    out = ReadResult()
    seen: set[tuple[str, str]] = set()
    for raw in resources:
        item = ingest(raw)
        out.serials.append(item.serial)
        if item.clinical_date is not None:
            out.clinical_dates.append(item.clinical_date)
        if not item.relevant:
            continue
        if item.dedupe is not None:
            if item.dedupe in seen:
                continue
            seen.add(item.dedupe)
        if patient_id and item.subject is not None and item.subject != patient_id:
            out.skipped.append(Skipped(item.label, "belongs to another patient than context.patientId"))
            continue
        model = item.model
        if model is None:
            out.skipped.append(Skipped(item.label, item.reason or "not readable"))
            continue
        if item.dropped:
            out.notes.append(Skipped(item.label, "ignored unreadable field(s): " + ", ".join(sorted(item.dropped))))
        out.by_type.setdefault(item.rtype, []).append(model)
        if item.kind is not None:
            out.by_kind.setdefault(item.kind, []).append(model)
            if item.serotype is not None:
                out.serotypes[id(model)] = item.serotype
        if item.raw_id is not None:
            out.raw_ids[id(model)] = item.raw_id
        out.labels[id(model)] = item.label
    return out

_DATE_FIELDS = ("effectiveDateTime", "onsetDateTime", "recordedDate", "authoredOn", "occurrenceDateTime",
                "performedDateTime", "issued", "dateWritten", "date", "whenHandedOver", "effectiveInstant")
_PERIOD_FIELDS = ("period", "effectivePeriod", "onsetPeriod", "performedPeriod")


def _clinical_date(raw: Mapping[str, Any]) -> date | None:
    """The first clinical date of a raw resource (None for Patient, Medication and the like).

    ``ReadResult.clinical_dates`` collects them for every resource read, relevant or not: they tell
    "no infections" (data in the window, none an infection) from "infection history unknown" (no
    data in the window at all) — criteria.md, rule 6.
    """
    from hooks.dates import as_date  # noqa: PLC0415

    if raw.get("resourceType") in ("Patient", "Medication", "Practitioner", "Organization"):
        return None
    for name in _DATE_FIELDS:
        value = raw.get(name)
        if isinstance(value, str):
            d = as_date(value)
            if d is not None:
                return d
    for name in _PERIOD_FIELDS:
        period = raw.get(name)
        if isinstance(period, dict) and isinstance(period.get("start"), str):
            d = as_date(period["start"])
            if d is not None:
                return d
    return None
