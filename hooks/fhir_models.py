"""The FHIR R4 elements the rules read, as small validated models.

Each model carries the elements hooks/facts.py, orders.py, classify.py, lab_results.py and
rules.py read, under the attribute names and with the value types of ``fhir.resources.R4B``
(``class_fhir`` for ``class``, ``Decimal`` quantities, timezone-aware ``datetime`` where FHIR
gives a time, ``date`` where it gives a day, the text itself for a partial date such as
``2026-03``), so the fact extraction reads either kind of model alike. Primitive values are checked against FHIR's
formats (a dateTime with a time needs its zone; a code holds no leading, trailing or double
spaces; a decimal is a number or a decimal string, never a boolean); an element that fails
raises, and hooks/fhir_read.py decides whether the resource survives without it.

Why not ``fhir.resources`` itself on the hot path: it validates every element of every resource
(null checks, one-of-many checks, copies), which made a chart's record cost tens of milliseconds;
these models validate the few elements the rules read, in pydantic's core, and ignore the rest.
``fhir.resources`` stays the model of record: ``ivig-cds evaluate --strict`` and the tests
validate with it, and tests/test_fhir_models.py checks these models' names against it.
"""

from __future__ import annotations

import functools
import re
from datetime import date, datetime
from decimal import Decimal
from typing import Annotated, Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, PlainValidator, StringConstraints, model_validator

# ------------------------------------------------------------------ primitives

_DATE = re.compile(r"([0-9]([0-9]([0-9][1-9]|[1-9]0)|[1-9]00)|[1-9]000)(-(0[1-9]|1[0-2])(-(0[1-9]|[1-2][0-9]|3[0-1]))?)?")
_DATETIME = re.compile(
    r"([0-9]([0-9]([0-9][1-9]|[1-9]0)|[1-9]00)|[1-9]000)(-(0[1-9]|1[0-2])(-(0[1-9]|[1-2][0-9]|3[0-1])"
    r"(T([01][0-9]|2[0-3]):[0-5][0-9]:([0-5][0-9]|60)(\.[0-9]+)?(Z|([+\-])((0[0-9]|1[0-3]):[0-5][0-9]|14:00)))?)?)?")
_INSTANT = re.compile(
    r"([0-9]([0-9]([0-9][1-9]|[1-9]0)|[1-9]00)|[1-9]000)-(0[1-9]|1[0-2])-(0[1-9]|[1-2][0-9]|3[0-1])"
    r"T([01][0-9]|2[0-3]):[0-5][0-9]:([0-5][0-9]|60)(\.[0-9]+)?(Z|([+\-])((0[0-9]|1[0-3]):[0-5][0-9]|14:00))")


def _calendar_date(text: str) -> date | str:
    """A full date as ``date``; a year or year-month stays text (as fhir.resources keeps it)."""
    if len(text) < 10:
        return text
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise ValueError("not a calendar date") from None


def _with_time(text: str) -> datetime | str:
    if ":60" in text[17:20]:
        return text  # a leap second has no datetime: kept as text, as fhir.resources does
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        raise ValueError("not a calendar date and time") from None


def _fhir_date(value: Any) -> date | str:
    if isinstance(value, date) and not isinstance(value, datetime):
        return value
    if isinstance(value, str) and _DATE.fullmatch(value):
        return _calendar_date(value)
    raise ValueError("not a FHIR date (YYYY, YYYY-MM or YYYY-MM-DD)")


def fhir_datetime(value: Any) -> datetime | date | str:
    if isinstance(value, str):
        return _fhir_datetime_text(value)
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError("a dateTime with a time needs a time zone")
        return value
    if isinstance(value, date):
        return value
    raise ValueError("not a FHIR dateTime (a time needs seconds and a time zone)")


@functools.lru_cache(maxsize=4096)
def _fhir_datetime_text(value: str) -> datetime | date | str:
    """A dateTime's text, read once per text: a record's results share their times (a panel of
    twenty-three titers drawn at once). The values are immutable, so sharing them is safe."""
    if _DATETIME.fullmatch(value):
        return _with_time(value) if "T" in value else _calendar_date(value)
    raise ValueError("not a FHIR dateTime (a time needs seconds and a time zone)")


