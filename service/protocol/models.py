"""CDS Hooks 2.0.1 request and feedback shapes, checked at the edge.

Lenient where the spec lets EHRs vary (extra fields, a Bundle without ``type``, ids such as
``Patient/x``), strict where the service cannot work otherwise (``hook``, ``hookInstance``,
the context fields a hook requires). Each problem is reported by its JSON path.
See https://cds-hooks.hl7.org/2.0.1/#http-request_1 and #feedback.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Mapping

from service.errors import BadRequest, PreconditionFailed

#: Context fields each hook requires (CDS Hooks Library 1.0.1).
REQUIRED_CONTEXT: dict[str, tuple[str, ...]] = {
    "patient-view": ("userId", "patientId"),
    "order-sign": ("userId", "patientId", "draftOrders"),
    "order-select": ("userId", "patientId", "selections", "draftOrders"),
}


@dataclass(frozen=True)
class FhirAuthorization:
    access_token: str
    token_type: str | None
    scope: str | None
    subject: str | None
    patient: str | None

    def __repr__(self) -> str:  # never show the token, even in a debugger or a traceback
        return f"FhirAuthorization(token_type={self.token_type!r}, scope={self.scope!r})"


@dataclass(frozen=True)
class CdsRequest:
    hook: str
    hook_instance: str
    context: Mapping[str, Any]
    prefetch: Mapping[str, Any]
    fhir_server: str | None
    fhir_authorization: FhirAuthorization | None
    extension: Mapping[str, Any] | None

    @property
    def patient_id(self) -> str:
        return _bare_id(self.context.get("patientId"))

    def __repr__(self) -> str:
        return f"CdsRequest(hook={self.hook!r}, hook_instance={self.hook_instance!r})"


def _bare_id(value: Any) -> str:
    """'Patient/123' and '123' name the same patient."""
    text = str(value or "")
    return text.rsplit("/", 1)[-1] if "/" in text else text


def _nonempty_str(value: Any) -> bool:
    return isinstance(value, str) and value.strip() != ""


def parse_cds_request(body: Any, expected_hook: str) -> CdsRequest:
    """Check the envelope and the hook's context; raise BadRequest listing every problem."""
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    problems: list[str] = []
    hook = body.get("hook")
    if not _nonempty_str(hook):
        problems.append("hook: required string is missing")
    elif hook != expected_hook:
        problems.append(f"hook: this service answers '{expected_hook}', not '{hook}'")
    hook_instance = body.get("hookInstance")
    if not _nonempty_str(hook_instance):
        problems.append("hookInstance: required string (a UUID) is missing")

    context = body.get("context")
    missing_patient = False
    if not isinstance(context, dict):
        problems.append("context: required object is missing")
        context = {}
    else:
        for name in REQUIRED_CONTEXT.get(expected_hook, ()):
            value = context.get(name)
            if name == "draftOrders":
                if not isinstance(value, dict) or value.get("resourceType") != "Bundle":
                    problems.append("context.draftOrders: required FHIR Bundle is missing")
                elif value.get("entry") is not None and not (
                        isinstance(value["entry"], list) and all(isinstance(e, dict) for e in value["entry"])):
                    problems.append("context.draftOrders.entry: must be an array of objects")
            elif name == "selections":
                if not isinstance(value, list) or not all(_nonempty_str(v) for v in value):
                    problems.append("context.selections: required array of 'Type/id' strings is missing")
            elif name == "patientId" and expected_hook == "patient-view" and name not in context:
                # The spec's own extension example names no patient: without one the patient's
                # data cannot be obtained, which CDS Hooks answers with 412 (a bad value stays 400).
                missing_patient = True
            elif not _nonempty_str(value):
                problems.append(f"context.{name}: required string is missing")
        encounter = context.get("encounterId")
        if encounter is not None and not _nonempty_str(encounter):
            problems.append("context.encounterId: must be a string when present")

    fhir_server = body.get("fhirServer")
    if fhir_server is not None and not (_nonempty_str(fhir_server) and fhir_server.startswith(("http://", "https://"))):
        problems.append("fhirServer: must be an http(s) URL")
        fhir_server = None

    auth = body.get("fhirAuthorization")
    fhir_authorization = None
    if auth is not None:
        if not isinstance(auth, dict) or not _nonempty_str(auth.get("access_token")):
            problems.append("fhirAuthorization: must be an object with an access_token")
        else:
            if fhir_server is None and "fhirServer" not in body:
                problems.append("fhirServer: required when fhirAuthorization is present")
            fhir_authorization = FhirAuthorization(
                access_token=auth["access_token"],
                token_type=auth.get("token_type") if isinstance(auth.get("token_type"), str) else None,
                scope=auth.get("scope") if isinstance(auth.get("scope"), str) else None,
                subject=auth.get("subject") if isinstance(auth.get("subject"), str) else None,
                patient=auth.get("patient") if isinstance(auth.get("patient"), str) else None,
            )

    prefetch = body.get("prefetch")
    if prefetch is None:
        prefetch = {}
    elif not isinstance(prefetch, dict):
        problems.append("prefetch: must be an object of key -> FHIR resource")
        prefetch = {}

    extension = body.get("extension")
    if extension is not None and not isinstance(extension, dict):
        problems.append("extension: must be an object")
        extension = None

    if problems:
        raise BadRequest("the CDS Hooks request is not valid", details=problems)
    if missing_patient:
        raise PreconditionFailed("the request names no patient, so the patient's data cannot be obtained",
                                 details=["context.patientId: missing"])
    return CdsRequest(
        hook=hook,
        hook_instance=hook_instance,
        context=context,
        prefetch=prefetch,
        fhir_server=fhir_server.rstrip("/") if fhir_server else None,
        fhir_authorization=fhir_authorization,
        extension=extension,
    )


