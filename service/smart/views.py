"""The SMART on FHIR trend page: EHR launch, the page itself, and the JSON it draws from.

Routes (blueprint ``smart``):

* ``GET /smart/launch?iss=...&launch=...`` — SMART App Launch 2.x EHR launch. ``iss`` must pass
  the ``security.fhir_server_allowlist`` before anything is contacted; then its
  ``.well-known/smart-configuration`` is read, a PKCE S256 verifier and a ``state`` are kept
  server-side, and the browser is sent to the authorization endpoint.
* ``GET /smart/app?code=...&state=...`` — the authorization-code callback: state checked against
  the launch bound to this browser, code exchanged with the verifier, the access token kept in
  the session store, and the browser redirected to a clean ``/smart/app`` (no code in its history).
* ``GET /smart/app`` (with a session) or ``GET /smart/app?fixture=NAME`` (standalone, a built-in
  scenario dated to today) — the page; its script reads ``/smart/api/patient``. Without either,
  an index of the built-in scenarios (an unknown fixture name is a 400: the request names no scenario).
* ``GET /smart/api/patient[?fixture=NAME]`` — facts, decision trace and cards as JSON.

Why a server-side session rather than a browser-side SMART client: the access token then never
reaches the page, a URL or a log; the browser holds only an opaque, HttpOnly cookie. The store
is the service's database (service/storage/smart_sessions.py), so a callback may reach any worker or
replica; each entry is encrypted with a key derived from the cookie, which only the browser holds.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import secrets
import time
import uuid
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import urlencode, urlsplit, urlunsplit, parse_qsl

import orjson
import requests
from flask import Blueprint, Flask, Response, redirect, render_template, request, url_for

import fhir_fixtures
from hooks.engine import evaluate_patient
from hooks.fhir_read import bare_id
from hooks.service_def import HookRequest, ServiceDefinition
from service.auth.keys import fetchable_url
from service.errors import CdsError
from service.prefetch.allowlist import fhir_server_allowed
from service.prefetch.fhir_client import Budget, FetchFailure, read_body
from service.protocol import cds
from service.protocol.cds import base_url
from service.protocol.models import CdsRequest, FhirAuthorization
from service.smart.trend import build_view, patient_from
from service.state import state
from service.storage.smart_sessions import SessionStore, SqlSessionStore

log = logging.getLogger("ivig_cds.smart")

ASSETS = Path(__file__).with_name("assets")
COOKIE = "ivig_cds_smart"
#: How long a launch may take from redirect to callback (the user may have to log in).
LAUNCH_TTL_SECONDS = 600.0
#: Longest an app session (and so its access token) is kept, whatever the token's expires_in.
SESSION_TTL_SECONDS = 3600.0
#: Most launches and sessions held at once; the oldest goes first.
MAX_ENTRIES = 1000
#: Largest discovery or token response read (within the prefetch byte allowance, if that is smaller).
MAX_RESPONSE_BYTES = 1024 * 1024
#: The page's own assets only: no CDN, no inline script, no framing restrictions (EHRs embed apps).
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "base-uri 'none'; form-action 'none'")

bp = Blueprint("smart", __name__, template_folder=str(ASSETS), static_folder=str(ASSETS),
               static_url_path="/smart/static")


class SmartError(Exception):
    """A launch or page request that cannot go on; ``message`` is one line fit for the user."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


def _store(kind: str) -> SessionStore | SqlSessionStore:
    """The app's store of pending launches or of sessions: apart, so a flood of launches can evict
    only other launches, never a clinician's open session."""
    st = state()
    name = {"launch": "smart_launches", "session": "smart_sessions"}[kind]
    store = st.extras.get(name)
    if store is None:
        engine = getattr(st.store, "engine", None)
        if engine is not None:  # the feedback database: shared by every worker and replica
            store = st.extras.setdefault(name, SqlSessionStore(engine, kind, max_entries=MAX_ENTRIES))
        else:  # no database (tests with the in-memory feedback store): this process only
            store = st.extras.setdefault(name, SessionStore(max_entries=MAX_ENTRIES))
    return store


