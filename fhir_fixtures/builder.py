"""A few lines per clinical situation -> a realistic FHIR R4 record.

    rec = Record("iso-1", birth="1981-03-02")
    rec.igm(32, when=ago(days=20)).igg(850, when=ago(days=20)).ppsv23_challenge(protective=20)
    rec.sinusitis(ago(months=3))
    bundle = rec.bundle()

Dates are written relative to ``REFERENCE_TODAY`` (the day the scenarios are evaluated on);
``shift_dates`` moves a whole record so that it is as recent relative to another day.
"""

from __future__ import annotations

import copy
import re
from datetime import date, timedelta
from typing import Any

from hooks import valuesets as vs
from hooks.dates import add_months

REFERENCE_TODAY = date(2026, 11, 24)
LOINC = vs.LOINC
UCUM = vs.UCUM
ICD = vs.ICD10CM
SNOMED = vs.SNOMED
HCPCS = "http://www.cms.gov/Medicare/Coding/HCPCSReleaseCodeSets"

LAB_CODES = {
    "IgM": ("2472-9", "IgM [Mass/volume] in Serum"),
    "IgG": ("2465-3", "IgG [Mass/volume] in Serum"),
    "IgA": ("2458-8", "IgA [Mass/volume] in Serum"),
    "CD19": ("8116-6", "CD19 cells [#/volume] in Blood"),
    "CD4": ("24467-3", "CD4 cells [#/volume] in Blood"),
    "CD8": ("14135-8", "CD8 cells [#/volume] in Blood"),
    "weight": ("29463-7", "Body weight"),
}


def ago(days: int = 0, months: int = 0, today: date = REFERENCE_TODAY) -> str:
    """An ISO date ``months`` and ``days`` before ``today``."""
    return (add_months(today, -months) - timedelta(days=days)).isoformat()


def coding(system: str, code: str, display: str) -> dict[str, Any]:
    return {"system": system, "code": code, "display": display}


