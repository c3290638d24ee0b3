"""Local stand-ins for the parties around the SMART page and the CDS Hooks sandbox, on 127.0.0.1.

``LocalFhir`` is one small HTTP server playing an EHR's FHIR R4 server (reads, the searches our
prefetch templates use, and transaction POSTs as ``load-fixtures`` sends them) together with its
SMART authorization server (``.well-known/smart-configuration``, ``/auth/authorize``,
``/auth/token`` with PKCE S256 checked the way RFC 7636 says). It records every request so tests
can check what the service sent and never sent. ``SandboxSigner`` signs CDS client JWTs the way
the CDS Hooks sandbox does (ES384, ``kid`` and ``jku`` in the header), with a key made here that
stands in for the sandbox's.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import secrets
import shutil
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import date, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Iterator
from urllib.parse import parse_qs, urlencode, urlsplit

import jwt
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

import fhir_fixtures

SANDBOX_ISS = "https://sandbox.cds-hooks.org"
SANDBOX_JKU = "https://sandbox.cds-hooks.org/.well-known/jwks.json"
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage")


# ------------------------------------------------------------------------------------ JWT signing


@dataclass
class SandboxSigner:
    """A P-384 key standing in for the sandbox's signing key, and the tokens it signs."""

    kid: str = field(default_factory=lambda: f"sandbox-stand-in-{uuid.uuid4().hex[:8]}")
    private_key: Any = field(default_factory=lambda: ec.generate_private_key(ec.SECP384R1()))
    iss: str = SANDBOX_ISS
    jku: str = SANDBOX_JKU

    def jwks(self) -> dict[str, Any]:
        jwk = ECAlgorithm.to_jwk(self.private_key.public_key(), as_dict=True)
        jwk.update({"kid": self.kid, "use": "sig", "alg": "ES384"})
        return {"keys": [jwk]}

    def token(self, aud: str, *, lifetime: int = 300, **header: Any) -> str:
        """As the sandbox's jwt-generator.js: iss, aud (the URL called), exp, iat, jti; no tenant."""
        now = int(time.time())
        claims = {"iss": self.iss, "aud": aud, "exp": now + lifetime, "iat": now, "jti": str(uuid.uuid4())}
        headers = {"typ": "JWT", "kid": self.kid, "jku": self.jku, **header}
        return jwt.encode(claims, self.private_key, algorithm="ES384", headers=headers)


# ------------------------------------------------------------------------------------ FHIR + auth


@dataclass
class Seen:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes


def _ref_id(value: Any) -> str | None:
    if isinstance(value, dict) and isinstance(value.get("reference"), str):
        return value["reference"].rsplit("/", 1)[-1]
    return None


def _codings(concept: Any) -> list[dict[str, Any]]:
    return [c for c in (concept or {}).get("coding") or [] if isinstance(c, dict)]


def _matches(resource: dict[str, Any], params: dict[str, list[str]]) -> bool:
    for name, values in params.items():
        value = values[0]
        if name.startswith("_"):
            continue
        if name == "patient":
            if value.rsplit("/", 1)[-1] not in (_ref_id(resource.get("subject")), _ref_id(resource.get("patient"))):
                return False
        elif name in ("code", "category"):
            concepts = resource.get(name)
            concepts = concepts if isinstance(concepts, list) else [concepts]
            wanted = {tuple(v.split("|", 1)) if "|" in v else ("", v) for v in value.split(",")}
            found = {(c.get("system", ""), c.get("code")) for concept in concepts for c in _codings(concept)}
            if not any((s, c) in wanted or ("", c) in wanted for s, c in found):
                return False
        elif name == "code:text":
            concept = resource.get("code") or {}
            text = " ".join([str(concept.get("text", ""))] + [str(c.get("display", "")) for c in _codings(concept)])
            if value.lower() not in text.lower():
                return False
        else:
            return False  # a search parameter this stub does not know: match nothing, visibly
    return True


def _date_of(resource: dict[str, Any]) -> str:
    for key in ("effectiveDateTime", "onsetDateTime", "authoredOn", "occurrenceDateTime", "performedDateTime"):
        if isinstance(resource.get(key), str):
            return resource[key]
    period = resource.get("period") or resource.get("effectivePeriod") or {}
    return str(period.get("start", ""))


