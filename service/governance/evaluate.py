"""``ivig-cds evaluate``: a hook run offline on a file — the clinician-informaticist's checking tool.

FILE is a CDS Hooks request (its hook and context are used) or a FHIR Bundle of one patient's
record (every resource goes in as prefetch; for order-sign/order-select the orders in the
Bundle whose status is ``draft`` become the draft orders). The output is JSON with the cards
and the decision trace, exactly as the service would decide on ``--today``; with ``--strict``,
also every resource of the file validated with fhir.resources R4B (hooks/strict.py).
"""

from __future__ import annotations

import json
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any

import hooks
from hooks.fhir_read import bare_id, iter_resources
from hooks.orders import ORDER_TYPES
from hooks.ruleset import ruleset_version
from hooks.service_def import HookRequest
from service.settings import Settings


def _service_for(hook: str):
    for service in hooks.SERVICES.values():
        if service.hook == hook:
            return service
    raise ValueError(f"no service for hook {hook!r}")


def _from_bundle(bundle: dict[str, Any], hook: str) -> tuple[dict[str, Any], dict[str, Any]]:
    resources = list(iter_resources(bundle))
    patient = next((r for r in resources if r.get("resourceType") == "Patient"), None)
    patient_id = bare_id(patient.get("id")) if patient and isinstance(patient.get("id"), str) else "unknown"
    drafts = [r for r in resources if r.get("resourceType") in ORDER_TYPES and r.get("status") == "draft"]
    record = [r for r in resources if r not in drafts]
    context: dict[str, Any] = {"userId": "Practitioner/evaluate", "patientId": patient_id}
    if hook in ("order-sign", "order-select"):
        context["draftOrders"] = {"resourceType": "Bundle", "type": "collection",
                                  "entry": [{"resource": r} for r in drafts]}
        if hook == "order-select":
            context["selections"] = [f"{r['resourceType']}/{r.get('id')}" for r in drafts]
    return context, {"record": {"resourceType": "Bundle", "type": "collection",
                                "entry": [{"resource": r} for r in record]}}


def evaluate_file(path: Path, *, hook: str | None, today: date | None, settings: Settings,
                  strict: bool = False) -> tuple[str, bool]:
    """The JSON the command prints, and whether every resource is valid FHIR R4 (``strict``:
    each validated with fhir.resources; otherwise not checked and taken as valid)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read {path}: {exc}") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not JSON: {exc.msg} at line {exc.lineno}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} holds neither a FHIR Bundle nor a CDS Hooks request")
    if "hook" in data and isinstance(data.get("context"), dict):
        hook = hook or data["hook"]
        context = data["context"]
        prefetch = data.get("prefetch") if isinstance(data.get("prefetch"), dict) else {}
        hook_instance = str(data.get("hookInstance") or "evaluate")
    elif data.get("resourceType") == "Bundle":
        hook = hook or "patient-view"
        context, prefetch = _from_bundle(data, hook)
        hook_instance = "evaluate"
    else:
        raise ValueError(f"{path} holds neither a FHIR Bundle nor a CDS Hooks request")
    if hook == "order-select" and "hook" in data and not context.get("selections"):
        # the hook checks only the selected orders: without selections it would check none, silently
        raise ValueError(f"{path}: order-select checks the selected orders, and the request's context has no "
                         "selections (a list of references such as 'MedicationRequest/1' into draftOrders); add "
                         "them, or check every draft order with --hook order-sign")
    service = _service_for(hook)
    as_of = today or datetime.now(timezone.utc).date()
    version = ruleset_version(settings.guideline)
    result = service.handler(HookRequest(
        hook=hook, hook_instance=hook_instance, service_id=service.id, context=context,
        prefetch={k: v for k, v in prefetch.items() if v is not None}, today=as_of, config=settings.guideline,
        ruleset_version=version))
    output: dict[str, Any] = {"hook": hook, "service": service.id, "today": as_of.isoformat(), "ruleset": version,
                              "cards": result.cards, "trace": result.trace}
    valid = True
    if strict:
        from hooks.strict import validate_strictly

        everything = [data] if data.get("resourceType") == "Bundle" else [*prefetch.values(), context.get("draftOrders")]
        output["fhir_validation"] = report = validate_strictly(everything)
        valid = not report["invalid"]
    return json.dumps(output, indent=2, ensure_ascii=False), valid