def fhir_instant(value: Any) -> datetime | str:
    if isinstance(value, datetime) and value.tzinfo is not None:
        return value
    if isinstance(value, str) and _INSTANT.fullmatch(value):
        return _with_time(value)
    raise ValueError("not a FHIR instant (date, time to the second and time zone)")


#: pydantic's own decimal: a number or a decimal string (0.1 stays 0.1), never a boolean, NaN or infinity
FhirDecimal = Annotated[Decimal, Field(allow_inf_nan=False)]
FhirDate = Annotated[date | str, PlainValidator(_fhir_date)]
FhirDateTime = Annotated[datetime | date | str, PlainValidator(fhir_datetime)]
FhirInstant = Annotated[datetime | str, PlainValidator(fhir_instant)]
Code = Annotated[str, StringConstraints(pattern=r"^[^\s]+(\s[^\s]+)*$")]
Uri = Annotated[str, StringConstraints(pattern=r"^\S*$")]
PositiveInt = Annotated[int, Field(gt=0)]
UnsignedInt = Annotated[int, Field(ge=0)]


class Element(BaseModel):
    """Lenient about what the rules do not read: unknown and unused elements are ignored.
    Frozen, because validated resources are cached and shared between request threads."""

    model_config = ConfigDict(extra="ignore", frozen=True)


# ------------------------------------------------------------------ data types


class Coding(Element):
    system: Uri | None = None
    version: str | None = None
    code: Code | None = None
    display: str | None = None


class CodeableConcept(Element):
    coding: list[Coding] | None = None
    text: str | None = None


class Quantity(Element):
    value: FhirDecimal | None = None
    comparator: Code | None = None
    unit: str | None = None
    system: Uri | None = None
    code: Code | None = None


class Range(Element):
    low: Quantity | None = None
    high: Quantity | None = None


class Ratio(Element):
    numerator: Quantity | None = None
    denominator: Quantity | None = None


class Period(Element):
    start: FhirDateTime | None = None
    end: FhirDateTime | None = None


class Reference(Element):
    reference: str | None = None
    type: Uri | None = None
    display: str | None = None


class TimingRepeat(Element):
    boundsDuration: Quantity | None = None
    boundsRange: Range | None = None
    boundsPeriod: Period | None = None
    count: PositiveInt | None = None
    countMax: PositiveInt | None = None
    duration: FhirDecimal | None = None
    durationMax: FhirDecimal | None = None
    durationUnit: Code | None = None
    frequency: PositiveInt | None = None
    frequencyMax: PositiveInt | None = None
    period: FhirDecimal | None = None
    periodMax: FhirDecimal | None = None
    periodUnit: Code | None = None


class Timing(Element):
    event: list[FhirDateTime] | None = None
    repeat: TimingRepeat | None = None
    code: CodeableConcept | None = None


class DosageDoseAndRate(Element):
    type: CodeableConcept | None = None
    doseRange: Range | None = None
    doseQuantity: Quantity | None = None
    rateRatio: Ratio | None = None
    rateRange: Range | None = None
    rateQuantity: Quantity | None = None


class Dosage(Element):
    sequence: int | None = None
    text: str | None = None
    timing: Timing | None = None
    asNeededBoolean: bool | None = None
    route: CodeableConcept | None = None
    doseAndRate: list[DosageDoseAndRate] | None = None


# ------------------------------------------------------------------ resources


def _contained(value: Any) -> list[Resource]:
    """Contained resources as models of their own type (a Medication an order points at with
    ``#id``); other types as bare resources with their id."""
    if not isinstance(value, list):
        raise ValueError("contained must be a list of resources")
    out: list[Resource] = []
    for item in value:
        if not isinstance(item, dict) or not isinstance(item.get("resourceType"), str):
            raise ValueError("a contained resource without resourceType")
        out.append(MODELS.get(item["resourceType"], Resource).model_validate(item))
    return out


class Resource(Element):
    """What every resource model has: its type, its id and what it contains."""

    resource_type: ClassVar[str] = "Resource"

    id: str | None = None
    contained: Annotated[list[Any], PlainValidator(_contained)] | None = None

    @classmethod
    def get_resource_type(cls) -> str:
        return cls.resource_type


