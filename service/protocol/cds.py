"""The CDS Hooks 2.0.1 endpoints: discovery, service invocation, feedback.

Each view is the pipeline and nothing more: look up the service, authenticate, read the body;
then, in the call's turn on its record (service/protocol/turns.py), parse and check the
envelope, complete the prefetch, answer at once when the record needs no reading
(``ServiceDefinition.at_once``), else call the hook's handler, record what was issued, answer.
A decision made before on the same body but for its hookInstance and token is taken from the
memo in service/protocol/answers.py (same cards, this call's uuids; kept from a body's second
call on). Every failure is raised as a ``CdsError`` and answered in service/errors.py.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from datetime import date, datetime, timezone
from typing import Any

import orjson
from flask import Blueprint, Request, Response, g, request

from hooks.fhir_read import models_cached_in
from hooks.service_def import HookRequest, HookResult, ServiceDefinition
from service.errors import NotFound
from service.ops import metrics
from service.protocol import guards
from service.protocol.jsonbody import check_depth, parse_json, read_body, read_json
from service.protocol.models import parse_cds_request, parse_feedback
from service.state import AppState, state
from service.storage.feedback import IssuedCard

bp = Blueprint("cds", __name__)
log = logging.getLogger("ivig_cds.cds")


def json_response(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status=status, mimetype="application/json")


def today() -> date:
    """'Today' for the rules: the service's clock, decided once here at the edge."""
    return datetime.now(timezone.utc).date()


def base_url(req: Request | None = None, st: AppState | None = None) -> str:
    """The service's own base URL (SMART links, the memo key): the configured public one, else
    the one the caller reached (``req``, by default the current request)."""
    configured = (st if st is not None else state()).settings.security.public_base_url
    if configured:
        return configured.rstrip("/")
    req = req if req is not None else request._get_current_object()
    env = req.environ
    key = (env.get("wsgi.url_scheme"), env.get("HTTP_HOST"), env.get("SERVER_NAME"), env.get("SERVER_PORT"),
           env.get("SCRIPT_NAME"))
    url = _BASE_URLS.get(key)
    if url is None:  # werkzeug rebuilds (and IRI-decodes) it on every access: a few per cent of a quiet call
        url = req.host_url.rstrip("/")
        if len(_BASE_URLS) < _BASE_URLS_KEPT:  # the Host header is the caller's text: keep a few only
            _BASE_URLS[key] = url
    return url


#: Base URLs by the addresses callers reached the service at (there are few: its names behind the proxies)
_BASE_URLS: dict[tuple[Any, ...], str] = {}
_BASE_URLS_KEPT = 64


def _service(st: AppState, service_id: str) -> ServiceDefinition:
    service = st.services.get(service_id)
    if service is None:
        raise NotFound(f"no CDS service with id '{service_id}'; see GET /cds-services")
    return service


def _read_body(st: AppState) -> Any:
    limits = st.settings.limits
    return read_json(request, max_bytes=limits.max_body_bytes, max_depth=limits.max_json_depth)


@bp.get("/cds-services")
@bp.get("/cds-services/")  # what a person types, and what some EHR configurations append
def discovery():
    st = state()
    st.authenticator.verify(request, discovery=True)
    extension = {"ivig-cds-ruleset-version": st.ruleset_version}
    return json_response({"services": [s.discovery_entry(extension) for s in st.services.values()]})


@bp.post("/cds-services/<service_id>")
def invoke(service_id: str):
    st = state()
    req = request._get_current_object()  # the request itself, once: every read through the proxy looks it up
    service = _service(st, service_id)
    identity = st.authenticator.verify(req)
    raw = read_body(req, max_bytes=st.settings.limits.max_body_bytes)
    with st.turns:  # service/protocol/turns.py: the record is parsed, read and freed in this call's turn
        answer, topics = _answer(st, service, identity.tenant, req, raw)
    here = g._get_current_object()
    here.cds_topics = topics
    here.cds_ruleset = st.ruleset_version  # the access line carries cards, topics and ruleset (one line a call)
    return Response(answer, mimetype="application/json")


