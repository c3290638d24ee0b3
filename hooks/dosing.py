"""An immune globulin order's regimen, in the guideline's terms: grams (per kg) per infusion, and how often.

Orders arrive in many shapes: a mass (35 g), a mass per kg (0.5 g/kg), a volume of a product of
known concentration (350 mL of a 10 % solution = 35 g), a multi-day course (0.2 g/kg daily for 2
days, every 4 weeks), weekly SCIG. Each is read as what it is; a dose that cannot be expressed as
a mass (a unit such as "{pill}", a volume of unknown concentration) is said once, not guessed.
Intervals are worded as a prescriber writes them ("every 4 weeks", "twice a day"), never as
fractions of weeks.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Iterable

from hooks import valuesets as vs
from hooks.units import display_unit, dose_in_grams, volume_in_ml

_PERIOD_DAYS = {"s": 1 / 86400, "min": 1 / 1440, "h": 1 / 24, "d": 1, "wk": 7, "mo": 30.4375, "a": 365.25}
_EVERY_TEXT = re.compile(r"(?:every|q)\s*(\d+(?:\.\d+)?)\s*(w(?:ee)?ks?|wk|d(?:ays?)?|mo(?:nths?)?)\b", re.IGNORECASE)
_FOR_DAYS_TEXT = re.compile(r"(?:x|for|over)\s*(\d{1,2})\s*(?:consecutive\s+)?days?\b", re.IGNORECASE)
_PERCENT = re.compile(r"(\d{1,2}(?:[.,]\d)?)\s*%")
_MG_PER_ML = re.compile(r"(\d{2,3})\s*mg\s*/\s*m[lL]\b")


@dataclass(frozen=True)
class Regimen:
    """What one order gives. ``grams``/``g_per_kg`` are per infusion or per course (a course's daily
    doses summed); ``every_days`` is the time between infusions or courses."""

    ordered: str  # the dose as written: "350 mL", "0.5 g/kg", "2 pill"
    grams: float | None = None
    g_per_kg: float | None = None
    #: how the mass was found, when it was not ordered as one: "350 mL of a 10 % solution"
    derived: str = ""
    #: "daily for 2 days": a course of several doses that counts as one infusion
    course: str = ""
    every_days: float | None = None
    #: why the dose cannot be checked as a mass per kg ("2 pill is not a mass")
    not_a_mass: str | None = None

    @property
    def has_dose(self) -> bool:
        return self.ordered != ""


def interval_words(days: float) -> str:
    """'every 4 weeks', 'weekly', 'every 10 days', 'daily', 'twice a day', 'every 8 hours'."""
    if days <= 0:
        return "at no interval"
    if days < 1:
        per_day = 1 / days
        if abs(per_day - round(per_day)) < 0.05 and round(per_day) in (2, 3, 4):
            return {2: "twice a day", 3: "three times a day", 4: "four times a day"}[round(per_day)]
        return f"every {round(days * 24)} hours"
    weeks = days / 7
    if abs(weeks - round(weeks)) < 0.02 and round(weeks) >= 1:
        return "weekly" if round(weeks) == 1 else f"every {round(weeks)} weeks"
    if abs(days - 1) < 0.01:
        return "daily"
    return f"every {round(days)} days"


def concentration_g_per_ml(medication: Any, concepts: Iterable[Any]) -> tuple[float, str] | None:
    """The product's concentration (g/mL) and how it is known: the Medication's ingredient strength,
    a percentage or mg/mL in its name, or the single concentration a brand is sold in."""
    for ingredient in getattr(medication, "ingredient", None) or ():
        strength = getattr(ingredient, "strength", None)
        num, den = getattr(strength, "numerator", None), getattr(strength, "denominator", None)
        if num is None or den is None or num.value is None or den.value in (None, 0):
            continue
        grams = dose_in_grams(float(num.value), num.code or num.unit)
        ml = volume_in_ml(float(den.value), den.code or den.unit)
        if grams is not None and not grams[1] and ml:
            g_per_ml = grams[0] / ml
            return g_per_ml, f"a {100 * g_per_ml:g} % solution"
    texts = []
    for concept in concepts:
        if getattr(concept, "text", None):
            texts.append(concept.text)
        texts += [c.display for c in getattr(concept, "coding", None) or () if getattr(c, "display", None)]
    joined = " ".join(texts)
    match = _PERCENT.search(joined)
    if match:
        percent = float(match.group(1).replace(",", "."))
        if 0 < percent <= 30:
            return percent / 100, f"a {percent:g} % solution"
    match = _MG_PER_ML.search(joined)
    if match:
        return int(match.group(1)) / 1000, f"a {int(match.group(1)) / 10:g} % solution"
    lowered = joined.lower()
    for brand, percent in vs.SINGLE_CONCENTRATION_PRODUCTS.items():
        if brand in lowered:
            return percent / 100, f"{brand.title()} {percent:g} %"
    return None


def _repeat_days(repeat: Any) -> float | None:
    if repeat is None or not repeat.period or not repeat.periodUnit:
        return None
    per = float(repeat.period) * _PERIOD_DAYS.get(str(repeat.periodUnit), 0)
    return per / float(repeat.frequency or 1) if per else None


def _course_days(repeat: Any, text: str) -> int | None:
    """The number of days a daily (or more often) schedule is limited to, if any."""
    if repeat is not None:
        bounds = getattr(repeat, "boundsDuration", None)
        if bounds is not None and bounds.value and str(bounds.code or bounds.unit or "") in ("d", "day", "days"):
            return int(bounds.value)
        if repeat.count and repeat.count > 1:
            per = _repeat_days(repeat) or 1
            return max(1, round(int(repeat.count) * per))
    match = _FOR_DAYS_TEXT.search(text or "")
    return int(match.group(1)) if match else None


def read_regimen(order: Any, medication: Any, concepts: list[Any]) -> Regimen:
    """The regimen of one order (a MedicationRequest-like model with ``dosageInstruction``)."""
    dosages = getattr(order, "dosageInstruction", None) or getattr(order, "dosage", None) or ()
    value = unit = None
    every = None
    text = ""
    repeat = None
    for dosage in dosages:
        text = dosage.text or text
        for dr in dosage.doseAndRate or ():
            q = dr.doseQuantity
            if q is not None and q.value is not None:
                value, unit = float(q.value), (q.code if q.system == vs.UCUM and q.code else (q.unit or q.code))
                break
        repeat = getattr(getattr(dosage, "timing", None), "repeat", None) or repeat
        if value is not None:
            break
    per_dose = _repeat_days(repeat)
    course_days = _course_days(repeat, text) if per_dose is None or per_dose <= 1 else None
    text_every = _EVERY_TEXT.search(text or "")
    if text_every:
        n, u = float(text_every.group(1)), text_every.group(2).lower()
        text_days = n * _PERIOD_DAYS["wk" if u.startswith("w") else "mo" if u.startswith("mo") else "d"]
    else:
        text_days = None
    course = ""
    doses = 1
    if course_days and course_days > 1:
        doses = max(1, round(course_days / (per_dose or 1)))
        course = f"{interval_words(per_dose or 1)} for {course_days} days"
        every = text_days if text_days and text_days > course_days else None
    else:
        every = per_dose if per_dose is not None else text_days
    if value is None:
        return Regimen("", every_days=every, course=course)
    ordered = f"{value:g} {display_unit(unit)}".strip()
    mass = dose_in_grams(value, unit)
    if mass is not None:
        amount, per_kg = mass
        total = amount * doses
        derived = f"{ordered} {course}" if course else ""
        return (Regimen(ordered, g_per_kg=total, derived=derived, course=course, every_days=every) if per_kg
                else Regimen(ordered, grams=total, derived=derived, course=course, every_days=every))
    ml = volume_in_ml(value, unit)
    if ml is not None:
        concentration = concentration_g_per_ml(medication, concepts)
        if concentration is None:
            return Regimen(ordered, course=course, every_days=every,
                           not_a_mass=f"{ordered} of a product of unknown concentration")
        g_per_ml, how = concentration
        derived = f"{ordered} of {how}" + (f", {course}" if course else "")
        return Regimen(ordered, grams=ml * g_per_ml * doses, derived=derived, course=course, every_days=every)
    return Regimen(ordered, course=course, every_days=every, not_a_mass=f"{ordered} is not a mass or volume")