@dataclass
class LocalFhir:
    """FHIR R4 server + SMART authorization server on 127.0.0.1; ``base`` is the FHIR base (the iss).

    ``require_token``: FHIR calls need ``Authorization: Bearer <a token this server issued>``.
    ``transaction_reply``: replaces the answer to a transaction POST (fault injection):
    a callable (bundle) -> (status, body bytes, content type).
    """

    client_id: str = "ivig-cds"
    patient: str = "sample-on-ivig-low-trough"
    require_token: bool = True
    smart_config: dict[str, Any] | None = None
    transaction_reply: Callable[[dict[str, Any]], tuple[int, bytes, str]] | None = None
    resources: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    seen: list[Seen] = field(default_factory=list)
    issued_tokens: list[str] = field(default_factory=list)
    authorize_requests: list[dict[str, str]] = field(default_factory=list)
    token_requests: list[dict[str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._codes: dict[str, dict[str, str]] = {}
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -------------------------------------------------------------------- lifecycle

    def __enter__(self) -> "LocalFhir":
        fhir = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                return

            def do_GET(self) -> None:  # noqa: N802
                fhir._handle(self, "GET")

            def do_POST(self) -> None:  # noqa: N802
                fhir._handle(self, "POST")

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            request_queue_size = 64

        self._server = Server(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        assert self._server is not None and self._thread is not None
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    @property
    def origin(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def base(self) -> str:
        return f"{self.origin}/fhir"

    def load(self, resources: list[dict[str, Any]]) -> None:
        with self._lock:
            for r in resources:
                self.resources[(r["resourceType"], r["id"])] = json.loads(json.dumps(r))

    def fhir_requests(self) -> list[Seen]:
        with self._lock:
            return [s for s in self.seen if s.path.startswith("/fhir/") and "/.well-known/" not in s.path]

    # -------------------------------------------------------------------- answering

    def _handle(self, h: BaseHTTPRequestHandler, method: str) -> None:
        parts = urlsplit(h.path)
        length = int(h.headers.get("Content-Length") or 0)
        body = h.rfile.read(length) if length else b""
        with self._lock:
            self.seen.append(Seen(method, parts.path, parse_qs(parts.query), dict(h.headers.items()), body))
        query = {k: v for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        path = parts.path
        if method == "GET" and path == "/fhir/.well-known/smart-configuration":
            return self._json(h, 200, self.smart_config or self.default_smart_config())
        if method == "GET" and path == "/auth/authorize":
            return self._authorize(h, {k: v[0] for k, v in query.items()})
        if method == "POST" and path == "/auth/token":
            return self._token(h, {k: v[0] for k, v in parse_qs(body.decode()).items()})
        if method == "POST" and path.rstrip("/") == "/fhir":
            return self._transaction(h, body)
        if method == "GET" and path.startswith("/fhir/"):
            if self.require_token:
                auth = h.headers.get("Authorization", "")
                if not auth.startswith("Bearer ") or auth[7:] not in self.issued_tokens:
                    return self._json(h, 401, {"resourceType": "OperationOutcome",
                                               "issue": [{"severity": "error", "code": "login"}]})
            return self._fhir_get(h, path[len("/fhir/"):], query)
        return self._json(h, 404, {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "not-found"}]})

    def default_smart_config(self) -> dict[str, Any]:
        return {
            "issuer": self.origin,
            "authorization_endpoint": f"{self.origin}/auth/authorize",
            "token_endpoint": f"{self.origin}/auth/token",
            "grant_types_supported": ["authorization_code"],
            "code_challenge_methods_supported": ["S256"],
            "capabilities": ["launch-ehr", "client-public", "context-ehr-patient", "permission-v2"],
            "scopes_supported": ["launch", "openid", "fhirUser", "patient/*.read"],
            "response_types_supported": ["code"],
        }

    def _authorize(self, h: BaseHTTPRequestHandler, params: dict[str, str]) -> None:
        with self._lock:
            self.authorize_requests.append(params)
        problems = []
        if params.get("response_type") != "code":
            problems.append("response_type")
        if params.get("client_id") != self.client_id:
            problems.append("client_id")
        if params.get("code_challenge_method") != "S256" or not params.get("code_challenge"):
            problems.append("pkce")
        if params.get("aud") != self.base:
            problems.append("aud")
        if not params.get("state") or not params.get("redirect_uri") or not params.get("launch"):
            problems.append("state/redirect_uri/launch")
        if problems:
            return self._json(h, 400, {"error": "invalid_request", "problems": problems})
        code = secrets.token_urlsafe(16)
        with self._lock:
            self._codes[code] = {"challenge": params["code_challenge"], "redirect_uri": params["redirect_uri"],
                                 "client_id": params["client_id"], "scope": params.get("scope", "")}
        target = params["redirect_uri"] + "?" + urlencode({"code": code, "state": params["state"]})
        self._send(h, 302, b"", "text/plain", {"Location": target})

    def _token(self, h: BaseHTTPRequestHandler, form: dict[str, str]) -> None:
        with self._lock:
            self.token_requests.append(form)
            grant = self._codes.pop(form.get("code", ""), None)  # a code is good once
        if grant is None or form.get("grant_type") != "authorization_code":
            return self._json(h, 400, {"error": "invalid_grant"})
        verifier = form.get("code_verifier", "")
        challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
        if not (43 <= len(verifier) <= 128) or challenge != grant["challenge"]:
            return self._json(h, 400, {"error": "invalid_grant", "error_description": "PKCE verification failed"})
        if form.get("redirect_uri") != grant["redirect_uri"] or form.get("client_id") != grant["client_id"]:
            return self._json(h, 400, {"error": "invalid_grant"})
        token = secrets.token_urlsafe(24)
        with self._lock:
            self.issued_tokens.append(token)
        self._json(h, 200, {"access_token": token, "token_type": "Bearer", "expires_in": 300,
                            "scope": grant["scope"], "patient": self.patient})

    def _transaction(self, h: BaseHTTPRequestHandler, body: bytes) -> None:
        try:
            bundle = json.loads(body)
        except ValueError:
            return self._json(h, 400, {"resourceType": "OperationOutcome",
                                       "issue": [{"severity": "error", "code": "structure", "diagnostics": "not JSON"}]})
        if self.transaction_reply is not None:
            status, raw, ctype = self.transaction_reply(bundle)
            return self._send(h, status, raw, ctype)
        entries = []
        for entry in bundle.get("entry", []):
            resource = entry["resource"]
            key = (resource["resourceType"], resource["id"])
            with self._lock:
                existed = key in self.resources
                self.resources[key] = resource
            entries.append({"response": {"status": "200 OK" if existed else "201 Created",
                                         "location": f"{key[0]}/{key[1]}/_history/1"}})
        self._json(h, 200, {"resourceType": "Bundle", "type": "transaction-response", "entry": entries})

    def _fhir_get(self, h: BaseHTTPRequestHandler, path: str, query: dict[str, list[str]]) -> None:
        segments = [s for s in path.split("/") if s]
        if len(segments) == 2:
            with self._lock:
                found = self.resources.get((segments[0], segments[1]))
            if found is None:
                return self._json(h, 404, {"resourceType": "OperationOutcome",
                                           "issue": [{"severity": "error", "code": "not-found"}]})
            return self._json(h, 200, found)
        if len(segments) != 1:
            return self._json(h, 400, {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "invalid"}]})
        with self._lock:
            matches = [r for (t, _), r in self.resources.items() if t == segments[0] and _matches(r, query)]
        if query.get("_sort", [""])[0] == "-date":
            matches.sort(key=_date_of, reverse=True)
        count = int(query.get("_count", ["1000"])[0])
        page = matches[:count]
        self._json(h, 200, {"resourceType": "Bundle", "type": "searchset", "total": len(matches),
                            "entry": [{"fullUrl": f"{self.base}/{r['resourceType']}/{r['id']}", "resource": r}
                                      for r in page]})

    def _json(self, h: BaseHTTPRequestHandler, status: int, body: Any) -> None:
        self._send(h, status, json.dumps(body).encode(), "application/fhir+json" if "resourceType" in body
                   else "application/json")

    @staticmethod
    def _send(h: BaseHTTPRequestHandler, status: int, body: bytes, ctype: str,
              headers: dict[str, str] | None = None) -> None:
        h.send_response(status)
        h.send_header("Content-Type", ctype)
        h.send_header("Content-Length", str(len(body)))
        h.send_header("Cache-Control", "no-store")
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.end_headers()
        h.wfile.write(body)


# ------------------------------------------------------------------------------------ browser


def chromium_missing() -> str | None:
    """Why the browser tests cannot run here, or None when Chromium and its driver are installed."""
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not shutil.which(p)]
    if missing:
        return (f"{' and '.join(missing)} not installed (Debian: apt-get install -y chromium chromium-driver; "
                ".ci/run installs them)")
    return None


