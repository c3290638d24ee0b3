"""Completing the prefetch a request lacks: from the EHR's FHIR server, the sample patients, or 412.

CDS Hooks 2.0.1 lets an EHR send all, some or none of the prefetch a service declares; what is
missing (absent, ``null`` or an OperationOutcome: HAPI FHIR's ``findMissingPrefetch``) the
service reads from ``fhirServer`` itself, with the bearer token the EHR gave. The rules of the
game, in order:

1. nothing missing -> the request's data as it is;
2. no ``fhirServer``: the built-in sample patients (development), else 412 when a key in
   ``service.required_prefetch`` is missing (other keys are reported ``unavailable``);
3. ``fhirServer`` off the allowlist -> 400 before any contact;
4. the missing templates are rendered with the context (a template whose tokens the context
   cannot fill is skipped; 412 if its key is required) and read concurrently, within a
   per-query timeout, an overall deadline and one byte allowance for the whole call;
   ``Bundle.link[next]`` is followed up to the caps (a top-N query, ``_sort`` with ``_count``:
   "the latest weight", up to its N), at fhirServer's own origin only (service/prefetch/fhir_client.py);
   Medications the handler needs (``service.unresolved_references``) are read as well, a
   reference by absolute URL only when it names fhirServer's data;
5. a failure: a 401 from the FHIR server fails the call with 412 in every mode (the EHR must
   send authorization that works, or the data); a failed required key fails it too (412, or
   502 under ``failure_mode = fail``; 412 when the server refused access); other keys follow
   ``prefetch.failure_mode``: ``fail`` -> 502 (412 for a refused access), ``omit`` -> left
   out, ``continue`` (default) -> reported in ``unavailable`` so the cards can say the data
   could not be read.

Never a hang (stragglers are abandoned at the deadline) and never a 500 (every failure of the
FHIR server becomes a defined answer).
"""

from __future__ import annotations

import logging
import re
import time
from concurrent.futures import Future, ThreadPoolExecutor, wait
from contextlib import AbstractContextManager, ExitStack, nullcontext
from dataclasses import dataclass, field
from datetime import date
from typing import Any, Callable, Iterable, Mapping
from urllib.parse import quote, urlsplit

from hooks.service_def import ServiceDefinition
from service.errors import BadGateway, BadRequest, PreconditionFailed, ServiceUnavailable
from service.ops import metrics
from service.prefetch.allowlist import fhir_server_allowed
from service.prefetch.fhir_client import Budget, FetchFailure, FhirClient, FhirClientPool, SearchResult, under_base
from service.protocol.models import CdsRequest
from service.settings import Settings

log = logging.getLogger("ivig_cds.prefetch")

_TOKEN = re.compile(r"\{\{\s*([A-Za-z][A-Za-z0-9_.]*)\s*\}\}")
_FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
_REFERENCE = re.compile(r"([A-Z][A-Za-z]{1,63})/([A-Za-z0-9\-.]{1,64})")
#: CDS Hooks 2.0.1 user tokens: name -> the resource type context.userId must have
USER_TOKENS = {
    "userPractitionerId": "Practitioner",
    "userPractitionerRoleId": "PractitionerRole",
    "userPatientId": "Patient",
    "userRelatedPersonId": "RelatedPerson",
}
#: context fields that hold a bare id (a "Type/id" form is accepted and reduced)
_ID_FIELDS = {"patientId": "Patient", "encounterId": "Encounter"}
#: prefetch-like key under which Medication reads are logged and measured
MEDICATION_KEY = "medicationReference"


@dataclass
class CompletedData:
    prefetch: dict[str, Any]
    unavailable: dict[str, str] = field(default_factory=dict)
    extra_resources: list[dict[str, Any]] = field(default_factory=list)
    #: where the data came from: "request", "fhir", "sample" (for logs and metrics)
    sources: set[str] = field(default_factory=set)


def is_missing(value: Any) -> bool:
    """A prefetch value that carries no data for the key."""
    return value is None or (isinstance(value, dict) and value.get("resourceType") == "OperationOutcome")


