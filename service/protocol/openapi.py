"""``GET /openapi.json``: an OpenAPI 3.1 description of every HTTP endpoint of this service.

Why it is built per request from the running app rather than kept as a file: the parts that vary
are read from where they are decided, so the description cannot drift from what the service
does. The published services, their hooks and prefetch templates come from the service
definitions; the context each hook requires from ``service.protocol.models.REQUIRED_CONTEXT``, the
feedback outcomes from ``service.protocol.models.OUTCOMES`` (the parsers that check requests at the edge);
card topic codes from ``hooks.assessment.Topic``; error codes from the ``CdsError`` classes of
``service.errors``; whether a bearer token is required from the settings in force. The card and
response shapes are those of CDS Hooks 2.0.1 as ``hooks/cards.py`` fills them.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Flask

from hooks.assessment import TOPIC_SYSTEM, Topic
from service import errors
from service.protocol.cds import base_url, json_response
from service.protocol.models import OUTCOMES, REQUIRED_CONTEXT
from service.state import state

bp = Blueprint("openapi", __name__)

OPENAPI_VERSION = "3.1.0"
SPEC = "https://cds-hooks.hl7.org/2.0.1/"
JSON = "application/json"
REF = "#/components/schemas/"

#: The JSON type of each context field a hook may carry (CDS Hooks Library 1.0.1).
CONTEXT_FIELDS: dict[str, dict[str, Any]] = {
    "userId": {"type": "string", "description": "The user in the EHR, e.g. `Practitioner/123`"},
    "patientId": {"type": "string", "description": "The FHIR id of the patient in context (`123` or `Patient/123`)"},
    "encounterId": {"type": "string", "description": "The FHIR id of the encounter in context"},
    "draftOrders": {"$ref": REF + "FhirBundle", "description": "The orders being signed or selected"},
    "selections": {"type": "array", "items": {"type": "string"},
                   "description": "The selected orders as `Type/id` references into draftOrders"},
}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": REF + name}


def _json_content(schema: dict[str, Any], example: Any = None) -> dict[str, Any]:
    media: dict[str, Any] = {"schema": schema}
    if example is not None:
        media["example"] = example
    return {JSON: media}


def _error_codes() -> list[str]:
    """The ``error`` codes the service answers with: every CdsError class, and werkzeug's names."""
    codes = {cls.code for cls in _subclasses(errors.CdsError)} | {errors.CdsError.code}
    return sorted(codes | {"not_found", "method_not_allowed", "request_entity_too_large", "internal_error"})


def _subclasses(cls: type) -> list[type]:
    out = []
    for sub in cls.__subclasses__():
        out += [sub, *_subclasses(sub)]
    return out


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": _json_content(_ref("Error"))}


def _context_schema(hook: str) -> dict[str, Any]:
    required = list(REQUIRED_CONTEXT.get(hook, ()))
    names = [*required, *(n for n in ("encounterId",) if n not in required)]
    return {"type": "object", "required": required, "additionalProperties": True,
            "properties": {name: CONTEXT_FIELDS.get(name, {"type": "string"}) for name in names}}


def _hook_request_schema(hook: str) -> dict[str, Any]:
    return {
        "type": "object", "required": ["hook", "hookInstance", "context"], "additionalProperties": True,
        "properties": {
            "hook": {"const": hook},
            "hookInstance": {"type": "string", "description": "A UUID for this call of the hook"},
            "fhirServer": {"type": "string", "format": "uri",
                           "description": "Base URL of the EHR's FHIR server, for data the prefetch lacks; "
                                          "contacted only when on security.fhir_server_allowlist"},
            "fhirAuthorization": _ref("FhirAuthorization"),
            "context": _context_schema(hook),
            "prefetch": {"type": "object", "additionalProperties": {"type": ["object", "null"]},
                         "description": "FHIR resources (or Bundles) by prefetch key; missing or null keys "
                                        "are read from fhirServer"},
            "extension": {"type": "object"},
        },
    }