def _http() -> requests.Session:
    """A Session for one discovery or token request (launches are rare: nothing pooled to leak);
    no proxies or .netrc from the environment."""
    session = requests.Session()
    session.trust_env = False
    return session


def _budget() -> Budget:
    """Time and bytes for one discovery or token request: the prefetch deadline, per-request
    timeout and byte allowance, so a slow or endless authorization server holds a launch no
    longer, and costs no more memory, than a FHIR server holds a hook call."""
    pf = _settings().prefetch
    return Budget(time.monotonic() + pf.deadline_seconds, pf.query_timeout_seconds,
                  min(MAX_RESPONSE_BYTES, pf.max_bytes_per_call))


# ---------------------------------------------------------------------------------- SMART client


def pkce_pair() -> tuple[str, str]:
    """(code_verifier, S256 code_challenge) per RFC 7636."""
    verifier = secrets.token_urlsafe(64)[:96]
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode("ascii")).digest()).rstrip(b"=").decode()
    return verifier, challenge


def _with_query(url: str, params: Mapping[str, str]) -> str:
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True) + list(params.items())
    return urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(query), ""))


def _json_response(resp: requests.Response, what: str, budget: Budget) -> dict[str, Any]:
    """A small JSON object from ``resp`` (closed afterwards), or SmartError naming ``what`` failed.

    The body is read within ``budget``: too large, too slow, or cut off mid-answer is a SmartError
    (the launch's error page), never an exception from the HTTP library.
    """
    try:
        body = read_body(resp, budget)
    except FetchFailure as failure:
        raise SmartError(_failure_text(failure, what), 502) from None
    finally:
        resp.close()
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise SmartError(f"the {what} answer is not JSON", 502) from None
    if not isinstance(data, dict):
        raise SmartError(f"the {what} answer is not a JSON object", 502)
    return data


def _failure_text(failure: FetchFailure, what: str) -> str:
    if failure.kind == "too_large":
        return f"the {what} answer is too large"
    if failure.kind in ("timeout", "deadline"):
        return f"the {what} answer did not arrive in time"
    return f"the {what} answer was cut off"


def _send(http: requests.Session, method: str, url: str, budget: Budget, what: str, unreachable: str,
          **kwargs: Any) -> requests.Response:
    """One request within ``budget``'s time; SmartError when it cannot be sent or answered."""
    try:
        return http.request(method, url, headers={"Accept": "application/json"}, timeout=budget.timeout(),
                            allow_redirects=False, stream=True, **kwargs)
    except FetchFailure as failure:
        raise SmartError(_failure_text(failure, what), 502) from None
    except requests.Timeout:
        raise SmartError(f"the {what} answer did not arrive in time", 502) from None
    except requests.RequestException:
        raise SmartError(unreachable, 502) from None


def discover(iss: str) -> dict[str, Any]:
    """The FHIR server's SMART configuration (``{iss}/.well-known/smart-configuration``)."""
    url = iss.rstrip("/") + "/.well-known/smart-configuration"
    budget = _budget()
    what = "SMART configuration"
    with _http() as http:
        resp = _send(http, "GET", url, budget, what, "the FHIR server could not be reached for its SMART configuration")
        if resp.status_code != 200:
            resp.close()
            raise SmartError(f"the FHIR server answered HTTP {resp.status_code} for its SMART configuration", 502)
        config = _json_response(resp, what, budget)
    for key in ("authorization_endpoint", "token_endpoint"):
        value = config.get(key)
        if not isinstance(value, str) or not fetchable_url(value):
            raise SmartError(f"the SMART configuration has no usable {key} (https, or http on loopback)", 502)
    methods = config.get("code_challenge_methods_supported")
    if isinstance(methods, list) and "S256" not in methods:
        raise SmartError("the authorization server does not support PKCE S256", 502)
    return config


