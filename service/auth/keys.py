"""Where the public keys of trusted CDS clients come from, parsed once and cached.

Sources per trusted issuer (``service.settings.TrustedIssuer``): a pinned JWK Set (``jwks``), a
pinned file (``jwks_file``: a path, or ``package:NAME`` for one shipped in service/auth), and a
``jwks_url`` fetched with ``requests``. A token's ``jku`` header is honoured only when it is on
the issuer's ``jku_allowlist``; when the issuer has a pinned set, that set answers for the jku
without any fetch (this is how the sandbox profile works offline).

Remote sets are cached for ``jwks_cache_seconds`` and refetched on an unknown ``kid`` at most
once per ``jwks_refetch_interval_seconds``: a flood of tokens with made-up kids costs one fetch
per interval, never one per request. A set that cannot be refreshed stays in use (stale) until
a fetch succeeds; a failing fetch is retried no more often than the refetch interval.

Each key is bound to the algorithms its type allows (EC P-256 -> ES256, P-384 -> ES384, RSA ->
RS256/RS384), intersected with what the issuer is configured for: the token never chooses.
Symmetric keys (``kty: oct``), ``none`` and HS* are never accepted, whatever the configuration.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import threading
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping
from urllib.parse import urlsplit

import requests
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt import PyJWK
from jwt.exceptions import PyJWKError

#: Everything the service can ever accept (CDS Hooks 2.0.1 recommends ES384 and RS384; the
#: 256-bit variants only when an issuer's configuration lists them).
SUPPORTED_ALGORITHMS = frozenset({"ES256", "ES384", "RS256", "RS384"})
_EC_CURVES = {"P-256": ("ES256", ec.SECP256R1), "P-384": ("ES384", ec.SECP384R1)}
_RSA_ALGORITHMS = frozenset({"RS256", "RS384"})
MIN_RSA_BITS = 2048
#: A JWK Set larger than this is not a JWK Set.
MAX_JWKS_BYTES = 512 * 1024
_LOOPBACK_HOSTS = {"localhost"}

log = logging.getLogger("ivig_cds.auth")


class KeyLoadError(Exception):
    """A configured key source cannot be read or holds no usable key (a configuration problem)."""


class KeyLookupError(Exception):
    """No key can be used for this token; ``reason`` is a short code for the log, never for the client."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class VerificationKey:
    """A parsed public key and the algorithms it may verify."""

    kid: str
    key: Any  # cryptography public key object (never bytes: no HMAC secret can be made from it)
    algorithms: frozenset[str]


KeyIndex = Mapping[str, tuple[VerificationKey, ...]]


def packaged_jwks(name: str) -> dict[str, Any]:
    """A JWK Set file from service/auth/, read from the installed package."""
    return json.loads(resources.files("service.auth").joinpath(name).read_text(encoding="utf-8"))


