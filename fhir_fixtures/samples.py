"""Built-in sample patients: what the development profile answers with when a request brings no data.

``ivig-cds serve`` with no options has no EHR behind it; a newcomer (or the README's curl
example) can still call the hooks with ``patientId`` set to a sample patient's id and get the
cards of that situation, dated relative to today.
"""

from __future__ import annotations

from datetime import date
from functools import lru_cache
from typing import Any, Mapping
from urllib.parse import unquote

import fhir_fixtures


@lru_cache(maxsize=None)
def sample_ids() -> dict[str, str]:
    """patient id -> scenario name, for the scenarios marked as samples."""
    out = {}
    for name in fhir_fixtures.scenario_names():
        expected = fhir_fixtures.load_json(name, "expected.json") or {}
        if expected.get("sample"):
            out[expected["patientId"]] = name
    return out


def _matches(resource: Mapping[str, Any], template: str) -> bool:
    """Whether a resource answers one of our prefetch templates (type, and code for Observations)."""
    rtype = template.split("?")[0].split("/")[0]
    if resource.get("resourceType") != rtype:
        return False
    if rtype != "Observation" or ("code=" not in template and "code:text=" not in template):
        return True
    query = template.split("?", 1)[1]
    text = " ".join(str(c.get("display", "")) for c in resource.get("code", {}).get("coding", ())) + " " + \
        str(resource.get("code", {}).get("text", ""))
    if "code:text=" in query:
        words = unquote(query.split("code:text=", 1)[1].split("&")[0])
        return words.lower() in text.lower()
    codes = {c.split("|")[-1] for c in query.split("code=", 1)[1].split("&")[0].split(",")}
    return any(c.get("code") in codes for c in resource.get("code", {}).get("coding", ()))


def prefetch_for(patient_id: str, templates: Mapping[str, str], today: date) -> dict[str, Any] | None:
    """Prefetch values for a sample patient (as an EHR would send them), or None when it is not one."""
    name = sample_ids().get(patient_id)
    if name is None:
        return None
    record = fhir_fixtures.load_scenario(name, today)["bundle"]
    resources = [e["resource"] for e in record.get("entry", [])]
    out: dict[str, Any] = {}
    for key, template in templates.items():
        matching = [r for r in resources if _matches(r, template)]
        if template.startswith("Patient/"):
            out[key] = matching[0] if matching else None
        else:
            out[key] = {"resourceType": "Bundle", "type": "searchset", "total": len(matching),
                        "entry": [{"resource": r} for r in matching]}
    return out