def exchange_code(token_endpoint: str, *, code: str, verifier: str, redirect_uri: str,
                  client_id: str) -> dict[str, Any]:
    """POST the authorization code with its PKCE verifier; the token response (never logged)."""
    form = {"grant_type": "authorization_code", "code": code, "redirect_uri": redirect_uri,
            "client_id": client_id, "code_verifier": verifier}
    budget = _budget()
    with _http() as http:
        resp = _send(http, "POST", token_endpoint, budget, "token",
                     "the authorization server could not be reached for the token", data=form)
        if resp.status_code != 200:
            error = ""
            try:
                code_text = _json_response(resp, "token", budget).get("error")
                if isinstance(code_text, str) and code_text.replace("_", "").isalnum() and len(code_text) < 64:
                    error = f" ({code_text})"
            except SmartError:
                pass
            raise SmartError(f"the authorization server refused the code: HTTP {resp.status_code}{error}", 502)
        token = _json_response(resp, "token", budget)
    if not isinstance(token.get("access_token"), str) or not token["access_token"]:
        raise SmartError("the token response has no access_token", 502)
    if str(token.get("token_type", "")).lower() != "bearer":
        raise SmartError("the token response is not a bearer token", 502)
    if not isinstance(token.get("patient"), str) or not bare_id(token["patient"]):
        raise SmartError("the token response names no patient: launch the app from a patient's chart", 502)
    return token


# ---------------------------------------------------------------------------------- helpers


def _settings():
    return state().settings


def _redirect_uri() -> str:
    return _settings().smart.redirect_url or f"{base_url()}/smart/app"


def _secure() -> bool:
    return request.is_secure or _redirect_uri().startswith("https://")


def _set_cookie(response: Response, value: str, max_age: int) -> None:
    secure = _secure()
    response.set_cookie(COOKIE, value, max_age=max_age, path="/smart", httponly=True, secure=secure,
                        samesite="None" if secure else "Lax")


def _page_headers(response: Response) -> Response:
    response.headers["Content-Security-Policy"] = CSP
    response.headers["Cache-Control"] = "no-store"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


def _error_page(message: str, status: int) -> Response:
    html = render_template("smart_error.html", message=message, fixtures=_fixture_names())
    return _page_headers(Response(html, status=status, mimetype="text/html"))


def _fixture_names() -> list[str]:
    return list(fhir_fixtures.scenario_names())


def scenarios() -> list[dict[str, Any]]:
    """Every built-in scenario with what it shows (its expected.json): the sample patients first."""
    out = []
    for name in fhir_fixtures.scenario_names():
        expected = fhir_fixtures.load_json(name, "expected.json") or {}
        out.append({"name": name, "summary": expected.get("summary", ""), "sample": bool(expected.get("sample")),
                    "topics": list((expected.get("expected") or {}).get("patient-view") or [])})
    return sorted(out, key=lambda s: (not s["sample"], s["name"]))


def _index_page() -> Response:
    """``/smart/app`` with neither a launch nor a fixture: the scenarios it can show, as links."""
    items = scenarios()
    groups = [("Sample patients", [s for s in items if s["sample"]]),
              ("Every branch of the guideline and both sides of each threshold", [s for s in items if not s["sample"]])]
    html = render_template("smart_index.html", groups=[g for g in groups if g[1]])
    return _page_headers(Response(html, mimetype="text/html"))


def _today():
    """'Today' as the CDS endpoints decide it (``cds.today``), so the page and the cards agree."""
    return cds.today()


def _patient_view_service() -> ServiceDefinition:
    for service in state().services.values():
        if service.hook == "patient-view":
            return service
    raise SmartError("no patient-view service is configured", 500)


# ---------------------------------------------------------------------------------- evaluation