class _MedicationUse(Resource):
    """A use of a medication: one of ``medicationCodeableConcept`` and ``medicationReference``."""

    medicationCodeableConcept: CodeableConcept | None = None
    medicationReference: Reference | None = None

    @model_validator(mode="after")
    def _names_a_medication(self) -> _MedicationUse:
        if self.medicationCodeableConcept is None and self.medicationReference is None:
            raise ValueError("names no medication (medicationCodeableConcept or medicationReference)")
        return self


class Patient(Resource):
    resource_type: ClassVar[str] = "Patient"

    birthDate: FhirDate | None = None
    gender: Code | None = None
    deceasedBoolean: bool | None = None
    deceasedDateTime: FhirDateTime | None = None


class ObservationReferenceRange(Element):
    low: Quantity | None = None
    high: Quantity | None = None
    type: CodeableConcept | None = None
    appliesTo: list[CodeableConcept] | None = None
    age: Range | None = None
    text: str | None = None


class Observation(Resource):
    resource_type: ClassVar[str] = "Observation"

    status: Code
    category: list[CodeableConcept] | None = None
    code: CodeableConcept
    subject: Reference | None = None
    encounter: Reference | None = None
    effectiveDateTime: FhirDateTime | None = None
    effectivePeriod: Period | None = None
    effectiveInstant: FhirInstant | None = None
    issued: FhirInstant | None = None
    valueQuantity: Quantity | None = None
    valueString: str | None = None
    valueCodeableConcept: CodeableConcept | None = None
    dataAbsentReason: CodeableConcept | None = None
    interpretation: list[CodeableConcept] | None = None
    referenceRange: list[ObservationReferenceRange] | None = None


class Condition(Resource):
    resource_type: ClassVar[str] = "Condition"

    clinicalStatus: CodeableConcept | None = None
    verificationStatus: CodeableConcept | None = None
    category: list[CodeableConcept] | None = None
    code: CodeableConcept | None = None
    subject: Reference
    encounter: Reference | None = None
    onsetDateTime: FhirDateTime | None = None
    onsetPeriod: Period | None = None
    recordedDate: FhirDateTime | None = None
    #: when it ended: an abated infection is not active, whatever its clinical status says
    abatementDateTime: FhirDateTime | None = None
    abatementPeriod: Period | None = None
    abatementAge: Quantity | None = None
    abatementRange: Range | None = None
    abatementString: str | None = None


class EncounterDiagnosis(Element):
    condition: Reference
    use: CodeableConcept | None = None
    rank: PositiveInt | None = None


class EncounterLocation(Element):
    location: Reference
    status: Code | None = None
    period: Period | None = None


class Encounter(Resource):
    resource_type: ClassVar[str] = "Encounter"

    status: Code
    class_fhir: Coding = Field(alias="class")
    type: list[CodeableConcept] | None = None
    serviceType: CodeableConcept | None = None
    subject: Reference | None = None
    period: Period | None = None
    reasonCode: list[CodeableConcept] | None = None
    reasonReference: list[Reference] | None = None
    diagnosis: list[EncounterDiagnosis] | None = None
    location: list[EncounterLocation] | None = None


class Immunization(Resource):
    resource_type: ClassVar[str] = "Immunization"

    status: Code
    vaccineCode: CodeableConcept
    patient: Reference
    occurrenceDateTime: FhirDateTime | None = None
    occurrenceString: str | None = None

    @model_validator(mode="after")
    def _has_an_occurrence(self) -> Immunization:
        if self.occurrenceDateTime is None and self.occurrenceString is None:
            raise ValueError("has no occurrence (occurrenceDateTime or occurrenceString)")
        return self


class MedicationRequest(_MedicationUse):
    resource_type: ClassVar[str] = "MedicationRequest"

    status: Code
    intent: Code
    category: list[CodeableConcept] | None = None
    subject: Reference
    encounter: Reference | None = None
    authoredOn: FhirDateTime | None = None
    reasonCode: list[CodeableConcept] | None = None
    reasonReference: list[Reference] | None = None
    dosageInstruction: list[Dosage] | None = None