# ---------------------------------------------------------------- feedback

OUTCOMES = ("accepted", "overridden")


@dataclass(frozen=True)
class FeedbackItem:
    """One card outcome the EHR reports (CDS Hooks 2.0.1 'Feedback')."""

    card: str
    outcome: str
    outcome_timestamp: datetime
    accepted_suggestions: tuple[str, ...]
    override_code: str | None
    override_system: str | None
    override_display: str | None
    user_comment: str | None


def parse_timestamp(value: Any) -> datetime | None:
    """ISO 8601 / RFC 3339 with a zone (JavaScript's toISOString included)."""
    if not _nonempty_str(value):
        return None
    text = value.strip().replace("Z", "+00:00").replace("z", "+00:00")
    try:
        stamp = datetime.fromisoformat(text)
        # In UTC, as the spec states it; an instant outside years 1..9999 in UTC is not a time.
        return stamp.astimezone(timezone.utc) if stamp.tzinfo is not None else None
    except (ValueError, OverflowError):
        return None


def parse_feedback(body: Any) -> list[FeedbackItem]:
    """Validate a feedback body; raise BadRequest naming every malformed item."""
    if not isinstance(body, dict) or not isinstance(body.get("feedback"), list):
        raise BadRequest("the feedback body must be an object with a 'feedback' array")
    if not body["feedback"]:
        raise BadRequest("feedback: the array is empty")
    items: list[FeedbackItem] = []
    problems: list[str] = []
    for i, raw in enumerate(body["feedback"]):
        where = f"feedback[{i}]"
        if not isinstance(raw, dict):
            problems.append(f"{where}: must be an object")
            continue
        before = len(problems)
        card = raw.get("card")
        if not _nonempty_str(card):
            problems.append(f"{where}.card: required card uuid is missing")
        outcome = raw.get("outcome")
        if outcome not in OUTCOMES:
            problems.append(f"{where}.outcome: must be 'accepted' or 'overridden'")
        stamp = parse_timestamp(raw.get("outcomeTimestamp"))
        if stamp is None:
            problems.append(f"{where}.outcomeTimestamp: required ISO 8601 time with a zone is missing or invalid")
        accepted: list[str] = []
        raw_accepted = raw.get("acceptedSuggestions")
        if raw_accepted is not None:
            if not isinstance(raw_accepted, list) or not all(isinstance(s, dict) and _nonempty_str(s.get("id")) for s in raw_accepted):
                problems.append(f"{where}.acceptedSuggestions: must be an array of {{\"id\": suggestion uuid}}")
            else:
                accepted = [s["id"] for s in raw_accepted]
        if outcome == "accepted" and not accepted:
            problems.append(f"{where}.acceptedSuggestions: required when the outcome is 'accepted'")
        code = system = display = comment = None
        override = raw.get("overrideReason")
        if override is not None:
            if not isinstance(override, dict):
                problems.append(f"{where}.overrideReason: must be an object")
            else:
                reason = override.get("reason")
                if reason is not None:
                    if not isinstance(reason, dict) or not _nonempty_str(reason.get("code")):
                        problems.append(f"{where}.overrideReason.reason: must be a Coding with a code")
                    else:
                        code = reason["code"]
                        system = reason.get("system") if isinstance(reason.get("system"), str) else None
                        display = reason.get("display") if isinstance(reason.get("display"), str) else None
                user_comment = override.get("userComment")
                if user_comment is not None:
                    if not isinstance(user_comment, str):
                        problems.append(f"{where}.overrideReason.userComment: must be a string")
                    else:
                        comment = user_comment
        if len(problems) == before:
            items.append(FeedbackItem(card, outcome, stamp, tuple(accepted), code, system, display, comment))
    if problems:
        raise BadRequest("the feedback is not valid", details=problems)
    return items