def missing_keys(service: ServiceDefinition, prefetch: Mapping[str, Any]) -> list[str]:
    return [key for key in service.prefetch if is_missing(prefetch.get(key))]  # an absent key gets None


# ---------------------------------------------------------------- templates

def token_values(context: Mapping[str, Any]) -> dict[str, str]:
    """Prefetch token -> URL-safe text, for every token this context can fill.

    Ids are checked against FHIR's id syntax rather than escaped: a patientId such as
    ``1&_include=*`` must not become part of a query, and an invalid id resolves to nothing.
    """
    values: dict[str, str] = {}
    for name, value in context.items():
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, (str, int, float)):
            text = str(value)
        else:
            continue  # only first-level primitives are tokens
        if name in _ID_FIELDS:
            prefix = _ID_FIELDS[name] + "/"
            bare = text[len(prefix):] if text.startswith(prefix) else text
            if _FHIR_ID.fullmatch(bare):
                values[f"context.{name}"] = bare
        elif name == "userId":
            match = _REFERENCE.fullmatch(text)
            if match:
                values["context.userId"] = text
                for token, resource_type in USER_TOKENS.items():
                    if match.group(1) == resource_type:
                        values[token] = match.group(2)
        elif text:
            values[f"context.{name}"] = quote(text, safe="")
    return values


def render_template(template: str, context: Mapping[str, Any]) -> str | None:
    """The template with its tokens filled in, or None when a token cannot be resolved."""
    values = token_values(context)
    unresolved = False

    def fill(match: re.Match[str]) -> str:
        nonlocal unresolved
        value = values.get(match.group(1))
        if value is None:
            unresolved = True
            return ""
        return value

    rendered = _TOKEN.sub(fill, template)
    if unresolved or "{{" in rendered or "}}" in rendered:
        return None
    rendered = rendered.lstrip("/")
    path = rendered.split("?", 1)[0]
    if not path or ":" in path or ".." in path.split("/") or "\\" in path:
        return None  # a prefetch query is a relative FHIR URL that stays under fhirServer
    return rendered


@dataclass(frozen=True)
class Query:
    """One FHIR read to make: a prefetch key's query or a Medication behind a reference."""

    key: str  # prefetch key, or the "Medication/id" reference
    path: str  # relative to fhirServer
    search: bool
    resource_type: str | None  # expected type of a read (None: any resource)
    metric_key: str
    #: a sorted search with _count asks for the first N ("the latest weight"): read up to N only
    top_n: int | None = None

    @property
    def first_page_only(self) -> bool:
        """A top-N query (its first page is what a single-page reader such as the benchmark wants)."""
        return self.top_n is not None


def plan_query(key: str, rendered: str, metric_key: str | None = None) -> Query:
    """What kind of read a rendered template is.

    ``Type/id`` is a read; ``Type`` or ``Type?...`` a search. A search that both sorts and sets
    ``_count`` is a top-N query (the CDS Hooks spec's own example: the latest HbA1c with
    ``_count=1&sort:desc=date``): only its first N results are wanted, so paging stops there — a
    server whose pages are smaller than N is still read to N. Every other search is read to the
    end, within the configured caps.
    """
    path, sep, query = rendered.partition("?")
    segments = [s for s in path.split("/") if s]
    if sep or len(segments) == 1:
        params = [part.split("=", 1) for part in query.split("&") if part]
        names = {p[0] for p in params}
        sorted_ = any(n == "_sort" or n.startswith("_sort:") or n.startswith("sort:") for n in names)
        count = next((p[1] for p in params if p[0] == "_count" and len(p) == 2), None)
        top_n = int(count) if sorted_ and count is not None and count.isdigit() and int(count) > 0 else None
        return Query(key, rendered, True, "Bundle", metric_key or key, top_n=top_n)
    if len(segments) == 2 and not segments[1].startswith("$"):
        return Query(key, rendered, False, segments[0], metric_key or key)
    return Query(key, rendered, False, None, metric_key or key)


