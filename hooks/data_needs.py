"""The FHIR data every IVIG service asks for: its prefetch templates and which keys are essential.

One definition shared by the three hooks, so discovery, prefetch completion and the rules agree
on what "the patient's data" is. Query codes come from the value sets, never typed twice.

Every template uses only what CDS Hooks 2.0.1 recommends a prefetch query use, so that an EHR
can fulfil it: instance reads, ``patient``, token searches by ``system|code`` (equality), ``_count``
and ``_sort``; no modifiers such as ``code:text`` that EHRs and the CDS Hooks Sandbox reject. What
text recognition remains applies to the resources as they arrive, never to the query.
"""

from __future__ import annotations

from hooks import valuesets as vs

_LOINC = "http://loinc.org"


def _codes(*groups: frozenset[str]) -> str:
    return ",".join(f"{_LOINC}|{code}" for group in groups for code in sorted(group))


def _pneumococcal_titers() -> str:
    """The serotype IgG titers by their LOINC codes; while the value set holds no code (see
    hooks/valuesets.py), the patient's laboratory results, among which titers are found by text."""
    if vs.LOINC_PNEUMOCOCCAL_SEROTYPES:
        return ("Observation?patient={{context.patientId}}&code=" + _codes(vs.LOINC_PNEUMOCOCCAL_SEROTYPES)
                + "&_count=200")
    return "Observation?patient={{context.patientId}}&category=laboratory&_count=200"


#: key -> FHIR query template (CDS Hooks 2.0.1 prefetch tokens)
PREFETCH: dict[str, str] = {
    "patient": "Patient/{{context.patientId}}",
    "immunoglobulins": (
        "Observation?patient={{context.patientId}}&code="
        + _codes(vs.LOINC_IGG, vs.LOINC_IGM, vs.LOINC_IGA, vs.LOINC_IGG_SUBCLASSES, vs.LOINC_LYMPHOCYTE_SUBSETS)
        + "&_count=200"
    ),
    "pneumococcalTiters": _pneumococcal_titers(),
    # the latest few, not one: an impossible latest weight (3 kg for an adult) must not hide the one before it
    "weight": "Observation?patient={{context.patientId}}&code=" + _codes(vs.LOINC_BODY_WEIGHT) + "&_sort=-date&_count=5",
    "conditions": "Condition?patient={{context.patientId}}&_count=200",
    "encounters": "Encounter?patient={{context.patientId}}&_sort=-date&_count=100",
    "immunizations": "Immunization?patient={{context.patientId}}&_count=100",
    "medicationRequests": "MedicationRequest?patient={{context.patientId}}&_count=200",
    "medicationAdministrations": "MedicationAdministration?patient={{context.patientId}}&_count=200",
    "procedures": "Procedure?patient={{context.patientId}}&_count=200",
}

#: Without these no decision is possible: missing and not fetchable -> 412.
REQUIRED: frozenset[str] = frozenset({"patient", "immunoglobulins"})

#: key -> what the rules use it for (published in discovery, so an EHR knows what each key feeds)
PURPOSE: dict[str, str] = {
    "patient": "age, for the age-specific IgM, IgG and titer thresholds",
    "immunoglobulins": "serum IgG, IgM, IgA, IgG subclasses and lymphocyte subsets (LOINC), the levels the decision "
                       "rests on",
    "pneumococcalTiters": "pneumococcal serotype IgG titers before and after PPSV23, for the vaccine response"
                          + ("" if vs.LOINC_PNEUMOCOCCAL_SEROTYPES else
                             " (asked as the laboratory results, in which the titers are found by their text)"),
    "weight": "the latest body weights, for the dose per kg (a few, so that an impossible latest one does not "
              "hide the one before it)",
    "conditions": "infections (severity, encapsulated organisms) and other IVIG indications",
    "encounters": "hospital and intensive-care admissions, for infection severity",
    "immunizations": "the PPSV23 dose the titers are judged against",
    "medicationRequests": "immune globulin orders, for treatment status, dose and interval",
    "medicationAdministrations": "immune globulin doses given, for the first dose, interval and trough timing",
    "procedures": "immune globulin infusions recorded as procedures",
}

USAGE = (
    "Needs the patient's Ig levels, pneumococcal titers, weight, Conditions, Encounters, Immunizations and "
    "immune globulin history: send the prefetch keys, or fhirServer + fhirAuthorization with read access to "
    "Patient, Observation, Condition, Encounter, Immunization, MedicationRequest, MedicationAdministration, "
    "Procedure and Medication. Missing data is read from fhirServer; without it the answer is 412. "
    "What each prefetch key is for: " + "; ".join(f"{key} ({PURPOSE[key]})" for key in PREFETCH) + "."
)