def load_jwks_file(spec: str) -> dict[str, Any]:
    """A JWK Set from ``spec``: a file path, or ``package:NAME`` for one shipped with ivig-cds."""
    try:
        if spec.startswith("package:"):
            return packaged_jwks(spec.removeprefix("package:"))
        return json.loads(Path(spec).expanduser().read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise KeyLoadError(f"cannot read JWK Set {spec}: {type(exc).__name__}") from None


def _key_algorithms(jwk: Mapping[str, Any], allowed: frozenset[str]) -> tuple[str, frozenset[str]] | None:
    """(algorithm used to build the key, algorithms it may verify) or None for an unusable JWK."""
    kty = jwk.get("kty")
    if kty == "EC":
        curve = _EC_CURVES.get(jwk.get("crv"))  # type: ignore[arg-type]
        if curve is None:
            return None
        algs = frozenset({curve[0]})
    elif kty == "RSA":
        algs = _RSA_ALGORITHMS
    else:  # 'oct' (HMAC secrets), OKP and anything else: never
        return None
    declared = jwk.get("alg")
    if declared is not None:
        algs = algs & {declared}
    algs = algs & allowed
    if not algs:
        return None
    return sorted(algs)[0], algs


def parse_jwks(data: Any, allowed_algorithms: Iterable[str]) -> dict[str, tuple[VerificationKey, ...]]:
    """kid -> usable verification keys. Keys without kid, not for signatures, or too weak are left out."""
    if not isinstance(data, Mapping) or not isinstance(data.get("keys"), list):
        raise KeyLoadError("not a JWK Set (an object with a 'keys' array)")
    allowed = frozenset(allowed_algorithms) & SUPPORTED_ALGORITHMS
    index: dict[str, list[VerificationKey]] = {}
    for jwk in data["keys"]:
        if not isinstance(jwk, Mapping) or not isinstance(jwk.get("kid"), str) or not jwk["kid"]:
            continue
        if jwk.get("use", "sig") != "sig":
            continue
        ops = jwk.get("key_ops")
        if ops is not None and (not isinstance(ops, list) or "verify" not in ops):
            continue
        algs = _key_algorithms(jwk, allowed)
        if algs is None:
            continue
        # Only the public members: a published private JWK must not make us hold a private key.
        public = {k: v for k, v in jwk.items() if k in ("kty", "crv", "x", "y", "n", "e", "kid")}
        try:
            key = PyJWK(public, algorithm=algs[0]).key
        except (PyJWKError, ValueError, TypeError):
            continue
        if isinstance(key, rsa.RSAPublicKey) and key.key_size < MIN_RSA_BITS:
            continue
        if isinstance(key, ec.EllipticCurvePublicKey) and not isinstance(key.curve, _EC_CURVES[jwk["crv"]][1]):
            continue
        index.setdefault(jwk["kid"], []).append(VerificationKey(jwk["kid"], key, algs[1]))
    return {kid: tuple(keys) for kid, keys in index.items()}


def fetchable_url(url: str) -> bool:
    """https anywhere; plain http only on loopback (tests, a sidecar). No user info."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:
        return False
    if not host or parts.username or parts.password:
        return False
    if parts.scheme == "https":
        return True
    if parts.scheme != "http":
        return False
    if host in _LOOPBACK_HOSTS:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def fetch_jwks(session: requests.Session, url: str, timeout: float) -> dict[str, Any]:
    """GET a JWK Set: bounded time and size, no redirects (a redirect could point anywhere)."""
    with session.get(url, timeout=(timeout, timeout), allow_redirects=False, stream=True,
                     headers={"Accept": "application/jwk-set+json, application/json"}) as resp:
        if resp.status_code != 200:
            raise KeyLoadError(f"JWK Set fetch answered HTTP {resp.status_code}")
        body = b""
        deadline = time.monotonic() + timeout
        for chunk in resp.iter_content(64 * 1024):
            body += chunk
            if len(body) > MAX_JWKS_BYTES:
                raise KeyLoadError("JWK Set too large")
            if time.monotonic() > deadline:
                raise KeyLoadError("JWK Set fetch too slow")
    try:
        return json.loads(body)
    except ValueError:
        raise KeyLoadError("JWK Set is not JSON") from None


class RemoteJwks:
    """One JWK Set URL: cached, refreshed on expiry or unknown kid, at most once per interval."""

    def __init__(self, url: str, *, algorithms: Iterable[str], session: requests.Session, timeout: float,
                 cache_seconds: float, refetch_interval: float, monotonic: Callable[[], float]) -> None:
        self.url = url
        self._algorithms = frozenset(algorithms)
        self._session = session
        self._timeout = timeout
        self._cache_seconds = cache_seconds
        self._refetch_interval = refetch_interval
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._keys: KeyIndex | None = None
        self._fetched_at: float | None = None
        self._attempted_at: float | None = None
        #: number of fetch attempts (for tests and metrics)
        self.fetches = 0

    def _fresh(self, now: float) -> bool:
        return self._keys is not None and self._fetched_at is not None and now - self._fetched_at < self._cache_seconds

    def _may_fetch(self, now: float) -> bool:
        return self._attempted_at is None or now - self._attempted_at >= self._refetch_interval

    def lookup(self, kid: str) -> tuple[VerificationKey, ...]:
        now = self._monotonic()
        keys = self._keys
        if keys is not None and self._fresh(now) and kid in keys:
            return keys[kid]
        if not self._may_fetch(now):
            return (keys or {}).get(kid, ())
        with self._lock:
            now = self._monotonic()
            if self._keys is not None and self._fresh(now) and kid in self._keys:
                return self._keys[kid]  # another thread just fetched it
            if self._may_fetch(now):
                self._refresh(now)
            return (self._keys or {}).get(kid, ())

    def loaded(self) -> bool:
        """Usable keys are at hand (fresh or stale); fetched now if there are none and the
        refetch interval allows (readiness: the first token must not wait for the fetch)."""
        if self._keys:
            return True
        with self._lock:
            now = self._monotonic()
            if not self._keys and self._may_fetch(now):
                self._refresh(now)
            return bool(self._keys)

    def _refresh(self, now: float) -> None:
        self._attempted_at = now
        self.fetches += 1
        try:
            if not fetchable_url(self.url):
                raise KeyLoadError("JWK Set URL must be https (http only on loopback)")
            keys = parse_jwks(fetch_jwks(self._session, self.url, self._timeout), self._algorithms)
        except (KeyLoadError, requests.RequestException) as exc:
            # the URL is configuration, not a secret; the exception type says enough
            log.warning("JWK Set fetch failed", extra={"reason": "jwks_fetch_failed", "event": type(exc).__name__})
            return
        self._keys = keys
        self._fetched_at = now


@dataclass
class _Pinned:
    keys: KeyIndex | None = None
    error: str | None = None


class IssuerKeys:
    """The keys of one trusted issuer, from its pinned set, its jwks_url, or an allowlisted jku."""

    def __init__(self, config: Any, *, session: requests.Session, timeout: float, cache_seconds: float,
                 refetch_interval: float, monotonic: Callable[[], float]) -> None:
        self.iss: str = config.iss
        self.algorithms = frozenset(config.algorithms) & SUPPORTED_ALGORITHMS
        self.jku_allowlist = frozenset(config.jku_allowlist)
        self.jwks_url: str | None = config.jwks_url
        self._config = config
        self._remote_args = dict(algorithms=self.algorithms, session=session, timeout=timeout,
                                 cache_seconds=cache_seconds, refetch_interval=refetch_interval,
                                 monotonic=monotonic)
        self._remotes: dict[str, RemoteJwks] = {}
        self._remotes_lock = threading.Lock()
        self._pinned = _Pinned()
        self.has_pinned = config.jwks is not None or config.jwks_file is not None
        unsupported = set(config.algorithms) - SUPPORTED_ALGORITHMS
        if unsupported:
            log.warning("unsupported algorithms ignored for a trusted issuer",
                        extra={"issuer": self.iss, "reason": "unsupported_algorithms"})
        if self.has_pinned:
            self.load_pinned()

    def load_pinned(self) -> None:
        """(Re)read the pinned set; a failure is remembered and reported by ``problems``."""
        try:
            keys: dict[str, tuple[VerificationKey, ...]] = {}
            sources = []
            if self._config.jwks is not None:
                sources.append(self._config.jwks)
            if self._config.jwks_file is not None:
                sources.append(load_jwks_file(self._config.jwks_file))
            for data in sources:
                for kid, found in parse_jwks(data, self.algorithms).items():
                    keys[kid] = keys.get(kid, ()) + found
            if not keys:
                raise KeyLoadError("the pinned JWK Set has no usable key for the configured algorithms")
            self._pinned = _Pinned(keys=keys)
        except KeyLoadError as exc:
            self._pinned = _Pinned(error=str(exc))
            log.error("pinned JWK Set unusable", extra={"issuer": self.iss, "reason": "jwks_unusable"})

    def problems(self) -> list[str]:
        """Configuration problems that need no network to see."""
        out = []
        if self.has_pinned and self._pinned.keys is None:
            self.load_pinned()
            if self._pinned.error:
                out.append(f"trusted issuer {self.iss}: {self._pinned.error}")
        if not self.has_pinned and not self.jwks_url and not self.jku_allowlist:
            out.append(f"trusted issuer {self.iss}: no jwks, jwks_file, jwks_url or jku_allowlist")
        for url in filter(None, [self.jwks_url, *self.jku_allowlist]):
            if not fetchable_url(url):
                out.append(f"trusted issuer {self.iss}: {url} must be https (http only on loopback)")
        if not self.algorithms:
            out.append(f"trusted issuer {self.iss}: no supported algorithm (use ES384, RS384, ES256, RS256)")
        return out

    def remote_problem(self) -> str | None:
        """Without a pinned set: a problem when none of the issuer's JWK Set URLs has given keys."""
        if self.has_pinned:
            return None
        urls = [self.jwks_url] if self.jwks_url else sorted(self.jku_allowlist)
        if urls and not any(self.remote(url).loaded() for url in urls):
            return f"trusted issuer {self.iss}: no usable key could be fetched from its JWK Set URL"
        return None

    def remote(self, url: str) -> RemoteJwks:
        with self._remotes_lock:
            found = self._remotes.get(url)
            if found is None:
                found = self._remotes[url] = RemoteJwks(url, **self._remote_args)  # type: ignore[arg-type]
            return found

    def lookup(self, kid: str, jku: str | None) -> tuple[VerificationKey, ...]:
        """The keys a token with this ``kid`` (and ``jku``) may be verified with; KeyLookupError if none."""
        if jku is not None and jku not in self.jku_allowlist:
            raise KeyLookupError("jku_not_allowed")
        if self.has_pinned:
            if self._pinned.keys is None:
                raise KeyLookupError("keys_unavailable")
            found = self._pinned.keys.get(kid, ())
            if found:
                return found
        url = jku if jku is not None and (not self.has_pinned or jku == self.jwks_url) else None
        if url is None and jku is None:
            url = self.jwks_url
        if url is not None:
            found = self.remote(url).lookup(kid)
            if found:
                return found
        raise KeyLookupError("unknown_kid")


class KeyRing:
    """All trusted issuers and their keys; one per app, shared by its threads."""

    def __init__(self, security: Any, *, monotonic: Callable[[], float] = time.monotonic) -> None:
        self._session = requests.Session()
        self._session.trust_env = False  # no proxy or netrc from the environment for key fetches
        self.issuers: dict[str, IssuerKeys] = {}
        for config in security.trusted_issuers:
            self.issuers[config.iss] = IssuerKeys(
                config, session=self._session, timeout=security.jwks_fetch_timeout_seconds,
                cache_seconds=security.jwks_cache_seconds,
                refetch_interval=security.jwks_refetch_interval_seconds, monotonic=monotonic)

    def problems(self) -> list[str]:
        return [p for issuer in self.issuers.values() for p in issuer.problems()]

    def remote_problems(self) -> list[str]:
        """Issuers whose keys come from a URL and none could be fetched (this may fetch)."""
        return [p for issuer in self.issuers.values() if (p := issuer.remote_problem())]

    def close(self) -> None:
        self._session.close()