def _needs_patient_data(service: ServiceDefinition, context: Mapping[str, Any], prefetch: Mapping[str, Any]) -> bool:
    """The hook's own answer; when it fails on odd input, assume the data is needed."""
    try:
        return bool(service.needs_patient_data(context, prefetch))
    except Exception as exc:  # the call must still end in a defined answer
        log.warning("needs_patient_data failed; completing the prefetch anyway", extra={"reason": type(exc).__name__})
        return True


def _unresolved(service: ServiceDefinition, context: Mapping[str, Any], prefetch: Mapping[str, Any]) -> list[str]:
    """The Medications the handler needs; none when the hook's function fails on odd input."""
    try:
        return _valid_references(service.unresolved_references(context, prefetch))
    except Exception as exc:  # the call must still end in a defined answer
        log.warning("unresolved_references failed; no Medication is read", extra={"reason": type(exc).__name__})
        return []


def _valid_references(references: Iterable[Any]) -> list[str]:
    """Distinct Medication references, in order: "Medication/id", or an absolute URL ending so."""
    seen: list[str] = []
    for ref in references or ():
        if not isinstance(ref, str):
            continue
        ref = ref.strip()
        if _medication_id(ref) is not None and ref not in seen:
            seen.append(ref)
    return seen


def _medication_id(ref: str) -> str | None:
    """The id of a "Medication/id" or "http(s)://.../Medication/id[/_history/v]" reference."""
    if "://" in ref:
        parts = urlsplit(ref)
        if parts.scheme not in ("http", "https") or parts.query or parts.fragment:
            return None
        ref = parts.path.split("/_history/", 1)[0].strip("/")
        ref = "/".join(ref.split("/")[-2:])
    match = _REFERENCE.fullmatch(ref)
    return match.group(2) if match and match.group(1) == "Medication" else None


def _reference_query(ref: str, base: str) -> Query | None:
    """The read of one Medication reference, or None when its absolute URL names another server.

    A relative reference is read from fhirServer; an absolute one only when it is fhirServer's
    data (``under_base``: the same origin, or fhirServer's path behind a proxy), because the
    EHR's token must not go to any other server and the same id there may be another product.
    """
    key = f"Medication/{_medication_id(ref)}"
    if "://" not in ref:
        return plan_query(key, key, MEDICATION_KEY)
    target = under_base(base, ref)
    if target is None:
        return None
    path = urlsplit(target).path.split("/_history/", 1)[0]
    home = urlsplit(base).path.rstrip("/")
    return plan_query(key, path[len(home):].lstrip("/"), MEDICATION_KEY)


# ---------------------------------------------------------------- completion

@dataclass
class _Outcome:
    query: Query
    value: Any = None
    failure: FetchFailure | None = None
    seconds: float = 0.0
    truncated: bool = False
    #: kind of the reason further pages were not read (the record may be incomplete)
    incomplete: str | None = None