class MedicationAdministrationDosage(Element):
    text: str | None = None
    route: CodeableConcept | None = None
    dose: Quantity | None = None
    rateRatio: Ratio | None = None
    rateQuantity: Quantity | None = None


class MedicationAdministration(_MedicationUse):
    resource_type: ClassVar[str] = "MedicationAdministration"

    status: Code
    subject: Reference
    context: Reference | None = None
    effectiveDateTime: FhirDateTime | None = None
    effectivePeriod: Period | None = None
    reasonCode: list[CodeableConcept] | None = None
    reasonReference: list[Reference] | None = None
    request: Reference | None = None
    dosage: MedicationAdministrationDosage | None = None

    @model_validator(mode="after")
    def _has_an_effective_time(self) -> MedicationAdministration:
        if self.effectiveDateTime is None and self.effectivePeriod is None:
            raise ValueError("has no effective time (effectiveDateTime or effectivePeriod)")
        return self


class MedicationStatement(_MedicationUse):
    resource_type: ClassVar[str] = "MedicationStatement"

    status: Code
    subject: Reference
    effectiveDateTime: FhirDateTime | None = None
    effectivePeriod: Period | None = None
    dateAsserted: FhirDateTime | None = None
    reasonCode: list[CodeableConcept] | None = None
    reasonReference: list[Reference] | None = None
    dosage: list[Dosage] | None = None


class MedicationDispense(_MedicationUse):
    resource_type: ClassVar[str] = "MedicationDispense"

    status: Code
    subject: Reference | None = None
    quantity: Quantity | None = None
    daysSupply: Quantity | None = None
    whenPrepared: FhirDateTime | None = None
    whenHandedOver: FhirDateTime | None = None
    dosageInstruction: list[Dosage] | None = None


class Procedure(Resource):
    resource_type: ClassVar[str] = "Procedure"

    status: Code
    code: CodeableConcept | None = None
    subject: Reference
    encounter: Reference | None = None
    performedDateTime: FhirDateTime | None = None
    performedPeriod: Period | None = None
    reasonCode: list[CodeableConcept] | None = None


class MedicationIngredient(Element):
    itemCodeableConcept: CodeableConcept | None = None
    itemReference: Reference | None = None
    isActive: bool | None = None
    strength: Ratio | None = None


class Medication(Resource):
    resource_type: ClassVar[str] = "Medication"

    code: CodeableConcept | None = None
    status: Code | None = None
    form: CodeableConcept | None = None
    amount: Ratio | None = None
    ingredient: list[MedicationIngredient] | None = None


class ServiceRequest(Resource):
    resource_type: ClassVar[str] = "ServiceRequest"

    status: Code
    intent: Code
    category: list[CodeableConcept] | None = None
    code: CodeableConcept | None = None
    subject: Reference
    encounter: Reference | None = None
    occurrenceDateTime: FhirDateTime | None = None
    authoredOn: FhirDateTime | None = None
    reasonCode: list[CodeableConcept] | None = None
    reasonReference: list[Reference] | None = None


#: The resource types the rules read, by ``resourceType``.
MODELS: dict[str, type[Resource]] = {model.resource_type: model for model in (
    Patient, Observation, Condition, Encounter, Immunization, MedicationRequest, MedicationAdministration,
    MedicationStatement, MedicationDispense, Procedure, Medication, ServiceRequest,
)}