def _schemas(hooks_published: list[str]) -> dict[str, Any]:
    coding = {"type": "object", "properties": {"system": {"type": "string"}, "code": {"type": "string"},
                                               "display": {"type": "string"}}}
    schemas: dict[str, Any] = {
        "Error": {
            "type": "object", "required": ["error", "message"],
            "properties": {"error": {"type": "string", "examples": _error_codes(),
                                     "description": "A short code: the CdsError codes of the service, or "
                                                    "werkzeug's name of the HTTP status"},
                           "message": {"type": "string", "description": "What is wrong, in one line"},
                           "details": {"type": "array", "items": {"type": "string"},
                                       "description": "Each problem, named by its JSON path"}}},
        "Coding": coding,
        "FhirBundle": {"type": "object", "required": ["resourceType"], "additionalProperties": True,
                       "properties": {"resourceType": {"const": "Bundle"},
                                      "entry": {"type": "array", "items": {"type": "object"}}}},
        "FhirAuthorization": {
            "type": "object", "required": ["access_token"], "additionalProperties": True,
            "properties": {"access_token": {"type": "string"}, "token_type": {"type": "string"},
                           "expires_in": {"type": "integer"}, "scope": {"type": "string"},
                           "subject": {"type": "string"}, "patient": {"type": "string"}}},
        "DiscoveryService": {
            "type": "object", "required": ["hook", "id", "description"],
            "properties": {"hook": {"type": "string"}, "id": {"type": "string"}, "title": {"type": "string"},
                           "description": {"type": "string"},
                           "prefetch": {"type": "object", "additionalProperties": {"type": "string"}},
                           "usageRequirements": {"type": "string"}, "extension": {"type": "object"}}},
        "Discovery": {"type": "object", "required": ["services"],
                      "properties": {"services": {"type": "array", "items": _ref("DiscoveryService")}}},
        "Action": {
            "type": "object", "required": ["type", "description"],
            "properties": {"type": {"enum": ["create", "update", "delete"]}, "description": {"type": "string"},
                           "resource": {"type": "object", "description": "The new resource (create) or the whole "
                                                                        "resource (update)"},
                           "resourceId": {"type": "string", "description": "A relative reference (`Type/id`), "
                                                                          "for delete"}}},
        "Suggestion": {
            "type": "object", "required": ["label"],
            "properties": {"label": {"type": "string"}, "uuid": {"type": "string"},
                           "isRecommended": {"type": "boolean"},
                           "actions": {"type": "array", "items": _ref("Action")}}},
        "Link": {
            "type": "object", "required": ["label", "url", "type"],
            "properties": {"label": {"type": "string"}, "url": {"type": "string", "format": "uri"},
                           "type": {"enum": ["absolute", "smart"]}, "appContext": {"type": "string"},
                           "autolaunchable": {"type": "boolean"}}},
        "OverrideReason": {**coding, "required": ["system", "code", "display"]},
        "Card": {
            "type": "object", "required": ["summary", "indicator", "source"],
            "dependentRequired": {"suggestions": ["selectionBehavior"]},
            "properties": {
                "uuid": {"type": "string", "description": "Stable per hookInstance and topic; feedback names it"},
                "summary": {"type": "string", "maxLength": 140},
                "detail": {"type": "string", "description": "GitHub-flavoured Markdown: the deciding values with "
                                                            "units and dates, the rule, the references"},
                "indicator": {"enum": ["info", "warning", "critical"]},
                "source": {"type": "object", "required": ["label"], "properties": {
                    "label": {"type": "string"}, "url": {"type": "string"}, "icon": {"type": "string"},
                    "topic": {"type": "object", "required": ["system", "code"], "properties": {
                        "system": {"const": TOPIC_SYSTEM}, "code": {"enum": [t.value for t in Topic]},
                        "display": {"type": "string"}}}}},
                "suggestions": {"type": "array", "items": _ref("Suggestion")},
                "selectionBehavior": {"enum": ["at-most-one", "any"]},
                "overrideReasons": {"type": "array", "items": _ref("OverrideReason")},
                "links": {"type": "array", "items": _ref("Link")},
                "extension": {"type": "object", "properties": {
                    "ivig-cds-ruleset-version": {"type": "string"},
                    "ivig-cds-rules": {"type": "array", "items": {"type": "string"},
                                       "description": "The rules that decided this card (`ivig-cds explain`)"}}},
            }},
        "CdsResponse": {
            "type": "object", "required": ["cards"],
            "properties": {"cards": {"type": "array", "items": _ref("Card")},
                           "systemActions": {"type": "array", "items": _ref("Action")}}},
        "FeedbackItem": {
            "type": "object", "required": ["card", "outcome", "outcomeTimestamp"],
            "properties": {
                "card": {"type": "string", "description": "The uuid of a card this service returned"},
                "outcome": {"enum": list(OUTCOMES)},
                "acceptedSuggestions": {"type": "array", "items": {
                    "type": "object", "required": ["id"], "properties": {"id": {"type": "string"}}},
                    "description": "Required when the outcome is accepted"},
                "overrideReason": {"type": "object", "properties": {"reason": _ref("Coding"),
                                                                    "userComment": {"type": "string"}}},
                "outcomeTimestamp": {"type": "string", "format": "date-time",
                                     "description": "ISO 8601 with a zone"}}},
        "Feedback": {"type": "object", "required": ["feedback"],
                     "properties": {"feedback": {"type": "array", "minItems": 1, "items": _ref("FeedbackItem")}}},
        "FeedbackResult": {
            "type": "object", "required": ["stored", "duplicates", "unknownCards"],
            "properties": {"stored": {"type": "integer"}, "duplicates": {"type": "integer"},
                           "unknownCards": {"type": "integer",
                                            "description": "Stored, but for a card uuid this service has no record of"}}},
        "Health": {"type": "object", "required": ["status"], "properties": {"status": {"const": "ok"}}},
        "Readiness": {
            "type": "object", "required": ["status", "checks"],
            "properties": {"status": {"enum": ["ok", "unavailable"]},
                           "checks": {"type": "object", "additionalProperties": {"type": "string"},
                                      "description": "'ok' or 'failed: <exception type>' per check"},
                           "failed": {"type": "array", "items": {"type": "string"}}}},
        "OverrideReport": {
            "type": "object",
            "description": "The same numbers as `ivig-cds report --format json`: per service and topic, cards "
                           "shown, accepted, overridden, override reasons ranked, suggestion uptake",
            "properties": {"since": {"type": ["string", "null"]}, "generatedAt": {"type": "string"},
                           "totals": {"type": "object"}, "topics": {"type": "array", "items": {"type": "object"}},
                           "rulesetVersions": {"type": "array", "items": {"type": "object"}}}},
        "TrendView": {
            "type": "object", "required": ["today", "patient", "thresholds", "series", "cards", "decision"],
            "description": "What the SMART trend page draws: the facts the rules used, the thresholds in force, "
                           "the patient-view cards (detail also as sanitised HTML) and the decision trace",
            "properties": {"source": {"enum": ["fixture", "fhir"]}, "fixture": {"type": ["string", "null"]},
                           "today": {"type": "string", "format": "date"}, "ruleset_version": {"type": "string"},
                           "patient": {"type": "object"}, "thresholds": {"type": "array", "items": {"type": "object"}},
                           "series": {"type": "object"}, "ivig": {"type": "object"}, "infections": {"type": "object"},
                           "pneumococcal": {"type": "object"}, "decision": {"type": "object"},
                           "cards": {"type": "array", "items": {"type": "object"}},
                           "unavailable": {"type": "object"}}},
        "SmartError": {"type": "object", "required": ["error", "message"],
                       "properties": {"error": {"type": "string"}, "message": {"type": "string"}}},
    }
    for hook in hooks_published:
        schemas[_request_name(hook)] = _hook_request_schema(hook)
    return schemas


