"""Date arithmetic the guideline speaks in: months back from today, ages, FHIR partial dates."""

from __future__ import annotations

import calendar
from datetime import date, datetime
from typing import Any


def add_months(day: date, months: int) -> date:
    """Calendar months, clamped to the month's end (2026-03-31 minus 1 month = 2026-02-28).

    Every month has a 28th: only a later day needs the length of the month it lands in."""
    total = day.year * 12 + (day.month - 1) + months
    year, month = divmod(total, 12)
    month += 1
    if day.day <= 28:
        return date(year, month, day.day)
    return date(year, month, min(day.day, calendar.monthrange(year, month)[1]))


def as_date(value: Any) -> date | None:
    """A date from a FHIR date/dateTime/instant, a model value or a partial date ('2026', '2026-03').

    Partial dates take their first day: a result "in 2025" counts from 2025-01-01.
    """
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    text = str(value).strip()
    try:
        if len(text) == 4:
            return date(int(text), 1, 1)
        if len(text) == 7:
            return date(int(text[:4]), int(text[5:7]), 1)
        return date.fromisoformat(text[:10])
    except ValueError:
        return None


def age_years(birth: date, on: date) -> float:
    """Age in years (fractional, for the < 6 y and < 18 y thresholds)."""
    whole = on.year - birth.year - ((on.month, on.day) < (birth.month, birth.day))
    anniversary = add_months(birth, 12 * whole)
    next_anniversary = add_months(birth, 12 * (whole + 1))
    span = (next_anniversary - anniversary).days or 365
    return whole + (on - anniversary).days / span


def fmt_date(day: date | None) -> str:
    return day.isoformat() if day else "unknown date"