#: Every element FHIR R4 defines for those types (``fhir.resources.R4B``'s, checked by
#: tests/test_fhir_models.py). A top-level key outside these (and the ``_element`` extensions of
#: primitives) is not FHIR: it is ignored and noted, as an element that cannot be read is.
ELEMENTS: dict[str, frozenset[str]] = {rtype: frozenset(names.split()) for rtype, names in {
    "Patient": (
        "active address birthDate communication contact contained deceasedBoolean deceasedDateTime extension "
        "gender generalPractitioner id identifier implicitRules language link managingOrganization "
        "maritalStatus meta modifierExtension multipleBirthBoolean multipleBirthInteger name photo telecom text"
    ),
    "Observation": (
        "basedOn bodySite category code component contained dataAbsentReason derivedFrom device "
        "effectiveDateTime effectiveInstant effectivePeriod effectiveTiming encounter extension focus "
        "hasMember id identifier implicitRules interpretation issued language meta method modifierExtension "
        "note partOf performer referenceRange specimen status subject text valueBoolean valueCodeableConcept "
        "valueDateTime valueInteger valuePeriod valueQuantity valueRange valueRatio valueSampledData "
        "valueString valueTime"
    ),
    "Condition": (
        "abatementAge abatementDateTime abatementPeriod abatementRange abatementString asserter bodySite "
        "category clinicalStatus code contained encounter evidence extension id identifier implicitRules "
        "language meta modifierExtension note onsetAge onsetDateTime onsetPeriod onsetRange onsetString "
        "recordedDate recorder severity stage subject text verificationStatus"
    ),
    "Encounter": (
        "account appointment basedOn class classHistory contained diagnosis episodeOfCare extension "
        "hospitalization id identifier implicitRules language length location meta modifierExtension partOf "
        "participant period priority reasonCode reasonReference serviceProvider serviceType status "
        "statusHistory subject text type"
    ),
    "Immunization": (
        "contained doseQuantity education encounter expirationDate extension fundingSource id identifier "
        "implicitRules isSubpotent language location lotNumber manufacturer meta modifierExtension note "
        "occurrenceDateTime occurrenceString patient performer primarySource programEligibility "
        "protocolApplied reaction reasonCode reasonReference recorded reportOrigin route site status "
        "statusReason subpotentReason text vaccineCode"
    ),
    "MedicationRequest": (
        "authoredOn basedOn category contained courseOfTherapyType detectedIssue dispenseRequest doNotPerform "
        "dosageInstruction encounter eventHistory extension groupIdentifier id identifier implicitRules "
        "instantiatesCanonical instantiatesUri insurance intent language medicationCodeableConcept "
        "medicationReference meta modifierExtension note performer performerType priorPrescription priority "
        "reasonCode reasonReference recorder reportedBoolean reportedReference requester status statusReason "
        "subject substitution supportingInformation text"
    ),
    "MedicationAdministration": (
        "category contained context device dosage effectiveDateTime effectivePeriod eventHistory extension id "
        "identifier implicitRules instantiates language medicationCodeableConcept medicationReference meta "
        "modifierExtension note partOf performer reasonCode reasonReference request status statusReason "
        "subject supportingInformation text"
    ),
    "MedicationStatement": (
        "basedOn category contained context dateAsserted derivedFrom dosage effectiveDateTime effectivePeriod "
        "extension id identifier implicitRules informationSource language medicationCodeableConcept "
        "medicationReference meta modifierExtension note partOf reasonCode reasonReference status "
        "statusReason subject text"
    ),
    "MedicationDispense": (
        "authorizingPrescription category contained context daysSupply destination detectedIssue "
        "dosageInstruction eventHistory extension id identifier implicitRules language location "
        "medicationCodeableConcept medicationReference meta modifierExtension note partOf performer quantity "
        "receiver status statusReasonCodeableConcept statusReasonReference subject substitution "
        "supportingInformation text type whenHandedOver whenPrepared"
    ),
    "Procedure": (
        "asserter basedOn bodySite category code complication complicationDetail contained encounter "
        "extension focalDevice followUp id identifier implicitRules instantiatesCanonical instantiatesUri "
        "language location meta modifierExtension note outcome partOf performedAge performedDateTime "
        "performedPeriod performedRange performedString performer reasonCode reasonReference recorder report "
        "status statusReason subject text usedCode usedReference"
    ),
    "Medication": (
        "amount batch code contained extension form id identifier implicitRules ingredient language "
        "manufacturer meta modifierExtension status text"
    ),
    "ServiceRequest": (
        "asNeededBoolean asNeededCodeableConcept authoredOn basedOn bodySite category code contained "
        "doNotPerform encounter extension id identifier implicitRules instantiatesCanonical instantiatesUri "
        "insurance intent language locationCode locationReference meta modifierExtension note "
        "occurrenceDateTime occurrencePeriod occurrenceTiming orderDetail patientInstruction performer "
        "performerType priority quantityQuantity quantityRange quantityRatio reasonCode reasonReference "
        "relevantHistory replaces requester requisition specimen status subject supportingInfo text"
    ),
}.items()}


