"""The facts the guideline decides on, extracted from one patient's FHIR record.

``extract_facts(read, today, config)`` turns validated resources into a small typed ``Facts``:
the latest usable IgM/IgG/IgA (unit-normalised, with date, range and why it counts as low),
the PPSV23 response, infections in the window, IVIG history, weight, lymphocyte subsets,
and every problem met on the way (unknown unit, stale, drawn after IVIG ...), worded for the
card. Only final/amended/corrected results count. "Today" is an argument, never the clock.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
import math
import re
from datetime import date, datetime
from enum import StrEnum
from typing import Any, Iterable, Mapping

from hooks import valuesets as vs
from hooks.config import GuidelineConfig
from hooks.dates import add_months, age_years, as_date, fmt_date
from hooks.classify import names_immune_globulin, names_other_globulin, names_subcutaneous
from hooks.classify import texts_and_codes as _texts_codes
from hooks.fhir_read import ReadResult, bare_id
from hooks.lab_results import LabResult
from hooks.units import Measured, to_kg, to_mg_dl, to_ug_ml

FINAL_STATUSES = frozenset({"final", "amended", "corrected", "appended"})
LOW_FLAGS = frozenset({"L", "LL", "LU", "<"})
NORMAL_FLAGS = frozenset({"N", "H", "HH", "HU", ">"})
HIGH_FLAGS = frozenset({"H", "HH", "HU", ">"})


class Level(StrEnum):
    LOW = "low"
    NORMAL = "normal"  # not low (normal or high)
    UNKNOWN = "unknown"  # a value exists but cannot be judged (bound, child without range)


@dataclass(frozen=True, init=False)
class LabValue:
    """One usable result, normalised (mg/dL for Ig, ug/mL for titers, kg for weight).

    Frozen, and made for every result of every record: ``__init__`` sets the fields straight into
    the instance, instead of the generated one's ``object.__setattr__`` per field.
    """

    analyte: str
    measured: Measured
    unit: str
    when: date
    resource: str
    ref_low: float | None = None
    ref_high: float | None = None
    flags: frozenset[str] = frozenset()
    stale: bool = False
    confounded_by: date | None = None  # the IVIG dose this result was drawn after
    #: the time of the draw when the record gives one (a trough is drawn before the infusion that day)
    at: datetime | None = None

    def __init__(self, analyte: str, measured: Measured, unit: str, when: date, resource: str,
                 ref_low: float | None = None, ref_high: float | None = None, flags: frozenset[str] = frozenset(),
                 stale: bool = False, confounded_by: date | None = None, at: datetime | None = None) -> None:
        vars(self).update(analyte=analyte, measured=measured, unit=unit, when=when, resource=resource,
                          ref_low=ref_low, ref_high=ref_high, flags=flags, stale=stale, confounded_by=confounded_by,
                          at=at)

    @property
    def confounded(self) -> bool:
        return self.confounded_by is not None

    def show(self) -> str:
        """'32 mg/dL (2026-10-01)' — value, unit and date, as cards show them."""
        return f"{self.measured.display(self.unit)} ({fmt_date(self.when)})"


@dataclass(frozen=True)
class Analyte:
    """All results of one analyte and the one that decides."""

    name: str
    values: tuple[LabValue, ...] = ()
    deciding: LabValue | None = None
    level: Level = Level.UNKNOWN
    #: why the level is what it is ("below 40 mg/dL", "below the lab's range 48–271 mg/dL")
    basis: str = ""
    #: "ok", "missing", "stale", "confounded", "indeterminate"
    status: str = "missing"
    problems: tuple[str, ...] = ()
    #: above the lab's upper limit (or flagged high): said as "high", never as "normal"
    high: bool = False

    @property
    def latest(self) -> LabValue | None:
        return self.values[-1] if self.values else None

    @property
    def is_low(self) -> bool:
        return self.status == "ok" and self.level is Level.LOW

    @property
    def is_normal(self) -> bool:
        return self.status == "ok" and self.level is Level.NORMAL


@dataclass(frozen=True, init=False)
class Titer:
    """One serotype's titer, normalised to ug/mL. Set up as ``LabValue`` is: a record has dozens."""

    serotype: str
    measured: Measured
    when: date
    resource: str
    confounded_by: date | None = None

    def __init__(self, serotype: str, measured: Measured, when: date, resource: str,
                 confounded_by: date | None = None) -> None:
        vars(self).update(serotype=serotype, measured=measured, when=when, resource=resource,
                          confounded_by=confounded_by)


@dataclass(frozen=True)
class PneumococcalResponse:
    """The PPSV23 challenge: pre and post titers per serotype and what they show."""

    #: "adequate", "impaired", "not-tested", "no-post-titers", "no-pre-titers", "confounded", "stale"
    status: str
    vaccination: date | None = None
    pre: tuple[Titer, ...] = ()
    post: tuple[Titer, ...] = ()
    protective: int = 0
    tested: int = 0
    required_fraction: float | None = None
    problems: tuple[str, ...] = ()

    @property
    def fraction(self) -> float | None:
        return self.protective / self.tested if self.tested else None

    @property
    def judgeable(self) -> bool:
        return self.status in ("adequate", "impaired")

    def show(self) -> str:
        if not self.tested:
            return self.status.replace("-", " ")
        pct = round(100 * (self.fraction or 0))
        need = f", needs ≥ {round(100 * self.required_fraction)} %" if self.required_fraction else ""
        when = f" {self.days_after()} days after PPSV23 of {fmt_date(self.vaccination)}" if self.vaccination else ""
        return f"{self.protective}/{self.tested} serotypes protective ({pct} %{need}){when}"

    def days_after(self) -> int | None:
        if not self.post or not self.vaccination:
            return None
        return (max(t.when for t in self.post) - self.vaccination).days


@dataclass(frozen=True)
class Infection:
    """One infection episode (Conditions and the admission for it count once)."""

    when: date
    label: str
    severe: bool
    life_threatening: bool
    encapsulated: bool
    hospitalised: bool
    sources: tuple[str, ...]
    #: still going on: clinical status active/recurrence/relapse without abatement, an admission in
    #: progress, or (no status recorded) a recent onset
    active: bool = False

    @property
    def minor(self) -> bool:
        return not self.severe

    def show(self) -> str:
        kind = "life-threatening" if self.life_threatening else "severe" if self.severe else "minor"
        extra = ", encapsulated organism" if self.encapsulated else ""
        return f"{self.label} ({fmt_date(self.when)}; {kind}{extra})"


