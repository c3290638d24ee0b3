"""Unit normalisation: immunoglobulins to mg/dL, titers to ug/mL, weight to kg.

codes.md: g/L x 100 = mg/dL; mg/L / 10 = mg/dL; for titers ug/mL = mg/L. Anything else is not
guessed: ``None`` comes back and the caller reports the value as missing with the reason.
A comparator ("<7") is kept: the value becomes a bound, not a number.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

#: unit spelling (lower-case, spaces removed) -> factor to mg/dL
_TO_MG_DL = {
    "mg/dl": 1.0,
    "mg/100ml": 1.0,
    "g/l": 100.0,
    "mg/l": 0.1,
    "g/dl": 1000.0,
    "mg/ml": 100.0,
}
#: -> factor to ug/mL (serotype-specific IgG)
_TO_UG_ML = {
    "ug/ml": 1.0,
    "µg/ml": 1.0,
    "μg/ml": 1.0,
    "mcg/ml": 1.0,
    "mg/l": 1.0,
    "ug/l": 0.001,
    "ng/ml": 0.001,
}
#: -> factor to kg
_TO_KG = {
    "kg": 1.0,
    "g": 0.001,
    "[lb_av]": 0.45359237,
    "lb": 0.45359237,
    "lbs": 0.45359237,
    "[oz_av]": 0.028349523125,
}
#: Dose units -> (factor, per_kg): g, mg, and the same per kg of body weight.
_DOSE = {
    "g": (1.0, False),
    "gm": (1.0, False),
    "gram": (1.0, False),
    "grams": (1.0, False),
    "mg": (0.001, False),
    "g/kg": (1.0, True),
    "mg/kg": (0.001, True),
    "gm/kg": (1.0, True),
}

COMPARATORS = ("<=", ">=", "<", ">")


@functools.lru_cache(maxsize=1024)
def _key(unit: str | None) -> str:
    """A unit as the tables spell it: lower case, no spaces or braces (once per spelling seen:
    every result of a lab's test is sent in the same unit)."""
    return unit.strip().lower().replace(" ", "").replace("{", "").replace("}", "") if unit else ""


@dataclass(frozen=True, init=False)
class Measured:
    """A normalised number, possibly only a bound ('<7' means below 7).

    Made for every result of every record: ``__init__`` sets the fields straight into the
    instance, instead of the generated one's ``object.__setattr__`` per field."""

    value: float
    comparator: str | None = None

    def __init__(self, value: float, comparator: str | None = None) -> None:
        fields = vars(self)
        fields["value"] = value
        fields["comparator"] = comparator

    def certainly_below(self, threshold: float) -> bool | None:
        """True/False when the result decides it; None when a bound leaves it open."""
        if self.comparator is None:
            return self.value < threshold
        if self.comparator in ("<", "<="):
            return True if self.value <= threshold else None
        # '>' or '>=': at least value
        return False if self.value >= threshold else None

    def certainly_at_least(self, threshold: float) -> bool | None:
        below = self.certainly_below(threshold)
        return None if below is None else not below

    def display(self, unit: str, digits: int = 0) -> str:
        number = f"{self.value:.{digits}f}" if digits else f"{self.value:g}"
        return f"{self.comparator or ''}{number} {unit}"


def _convert(value: float, unit: str | None, table: dict[str, float]) -> float | None:
    factor = table.get(_key(unit))
    return None if factor is None else value * factor


def to_mg_dl(value: float, unit: str | None) -> float | None:
    """An immunoglobulin concentration in mg/dL, or None for a unit that is not known."""
    return _convert(value, unit, _TO_MG_DL)


def to_ug_ml(value: float, unit: str | None) -> float | None:
    """A serotype-specific antibody concentration in ug/mL, or None."""
    return _convert(value, unit, _TO_UG_ML)


def to_kg(value: float, unit: str | None) -> float | None:
    return _convert(value, unit, _TO_KG)


def dose_in_grams(value: float, unit: str | None) -> tuple[float, bool] | None:
    """(grams, per_kg) for a dose quantity; None when the unit is not a mass (e.g. mL)."""
    entry = _DOSE.get(_key(unit))
    if entry is None:
        return None
    factor, per_kg = entry
    return value * factor, per_kg


#: Volume units -> factor to mL (a dose in mL of a product of known concentration is a mass)
_TO_ML = {"ml": 1.0, "cm3": 1.0, "cc": 1.0, "l": 1000.0, "dl": 100.0}


def volume_in_ml(value: float, unit: str | None) -> float | None:
    """A volume in mL, or None when the unit is not a volume."""
    return _convert(value, unit, _TO_ML)


_ANNOTATION = re.compile(r"\{([^}]*)\}")
_UCUM_DISPLAY = {"[lb_av]": "lb", "[oz_av]": "oz", "[in_i]": "in", "ug": "µg"}


def display_unit(unit: str | None) -> str:
    """A unit as a clinician writes it: UCUM annotations without braces ('{pill}' -> 'pill'),
    customary units by their names ('[lb_av]' -> 'lb')."""
    text = (unit or "").strip()
    for code, shown in _UCUM_DISPLAY.items():
        text = text.replace(code, shown)
    return _ANNOTATION.sub(lambda m: m.group(1), text).strip()


_VALUE_STRING = re.compile(r"^\s*(<=|>=|<|>|≤|≥)?\s*([0-9]+(?:[.,][0-9]+)?)\s*(\S.*)?$")


def parse_value_string(text: str) -> tuple[str | None, float, str | None] | None:
    """'<7 mg/dL' -> ('<', 7.0, 'mg/dL'); None when the text is not a number."""
    match = _VALUE_STRING.match(text or "")
    if not match:
        return None
    comparator = {"≤": "<=", "≥": ">="}.get(match.group(1) or "", match.group(1))
    return comparator, float(match.group(2).replace(",", ".")), (match.group(3) or None)