def unknown_elements(data: dict[str, Any]) -> list[str]:
    """Top-level keys of an (adapted) resource that FHIR R4 does not define for its type."""
    known = ELEMENTS.get(str(data.get("resourceType")))
    if known is None:
        return []
    return [key for key in data if key not in known and key != "resourceType" and key != "fhir_comments"
            and not (key.startswith("_") and key[1:] in known)]


#: Every resource type of FHIR R4 (4.0.1) and R4B (4.3.0), and the DSTU2/STU3 names EHRs still
#: send. An object whose ``resourceType`` is none of these is not a FHIR resource at all.
RESOURCE_TYPES: frozenset[str] = frozenset((
    # R4B, as fhir.resources.R4B defines them (tests/test_fhir_models.py)
    "Account ActivityDefinition AdministrableProductDefinition AdverseEvent AllergyIntolerance Appointment "
    "AppointmentResponse AuditEvent Basic Binary BiologicallyDerivedProduct BodyStructure Bundle "
    "CapabilityStatement CarePlan CareTeam CatalogEntry ChargeItem ChargeItemDefinition Citation Claim "
    "ClaimResponse ClinicalImpression ClinicalUseDefinition CodeSystem Communication CommunicationRequest "
    "CompartmentDefinition Composition ConceptMap Condition Consent Contract Coverage "
    "CoverageEligibilityRequest CoverageEligibilityResponse DetectedIssue Device DeviceDefinition "
    "DeviceMetric DeviceRequest DeviceUseStatement DiagnosticReport DocumentManifest DocumentReference "
    "Encounter Endpoint EnrollmentRequest EnrollmentResponse EpisodeOfCare EventDefinition Evidence "
    "EvidenceReport EvidenceVariable ExampleScenario ExplanationOfBenefit FamilyMemberHistory Flag Goal "
    "GraphDefinition Group GuidanceResponse HealthcareService ImagingStudy Immunization "
    "ImmunizationEvaluation ImmunizationRecommendation ImplementationGuide Ingredient InsurancePlan Invoice "
    "Library Linkage List Location ManufacturedItemDefinition Measure MeasureReport Media Medication "
    "MedicationAdministration MedicationDispense MedicationKnowledge MedicationRequest MedicationStatement "
    "MedicinalProductDefinition MessageDefinition MessageHeader MolecularSequence NamingSystem "
    "NutritionOrder NutritionProduct Observation ObservationDefinition OperationDefinition "
    "OperationOutcome Organization OrganizationAffiliation PackagedProductDefinition Parameters Patient "
    "PaymentNotice PaymentReconciliation Person PlanDefinition Practitioner PractitionerRole Procedure "
    "Provenance Questionnaire QuestionnaireResponse RegulatedAuthorization RelatedPerson RequestGroup "
    "ResearchDefinition ResearchElementDefinition ResearchStudy ResearchSubject RiskAssessment Schedule "
    "SearchParameter ServiceRequest Slot Specimen SpecimenDefinition StructureDefinition StructureMap "
    "Subscription SubscriptionStatus SubscriptionTopic Substance SubstanceDefinition SupplyDelivery "
    "SupplyRequest Task TerminologyCapabilities TestReport TestScript ValueSet VerificationResult "
    "VisionPrescription "
    # R4 only
    "EffectEvidenceSynthesis MedicinalProduct MedicinalProductAuthorization MedicinalProductContraindication "
    "MedicinalProductIndication MedicinalProductIngredient MedicinalProductInteraction "
    "MedicinalProductManufactured MedicinalProductPackaged MedicinalProductPharmaceutical "
    "MedicinalProductUndesirableEffect RiskEvidenceSynthesis SubstanceNucleicAcid SubstancePolymer "
    "SubstanceProtein SubstanceReferenceInformation SubstanceSourceMaterial SubstanceSpecification "
    # STU3 and DSTU2
    "BodySite Conformance DataElement DeviceComponent DeviceUseRequest DiagnosticOrder EligibilityRequest "
    "EligibilityResponse ExpansionProfile ImagingManifest ImagingObjectSelection MedicationOrder Order "
    "OrderResponse ProcedureRequest ProcessRequest ProcessResponse ReferralRequest Sequence ServiceDefinition"
).split())