@dataclass(frozen=True)
class InfectionHistory:
    #: False when the record holds no clinical data in the window at all (criteria rule 6)
    known: bool
    window_start: date
    episodes: tuple[Infection, ...] = ()
    problems: tuple[str, ...] = ()

    @property
    def severe(self) -> tuple[Infection, ...]:
        return tuple(e for e in self.episodes if e.severe)

    @property
    def life_threatening(self) -> tuple[Infection, ...]:
        return tuple(e for e in self.episodes if e.life_threatening)

    @property
    def severe_encapsulated(self) -> tuple[Infection, ...]:
        return tuple(e for e in self.episodes if e.severe and e.encapsulated)

    @property
    def minor(self) -> tuple[Infection, ...]:
        return tuple(e for e in self.episodes if e.minor)

    @property
    def active_severe(self) -> tuple[Infection, ...]:
        return tuple(e for e in self.episodes if e.severe and e.active)


@dataclass(frozen=True)
class IvigDose:
    when: date
    source: str
    subcutaneous: bool = False
    #: the time of the infusion when the record gives one
    at: datetime | None = None
    product: str = ""
    #: an infusion on record (administration, procedure), not an order's or a statement's date: only
    #: these tell a trough from a mid-interval level
    infusion: bool = False


@dataclass(frozen=True)
class IvigHistory:
    doses: tuple[IvigDose, ...] = ()
    active_order: bool = False
    on_treatment: bool = False

    @property
    def first_dose(self) -> date | None:
        return self.doses[0].when if self.doses else None

    @property
    def last_dose(self) -> date | None:
        return self.doses[-1].when if self.doses else None

    @property
    def any(self) -> bool:
        return bool(self.doses) or self.active_order

    @property
    def subcutaneous(self) -> bool:
        """On SCIG: the latest dose was subcutaneous (levels are steady, any level is a trough)."""
        return bool(self.doses) and self.doses[-1].subcutaneous

    def usual_interval_days(self, default_days: float) -> float:
        """The patient's own interval between infusions (median gap), else ``default_days``."""
        gaps = sorted((b.when - a.when).days for a, b in zip(self.doses, self.doses[1:]) if b.when > a.when)
        return float(gaps[len(gaps) // 2]) if gaps else default_days


class LevelTiming(StrEnum):
    """When an IgG on treatment was drawn, relative to the infusions."""

    TROUGH = "trough"  # just before an infusion: compared with the trough target
    MID_INTERVAL = "mid-interval"  # days after an infusion: donor IgG still high, never a trough
    STEADY_STATE = "steady-state"  # on SCIG: levels are steady, any level counts as the trough


@dataclass(frozen=True)
class TreatmentLevel:
    """An IgG drawn on treatment and what it is: the trough of an infusion or a mid-interval level."""

    value: LabValue
    timing: LevelTiming
    #: the infusion it is the trough of (trough), or the one it was drawn after (mid-interval)
    infusion: date | None = None

    @property
    def days_after_infusion(self) -> int | None:
        if self.timing is LevelTiming.MID_INTERVAL and self.infusion is not None:
            return (self.value.when - self.infusion).days
        return None

    def describe(self) -> str:
        """'drawn before the infusion of 2026-11-03', '7 days after the infusion of ...'."""
        if self.timing is LevelTiming.STEADY_STATE:
            return "on subcutaneous immunoglobulin (steady level)"
        if self.timing is LevelTiming.TROUGH:
            if self.infusion is None:
                return "drawn when the next infusion was due"
            days = (self.infusion - self.value.when).days
            before = "before" if days == 0 else "the day before" if days == 1 else f"{days} days before"
            return f"drawn {before} the infusion of {fmt_date(self.infusion)}"
        days = self.days_after_infusion
        when = "on the day of" if days == 0 else f"{days} days after"
        return f"mid-interval level: drawn {when} the infusion of {fmt_date(self.infusion)}, not a trough"


@dataclass(frozen=True)
class Facts:
    today: date
    birth_date: date | None
    age: float | None
    igm: Analyte
    igg: Analyte
    iga: Analyte
    pneumococcal: PneumococcalResponse
    infections: InfectionHistory
    ivig: IvigHistory
    #: on IVIG: the latest trough IgG (a level drawn just before an infusion; any level on SCIG)
    trough: LabValue | None
    weight: LabValue | None
    lymphocyte_subsets: frozenset[str]
    lymphocyte_subsets_missing: tuple[str, ...]
    hyper_igm_diagnosis: str | None
    other_indications: tuple[str, ...]
    #: data that could not be used, worded for the card ("Observation/x: unit 'mmol/L' not known")
    data_problems: tuple[str, ...] = ()
    #: prefetch keys that could not be obtained, with the reason
    unavailable: Mapping[str, str] = field(default_factory=dict)
    #: on IVIG: every IgG since treatment started, each a trough or a mid-interval level
    treatment_levels: tuple[TreatmentLevel, ...] = ()

    @property
    def mid_interval(self) -> TreatmentLevel | None:
        """The latest mid-interval level drawn after the latest trough (shown, never compared)."""
        latest = self.treatment_levels[-1] if self.treatment_levels else None
        if latest is not None and latest.timing is LevelTiming.MID_INTERVAL:
            return latest
        return None

    def trough_level(self) -> TreatmentLevel | None:
        """The trough with its timing (which infusion it belongs to)."""
        for level in reversed(self.treatment_levels):
            if level.value is self.trough:
                return level
        return None

    @property
    def problems(self) -> tuple[str, ...]:
        """Every reason some data could not be used, for the card's "Data not used" section."""
        out = [*self.igm.problems, *self.igg.problems, *self.iga.problems, *self.pneumococcal.problems,
               *self.infections.problems, *self.data_problems]
        return tuple(dict.fromkeys(out))

    @property
    def is_child(self) -> bool:
        return self.age is not None and self.age < 18



# ------------------------------------------------------------------ helpers over R4B models


def concept_in(concept: Any, valueset: vs.ValueSet) -> bool:
    texts, codes = _texts_codes(concept)
    return _named_in(valueset, texts, codes)


def _named_in(valueset: vs.ValueSet, texts: list[str], codes: list[tuple[str, str]]) -> bool:
    """Whether a concept's codes, else its texts, belong to the value set (``concept_in`` once the
    concept is read: a diagnosis is looked up in several value sets)."""
    for system, code in codes:
        if vs.coding_in(valueset, system, code):
            return True
    for text in texts:
        if vs.text_in(valueset, text):
            return True
    return False


def concept_label(concept: Any) -> str:
    texts, codes = _texts_codes(concept)
    if texts:
        return texts[0]
    return codes[0][1] if codes else "(uncoded)"


def _label(model: Any, read: ReadResult) -> str:
    known = read.label(model)
    if known is not None:
        return known
    rid = read.raw_id(model) or getattr(model, "id", None)
    return f"{model.get_resource_type()}/{bare_id(rid)}" if rid else f"{model.get_resource_type()} (no id)"


def _code_of(status: Any) -> str | None:
    """A code from a string, an enum or a CodeableConcept's first coding."""
    if status is None:
        return None
    if isinstance(status, str):
        return status
    for coding in getattr(status, "coding", None) or ():
        if coding.code:
            return coding.code
    return None


def _ref_range(result: LabResult, convert) -> tuple[float | None, float | None]:
    """The first reference range whose limits are in a unit the analyte is known in."""
    for low_end, high_end in result.ranges:
        low = convert(*low_end) if low_end is not None else None
        high = convert(*high_end) if high_end is not None else None
        if low is not None or high is not None:
            return low, high
    return None, None


# ------------------------------------------------------------------ classification of observations


# classification lives in hooks/classify.py (computed once per resource, when it is validated)


# ------------------------------------------------------------------ IVIG history


def _medication_concepts(resource: Any, medications: Mapping[str, Any]) -> list[Any]:
    """The product concept(s) of a medication use: inline, contained, or a referenced Medication."""
    concepts = []
    if getattr(resource, "medicationCodeableConcept", None) is not None:
        concepts.append(resource.medicationCodeableConcept)
    ref = getattr(resource, "medicationReference", None)
    if ref is not None:
        if ref.display:
            concepts.append(type("C", (), {"text": ref.display, "coding": None})())
        target = (ref.reference or "")
        if target.startswith("#"):
            for contained in getattr(resource, "contained", None) or ():
                if getattr(contained, "id", None) == target[1:] and contained.get_resource_type() == "Medication":
                    concepts.append(contained.code)
        else:
            med = medications.get(bare_id(target) or "")
            if med is not None:
                concepts.append(med.code)
    return [c for c in concepts if c is not None]


def is_immune_globulin(concepts: Iterable[Any]) -> bool:
    """IgG replacement product by HCPCS or text/brand; hyperimmune globulins (anti-D, HBIG...) excluded."""
    found = False
    for concept in concepts:
        texts, codes = _texts_codes(concept)
        joined = " ".join(texts)
        if joined and names_other_globulin(joined):
            return False
        if any(vs.coding_in(vs.IMMUNE_GLOBULIN_HCPCS, s, c) for s, c in codes):
            found = True
        elif joined and names_immune_globulin(joined):
            found = True
    return found


def is_subcutaneous(concepts: Iterable[Any]) -> bool:
    for concept in concepts:
        texts, codes = _texts_codes(concept)
        if any(c in vs.SUBCUTANEOUS_HCPCS for _, c in codes):
            return True
        if any(names_subcutaneous(t) for t in texts):
            return True
    return False


def medications_by_id(read: ReadResult) -> dict[str, Any]:
    out = {}
    for med in read.of("Medication"):
        rid = read.raw_id(med) or med.id
        if rid:
            out[bare_id(rid) or rid] = med
    return out


_DONE = frozenset({"completed", "in-progress", "on-hold"})


def extract_ivig_history(read: ReadResult, today: date, config: GuidelineConfig,
                         exclude: frozenset[str] = frozenset()) -> IvigHistory:
    """Doses from MedicationAdministration, MedicationStatement/Dispense, completed/active
    MedicationRequests (dated by authoredOn) and Procedures; drafts being signed are excluded."""
    meds = medications_by_id(read)
    doses: list[IvigDose] = []
    active = False
    for res_type in ("MedicationAdministration", "MedicationRequest", "MedicationStatement", "MedicationDispense"):
        for res in read.of(res_type):
            label = _label(res, read)
            if label in exclude:
                continue
            concepts = _medication_concepts(res, meds)
            if not is_immune_globulin(concepts):
                continue
            status = _code_of(res.status)
            sc = is_subcutaneous(concepts)
            when: date | None = None
            at: Any = None
            if res_type == "MedicationAdministration":
                if status not in _DONE:
                    continue
                at = res.effectiveDateTime or getattr(res.effectivePeriod, "start", None)
                when = as_date(at)
            elif res_type == "MedicationRequest":
                if status == "active":
                    active = True
                if status not in ("active", "completed"):
                    continue
                when = as_date(res.authoredOn)
            elif res_type == "MedicationStatement":
                if status == "active":
                    active = True
                if status not in ("active", "completed", "intended"):
                    continue
                when = as_date(res.effectiveDateTime) or as_date(getattr(res.effectivePeriod, "start", None))
            else:
                if status != "completed":
                    continue
                when = as_date(res.whenHandedOver)
            if when is not None and when <= today:
                doses.append(IvigDose(when, label, sc, at if isinstance(at, datetime) else None,
                                      concept_label(concepts[0]) if concepts else "",
                                      infusion=res_type == "MedicationAdministration"))
    for proc in read.of("Procedure"):
        if _code_of(proc.status) != "completed":
            continue
        at = proc.performedDateTime or getattr(proc.performedPeriod, "start", None)
        when = as_date(at)
        if when is not None and when <= today:
            doses.append(IvigDose(when, _label(proc, read), False, at if isinstance(at, datetime) else None,
                                  concept_label(proc.code) if proc.code else "", infusion=True))
    doses.sort(key=lambda d: d.when)
    last = doses[-1].when if doses else None
    on_treatment = active or (last is not None and (today - last).days <= config.on_treatment_days)
    return IvigHistory(tuple(doses), active, on_treatment)


def _confounding_windows(doses: tuple[IvigDose, ...], months: int) -> tuple[tuple[date, date], ...]:
    """(dose, end of its window) for each IVIG dose, latest first: worked out once for all the
    results of a record, which ``_confounded_by`` then reads."""
    return tuple((dose.when, add_months(dose.when, months)) for dose in reversed(doses))


def _confounded_by(when: date, windows: tuple[tuple[date, date], ...]) -> date | None:
    """The IVIG dose a result drawn on ``when`` comes after, within its window, if any.

    A result on the day of an infusion counts as drawn before it (a trough).
    """
    for dose, window_end in windows:
        if dose < when <= window_end:
            return dose
    return None


# ------------------------------------------------------------------ labs


_EXCLUDED_STATUSES = {"entered-in-error": "entered in error", "cancelled": "cancelled"}


def _unused(what: str, when: date | None, why: str) -> str:
    """One "data not used" line: what, from when, and why — in a clinician's words."""
    return f"{what} of {fmt_date(when)}: {why} — not used" if when else f"{what} without a date: {why} — not used"


def _shown(value: float, unit: str | None) -> str:
    """A value as it was sent, for saying why it is not used ('85000 mg/dL')."""
    return f"{value:g} {unit}" if unit else f"{value:g}"


def _why_unreadable(result: LabResult, today: date) -> tuple[date | None, datetime | None, tuple | None, str | None]:
    """When the result was drawn, and either its (comparator, value, unit) or, in a clinician's
    words, why it cannot be used: not final (a result entered in error or cancelled is said so),
    no date, dated in the future, no value (dataAbsentReason), not a number."""
    status, when, at = result.status, result.drawn, result.at
    if status not in FINAL_STATUSES:
        if status in _EXCLUDED_STATUSES:
            return when, at, None, _EXCLUDED_STATUSES[status]
        return when, at, None, f"{status or 'without status'}, not final"
    if when is None:
        return None, None, None, "no date"
    if when > today:
        return when, at, None, "dated in the future"
    if result.absent is not None:
        return when, at, None, f"no value ({result.absent})"
    q = result.quantity
    if q is None:
        return when, at, None, "no numeric value"
    if not math.isfinite(q[1]):
        return when, at, None, "the value is not a number"
    return when, at, q, None


def _lab_values(read: ReadResult, analyte: str, today: date, config: GuidelineConfig, doses,
                problems: list[str], convert=to_mg_dl, unit: str = "mg/dL",
                plausible: tuple[float, float] | None = None) -> list[LabValue]:
    """Every usable result of one analyte, oldest first, each once.

    Not usable, and said: not final, entered in error, no date, no value (dataAbsentReason), an
    unknown unit, and a value no human body can have (``plausible``: a unit or typing error). The same
    result sent twice (other ids, same value and time) counts once.
    """
    stale_before = add_months(today, -config.stale_lab_months)
    low_bound, high_bound = plausible if plausible is not None else (0.0, config.plausible_max_mg_dl(analyte))
    windows = _confounding_windows(doses, config.ivig_confounding_months) if doses else ()
    out: list[LabValue] = []
    seen: set[tuple] = set()
    for obs in read.observations(analyte):
        when, at, q, why = _why_unreadable(obs, today)
        if why is not None:
            problems.append(_unused(analyte, when, why))
            continue
        comparator, value, raw_unit = q
        normalised = convert(value, raw_unit)
        if normalised is None:
            problems.append(_unused(analyte, when, f"unit '{raw_unit or 'none'}' is not known (not guessed)"))
            continue
        if not low_bound <= normalised <= high_bound:
            problems.append(_unused(analyte, when, f"{_shown(value, raw_unit)} is not a possible value "
                                                   f"(plausible {low_bound:g}–{high_bound:g} {unit}; unit or typing error?)"))
            continue
        key = (normalised, comparator, at or when)
        if key in seen:
            continue
        seen.add(key)
        low, high = _ref_range(obs, convert)
        out.append(LabValue(
            analyte=analyte,
            measured=Measured(normalised, comparator),
            unit=unit,
            when=when,
            resource=_label(obs, read),
            ref_low=low,
            ref_high=high,
            flags=obs.flags,
            stale=when < stale_before,
            confounded_by=_confounded_by(when, windows) if windows else None,
            at=at,
        ))
    out.sort(key=lambda v: (v.when, v.at.timestamp() if v.at is not None else 0.0))
    return out


def _is_high(value: LabValue) -> bool:
    """Above the lab's upper limit, or flagged high: what a card calls "high", never "normal"."""
    if value.ref_high is not None and value.measured.comparator is None:
        return value.measured.value > value.ref_high
    return bool(value.flags & HIGH_FLAGS)


def _level(value: LabValue, threshold: float, child: bool, age_known: bool,
           use_range_for_adults: bool = False) -> tuple[Level, str]:
    """Low or not, and why: adults by threshold; children by the lab's range, else its L/N flag."""
    high = _is_high(value)
    if child or use_range_for_adults or not age_known:
        if value.ref_low is not None:
            below = value.measured.certainly_below(value.ref_low)
            if below is None:
                return Level.UNKNOWN, f"reported as {value.measured.display(value.unit)}: cannot tell against the lab's lower limit {value.ref_low:g} {value.unit}"
            rng = f"{value.ref_low:g}–{value.ref_high:g}" if value.ref_high is not None else f"≥ {value.ref_low:g}"
            if below:
                return Level.LOW, f"below the lab's range {rng} {value.unit}"
            return Level.NORMAL, (f"high: above the lab's range {rng} {value.unit}" if high
                                  else f"within the lab's range {rng} {value.unit}")
        if value.flags & LOW_FLAGS:
            return Level.LOW, "flagged low by the lab"
        if value.flags & NORMAL_FLAGS:
            return Level.NORMAL, "flagged high by the lab" if high else "flagged normal by the lab"
        if child:
            return Level.UNKNOWN, "child without an age-specific reference range or lab flag"
    below = value.measured.certainly_below(threshold)
    if below is None:
        return Level.UNKNOWN, f"reported as {value.measured.display(value.unit)}: cannot tell against {threshold:g} {value.unit}"
    if below:
        return Level.LOW, f"below {threshold:g} {value.unit}"
    if high:
        limit = f" {value.ref_high:g} {value.unit}" if value.ref_high is not None else ""
        return Level.NORMAL, f"high: above the lab's upper limit{limit}"
    return Level.NORMAL, f"not below {threshold:g} {value.unit}"


def _analyte(name: str, values: list[LabValue], threshold: float, facts_age: float | None, config: GuidelineConfig,
             ivig: IvigHistory, problems: list[str], range_for_adults: bool = False) -> Analyte:
    """Pick the deciding result: the latest that is neither stale nor drawn after IVIG.

    On treatment, a result from before the first dose stays usable whatever its age: it is the
    only diagnostic baseline there can be, and it cannot be repeated without stopping IVIG.
    """
    if not values:
        return Analyte(name, (), status="missing", problems=tuple(problems))
    baseline_ok = ivig.on_treatment and ivig.first_dose is not None
    usable = [v for v in values if not v.confounded
              and (not v.stale or (baseline_ok and v.when <= ivig.first_dose))]
    child = facts_age is not None and facts_age < config.adult_age_years
    if not usable:
        latest = values[-1]
        if latest.confounded:
            status = "confounded"
            problems.append(
                f"{name} {latest.show()} was drawn {(latest.when - latest.confounded_by).days} days after IVIG/SCIG "
                f"of {fmt_date(latest.confounded_by)} — not interpretable")
        else:
            status = "stale"
            problems.append(f"{name} {latest.show()} is older than {config.stale_lab_months} months — treated as missing")
        return Analyte(name, tuple(values), None, Level.UNKNOWN, "", status, tuple(problems))
    deciding = usable[-1]
    level, basis = _level(deciding, threshold, child, facts_age is not None, range_for_adults)
    status = "ok" if level is not Level.UNKNOWN else "indeterminate"
    if status == "indeterminate":
        problems.append(f"{name} {deciding.show()}: {basis}")
    return Analyte(name, tuple(values), deciding, level, basis, status, tuple(problems),
                   high=level is Level.NORMAL and _is_high(deciding))


# ------------------------------------------------------------------ pneumococcal response


def _titers(read: ReadResult, today: date, config: GuidelineConfig, doses, problems: list[str]) -> list[Titer]:
    """Usable serotype titers; what is not usable is said once per draw and reason, not per serotype."""
    out: list[Titer] = []
    unusable: dict[tuple[date | None, str], list[str]] = {}
    plausible_max = config.titer_plausible_max_ug_ml
    windows = _confounding_windows(doses, config.ivig_confounding_months) if doses else ()
    for obs in read.observations("titer"):
        serotype = obs.serotype
        when, _at, q, why = _why_unreadable(obs, today)
        if why is not None:
            unusable.setdefault((when, why), []).append(serotype or "?")
            continue
        comparator, value, unit = q
        if serotype is None:
            unusable.setdefault((when, "names no PPSV23 serotype"), []).append("?")
            continue
        normalised = to_ug_ml(value, unit)
        if normalised is None:
            unusable.setdefault((when, f"unit '{unit or 'none'}' is not known (not guessed)"), []).append(serotype)
            continue
        if not 0 <= normalised <= plausible_max:
            unusable.setdefault((when, f"{_shown(value, unit)} is not a possible value (plausible 0–"
                                       f"{plausible_max:g} ug/mL)"), []).append(serotype)
            continue
        out.append(Titer(serotype, Measured(normalised, comparator), when, _label(obs, read),
                         _confounded_by(when, windows) if windows else None))
    for (when, why), serotypes in unusable.items():
        named = [s for s in dict.fromkeys(serotypes) if s != "?"]
        which = (f"{len(named)} serotypes" if len(named) > 4 else
                 f"serotype{'s' if len(named) > 1 else ''} {', '.join(named)}" if named else "")
        line = _unused("pneumococcal titer" + ("s" if len(serotypes) > 1 else ""), when, why)
        problems.append(line.replace(":", f" ({which}):", 1) if which else line)
    return out


def _latest_per_serotype(titers: Iterable[Titer]) -> tuple[Titer, ...]:
    best: dict[str, Titer] = {}
    for t in titers:
        known = best.get(t.serotype)
        if known is None or t.when > known.when:
            best[t.serotype] = t
    return tuple(best[serotype] for serotype in sorted(best, key=_SEROTYPE_ORDER.__getitem__))


_SEROTYPE_ORDER = {serotype: i for i, serotype in enumerate(vs.PPSV23_SEROTYPES)}


def _ppsv23_dates(read: ReadResult, today: date) -> list[date]:
    out = []
    for imm in read.of("Immunization"):
        if _code_of(imm.status) != "completed":
            continue
        texts, codes = _texts_codes(imm.vaccineCode)
        if not (any(s == vs.CVX and c in vs.CVX_PPSV23 for s, c in codes) or any(vs.text_in(vs.VACCINES, t) for t in texts)):
            continue
        when = as_date(imm.occurrenceDateTime)
        if when is not None and when <= today:
            out.append(when)
    return sorted(out)


def extract_pneumococcal(read: ReadResult, today: date, config: GuidelineConfig, birth_date: date | None,
                         doses: tuple[IvigDose, ...]) -> PneumococcalResponse:
    problems: list[str] = []
    titers = _titers(read, today, config, doses, problems)
    vaccinations = _ppsv23_dates(read, today)
    if not vaccinations:
        if titers:
            problems.append("pneumococcal titers are on record but no PPSV23 vaccination (CVX 33) to tell pre from post")
        return PneumococcalResponse("not-tested", problems=tuple(problems))
    min_days, max_days = config.post_titer_min_days, config.post_titer_max_days
    # the most recent vaccination that has titers in its post window, else the most recent one
    chosen = vaccinations[-1]
    drawn = {t.when for t in titers}
    for vaccination in reversed(vaccinations):
        if any(min_days <= (day - vaccination).days <= max_days for day in drawn):
            chosen = vaccination
            break
    previous = [v for v in vaccinations if v < chosen]
    pre_floor = previous[-1] if previous else date.min
    # each titer by the days between PPSV23 and its draw: before it, too early, in the window, too late
    pre_all: list[Titer] = []
    early_days: list[int] = []
    post_all: list[Titer] = []
    drawn_late = False
    for t in titers:
        days = (t.when - chosen).days
        if days <= 0 and pre_floor < t.when:
            pre_all.append(t)
        if 0 < days < min_days:
            early_days.append(days)
        if min_days <= days <= max_days:
            post_all.append(t)
        if days > max_days:
            drawn_late = True
    pre = _latest_per_serotype(pre_all)
    if early_days and not post_all:
        problems.append(f"titers drawn {min(early_days)} days after PPSV23 are too early "
                        f"for a response ({min_days}–{max_days} days)")
    post = _latest_per_serotype(post_all)
    age_at_test = age_years(birth_date, post[-1].when) if (birth_date and post) else None
    required = (config.ppsv23_protective_fraction_young_child
                if age_at_test is not None and age_at_test < config.young_child_age_years
                else config.ppsv23_protective_fraction)
    base = dict(vaccination=chosen, pre=pre, post=post, required_fraction=required)
    if not post:
        if drawn_late:
            problems.append(f"titers after PPSV23 of {fmt_date(chosen)} were drawn later than "
                            f"{config.post_titer_max_days} days — not a post-vaccination response")
        return PneumococcalResponse("no-post-titers", **base, problems=tuple(problems))
    confounded = [t for t in post if t.confounded_by is not None]
    if confounded:
        problems.append(f"post-vaccination titers were drawn within {config.ivig_confounding_months} months after "
                        f"IVIG/SCIG of {fmt_date(confounded[0].confounded_by)} — they reflect donor antibody, not the patient's")
        return PneumococcalResponse("confounded", **base, problems=tuple(problems))
    stale_before = add_months(today, -config.stale_lab_months)
    if max(t.when for t in post) < stale_before:
        problems.append(f"post-vaccination titers are older than {config.stale_lab_months} months — treated as missing")
        return PneumococcalResponse("stale", **base, problems=tuple(problems))
    threshold = config.titer_protective_ug_ml
    protective = 0
    for t in post:
        if t.measured.certainly_at_least(threshold):
            protective += 1
    tested = len(post)
    fraction = protective / tested
    if fraction < required:
        return PneumococcalResponse("impaired", **base, protective=protective, tested=tested, problems=tuple(problems))
    if not pre:
        problems.append("pre-vaccination titers are missing: protective post titers may reflect earlier exposure")
        return PneumococcalResponse("no-pre-titers", **base, protective=protective, tested=tested, problems=tuple(problems))
    return PneumococcalResponse("adequate", **base, protective=protective, tested=tested, problems=tuple(problems))


# ------------------------------------------------------------------ infections


def _condition_date(cond: Any) -> date | None:
    for value in (cond.onsetDateTime, getattr(cond.onsetPeriod, "start", None), cond.recordedDate):
        d = as_date(value)
        if d is not None:
            return d
    return None


_ACTIVE_CLINICAL = frozenset({"active", "recurrence", "relapse"})
_ABATEMENT_FIELDS = ("abatementDateTime", "abatementPeriod", "abatementAge", "abatementRange", "abatementString")


def _condition_active(cond: Any, onset: date, today: date, config: GuidelineConfig) -> bool:
    """Still going on: active (recurrence, relapse) and not abated; without a clinical status, a
    recent onset (an infection recorded days ago, not said to be resolved, is treated as active)."""
    for name in _ABATEMENT_FIELDS:
        if getattr(cond, name, None) is not None:
            return False
    status = _code_of(cond.clinicalStatus)
    if status is None:
        return (today - onset).days <= config.active_infection_days
    return status in _ACTIVE_CLINICAL


def _is_infection(concept: Any) -> tuple[bool, bool, bool, bool]:
    """(infection, severe, life-threatening, encapsulated) from codes and text. A minor infection is
    only asked about when it is not severe, the organism only when it is an infection."""
    texts, codes = _texts_codes(concept)
    severe = _named_in(vs.SEVERE_INFECTIONS, texts, codes)
    life = _named_in(vs.LIFE_THREATENING_INFECTIONS, texts, codes)
    infection = severe or life or _named_in(vs.MINOR_INFECTIONS, texts, codes)
    encapsulated = infection and _named_in(vs.ENCAPSULATED_ORGANISM_INFECTIONS, texts, codes)
    return infection, (severe or life), life, encapsulated


def _encounter_flags(enc: Any) -> tuple[bool, bool]:
    """(inpatient, intensive care)."""
    cls = enc.class_fhir
    codes = {getattr(cls, "code", None), getattr(cls, "display", None)}
    inpatient = bool(codes & vs.INPATIENT_CLASSES)
    texts: list[str] = []
    for concept in list(enc.type or ()) + ([enc.serviceType] if enc.serviceType else []):
        t, c = _texts_codes(concept)
        texts += t
        if any(code in vs.SNOMED_INTENSIVE_CARE for _, code in c):
            return True, True
    for loc in enc.location or ():
        if loc.location is not None and loc.location.display:
            texts.append(loc.location.display)
    joined = " ".join(texts)
    if vs.TEXT_INPATIENT.search(joined):
        inpatient = True
    icu = bool(vs.TEXT_INTENSIVE_CARE.search(joined)) or any(v and vs.TEXT_INTENSIVE_CARE.search(str(v)) for v in codes)
    return inpatient or icu, icu


def extract_infections(read: ReadResult, today: date, config: GuidelineConfig, clinical_dates: Iterable[date],
                       unavailable: Mapping[str, str], anchor: date | None = None) -> InfectionHistory:
    """Infection episodes from ``anchor`` - window to today (``anchor`` = today, or the first IVIG
    dose for a patient on treatment: the infections that made the indication came before it)."""
    window_start = add_months(min(anchor or today, today), -config.infection_window_months)
    problems: list[str] = []
    events: list[Infection] = []
    condition_by_id: dict[str, Any] = {}
    for cond in read.of("Condition"):
        rid = read.raw_id(cond) or cond.id
        if rid:
            condition_by_id[bare_id(rid) or rid] = cond
    hospital_encounters: dict[str, tuple[date, bool]] = {}
    for enc in read.of("Encounter"):
        if _code_of(enc.status) in ("cancelled", "entered-in-error", "planned"):
            continue
        start = as_date(getattr(enc.period, "start", None))
        if start is None or start > today:
            continue
        inpatient, icu = _encounter_flags(enc)
        rid = bare_id(read.raw_id(enc) or enc.id or "")
        if inpatient and rid:
            hospital_encounters[rid] = (start, icu)
        if start < window_start:
            continue
        reasons = list(enc.reasonCode or ())
        for diag in enc.diagnosis or ():
            target = condition_by_id.get(bare_id(getattr(diag.condition, "reference", None)) or "")
            if target is not None:
                reasons.append(target.code)
        for ref in enc.reasonReference or ():
            target = condition_by_id.get(bare_id(ref.reference) or "")
            if target is not None:
                reasons.append(target.code)
        infection = [(c, _is_infection(c)) for c in reasons if c is not None]
        infection = [(c, flags) for c, flags in infection if flags[0]]
        if infection and inpatient:
            concept, (_, severe, life, encapsulated) = infection[0]
            events.append(Infection(start, concept_label(concept), True, life or icu,
                                    any(f[3] for _, f in infection), True, (_label(enc, read),),
                                    active=_code_of(enc.status) in ("in-progress", "arrived", "triaged")))
    for cond in read.of("Condition"):
        verification = _code_of(cond.verificationStatus)
        if verification in ("refuted", "entered-in-error"):
            continue
        when = _condition_date(cond)
        if when is None or when > today or when < window_start:
            continue
        infection, severe, life, encapsulated = _is_infection(cond.code)
        if not infection:
            continue
        hospitalised = False
        enc_ref = bare_id(getattr(cond.encounter, "reference", None)) if cond.encounter else None
        if enc_ref and enc_ref in hospital_encounters:
            hospitalised = True
            life = life or hospital_encounters[enc_ref][1]
        events.append(Infection(when, concept_label(cond.code), severe or hospitalised, life, encapsulated,
                                hospitalised, (_label(cond, read),), active=_condition_active(cond, when, today, config)))
    episodes = _merge(events, config.infection_episode_merge_days)
    missing_keys = [k for k in ("conditions", "encounters") if k in unavailable]
    known = bool(episodes) or any(window_start <= d <= today for d in clinical_dates)
    if missing_keys and not episodes:
        known = False  # which keys, and why, is said with the other unavailable data (unavailable_lines)
    elif not known:
        problems.append(f"no clinical data in the last {config.infection_window_months} months: infection history unknown")
    return InfectionHistory(known, window_start, tuple(episodes), tuple(problems))


def _merge(events: list[Infection], merge_days: int) -> list[Infection]:
    """Records of one illness (its Condition, its admission) become one episode."""
    merged: list[Infection] = []
    for ev in sorted(events, key=lambda e: e.when):
        last = merged[-1] if merged else None
        if last is None or (ev.when - last.when).days > merge_days:
            merged.append(ev)
            continue
        merged[-1] = replace(
            last,
            label=ev.label if ev.severe and not last.severe else last.label,
            severe=last.severe or ev.severe,
            life_threatening=last.life_threatening or ev.life_threatening,
            encapsulated=last.encapsulated or ev.encapsulated,
            hospitalised=last.hospitalised or ev.hospitalised,
            sources=last.sources + ev.sources,
            active=last.active or ev.active,
        )
    return merged


# ------------------------------------------------------------------ the rest


def _subsets(read: ReadResult, today: date, config: GuidelineConfig) -> frozenset[str]:
    stale_before = add_months(today, -config.stale_lab_months)
    present = set()
    for kind, obs in ((k, o) for k in ("CD19", "CD4", "CD8", "CD3", "memory B") for o in read.observations(k)):
        if obs.status not in FINAL_STATUSES:
            continue
        when = obs.drawn
        if when is not None and stale_before <= when <= today:
            present.add(kind)
    return frozenset(present)


REQUIRED_SUBSETS = ("CD19", "CD4", "CD8")


def _weight(read: ReadResult, today: date, config: GuidelineConfig, problems: list[str],
            age: float | None) -> LabValue | None:
    adult = age is not None and age >= config.adult_age_years
    low = config.adult_weight_plausible_min_kg if adult else config.weight_plausible_min_kg
    values = _lab_values(read, "weight", today, config, (), problems, convert=to_kg, unit="kg",
                         plausible=(low, config.weight_plausible_max_kg))
    if not values:
        return None
    latest = values[-1]
    if latest.when < add_months(today, -config.weight_stale_months):
        problems.append(_unused("Body weight", latest.when, f"{latest.measured.display('kg')} is older than "
                                                           f"{config.weight_stale_months} months"))
        return None
    return latest


def _diagnoses(read: ReadResult, today: date) -> tuple[str | None, tuple[str, ...]]:
    hyper = None
    other: list[str] = []
    for cond in read.of("Condition"):
        if _code_of(cond.verificationStatus) in ("refuted", "entered-in-error"):
            continue
        clinical = _code_of(cond.clinicalStatus)
        if concept_in(cond.code, vs.HYPER_IGM_DIAGNOSES):
            hyper = concept_label(cond.code)
        if clinical in (None, "active", "recurrence", "relapse") and concept_in(cond.code, vs.OTHER_IVIG_INDICATIONS):
            other.append(concept_label(cond.code))
    return hyper, tuple(dict.fromkeys(other))


def _before(level: LabValue, dose: IvigDose) -> bool:
    """Drawn before an infusion given the same day: by the clock when both times are known, else
    assumed (a level on an infusion day is its trough unless the record says it came after)."""
    if level.at is None or dose.at is None:
        return True
    try:
        return level.at < dose.at
    except TypeError:  # one time with a zone, one without: cannot compare, assume before
        return True


def treatment_levels(igg: Iterable[LabValue], ivig: IvigHistory, config: GuidelineConfig) -> tuple[TreatmentLevel, ...]:
    """Every IgG since treatment started, as a trough or a mid-interval level (criteria: the trough
    is measured immediately before an infusion).

    A level is the trough of an infusion given the same day (drawn before it, or at an unknown
    time) or up to ``trough_max_days_before_infusion`` days later. After the last infusion on record
    it is the trough of the next one once that is due (the patient's usual interval less that
    margin). Otherwise it was drawn days after an infusion: a mid-interval level. On SCIG levels are
    steady: every level counts. Without any infusion on record (only orders or statements) there is
    nothing to tell them apart by, and every level counts as a trough.
    """
    first = ivig.first_dose
    if first is None:
        return ()
    infusions = [d for d in ivig.doses if d.infusion]
    margin = config.trough_max_days_before_infusion
    due_after = ivig.usual_interval_days(7 * config.interval_min_weeks) - margin
    out: list[TreatmentLevel] = []
    for level in igg:
        if level.when < first:
            continue
        if ivig.subcutaneous:
            out.append(TreatmentLevel(level, LevelTiming.STEADY_STATE))
            continue
        if not infusions:
            out.append(TreatmentLevel(level, LevelTiming.TROUGH))
            continue
        same_day = next((d for d in infusions if d.when == level.when), None)
        if same_day is not None:
            timing = LevelTiming.TROUGH if _before(level, same_day) else LevelTiming.MID_INTERVAL
            out.append(TreatmentLevel(level, timing, same_day.when))
            continue
        following = next((d for d in infusions if d.when > level.when), None)
        if following is not None and (following.when - level.when).days <= margin:
            out.append(TreatmentLevel(level, LevelTiming.TROUGH, following.when))
            continue
        preceding = next((d for d in reversed(infusions) if d.when < level.when), None)
        if preceding is None:  # before the first infusion on record: the baseline of treatment
            out.append(TreatmentLevel(level, LevelTiming.TROUGH, following.when if following else None))
        elif following is None and (level.when - preceding.when).days >= due_after:
            out.append(TreatmentLevel(level, LevelTiming.TROUGH))
        else:
            out.append(TreatmentLevel(level, LevelTiming.MID_INTERVAL, preceding.when))
    return tuple(out)


def extract_facts(read: ReadResult, today: date, config: GuidelineConfig, *,
                  clinical_dates: Iterable[date] = (), unavailable: Mapping[str, str] | None = None,
                  exclude_orders: frozenset[str] = frozenset()) -> Facts:
    """All facts for one patient as of ``today``.

    ``clinical_dates``: dates of any clinical data in the record (for "no infections" vs
    "infection history unknown"); ``exclude_orders``: labels of the draft orders being signed,
    which are not history.
    """
    unavailable = dict(unavailable or {})
    patients = read.of("Patient")
    birth = as_date(patients[0].birthDate) if patients else None
    age = age_years(birth, today) if birth else None
    ivig = extract_ivig_history(read, today, config, exclude_orders)
    problems: list[str] = []
    igm_p: list[str] = []
    igg_p: list[str] = []
    iga_p: list[str] = []
    igm_vals = _lab_values(read, "IgM", today, config, ivig.doses, igm_p)
    igg_vals = _lab_values(read, "IgG", today, config, ivig.doses, igg_p)
    iga_vals = _lab_values(read, "IgA", today, config, ivig.doses, iga_p)
    igm = _analyte("IgM", igm_vals, config.igm_low_mg_dl, age, config, ivig, igm_p)
    igg = _analyte("IgG", igg_vals, config.igg_deficient_mg_dl, age, config, ivig, igg_p)
    iga = _analyte("IgA", iga_vals, config.iga_low_mg_dl, age, config, ivig, iga_p, range_for_adults=True)
    levels = treatment_levels(igg_vals, ivig, config) if ivig.on_treatment else ()
    troughs = [lv.value for lv in levels if lv.timing is not LevelTiming.MID_INTERVAL]
    trough = troughs[-1] if troughs else None
    pneumo = extract_pneumococcal(read, today, config, birth, ivig.doses)
    anchor = ivig.first_dose if ivig.on_treatment else None
    infections = extract_infections(read, today, config, clinical_dates, unavailable, anchor)
    subsets = _subsets(read, today, config)
    weight = _weight(read, today, config, problems, age)
    hyper, other = _diagnoses(read, today)
    if not patients and "patient" not in unavailable:
        problems.append("no Patient resource: age unknown, adult thresholds used where the lab gives no range")
    problems += read_problems(read) + unavailable_lines(unavailable)
    return Facts(
        today=today,
        birth_date=birth,
        age=age,
        igm=igm,
        igg=igg,
        iga=iga,
        pneumococcal=pneumo,
        infections=infections,
        ivig=ivig,
        trough=trough,
        treatment_levels=levels,
        weight=weight,
        lymphocyte_subsets=subsets,
        lymphocyte_subsets_missing=tuple(s for s in REQUIRED_SUBSETS if s not in subsets),
        hyper_igm_diagnosis=hyper,
        other_indications=other,
        data_problems=tuple(problems),
        unavailable=unavailable,
    )


#: what the prefetch keys hold, in words (a card never names a key)
PREFETCH_WORDS = {
    "patient": "the patient's demographics", "immunoglobulins": "immunoglobulin results",
    "pneumococcalTiters": "pneumococcal titers", "weight": "body weight", "conditions": "diagnoses",
    "encounters": "encounters", "immunizations": "immunizations", "medicationRequests": "medication orders",
    "medicationAdministrations": "medication administrations", "procedures": "procedures",
}


def _words(key: str) -> str:
    return PREFETCH_WORDS.get(key) or re.sub(r"(?<=[a-z])(?=[A-Z])", " ", key).lower()


def _listed(items: list[str], at_most: int = 4) -> str:
    shown = ", ".join(items[:at_most])
    return shown + (f" and {len(items) - at_most} more" if len(items) > at_most else "")


def unavailable_lines(unavailable: Mapping[str, str]) -> list[str]:
    """One line per reason: 'Diagnoses, encounters could not be read from the EHR (the FHIR server timed out)'."""
    by_reason: dict[str, list[str]] = {}
    for key, reason in unavailable.items():
        by_reason.setdefault(reason, []).append(_words(key))
    lines = []
    for reason, what in by_reason.items():
        text = _listed(what, at_most=6)
        lines.append(f"{text[:1].upper() + text[1:]} could not be read from the EHR ({reason})")
    return lines


def read_problems(read: ReadResult) -> list[str]:
    """Every resource that could not be read, named — one line per reason, so that a record with many
    bad entries still fits the card: 'Observation/bad-1, Observation/bad-2: not valid FHIR R4 ... — not used'."""
    by_reason: dict[str, list[str]] = {}
    for skipped in read.skipped:
        by_reason.setdefault(skipped.reason, []).append(skipped.resource)
    return [f"{_listed(resources)}: {reason} — not used" for reason, resources in by_reason.items()]