class PrefetchCompleter:
    """Fills in missing prefetch keys for one call; owns the FHIR client pool for the app's lifetime."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        pf = settings.prefetch
        self.pool = FhirClientPool(pool_size=max(pf.pool_connections, pf.max_parallel_queries))

    def complete(self, req: CdsRequest, service: ServiceDefinition, today: date, *,
                 waiting: Callable[[], AbstractContextManager[Any]] = nullcontext) -> CompletedData:
        """The prefetch with what is missing filled in. ``waiting()`` is entered while the call waits
        on the FHIR server (service/protocol/turns.py: the worker's other calls go on meanwhile)."""
        started = time.monotonic()
        prefetch = dict(req.prefetch)
        if not _needs_patient_data(service, req.context, prefetch):
            return CompletedData(prefetch=prefetch, sources={"request"})
        missing = missing_keys(service, prefetch)
        references = _unresolved(service, req.context, prefetch)
        if not missing and not references:
            return CompletedData(prefetch=prefetch, sources={"request"})
        if missing and req.fhir_server is None and self.settings.sample_patients:
            from fhir_fixtures import samples

            sample = samples.prefetch_for(req.patient_id, service.prefetch, today)
            if sample is not None:
                for key in missing:
                    prefetch[key] = sample.get(key)
                return CompletedData(prefetch=prefetch, sources={"sample"})
        if req.fhir_server is None:
            return self._without_server(service, prefetch, missing, references)
        if not fhir_server_allowed(req.fhir_server, self.settings.security.fhir_server_allowlist):
            raise BadRequest(
                "fhirServer is not allowed: this service only contacts FHIR servers on its configured "
                "allowlist (security.fhir_server_allowlist)")
        return self._from_server(req, service, prefetch, missing, references, started, waiting)

    # ------------------------------------------------------------ no fhirServer

    def _without_server(self, service: ServiceDefinition, prefetch: dict[str, Any], missing: list[str],
                        references: list[str]) -> CompletedData:
        required_missing = [key for key in missing if key in service.required_prefetch]
        if required_missing:
            raise PreconditionFailed(
                "required prefetch data is missing and the request has no fhirServer to read it from",
                details=[f"prefetch.{key}: missing ({service.prefetch[key]})" for key in required_missing],
            )
        unavailable = {key: "not sent in prefetch and no fhirServer given" for key in missing}
        unavailable.update({ref: "not in the request and no fhirServer given" for ref in references})
        for key in missing:
            prefetch.pop(key, None)  # an OperationOutcome or null is no data for the rules
        return CompletedData(prefetch=prefetch, unavailable=unavailable, sources={"request"})

    # ------------------------------------------------------------ fhirServer

    def _from_server(self, req: CdsRequest, service: ServiceDefinition, prefetch: dict[str, Any],
                     missing: list[str], references: list[str], started: float,
                     waiting: Callable[[], AbstractContextManager[Any]]) -> CompletedData:
        pf = self.settings.prefetch
        budget = Budget(deadline=started + pf.deadline_seconds, query_timeout=pf.query_timeout_seconds,
                        max_bytes=pf.max_bytes_per_call)
        token = req.fhir_authorization.access_token if req.fhir_authorization else None
        failures: dict[str, FetchFailure] = {}
        required_unrenderable: list[str] = []
        queries: list[Query] = []
        for key in missing:
            rendered = render_template(service.prefetch[key], req.context)
            if rendered is None:
                prefetch.pop(key, None)
                if key in service.required_prefetch:
                    required_unrenderable.append(key)
                else:
                    log.info("prefetch template skipped: its tokens cannot be filled from the context",
                             extra={"prefetch_key": key, "event": "prefetch_skipped"})
                continue
            queries.append(plan_query(key, rendered))
        if required_unrenderable:
            raise PreconditionFailed(
                "required prefetch data is missing and its query cannot be built from the request's context",
                details=[f"prefetch.{key}: the context lacks a value the query needs ({service.prefetch[key]})"
                         for key in required_unrenderable])
        partial: dict[str, str] = {}
        queries.extend(self._reference_queries(references, req.fhir_server, partial))

        extra: dict[str, dict[str, Any]] = {}
        with waiting(), ExitStack() as stack:
            try:
                client = stack.enter_context(self.pool.lease(req.fhir_server))
            except FetchFailure:  # the pool is closed: the app is shutting down
                raise ServiceUnavailable("the service is shutting down; try again") from None
            outcomes = self._run(client, queries, token, budget)
            self._collect(outcomes, prefetch, extra, failures, partial)
            # Data just read may leave other Medications unresolved: one more round, if time is left.
            later = [ref for ref in _unresolved(service, req.context, prefetch)
                     if ref not in references and f"Medication/{_medication_id(ref)}" not in extra]
            if later:
                outcomes = self._run(client, self._reference_queries(later, req.fhir_server, partial), token, budget)
                self._collect(outcomes, prefetch, extra, failures, partial)

        unavailable = self._judge(service, failures)
        if self.settings.prefetch.failure_mode != "omit":
            unavailable.update({key: reason for key, reason in partial.items() if key not in unavailable})
        for key in failures:
            prefetch.pop(key, None)
        sources = {"fhir"} | ({"request"} if set(req.prefetch) - set(missing) else set())
        return CompletedData(prefetch=prefetch, unavailable=unavailable,
                             extra_resources=list(extra.values()), sources=sources)

    @staticmethod
    def _reference_queries(references: list[str], base: str, partial: dict[str, str]) -> list[Query]:
        """The reads of these Medication references; one held by another server is noted, not read."""
        queries: dict[str, Query] = {}
        for ref in references:
            query = _reference_query(ref, base)
            if query is None:
                key = f"Medication/{_medication_id(ref)}"
                partial.setdefault(key, "held by another FHIR server than the one the EHR named; not read")
                log.info("Medication reference to another server not followed", extra={
                    "prefetch_key": MEDICATION_KEY, "event": "prefetch_skipped"})
            else:
                queries.setdefault(query.key, query)
        return list(queries.values())

    def _run(self, client: FhirClient, queries: list[Query], token: str | None, budget: Budget) -> list[_Outcome]:
        """Run the queries concurrently; whatever has not finished at the deadline is abandoned."""
        if not queries:
            return []
        pf = self.settings.prefetch
        outcomes = {q.key: _Outcome(q) for q in queries}
        executor = ThreadPoolExecutor(max_workers=min(pf.max_parallel_queries, len(queries)),
                                      thread_name_prefix="ivig-prefetch")
        try:
            futures: dict[Future, Query] = {
                executor.submit(_fetch, client, q, token, budget, pf.max_resources_per_query, pf.max_pages): q
                for q in queries
            }
            start = time.monotonic()
            done, pending = wait(futures, timeout=max(0.0, budget.remaining()))
            for future in done:
                outcomes[futures[future].key] = future.result()  # _fetch never raises
            for future in pending:
                future.cancel()
                query = futures[future]
                outcomes[query.key] = _Outcome(
                    query, failure=FetchFailure(
                        "deadline", "the FHIR server did not answer within the prefetch deadline "
                        f"({pf.deadline_seconds:g} s)"),
                    seconds=time.monotonic() - start)
        finally:
            # Never wait for stragglers: their own timeouts end them shortly after the deadline.
            executor.shutdown(wait=False, cancel_futures=True)
        for outcome in outcomes.values():
            _observe(outcome)
        return list(outcomes.values())

    def _collect(self, outcomes: list[_Outcome], prefetch: dict[str, Any], extra: dict[str, dict[str, Any]],
                 failures: dict[str, FetchFailure], partial: dict[str, str]) -> None:
        for outcome in outcomes:
            query = outcome.query
            if outcome.failure is not None:
                failures[query.key] = outcome.failure
                log.warning("prefetch query failed", extra={
                    "prefetch_key": query.metric_key, "reason": outcome.failure.kind,
                    "fhir_status": outcome.failure.status, "event": "prefetch_failed"})
                continue
            count = len(outcome.value.get("entry") or []) if query.search else 0
            if outcome.incomplete is not None:
                partial[query.key] = _incomplete_reason(outcome.incomplete, count)
            elif outcome.truncated and query.top_n is None:
                pf = self.settings.prefetch
                partial[query.key] = (f"may be incomplete: only the first {count} records were read "
                                      f"(limit {pf.max_resources_per_query} records, {pf.max_pages} pages)")
                log.info("prefetch query truncated at the configured cap", extra={
                    "prefetch_key": query.metric_key, "event": "prefetch_truncated", "count": count})
            if query.metric_key == MEDICATION_KEY:
                extra[query.key] = outcome.value
            else:
                prefetch[query.key] = outcome.value

    def _judge(self, service: ServiceDefinition, failures: dict[str, FetchFailure]) -> dict[str, str]:
        """Turn failures into the call's answer: raise 412/502, or return what is unavailable."""
        if not failures:
            return {}
        mode = self.settings.prefetch.failure_mode
        details = [f"prefetch.{key}: {f.reason}" if "/" not in key else f"{key}: {f.reason}"
                   for key, f in failures.items()]
        refused = [f for f in failures.values() if f.is_auth]
        if any(f.status == 401 for f in refused):
            raise PreconditionFailed(
                "the FHIR server demands authorization the request did not give: send fhirAuthorization with "
                "a valid access token, or send the prefetch data", details=details)
        required_failed = [key for key in failures if key in service.required_prefetch]
        if mode == "fail" or required_failed:
            if refused and (mode == "fail" or any(failures[k].is_auth for k in required_failed)):
                raise PreconditionFailed(
                    "the FHIR server refused access to data this service needs: send fhirAuthorization with a "
                    "token that grants it, or send the prefetch data", details=details)
            if mode == "fail":
                raise BadGateway("the FHIR server failed to deliver the prefetch data this service needs",
                                 details=details)
            raise PreconditionFailed(
                "required prefetch data could not be read from fhirServer: send it in prefetch",
                details=[d for d, key in zip(details, failures, strict=True) if key in service.required_prefetch])
        if mode == "omit":
            return {}
        return {key: _short_reason(f) for key, f in failures.items()}

    def close(self) -> None:
        self.pool.close()


def _fetch(client: FhirClient, query: Query, token: str | None, budget: Budget, max_resources: int,
           max_pages: int) -> _Outcome:
    """One query in a worker thread; every failure is returned, never raised."""
    start = time.monotonic()
    outcome = _Outcome(query)
    try:
        if query.search:
            found: SearchResult = client.search(
                query.path, token=token, budget=budget,
                max_resources=min(max_resources, query.top_n or max_resources), max_pages=max_pages)
            outcome.value, outcome.truncated, outcome.incomplete = found.bundle, found.truncated, found.incomplete
        else:
            outcome.value = client.read(query.path, token=token, budget=budget, resource_type=query.resource_type)
    except FetchFailure as failure:
        outcome.failure = failure
    except Exception as exc:  # a bug must still end as a defined answer, not a 500
        # the type only: an exception's text may quote a URL, and so the patient's id
        log.error("unexpected error in a prefetch query", extra={
            "prefetch_key": query.metric_key, "reason": type(exc).__name__})
        outcome.failure = FetchFailure("error", "unexpected error while reading from the FHIR server")
    outcome.seconds = time.monotonic() - start
    return outcome


def _incomplete_reason(kind: str, count: int) -> str:
    """Why a search was read only in part, as a card may say it."""
    why = {
        "other_server": "its further pages are on another server address, where this service sends no token",
        "too_large": "the FHIR server's answers exceeded what this service reads for one call",
        "deadline": "the FHIR server did not send its further pages in time",
        "timeout": "the FHIR server did not send its further pages in time",
    }.get(kind, "the FHIR server failed to send its further pages")
    return f"may be incomplete: {count} records read; {why}"


def _short_reason(failure: FetchFailure) -> str:
    """The human reason a card may show: the FHIR server's data could not be read, and why."""
    return {
        "timeout": "FHIR server timed out",
        "deadline": "FHIR server did not answer in time",
        "connection": "FHIR server could not be reached",
        "auth": "FHIR server refused access",
        "http": f"FHIR server error (HTTP {failure.status})" if failure.status else "FHIR server error",
        "invalid_json": "FHIR server sent invalid data",
        "wrong_type": "FHIR server sent an unexpected resource",
        "redirect": "FHIR server redirected elsewhere",
        "too_large": "FHIR server answer too large",
    }.get(failure.kind, "could not be read from the FHIR server")


def _observe(outcome: _Outcome) -> None:
    """Record the query's time and outcome in the metrics (which never fail a call)."""
    metrics.observe_prefetch(outcome.query.metric_key, outcome.seconds, outcome.failure is None)