def _request_name(hook: str) -> str:
    return "".join(part.capitalize() for part in hook.split("-")) + "Request"


def _html(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"text/html": {"schema": {"type": "string"}}}}


def build_document(services: dict[str, Any], *, base_url: str, ruleset_version: str, require_token: bool,
                   protect_discovery: bool, version: str) -> dict[str, Any]:
    """The OpenAPI 3.1 document for these services and security settings."""
    token: list[dict[str, list[str]]] = [{"cdsClientJwt": []}]
    optional = [*token, {}]  # OpenAPI: an empty requirement means "no token is also accepted"
    hook_security = token if require_token else optional
    paths: dict[str, Any] = {
        "/": {"get": {"operationId": "landingPage", "tags": ["service"], "summary": "What this service is",
                      "description": "A small HTML page: the discovery URL, the services, links to the sample "
                                     "trend pages and to these endpoints.",
                      "responses": {"200": _html("The landing page")}}},
        "/openapi.json": {"get": {"operationId": "openapi", "tags": ["service"], "summary": "This description",
                                  "responses": {"200": {"description": "OpenAPI 3.1",
                                                        "content": _json_content({"type": "object"})}}}},
        "/cds-services": {"get": {
            "operationId": "discovery", "tags": ["CDS Hooks"], "summary": "CDS Hooks discovery",
            "description": f"The services this server offers, with their prefetch templates ({SPEC}#discovery). "
                           "`/cds-services/` answers the same.",
            "security": token if protect_discovery else optional,
            "responses": {"200": {"description": "The published services",
                                  "content": _json_content(_ref("Discovery"))},
                          "401": _error("A token is required and none valid was sent")}}},
    }
    for service in services.values():
        name = _request_name(service.hook)
        paths[f"/cds-services/{service.id}"] = {"post": {
            "operationId": f"call-{service.id}", "tags": ["CDS Hooks"], "summary": service.title,
            "description": f"{service.description} (hook `{service.hook}`; {SPEC}#calling-a-cds-service)",
            "security": hook_security,
            "requestBody": {"required": True, "content": _json_content(_ref(name))},
            "responses": {
                "200": {"description": "The cards (none when the guideline has nothing to say)",
                        "content": _json_content(_ref("CdsResponse"))},
                "400": _error("The request is not a valid CDS Hooks call (every problem is listed)"),
                "401": _error("A token is required and none valid was sent"),
                "403": _error("The fhirServer is not on the service's allowlist"),
                "404": _error("No CDS service with this id"),
                "412": _error("The patient's data is neither in the prefetch nor obtainable"),
                "413": _error("The body or its number of resources is over the limit"),
                "415": _error("The body is not JSON"),
                "431": _error("A request header is over the server's limit"),
                "502": _error("The EHR's FHIR server failed and prefetch.failure_mode is 'fail'"),
                "503": _error("Busy with large requests, shutting down, or the token's replay store is down: "
                              "send the call again (Retry-After)"),
            }}}
        paths[f"/cds-services/{service.id}/feedback"] = {"post": {
            "operationId": f"feedback-{service.id}", "tags": ["CDS Hooks"],
            "summary": f"Feedback on the cards of {service.id}",
            "description": f"What the clinician did with each card: accepted (with the suggestions taken) or "
                           f"overridden (with a reason) ({SPEC}#feedback).",
            "security": hook_security,
            "requestBody": {"required": True, "content": _json_content(_ref("Feedback"))},
            "responses": {"200": {"description": "Stored (a repeat counts once)",
                                  "content": _json_content(_ref("FeedbackResult"))},
                          "400": _error("The feedback is not valid (every malformed item is named)"),
                          "401": _error("A token is required and none valid was sent"),
                          "404": _error("No CDS service with this id"),
                          "503": _error("The feedback could not be stored now: send it again")}}}
    paths.update({
        "/healthz": {"get": {"operationId": "healthz", "tags": ["operations"], "summary": "Liveness",
                             "responses": {"200": {"description": "The process answers",
                                                   "content": _json_content(_ref("Health"))}}}},
        "/readyz": {"get": {"operationId": "readyz", "tags": ["operations"],
                            "summary": "Readiness: database, configuration, trusted issuers' keys",
                            "responses": {"200": {"description": "Ready", "content": _json_content(_ref("Readiness"))},
                                          "503": {"description": "Not ready: `failed` names the checks",
                                                  "content": _json_content(_ref("Readiness"))}}}},
        "/metrics": {"get": {"operationId": "metrics", "tags": ["operations"], "summary": "Prometheus metrics",
                             "responses": {"200": {"description": "Prometheus text format (OpenMetrics when asked for)",
                                                   "content": {"text/plain": {"schema": {"type": "string"}},
                                                               "application/openmetrics-text": {
                                                                   "schema": {"type": "string"}}}},
                                           "401": _error("metrics.token is set and the bearer token is not it"),
                                           "404": _error("Production serves metrics on metrics.port only, unless "
                                                         "metrics.token is set"),
                                           "429": _error("Another scrape is being answered: retry in a moment")}}},
        "/analytics/overrides": {"get": {
            "operationId": "overrides", "tags": ["operations"], "summary": "Feedback analytics per service and topic",
            "security": hook_security,
            "parameters": [{"name": "since", "in": "query", "required": False,
                            "description": "Only cards and feedback from this date",
                            "schema": {"type": "string", "format": "date"}}],
            "responses": {"200": {"description": "The report", "content": _json_content(_ref("OverrideReport"))},
                          "400": _error("since is not a date"),
                          "401": _error("A token is required and none valid was sent"),
                          "503": _error("The feedback database is not available")}}},
        "/smart/launch": {"get": {
            "operationId": "smartLaunch", "tags": ["SMART app"], "summary": "SMART App Launch (EHR launch)",
            "parameters": [{"name": "iss", "in": "query", "required": True, "schema": {"type": "string"},
                            "description": "The EHR's FHIR base URL (must be on the allowlist)"},
                           {"name": "launch", "in": "query", "required": True, "schema": {"type": "string"}}],
            "responses": {"302": {"description": "To the EHR's authorization endpoint (PKCE S256)"},
                          "400": _html("Missing or refused launch parameters"),
                          "502": _html("The FHIR server's SMART configuration could not be read")}}},
        "/smart/app": {"get": {
            "operationId": "smartApp", "tags": ["SMART app"], "summary": "The Ig trend and decision page",
            "description": "With a SMART session: that patient. `?fixture=NAME`: a built-in scenario dated to "
                           "today. Neither: an index of the built-in scenarios. `?code=&state=`: the "
                           "authorization callback.",
            "parameters": [{"name": "fixture", "in": "query", "required": False, "schema": {"type": "string"}},
                           {"name": "code", "in": "query", "required": False, "schema": {"type": "string"}},
                           {"name": "state", "in": "query", "required": False, "schema": {"type": "string"}},
                           {"name": "error", "in": "query", "required": False, "schema": {"type": "string"}}],
            "responses": {"200": _html("The page, or the index of scenarios"),
                          "303": {"description": "After the authorization callback: to a clean /smart/app"},
                          "400": _html("No built-in scenario of that name, or an authorization answer that does "
                                       "not belong to this browser's launch"),
                          "502": _html("The token exchange failed")}}},
        "/smart/api/patient": {"get": {
            "operationId": "smartPatient", "tags": ["SMART app"], "summary": "What the trend page draws",
            "parameters": [{"name": "fixture", "in": "query", "required": False, "schema": {"type": "string"}}],
            "responses": {"200": {"description": "Facts, thresholds, cards and trace",
                                  "content": _json_content(_ref("TrendView"))},
                          "401": {"description": "No SMART session", "content": _json_content(_ref("SmartError"))},
                          "400": {"description": "No such scenario", "content": _json_content(_ref("SmartError"))},
                          "502": {"description": "The patient's record could not be read",
                                  "content": _json_content(_ref("SmartError"))}}}},
        "/smart/static/{filename}": {"get": {
            "operationId": "smartStatic", "tags": ["SMART app"], "summary": "The page's script, style and libraries",
            "parameters": [{"name": "filename", "in": "path", "required": True, "schema": {"type": "string"}}],
            "responses": {"200": {"description": "The file"}, "404": {"description": "No such file"}}}},
    })
    hooks_published = list(dict.fromkeys(s.hook for s in services.values()))
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "ivig-cds",
            "version": version,
            "summary": "IVIG-stewardship CDS Hooks 2.0.1 service (guideline: treatment of IgM deficiency)",
            "description": f"Ruleset {ruleset_version}. The CDS Hooks endpoints follow {SPEC}; the rules, "
                           "thresholds and value sets in force are listed by `ivig-cds explain`.",
            "license": {"name": "Apache-2.0", "identifier": "Apache-2.0"},
        },
        "servers": [{"url": base_url}],
        "tags": [{"name": "CDS Hooks"}, {"name": "SMART app"}, {"name": "operations"}, {"name": "service"}],
        "paths": paths,
        "components": {
            "schemas": _schemas(hooks_published),
            "securitySchemes": {"cdsClientJwt": {
                "type": "http", "scheme": "bearer", "bearerFormat": "JWT",
                "description": "The CDS client's JWT (CDS Hooks 2.0.1 trusting CDS clients): iss a trusted issuer, "
                               "aud the URL called, exp, jti used once; ES384 or RS384"}},
        },
    }


def package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ivig-cds")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "0+unknown"


@bp.get("/openapi.json")
def openapi_json():
    st = state()
    security = st.settings.security
    return json_response(build_document(st.services, base_url=base_url(), ruleset_version=st.ruleset_version,
                                        require_token=security.require_token,
                                        protect_discovery=security.protect_discovery, version=package_version()))


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)
