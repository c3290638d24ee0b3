"""CDS client authentication (CDS Hooks 2.0.1 'Trusting CDS Clients').

Every hook and feedback call (and discovery when ``security.protect_discovery``) carries
``Authorization: Bearer <JWT>`` signed by a trusted CDS client. We check, in this order, so that
junk is turned away before it can cost a key fetch: the header (``typ`` JWT, ``alg`` one we
support, ``kid``), the issuer (on the allowlist), the algorithm (one the issuer and the key allow,
never the token's choice), ``jku`` (on the issuer's allowlist), the signature (PyJWT), then the
claims: ``aud`` = the exact URL called, ``exp``/``iat``/``nbf`` with ``clock_skew_seconds``, a
lifetime no longer than ``max_token_lifetime_seconds``, and ``jti`` seen only once (shared
replay store, service/auth/replay.py). ``tenant`` is passed on to the rules.

Any failure is a 401 with ``WWW-Authenticate: Bearer`` and the same generic message; the reason
goes to the ``ivig_cds.auth`` log as a short code (``extra={"reason": ...}``) together with at
most the issuer when it is a trusted one (from our configuration), never the token or other
claim values. With ``require_token`` off (development) tokens are not even read.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

import jwt
from flask import Request

from service.auth.keys import SUPPORTED_ALGORITHMS, KeyLookupError, KeyRing
from service.auth.replay import ReplayStore, open_replay_store, replay_key
from service.errors import ServiceUnavailable, Unauthorized
from service.settings import SecuritySettings, Settings

log = logging.getLogger("ivig_cds.auth")

#: Longer than any sane JWT; a bigger header is refused before parsing.
MAX_TOKEN_CHARS = 16 * 1024
MAX_CLAIM_CHARS = 512
REALM = 'Bearer realm="ivig-cds"'
#: Signature only: claims are checked below with our own clock and our own reason codes.
_SIGNATURE_ONLY = {
    "verify_signature": True, "verify_exp": False, "verify_nbf": False, "verify_iat": False,
    "verify_aud": False, "verify_iss": False, "verify_sub": False, "verify_jti": False,
}
_UNVERIFIED = {**_SIGNATURE_ONLY, "verify_signature": False}


@dataclass(frozen=True)
class ClientIdentity:
    """Who called: the verified issuer and tenant (None when no token was required or sent)."""

    issuer: str | None = None
    tenant: str | None = None


class AuthNotReady(Exception):
    """The authentication configuration cannot work (raised by ``Authenticator.ready``)."""


class _Reject(Exception):
    def __init__(self, reason: str, issuer: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.issuer = issuer


def endpoint_url(request: Request, security: SecuritySettings) -> str:
    """The URL the client called, as its JWT ``aud`` must name it.

    ``public_base_url`` wins when set. Otherwise the request's own scheme and Host, or, only when
    ``behind_proxy``, X-Forwarded-Proto/Host. Of a comma-separated list the last value counts: it
    is the one our own proxy set (earlier ones may come from the client).
    """
    if security.public_base_url:
        return security.public_base_url.rstrip("/") + request.path
    scheme, host = request.scheme, request.host
    if security.behind_proxy:
        proto = _last(request.headers.get("X-Forwarded-Proto")).lower()
        forwarded_host = _last(request.headers.get("X-Forwarded-Host"))
        if proto in ("http", "https"):
            scheme = proto
        if forwarded_host:
            host = forwarded_host
    return f"{scheme}://{host}{request.script_root}{request.path}"


def _last(value: str | None) -> str:
    return value.rsplit(",", 1)[-1].strip() if value else ""


#: Latest NumericDate accepted (the year 5138): a larger value is not a time but an attack on the
#: arithmetic (an int past a float's range would overflow the replay store's expiry).
MAX_NUMERIC_DATE = 10 ** 11


def _number(value: Any) -> bool:
    """A JWT NumericDate: a finite JSON number. NaN compares false with everything, so a NaN
    ``iat`` would pass every lifetime check; booleans are ints to Python but not to JSON."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return abs(value) <= MAX_NUMERIC_DATE  # False for NaN and the infinities too


def _short_str(value: Any) -> bool:
    return isinstance(value, str) and 0 < len(value) <= MAX_CLAIM_CHARS