def evaluate_record(values: list[Any], patient_id: str, *, unavailable: Mapping[str, str] | None = None,
                    source: str, fixture: str | None = None) -> dict[str, Any]:
    """Facts, the decision trace and the patient-view cards for one record, as the page draws them.

    The cards and trace come from the patient-view service's own handler, so the page shows
    exactly what the EHR's cards were built from.
    """
    st = state()
    config = st.settings.guideline
    run_date = _today()
    service = _patient_view_service()
    prefetch = {f"record{i}": value for i, value in enumerate(values)}
    ev = evaluate_patient(values, patient_id=patient_id, today=run_date, config=config, unavailable=unavailable)
    result = service.handler(HookRequest(
        hook=service.hook, hook_instance=str(uuid.uuid4()), service_id=service.id,
        context={"patientId": patient_id}, prefetch=prefetch, today=run_date, config=config,
        unavailable=dict(unavailable or {}), ruleset_version=st.ruleset_version))
    return build_view(ev, result, config, patient_from(values, patient_id), source=source, fixture=fixture,
                      ruleset_version=st.ruleset_version)


def fixture_view(name: str) -> dict[str, Any]:
    if name not in fhir_fixtures.scenario_names():
        raise SmartError("unknown fixture: see the list of built-in scenarios", 400)
    scenario = fhir_fixtures.load_scenario(name, _today())
    bundle = scenario["bundle"]
    patient_id = (scenario.get("expected") or {}).get("patientId") or next(
        (e["resource"].get("id") for e in bundle.get("entry", []) if e.get("resource", {}).get("resourceType") == "Patient"),
        name)
    return evaluate_record([bundle], patient_id, source="fixture", fixture=name)


def session_view(session: Mapping[str, Any]) -> dict[str, Any]:
    """Read the patient's record from the FHIR server with the session's token, then evaluate."""
    st = state()
    service = _patient_view_service()
    patient_id = session["patient"]
    cds_request = CdsRequest(
        hook=service.hook, hook_instance=str(uuid.uuid4()), context={"patientId": patient_id}, prefetch={},
        fhir_server=session["iss"], extension=None,
        fhir_authorization=FhirAuthorization(access_token=session["access_token"], token_type="Bearer",
                                             scope=session.get("scope"), subject=None, patient=patient_id))
    try:
        completed = st.prefetcher.complete(cds_request, service, _today())
    except CdsError as exc:
        raise SmartError(f"the patient's record could not be read: {exc.message}", 502) from None
    values = [*completed.prefetch.values(), *completed.extra_resources]
    return evaluate_record(values, patient_id, unavailable=completed.unavailable, source="fhir")


# ---------------------------------------------------------------------------------- routes


@bp.get("/smart/launch")
def launch():
    iss = request.args.get("iss", "").strip()
    launch_token = request.args.get("launch", "").strip()
    if not iss or not launch_token:
        return _error_page("SMART EHR launch needs the parameters iss and launch (open the app from the EHR)", 400)
    if len(iss) > 2048 or len(launch_token) > 4096:
        return _error_page("launch parameters are too long", 400)
    if not fhir_server_allowed(iss, _settings().security.fhir_server_allowlist):
        log.warning("smart launch refused", extra={"event": "smart_launch", "reason": "iss_not_allowed"})
        return _error_page("this FHIR server (iss) is not on the service's allowlist "
                           "(security.fhir_server_allowlist)", 400)
    try:
        config = discover(iss)
    except SmartError as exc:
        log.warning("smart launch failed", extra={"event": "smart_launch", "reason": "discovery_failed"})
        return _error_page(exc.message, exc.status)
    verifier, challenge = pkce_pair()
    state_value = secrets.token_urlsafe(32)
    redirect_uri = _redirect_uri()
    smart = _settings().smart
    key = _store("launch").put({"kind": "launch", "state": state_value, "verifier": verifier, "iss": iss.rstrip("/"),
                        "token_endpoint": config["token_endpoint"], "redirect_uri": redirect_uri},
                       LAUNCH_TTL_SECONDS)
    target = _with_query(config["authorization_endpoint"], {
        "response_type": "code", "client_id": smart.client_id, "redirect_uri": redirect_uri,
        "launch": launch_token, "scope": smart.scope, "state": state_value, "aud": iss,
        "code_challenge": challenge, "code_challenge_method": "S256"})
    log.info("smart launch", extra={"event": "smart_launch", "outcome": "redirect"})
    response = redirect(target, code=302)
    _set_cookie(response, key, int(LAUNCH_TTL_SECONDS))
    return _page_headers(response)


