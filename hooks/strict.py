"""Every resource of a record validated with fhir.resources R4B, the model of record.

The service reads leniently (hooks/fhir_read.py): what it cannot use it skips with a reason and
what the rules do not read it does not check. An integrator preparing a feed wants the opposite
question answered: is each resource valid FHIR R4, as a strict reader would take it? This is
that check, for ``ivig-cds evaluate --strict``; it is never on the path of a hook call
(fhir.resources validates every element and costs a hundred times the rules' reading).
"""

from __future__ import annotations

from typing import Any, Iterable

from pydantic import ValidationError

from hooks.fhir_read import iter_resources

_MAX_ERRORS = 5


def _label(resource: dict[str, Any]) -> str:
    rid = resource.get("id")
    return f"{resource.get('resourceType')}/{rid}" if isinstance(rid, str) and rid else f"{resource.get('resourceType')} (no id)"


def _error(err: dict[str, Any]) -> str:
    loc = ".".join(str(p) for p in err.get("loc", ()))
    return f"{loc or 'resource'}: {err.get('msg', 'invalid')}"


def validate_strictly(values: Iterable[Any]) -> dict[str, Any]:
    """``{"checked": n, "valid": n, "invalid": [{"resource": ..., "errors": [...]}]}`` for every
    resource in ``values`` (resources, Bundles, lists), each against its R4B model."""
    from fhir.resources.R4B import get_fhir_model_class  # noqa: PLC0415 - only this check pays its import

    invalid: list[dict[str, Any]] = []
    checked = 0
    for resource in iter_resources(list(values)):
        checked += 1
        try:
            model = get_fhir_model_class(str(resource["resourceType"]))
        except ValueError:
            invalid.append({"resource": _label(resource), "errors": ["resourceType: not a FHIR R4 resource type"]})
            continue
        try:
            model.model_validate(resource)
        except ValidationError as exc:
            errors = exc.errors()
            invalid.append({"resource": _label(resource), "errors": [_error(e) for e in errors[:_MAX_ERRORS]]
                            + ([f"... {len(errors) - _MAX_ERRORS} more"] if len(errors) > _MAX_ERRORS else [])})
    return {"checked": checked, "valid": checked - len(invalid), "invalid": invalid}
