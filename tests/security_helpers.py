"""Test-side CDS client: key generation, token signing (and forging), and small local servers.

Everything here plays the EHR or the attacker; nothing is used by the service. Keys are made
fresh per test session with ``cryptography``; JWK Sets are pinned in settings or served from
127.0.0.1 by ``JsonServer``.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Iterator

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from tests.conftest import make_settings

ISSUER = "https://ehr.test.example/"
PATIENT_VIEW = "ivig-patient-view"
#: The test client's own URL, and the hook endpoint's path and URL there (the tokens' audience).
BASE = "http://localhost"
HOOK_PATH = f"/cds-services/{PATIENT_VIEW}"
HOOK_URL = BASE + HOOK_PATH


@dataclass
class SigningKey:
    """A private key as an EHR holds it, with the kid and alg it signs with."""

    alg: str
    kid: str
    private_key: Any

    @property
    def public_key(self) -> Any:
        return self.private_key.public_key()

    def public_jwk(self, **extra: Any) -> dict[str, Any]:
        algorithm = ECAlgorithm if self.alg.startswith("ES") else RSAAlgorithm
        jwk = algorithm.to_jwk(self.public_key, as_dict=True)
        jwk.update({"kid": self.kid, "use": "sig", "alg": self.alg})
        jwk.update(extra)
        return jwk

    def public_pem(self) -> bytes:
        return self.public_key.public_bytes(serialization.Encoding.PEM,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)


def new_key(alg: str = "ES384", kid: str | None = None) -> SigningKey:
    if alg == "ES384":
        private = ec.generate_private_key(ec.SECP384R1())
    elif alg == "ES256":
        private = ec.generate_private_key(ec.SECP256R1())
    elif alg in ("RS384", "RS256"):
        private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    else:
        raise ValueError(alg)
    return SigningKey(alg=alg, kid=kid or f"{alg.lower()}-{uuid.uuid4().hex[:8]}", private_key=private)


def jwks(*keys: SigningKey) -> dict[str, Any]:
    return {"keys": [k.public_jwk() for k in keys]}


def claims(aud: str | list[str], *, iss: str = ISSUER, now: float | None = None, lifetime: int = 300,
           **extra: Any) -> dict[str, Any]:
    """The payload CDS Hooks 2.0.1 requires; ``extra`` overrides or adds (None removes)."""
    now = time.time() if now is None else now
    out: dict[str, Any] = {"iss": iss, "aud": aud, "iat": int(now), "exp": int(now) + lifetime,
                           "jti": str(uuid.uuid4())}
    out.update(extra)
    return {k: v for k, v in out.items() if v is not None}


def sign(key: SigningKey, payload: dict[str, Any], **header: Any) -> str:
    """A JWT as a CDS client sends it: typ JWT, the key's kid and alg; ``header`` overrides (None removes)."""
    headers: dict[str, Any] = {"typ": "JWT", "kid": key.kid}
    headers.update(header)
    alg = headers.pop("alg", key.alg)
    typ = headers.pop("typ")
    headers = {k: v for k, v in headers.items() if v is not None}
    headers["typ"] = typ if typ is not None else ""  # PyJWT drops an empty typ
    return jwt.encode(payload, key.private_key, algorithm=alg, headers=headers)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _segments(header: dict[str, Any], payload: dict[str, Any]) -> str:
    return _b64(json.dumps(header).encode()) + "." + _b64(json.dumps(payload).encode())


def forge_unsigned(payload: dict[str, Any], kid: str) -> str:
    """The attacker's token with ``alg: none`` and no signature."""
    return _segments({"alg": "none", "typ": "JWT", "kid": kid}, payload) + "."


def forge_hs256(secret: bytes, payload: dict[str, Any], kid: str) -> str:
    """The algorithm-confusion attack: HS256 keyed with the (public!) key bytes of the issuer."""
    signing_input = _segments({"alg": "HS256", "typ": "JWT", "kid": kid}, payload)
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + _b64(mac)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def trusted_issuer(*keys: SigningKey, iss: str = ISSUER, **extra: Any) -> dict[str, Any]:
    """A ``security.trusted_issuers`` entry pinning the public keys of ``keys``."""
    entry: dict[str, Any] = {"iss": iss, "jwks": jwks(*keys)}
    entry.update(extra)
    return entry


def patient_view_body(patient_id: str = "pat-1", **extra: Any) -> dict[str, Any]:
    """A complete patient-view call: the essential prefetch keys are sent, so nothing is fetched."""
    body: dict[str, Any] = {
        "hook": "patient-view",
        "hookInstance": str(uuid.uuid4()),
        "context": {"userId": "Practitioner/doc-1", "patientId": patient_id},
        "prefetch": {
            "patient": {"resourceType": "Patient", "id": patient_id, "gender": "female"},
            "immunoglobulins": {"resourceType": "Bundle", "type": "searchset", "entry": []},
        },
    }
    body.update(extra)
    return body


# ------------------------------------------------------------------ local HTTP servers


@dataclass
class JsonServer:
    """A tiny HTTP server on 127.0.0.1 answering every GET with ``body`` (JWKS, FHIR stubs).

    ``status``, ``delay`` and ``routes`` (path prefix -> body) are changed by tests while it runs.
    """

    body: Any = None
    status: int = 200
    delay: float = 0.0
    routes: dict[str, Any] = field(default_factory=dict)
    hits: list[str] = field(default_factory=list)
    auth_headers: list[str] = field(default_factory=list)
    url: str = ""

    def answer(self, path: str) -> tuple[int, bytes]:
        for prefix, body in self.routes.items():
            if path.startswith(prefix):
                return 200, json.dumps(body).encode()
        return self.status, json.dumps(self.body).encode()


@contextlib.contextmanager
def json_server(body: Any = None, **kw: Any) -> Iterator[JsonServer]:
    state = JsonServer(body=body, **kw)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            state.hits.append(self.path)
            state.auth_headers.append(self.headers.get("Authorization", ""))
            if state.delay:
                time.sleep(state.delay)
            status, data = state.answer(self.path)
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_POST = do_GET

        def log_message(self, *args: Any) -> None:  # keep test output clean
            return None

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_port}"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


class FakeClock:
    """A clock the test moves by hand (for the JWK Set cache and refetch interval)."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


# ---------------------------------------------------------------- the service that checks the tokens


def secure_settings(tmp_path, issuers, **overrides):
    """Production profile: tokens required, replay store in an SQLite file under tmp_path, the
    audience built from ``BASE`` (the test client's own URL)."""
    base = {
        "profile": "production",
        "database_url": f"sqlite:///{tmp_path / 'security.sqlite3'}",
        "security.trusted_issuers": issuers,
        "security.fhir_server_allowlist": ["http://127.0.0.1:*"],
        "security.public_base_url": BASE,
    }
    base.update(overrides)
    return make_settings(tmp_path, **base)


def assert_401(resp) -> None:
    assert resp.status_code == 401, resp.get_data(as_text=True)
    assert resp.headers["WWW-Authenticate"].startswith("Bearer ")
    # one generic answer for every failure: nothing that tells an attacker what was wrong
    assert resp.get_json() == {"error": "unauthorized", "message": "a valid bearer token is required"}
