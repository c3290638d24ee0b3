"""Built-in sample patients: the data the development profile answers with when a request brings none."""

from __future__ import annotations

from datetime import date
from typing import Any, Mapping


def prefetch_for(patient_id: str, templates: Mapping[str, str], today: date) -> dict[str, Any] | None:
    """Prefetch values for a sample patient, or None when ``patient_id`` is not one."""
    return None