def start_chromium(width: int = 1280, height: int = 2000) -> Iterator[Any]:
    """A headless Chromium driven by chromedriver, with a fresh profile; quits and cleans up after."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="ivig-cds-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    options.add_argument(f"--window-size={width},{height}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


# ------------------------------------------------------------------------------------ records


def mid_interval_record(today: date) -> tuple[list[dict], str, str]:
    """sample-on-ivig-low-trough plus an IgG drawn a week after its latest infusion (a mid-interval level)."""
    bundle = copy.deepcopy(fhir_fixtures.load_scenario("sample-on-ivig-low-trough", today)["bundle"])
    resources = [e["resource"] for e in bundle["entry"]]
    last_infusion = max(r["effectiveDateTime"][:10] for r in resources
                        if r["resourceType"] == "MedicationAdministration")
    drawn = (date.fromisoformat(last_infusion) + timedelta(days=7)).isoformat()
    template = next(r for r in resources if r["resourceType"] == "Observation"
                    and any(c.get("code") == "2465-3" for c in r["code"]["coding"]))
    level = {**copy.deepcopy(template), "id": "mid-interval-igg", "effectiveDateTime": drawn,
             "valueQuantity": {**template["valueQuantity"], "value": 1150}}
    bundle["entry"].append({"fullUrl": "urn:uuid:mid-interval-igg", "resource": level})
    return [bundle], "sample-on-ivig-low-trough", drawn