class Record:
    """One patient's record, built up fluently; ``bundle()`` gives the FHIR Bundle."""

    def __init__(self, patient_id: str, birth: str = "1979-06-15", gender: str = "female",
                 name: tuple[str, str] = ("Test", "Patient")) -> None:
        self.patient_id = patient_id
        self.resources: list[dict[str, Any]] = [{
            "resourceType": "Patient",
            "id": patient_id,
            "name": [{"family": name[1], "given": [name[0]]}],
            "gender": gender,
            "birthDate": birth,
        }]
        self._n = 0

    # -- ids and references
    def _id(self, kind: str) -> str:
        self._n += 1
        return f"{self.patient_id}-{kind}-{self._n}"

    @property
    def subject(self) -> dict[str, str]:
        return {"reference": f"Patient/{self.patient_id}"}

    def add(self, resource: dict[str, Any]) -> "Record":
        self.resources.append(resource)
        return self

    # -- laboratory
    def lab(self, analyte: str, value: float | None, unit: str = "mg/dL", when: str = "", *,
            ref: tuple[float | None, float | None] | None = None, flag: str | None = None,
            comparator: str | None = None, status: str = "final", code: str | None = None,
            text: str | None = None, value_string: str | None = None,
            absent: str | None = None) -> "Record":
        """One result; ``absent`` (a dataAbsentReason code) instead of a value: the lab has none."""
        loinc = LAB_CODES.get(analyte)
        concept: dict[str, Any] = {}
        if code is not False and loinc and code is None:
            concept["coding"] = [coding(LOINC, *loinc)]
        elif code:
            concept["coding"] = [coding(LOINC, code, text or analyte)]
        if text:
            concept["text"] = text
        obs: dict[str, Any] = {
            "resourceType": "Observation",
            "id": self._id(analyte.lower().replace(" ", "")),
            "status": status,
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                      "code": "laboratory"}]}],
            "code": concept,
            "subject": self.subject,
            "effectiveDateTime": when or ago(days=14),
        }
        if absent is not None:
            obs["dataAbsentReason"] = {"coding": [{
                "system": "http://terminology.hl7.org/CodeSystem/data-absent-reason", "code": absent}]}
        elif value_string is not None:
            obs["valueString"] = value_string
        elif value is not None:
            q: dict[str, Any] = {"value": value, "unit": unit, "system": UCUM, "code": unit}
            if comparator:
                q["comparator"] = comparator
            obs["valueQuantity"] = q
        if ref:
            rr: dict[str, Any] = {}
            if ref[0] is not None:
                rr["low"] = {"value": ref[0], "unit": unit, "system": UCUM, "code": unit}
            if ref[1] is not None:
                rr["high"] = {"value": ref[1], "unit": unit, "system": UCUM, "code": unit}
            obs["referenceRange"] = [rr]
        if flag:
            obs["interpretation"] = [{"coding": [{
                "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation", "code": flag}]}]
        return self.add(obs)

    def igm(self, value: float, unit: str = "mg/dL", when: str = "", **kw) -> "Record":
        return self.lab("IgM", value, unit, when, **kw)

    def igg(self, value: float, unit: str = "mg/dL", when: str = "", **kw) -> "Record":
        return self.lab("IgG", value, unit, when, **kw)

    def iga(self, value: float, unit: str = "mg/dL", when: str = "", **kw) -> "Record":
        return self.lab("IgA", value, unit, when, **kw)

    def weight(self, kg: float, when: str = "", unit: str = "kg") -> "Record":
        return self.lab("weight", kg, unit, when or ago(days=10))

    def lymphocyte_subsets(self, when: str = "") -> "Record":
        when = when or ago(months=2)
        for analyte, value in (("CD19", 250), ("CD4", 800), ("CD8", 450)):
            self.lab(analyte, value, "/uL", when)
        return self.lab("memory B", 12, "%", when, code=False, text="Switched memory B cells (CD19+CD27+IgD-)")

    # -- pneumococcal
    def ppsv23(self, when: str) -> "Record":
        return self.add({
            "resourceType": "Immunization",
            "id": self._id("ppsv23"),
            "status": "completed",
            "vaccineCode": {"coding": [coding(vs.CVX, "33", "pneumococcal polysaccharide PPV23")]},
            "patient": self.subject,
            "occurrenceDateTime": when,
        })

    def titers(self, when: str, protective: int, tested: int = 23, high: float = 2.6, low: float = 0.4,
               unit: str = "ug/mL") -> "Record":
        """``tested`` serotype titers on ``when``, the first ``protective`` of them >= 1.3 ug/mL."""
        for i, serotype in enumerate(vs.PPSV23_SEROTYPES[:tested]):
            value = high if i < protective else low
            self.lab("titer", value, unit, when,
                     text=f"Streptococcus pneumoniae Danish serotype {serotype} IgG Ab [Mass/volume] in Serum",
                     code=False)
        return self

    def ppsv23_challenge(self, protective_post: int, *, vaccinated: str | None = None, pre_protective: int = 4,
                         post_days: int = 35, tested: int = 23, pre: bool = True) -> "Record":
        """A complete challenge: pre titers, PPSV23, post titers ``post_days`` later."""
        vaccinated = vaccinated or ago(months=4)
        vdate = date.fromisoformat(vaccinated)
        if pre:
            self.titers((vdate - timedelta(days=7)).isoformat(), pre_protective, tested)
        self.ppsv23(vaccinated)
        return self.titers((vdate + timedelta(days=post_days)).isoformat(), protective_post, tested)

    # -- infections
    def condition(self, code: str, display: str, when: str, system: str = ICD, *, encounter: str | None = None,
                  clinical_status: str = "resolved", verification: str = "confirmed") -> "Record":
        cond: dict[str, Any] = {
            "resourceType": "Condition",
            "id": self._id("cond"),
            "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                                           "code": clinical_status}]},
            "verificationStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-ver-status",
                                               "code": verification}]},
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-category",
                                      "code": "encounter-diagnosis"}]}],
            "code": {"coding": [coding(system, code, display)], "text": display},
            "subject": self.subject,
            "onsetDateTime": when,
            "recordedDate": when,
        }
        if encounter:
            cond["encounter"] = {"reference": f"Encounter/{encounter}"}
        return self.add(cond)

    def admission(self, when: str, days: int = 4, icu: bool = False) -> str:
        enc_id = self._id("enc")
        start = date.fromisoformat(when)
        enc: dict[str, Any] = {
            "resourceType": "Encounter",
            "id": enc_id,
            "status": "finished",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP",
                      "display": "inpatient encounter"},
            "subject": self.subject,
            "period": {"start": when, "end": (start + timedelta(days=days)).isoformat()},
        }
        if icu:
            enc["location"] = [{"location": {"display": "Medical intensive care unit (ICU)"}}]
        self.add(enc)
        return enc_id

    def infection(self, code: str, display: str, when: str, *, hospitalised: bool = False, icu: bool = False,
                  system: str = ICD, clinical_status: str = "resolved") -> "Record":
        enc = self.admission(when, icu=icu) if (hospitalised or icu) else None
        return self.condition(code, display, when, system, encounter=enc, clinical_status=clinical_status)

    def pneumonia(self, when: str, code: str = "J18.9", display: str = "Pneumonia, unspecified organism",
                  hospitalised: bool = True, **kw) -> "Record":
        return self.infection(code, display, when, hospitalised=hospitalised, **kw)

    def sinusitis(self, when: str) -> "Record":
        return self.infection("J01.90", "Acute sinusitis, unspecified", when)

    def otitis(self, when: str) -> "Record":
        return self.infection("H66.90", "Otitis media, unspecified, unspecified ear", when)

    def uri(self, when: str) -> "Record":
        return self.infection("J06.9", "Acute upper respiratory infection, unspecified", when)

    def office_visit(self, when: str) -> "Record":
        """Clinical data that is not an infection (so 'no infections' is known, not missing)."""
        return self.add({
            "resourceType": "Encounter", "id": self._id("visit"), "status": "finished",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB",
                      "display": "ambulatory"},
            "subject": self.subject, "period": {"start": when, "end": when},
        })

    def diagnosis(self, code: str, display: str, when: str, system: str = ICD, clinical_status: str = "active") -> "Record":
        return self.condition(code, display, when, system, clinical_status=clinical_status)

    # -- immune globulin history
    def ivig_given(self, when: str, product: str = "Privigen", hcpcs: str = "J1459", grams: float = 35,
                   at: str | None = None) -> "Record":
        """An infusion on ``when`` (at the time ``at``, 'HH:MM', when given)."""
        if at:
            when = f"{when}T{at}:00Z"
        return self.add({
            "resourceType": "MedicationAdministration",
            "id": self._id("ivig"),
            "status": "completed",
            "medicationCodeableConcept": {"coding": [coding(HCPCS, hcpcs, f"{product} (immune globulin)")],
                                          "text": f"{product} immune globulin intravenous 10%"},
            "subject": self.subject,
            "effectiveDateTime": when,
            "dosage": {"dose": {"value": grams, "unit": "g", "system": UCUM, "code": "g"}},
        })

    def ivig_every(self, first: str, last: str, weeks: int = 4, *, on: str | None = None, **kw) -> "Record":
        """Infusions every ``weeks`` between ``first`` and ``last``, falling on ``on`` (default:
        ``last``), so that a trough can be drawn on an infusion day (see ``infusion_days``)."""
        start, end = date.fromisoformat(first), date.fromisoformat(last)
        anchor = date.fromisoformat(on or last)
        step = timedelta(weeks=weeks)
        day = anchor - step * ((anchor - start) // step)
        while day <= end:
            self.ivig_given(day.isoformat(), **kw)
            day += step
        return self

    def infusion_days(self) -> list[str]:
        """The dates of the immune globulin infusions on record, latest first."""
        return sorted((r["effectiveDateTime"][:10] for r in self.resources
                       if r["resourceType"] == "MedicationAdministration"), reverse=True)

    def active_ivig_order(self, authored: str, **kw) -> "Record":
        order = ivig_order(self.patient_id, status="active", **kw)
        order["id"] = self._id("ivig-order")
        order["authoredOn"] = authored
        return self.add(order)

    def bundle(self) -> dict[str, Any]:
        return {"resourceType": "Bundle", "type": "collection",
                "entry": [{"fullUrl": f"urn:uuid:{r['resourceType']}-{r['id']}", "resource": r}
                          for r in self.resources]}


def ivig_order(patient_id: str, order_id: str = "ivig-draft-1", *, dose: float | None = 0.5, unit: str = "g/kg",
               every_weeks: float | None = 4, product: str = "Privigen", hcpcs: str | None = "J1459",
               text: str | None = None, reason: tuple[str, str, str] | None = None, status: str = "draft",
               via: str = "concept", repeat: dict[str, Any] | None = None,
               dosage_text: str = "IV infusion") -> dict[str, Any]:
    """A MedicationRequest for immune globulin; ``via``: concept | contained | reference."""
    concept: dict[str, Any] = {"text": text or f"{product} (immune globulin intravenous, human) 10% solution"}
    if hcpcs:
        concept["coding"] = [coding(HCPCS, hcpcs, f"{product} (immune globulin)")]
    order: dict[str, Any] = {
        "resourceType": "MedicationRequest",
        "id": order_id,
        "status": status,
        "intent": "order",
        "subject": {"reference": f"Patient/{patient_id}"},
        "authoredOn": REFERENCE_TODAY.isoformat(),
    }
    if via == "concept":
        order["medicationCodeableConcept"] = concept
    elif via == "contained":
        order["contained"] = [{"resourceType": "Medication", "id": "med", "code": concept}]
        order["medicationReference"] = {"reference": "#med"}
    else:
        order["medicationReference"] = {"reference": f"Medication/{via}"}
    dosage: dict[str, Any] = {"text": dosage_text}
    if repeat is not None:
        dosage["timing"] = {"repeat": repeat}
    elif every_weeks:
        dosage["timing"] = {"repeat": {"frequency": 1, "period": every_weeks, "periodUnit": "wk"}}
    if dose is not None:
        dosage["doseAndRate"] = [{"doseQuantity": {"value": dose, "unit": unit, "system": UCUM, "code": unit}}]
    order["dosageInstruction"] = [dosage]
    if reason:
        order["reasonCode"] = [{"coding": [coding(*reason)], "text": reason[2]}]
    return order


def medication(med_id: str, product: str = "Gammagard Liquid", hcpcs: str | None = "J1569") -> dict[str, Any]:
    code: dict[str, Any] = {"text": f"{product} (immune globulin infusion, human) 10%"}
    if hcpcs:
        code["coding"] = [coding(HCPCS, hcpcs, f"{product} (immune globulin)")]
    return {"resourceType": "Medication", "id": med_id, "code": code}


def amoxicillin_order(patient_id: str, order_id: str = "amox-draft-1") -> dict[str, Any]:
    return {
        "resourceType": "MedicationRequest", "id": order_id, "status": "draft", "intent": "order",
        "subject": {"reference": f"Patient/{patient_id}"},
        "medicationCodeableConcept": {"coding": [coding(vs.RXNORM, "308191", "Amoxicillin 500 MG Oral Capsule")],
                                      "text": "Amoxicillin 500 mg capsule"},
        "dosageInstruction": [{"text": "500 mg three times daily for 7 days"}],
    }


def draft_orders(*orders: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": o} for o in orders]}


_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}")


def shift_dates(value: Any, days: int) -> Any:
    """Every date and dateTime in a resource tree moved by ``days`` (birth dates too: ages stay)."""
    if days == 0:
        return copy.deepcopy(value)
    if isinstance(value, dict):
        return {k: shift_dates(v, days) for k, v in value.items()}
    if isinstance(value, list):
        return [shift_dates(v, days) for v in value]
    if isinstance(value, str) and _DATE.match(value) and len(value) in (10, 19, 20, 24, 25, 29):
        try:
            moved = date.fromisoformat(value[:10]) + timedelta(days=days)
        except ValueError:
            return value
        return moved.isoformat() + value[10:]
    return value
