"""The FHIR data every IVIG service asks for: its prefetch templates and which keys are essential.

One definition shared by the three hooks, so discovery, prefetch completion and the rules agree
on what "the patient's data" is. Query codes come from the value sets, never typed twice.
"""

from __future__ import annotations

from hooks import valuesets as vs

_LOINC = "http://loinc.org"


def _codes(*groups: frozenset[str]) -> str:
    return ",".join(f"{_LOINC}|{code}" for group in groups for code in sorted(group))


#: key -> FHIR query template (CDS Hooks 2.0.1 prefetch tokens)
PREFETCH: dict[str, str] = {
    "patient": "Patient/{{context.patientId}}",
    "immunoglobulins": (
        "Observation?patient={{context.patientId}}&code="
        + _codes(vs.LOINC_IGG, vs.LOINC_IGM, vs.LOINC_IGA, vs.LOINC_IGG_SUBCLASSES, vs.LOINC_LYMPHOCYTE_SUBSETS)
        + "&_count=200"
    ),
    "pneumococcalTiters": "Observation?patient={{context.patientId}}&code:text=Streptococcus%20pneumoniae&_count=200",
    "weight": "Observation?patient={{context.patientId}}&code=" + _codes(vs.LOINC_BODY_WEIGHT) + "&_sort=-date&_count=1",
    "conditions": "Condition?patient={{context.patientId}}&_count=200",
    "encounters": "Encounter?patient={{context.patientId}}&_sort=-date&_count=100",
    "immunizations": "Immunization?patient={{context.patientId}}&_count=100",
    "medicationRequests": "MedicationRequest?patient={{context.patientId}}&_count=200",
    "medicationAdministrations": "MedicationAdministration?patient={{context.patientId}}&_count=200",
    "procedures": "Procedure?patient={{context.patientId}}&_count=200",
}

#: Without these no decision is possible: missing and not fetchable -> 412.
REQUIRED: frozenset[str] = frozenset({"patient", "immunoglobulins"})

USAGE = (
    "Needs the patient's Ig levels, pneumococcal titers, weight, Conditions, Encounters, Immunizations and "
    "immune globulin history: send the prefetch keys, or fhirServer + fhirAuthorization with read access to "
    "Patient, Observation, Condition, Encounter, Immunization, MedicationRequest, MedicationAdministration, "
    "Procedure and Medication. Missing data is read from fhirServer; without it the answer is 412."
)