class Authenticator:
    """Verifies CDS client JWTs; one per app, safe to share between threads."""

    def __init__(self, settings: Settings, *, now: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic, replay_store: ReplayStore | None = None) -> None:
        """``now`` (epoch seconds) exists for tests only: it pins the clock so that a fixed token,
        such as the spec's 2015 example, can be verified. Production always uses ``time.time``.
        ``monotonic`` times the JWK Set cache; ``replay_store`` replaces the configured one."""
        self.settings = settings
        self._now = now
        self.keys = KeyRing(settings.security, monotonic=monotonic)
        self._replay = replay_store
        self._replay_lock = threading.Lock()

    # ------------------------------------------------------------------ public

    def verify(self, request: Request, *, discovery: bool = False) -> ClientIdentity:
        """The caller's identity, or Unauthorized (401). Tokens are ignored when none is required."""
        security = self.settings.security
        if not security.require_token or (discovery and not security.protect_discovery):
            return ClientIdentity()
        try:
            return self._verify(request, security)
        except _Reject as rejected:
            log.warning("authentication failed", extra={"reason": rejected.reason, "issuer": rejected.issuer})
            header = REALM if rejected.reason == "missing_token" else REALM + ', error="invalid_token"'
            raise Unauthorized(headers={"WWW-Authenticate": header}) from None

    def ready(self) -> None:
        """Raise AuthNotReady when configured keys cannot be used: pinned sets are read, and a JWK
        Set URL that never gave keys is fetched (at most once per refetch interval)."""
        security = self.settings.security
        problems = self.keys.problems()
        if security.require_token and not security.trusted_issuers:
            problems.append("security.require_token is set but no trusted issuer is configured")
        if security.replay_store == "redis" and not security.redis_url:
            problems.append("security.replay_store = redis needs security.redis_url")
        if not problems and security.require_token:
            problems = self.keys.remote_problems()
        if problems:
            raise AuthNotReady("; ".join(problems))

    def replay_ready(self) -> None:
        """Raise when the jti replay store does not answer: every authenticated call would be 503."""
        self._replay_store().ping()

    def close(self) -> None:
        self.keys.close()
        if self._replay is not None:
            self._replay.close()

    # ------------------------------------------------------------------ steps

    def _verify(self, request: Request, security: SecuritySettings) -> ClientIdentity:
        token = _bearer_token(request)
        try:
            parsed = jwt.decode_complete(token, options=_UNVERIFIED)  # to pick issuer and key; trusts nothing
        except (jwt.PyJWTError, ValueError, TypeError):
            raise _Reject("malformed_token") from None
        header, unverified = parsed["header"], parsed["payload"]

        if not isinstance(header.get("typ"), str) or header["typ"].upper() != "JWT":
            raise _Reject("bad_typ")
        alg = header.get("alg")
        if alg not in SUPPORTED_ALGORITHMS:
            raise _Reject("algorithm_not_allowed")
        kid = header.get("kid")
        if not _short_str(kid):
            raise _Reject("missing_kid")
        jku = header.get("jku")
        if jku is not None and not _short_str(jku):
            raise _Reject("malformed_token")
        if "crit" in header:
            raise _Reject("unsupported_crit")

        iss = unverified.get("iss")
        issuer = self.keys.issuers.get(iss) if isinstance(iss, str) else None
        if issuer is None:  # an untrusted iss is the caller's free text: never logged
            raise _Reject("issuer_not_trusted")
        if alg not in issuer.algorithms:
            raise _Reject("algorithm_not_allowed", iss)
        try:
            keys = issuer.lookup(kid, jku)
        except KeyLookupError as exc:
            raise _Reject(exc.reason, iss) from None

        claims = None
        for key in keys:
            if alg not in key.algorithms:
                continue
            try:
                claims = jwt.decode(token, key.key, algorithms=sorted(key.algorithms), options=_SIGNATURE_ONLY)
                break
            except jwt.InvalidSignatureError:
                continue
            except (jwt.PyJWTError, ValueError, TypeError):
                raise _Reject("malformed_token", iss) from None
        else:
            reason = "bad_signature" if any(alg in k.algorithms for k in keys) else "algorithm_not_allowed"
            raise _Reject(reason, iss)

        jti, expires, tenant = self._check_claims(claims, request, security, iss)
        self._check_replay(iss, jti, expires + security.clock_skew_seconds)
        return ClientIdentity(issuer=iss, tenant=tenant)

    def _check_claims(self, claims: dict[str, Any], request: Request, security: SecuritySettings,
                      iss: str) -> tuple[str, float, str | None]:
        if claims.get("iss") != iss:
            raise _Reject("issuer_mismatch", iss)
        aud = claims.get("aud")
        audiences = [aud] if isinstance(aud, str) else aud
        if not isinstance(audiences, list) or not audiences or not all(isinstance(a, str) for a in audiences):
            raise _Reject("missing_aud", iss)
        if endpoint_url(request, security) not in audiences:
            raise _Reject("wrong_aud", iss)

        now = self._now()
        skew = security.clock_skew_seconds
        exp, iat, nbf = claims.get("exp"), claims.get("iat"), claims.get("nbf")
        if not _number(exp):
            raise _Reject("missing_exp", iss)
        if not _number(iat):
            raise _Reject("missing_iat", iss)
        if nbf is not None and not _number(nbf):
            raise _Reject("malformed_nbf", iss)
        if now > exp + skew:
            raise _Reject("expired", iss)
        if iat > now + skew:
            raise _Reject("issued_in_future", iss)
        if nbf is not None and nbf > now + skew:
            raise _Reject("not_yet_valid", iss)
        if exp < iat or exp - iat > security.max_token_lifetime_seconds:
            raise _Reject("lifetime_too_long", iss)

        jti = claims.get("jti")
        if not _short_str(jti):
            raise _Reject("missing_jti", iss)
        tenant = claims.get("tenant")
        if tenant is not None and not _short_str(tenant):
            raise _Reject("malformed_tenant", iss)
        return jti, float(exp), tenant

    def _replay_store(self) -> ReplayStore:
        if self._replay is None:
            with self._replay_lock:
                if self._replay is None:
                    self._replay = open_replay_store(self.settings.security, self.settings.effective_database_url)
        return self._replay

    def _check_replay(self, iss: str, jti: str, keep_until: float) -> None:
        try:
            first = self._replay_store().first_use(replay_key(iss, jti), keep_until, self._now())
        except Exception as exc:  # fail closed, but say it is us, not the caller
            log.error("replay store unavailable", extra={"reason": "replay_store_unavailable",
                                                         "event": type(exc).__name__, "issuer": iss})
            raise ServiceUnavailable("authentication is temporarily unavailable") from None
        if not first:
            raise _Reject("replayed_jti", iss)


def _bearer_token(request: Request) -> str:
    value = request.headers.get("Authorization")
    if not value:
        raise _Reject("missing_token")
    if len(value) > MAX_TOKEN_CHARS + 16:
        raise _Reject("token_too_large")
    parts = value.split()
    if len(parts) != 2 or parts[0].lower() != "bearer":
        raise _Reject("malformed_authorization")
    return parts[1]