def _answer(st: AppState, service: ServiceDefinition, tenant: str | None, req: Request,
            raw: bytes) -> tuple[bytes, list[str | None]]:
    """The answer's JSON and its cards' topics; every object made from the body dies with this call."""
    limits = st.settings.limits
    body = parse_json(raw, max_depth=limits.max_json_depth)
    check_depth(raw, limits.max_json_depth)
    guards.check_resource_count(body, limits.max_resources, raw)
    cds_request = parse_cds_request(body, service.hook)
    guards.check_fhir_server(cds_request, st.settings.security.fhir_server_allowlist)
    run_date = today()
    base = base_url(req, st)
    completed = st.prefetcher.complete(cds_request, service, run_date, waiting=st.turns.waiting)
    hook_request = HookRequest(
        hook=service.hook,
        hook_instance=cds_request.hook_instance,
        service_id=service.id,
        context=cds_request.context,
        prefetch=completed.prefetch,
        today=run_date,
        config=st.settings.guideline,
        unavailable=completed.unavailable,
        extra_resources=completed.extra_resources,
        base_url=base,
        smart_launch_url=f"{base}/smart/launch",
        ruleset_version=st.ruleset_version,
        tenant=tenant,
    )
    result = service.at_once(hook_request)
    if result is None:
        result = _decided(st, service, hook_request, raw, body, completed.sources)
    # queued before the answer leaves: a feedback call right after finds the cards (service/storage/sql_store.py)
    _record_issued(st, service, cds_request.hook_instance, cds_request.patient_id, result)
    topics = [c.get("source", {}).get("topic", {}).get("code") for c in result.cards]
    return orjson.dumps(result.response_body()), topics


def _decided(st: AppState, service: ServiceDefinition, hook_request: HookRequest, raw: bytes, body: Any,
             sources: set[str]) -> HookResult:
    """The handler's decision, or the one it made on the same body before (service/protocol/answers.py)."""
    # what a FHIR server returns may change between calls: such answers are never memoised
    memoised = sources <= {"request", "sample"}
    key = None
    if memoised:
        key = st.answers.key_if_seen_before(raw, body, service_id=service.id, today=hook_request.today,
                                            base_url=hook_request.base_url, tenant=hook_request.tenant)
    remembered = st.answers.get(key)
    if remembered is not None:
        return st.answers.reissued(remembered, hook_request.hook_instance, service.id)
    # resources that all came in the body are no larger than it (hooks/fhir_read.py ``ingest``)
    with models_cached_in(st.models, sent_within=len(raw) if sources <= {"request"} else None):
        result = service.handler(hook_request)
    st.answers.put(key, result)
    return result


def _patient_hash(st: AppState, patient_id: str) -> str | None:
    key = st.extras.get("patient_hash_key")
    if key is None:
        configured = st.settings.feedback.patient_hash_key
        import secrets

        key = configured.encode() if configured else secrets.token_bytes(32)
        st.extras["patient_hash_key"] = key
    if not patient_id:
        return None
    # hmac.new, not the one-shot hmac.digest: OpenSSL's one-shot HMAC looks its algorithm up on
    # every call, which takes longer than hashing an id
    return hmac.new(key, patient_id.encode(), hashlib.sha256).hexdigest()[:32]


def _record_issued(st: AppState, service: ServiceDefinition, hook_instance: str, patient_id: str,
                   result: HookResult) -> None:
    """Queue the records of the cards this call returns; a failure here never costs the answer."""
    if not result.cards:
        return
    try:
        _queue_issued(st, service, hook_instance, patient_id, result)
    except Exception as exc:
        log.error("issued-card records not kept: %s", type(exc).__name__,
                  extra={"event": "issued_lost", "count": len(result.cards)})
        metrics.count_issued_lost(len(result.cards), "error")


def _queue_issued(st: AppState, service: ServiceDefinition, hook_instance: str, patient_id: str,
                  result: HookResult) -> None:
    now = datetime.now(timezone.utc)
    patient_hash = _patient_hash(st, patient_id)
    records = []
    for card in result.cards:
        topic = card.get("source", {}).get("topic", {}).get("code", "")
        records.append(IssuedCard(
            uuid=card.get("uuid", ""),
            service_id=service.id,
            hook_instance=hook_instance,
            topic=topic,
            indicator=card.get("indicator", ""),
            ruleset_version=st.ruleset_version,
            issued_at=now,
            suggestion_uuids=tuple(s["uuid"] for s in card.get("suggestions", []) if "uuid" in s),
            patient_hash=patient_hash,
            suggestion_labels=tuple(str(s.get("label", "")) for s in card.get("suggestions", []) if "uuid" in s),
        ))
    st.store.record_issued(records)


@bp.post("/cds-services/<service_id>/feedback")
def feedback(service_id: str):
    st = state()
    service = _service(st, service_id)
    st.authenticator.verify(request)
    items = parse_feedback(_read_body(st))
    outcome = st.store.store_feedback(service.id, items)
    g.cds_feedback_outcomes = [item.outcome for item in items]  # counted per outcome by service/ops/metrics.py
    log.info("feedback stored", extra={"service": service.id, "count": outcome.stored})
    return json_response({
        "stored": outcome.stored,
        "duplicates": outcome.duplicates,
        "unknownCards": outcome.unknown_cards,
    })