def _callback() -> Response:
    error = request.args.get("error")
    if error:
        _store("launch").pop(request.cookies.get(COOKIE))
        text = error if error.replace("_", "").isalnum() and len(error) < 64 else "error"
        return _error_page(f"the authorization server did not authorize the app ({text})", 400)
    code, state_value = request.args.get("code", ""), request.args.get("state", "")
    pending = _store("launch").pop(request.cookies.get(COOKIE))
    if pending is None or pending.get("kind") != "launch":
        return _error_page("no launch in progress in this browser (expired or cookies blocked): launch again", 400)
    if not code or not hmac.compare_digest(state_value.encode(), pending["state"].encode()):
        log.warning("smart callback refused", extra={"event": "smart_callback", "reason": "state_mismatch"})
        return _error_page("the authorization answer does not belong to this launch (state mismatch)", 400)
    try:
        token = exchange_code(pending["token_endpoint"], code=code, verifier=pending["verifier"],
                              redirect_uri=pending["redirect_uri"], client_id=_settings().smart.client_id)
    except SmartError as exc:
        log.warning("smart callback failed", extra={"event": "smart_callback", "reason": "token_exchange_failed"})
        return _error_page(exc.message, exc.status)
    ttl = SESSION_TTL_SECONDS
    expires_in = token.get("expires_in")
    if isinstance(expires_in, (int, float)) and not isinstance(expires_in, bool) and expires_in > 0:
        ttl = min(ttl, float(expires_in))
    key = _store("session").put({"kind": "session", "iss": pending["iss"], "access_token": token["access_token"],
                        "patient": bare_id(token["patient"]), "scope": token.get("scope")}, ttl)
    log.info("smart session started", extra={"event": "smart_callback", "outcome": "session"})
    response = redirect(url_for("smart.app_page"), code=303)  # drop code and state from the address bar and history
    _set_cookie(response, key, int(ttl))
    return _page_headers(response)


@bp.get("/smart/app")
def app_page():
    if "code" in request.args or "error" in request.args:
        return _callback()
    fixture = request.args.get("fixture")
    if fixture is not None:
        if fixture not in fhir_fixtures.scenario_names():
            return _error_page("unknown fixture: choose one of the built-in scenarios below", 400)
        api = url_for("smart.api_patient", fixture=fixture)
        mode = f"standalone: built-in scenario {fixture}, dated to today"
    else:
        session = _store("session").get(request.cookies.get(COOKIE))
        if session is None or session.get("kind") != "session":
            return _index_page()
        api = url_for("smart.api_patient")
        mode = "SMART launch"
    html = render_template("smart_app.html", api=api, mode=mode,
                           index=url_for("smart.app_page") if fixture is not None else None)
    return _page_headers(Response(html, mimetype="text/html"))


def _json(body: Any, status: int = 200) -> Response:
    response = Response(orjson.dumps(body), status=status, mimetype="application/json")
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.get("/smart/api/patient")
def api_patient():
    try:
        fixture = request.args.get("fixture")
        if fixture is not None:
            return _json(fixture_view(fixture))
        session = _store("session").get(request.cookies.get(COOKIE))
        if session is None or session.get("kind") != "session":
            return _json({"error": "no_session", "message": "no SMART session: launch the app from the EHR"}, 401)
        return _json(session_view(session))
    except SmartError as exc:
        log.warning("smart page data failed", extra={"event": "smart_api", "status": exc.status})
        return _json({"error": "smart_failed", "message": exc.message}, exc.status)


def init_app(app: Flask) -> None:
    """The SMART routes, and the page's assets under /smart/static."""
    app.register_blueprint(bp)
