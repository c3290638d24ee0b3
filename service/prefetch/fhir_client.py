"""Reading from the EHR's FHIR server: pooled, time-boxed, same-origin only, token never logged.

Why a module of its own: prefetch completion (service/prefetch/completion.py) decides *what* to read and
what a failure means for the call; this module only knows *how* to read safely:

* one ``requests.Session`` per FHIR server base, with a mounted ``HTTPAdapter`` pool, kept for
  the app's lifetime (LRU-bounded, so a stream of different ``fhirServer`` URLs cannot grow it
  without limit) and closed with the app;
* an explicit ``(connect, read)`` timeout on every request, never above what is left of the
  call's deadline, and a body read in small pieces that stops at the deadline, so a server
  that trickles bytes cannot hold a worker beyond it;
* every body read in pieces against one byte allowance per call (all pages, all queries), so a
  server that sends 30 MB, or an endless chunked stream, costs at most that allowance and the
  deadline — never the whole answer in memory;
* no automatic redirects: a redirect is followed only to the same scheme, host and port;
* ``Bundle.link[next]`` (and an absolute reference) is requested from ``fhirServer``'s own origin
  only: a link to another origin whose path lies under ``fhirServer``'s path is the same server
  behind a proxy or load balancer that wrote its internal address, and is read at ``fhirServer``;
  any other link is not followed and the result is marked incomplete. The bearer token is only
  ever sent to ``fhirServer``'s origin;
* every failure is one ``FetchFailure`` with a ``kind`` and a short human reason that names no
  URL, no patient and no token.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator
from urllib.parse import urljoin, urlsplit, urlunsplit

import orjson
import requests
from requests.adapters import HTTPAdapter

log = logging.getLogger("ivig_cds.fhir_client")


class _NoRequestLines(logging.Filter):
    """urllib3 logs every request line at DEBUG, with the full URL and so the patient's id."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING


logging.getLogger("urllib3.connectionpool").addFilter(_NoRequestLines())

ACCEPT = "application/fhir+json"
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
MAX_REDIRECTS = 3
#: default bytes read from a FHIR server for one call, across every page of every query
MAX_BYTES_PER_CALL = 16 * 1024 * 1024
#: piece read from the socket at a time (the deadline and the allowance are checked between pieces)
READ_CHUNK = 65536
#: most Sessions kept at once (one per FHIR server base); the least recently used is closed
MAX_SESSIONS = 32
_DEFAULT_PORTS = {"http": 80, "https": 443}


class FetchFailure(Exception):
    """A FHIR read that produced no usable resource.

    ``kind`` is one of: timeout, deadline, connection, auth, http, invalid_json, wrong_type,
    redirect, too_large, not_allowed, error. ``reason`` is short, human and free of identifiers.
    """

    def __init__(self, kind: str, reason: str, status: int | None = None) -> None:
        super().__init__(reason)
        self.kind = kind
        self.reason = reason
        self.status = status

    @property
    def is_auth(self) -> bool:
        return self.kind == "auth"


def origin(url: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) of an http(s) URL, default ports filled in; None when malformed."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in _DEFAULT_PORTS or not parts.hostname:
        return None
    return parts.scheme, parts.hostname.lower(), port or _DEFAULT_PORTS[parts.scheme]


class Budget:
    """What one call may still spend: time (a per-request timeout capped by the deadline) and bytes.

    One Budget is shared by every query of a call, in several threads: ``spend`` is thread-safe.
    One answer may take at most a quarter of the call's bytes (``max_response_bytes``), so a single
    oversized answer fails its own query and leaves the others theirs.
    """

    def __init__(self, deadline: float, query_timeout: float, max_bytes: int = MAX_BYTES_PER_CALL) -> None:
        self.deadline = deadline  # time.monotonic() value
        self.query_timeout = query_timeout
        self.max_bytes = max_bytes
        self.max_response_bytes = max(max_bytes // 4, min(max_bytes, 64 * 1024))
        self._spent = 0
        self._lock = threading.Lock()

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def timeout(self) -> tuple[float, float]:
        left = self.remaining()
        if left <= 0:
            raise FetchFailure("deadline", "no time left before the prefetch deadline")
        value = max(0.001, min(self.query_timeout, left))
        return (value, value)

    def check(self) -> None:
        if self.remaining() <= 0:
            raise FetchFailure("deadline", "the FHIR server did not answer within the prefetch deadline")

    def spend(self, size: int) -> None:
        """Count ``size`` bytes read; FetchFailure("too_large") once the call's allowance is used up."""
        with self._lock:
            self._spent += size
            over = self._spent > self.max_bytes
        if over:
            raise FetchFailure("too_large", "the FHIR server's answers are larger than this service reads for one call")

    @property
    def spent(self) -> int:
        with self._lock:
            return self._spent


def read_body(resp: requests.Response, budget: Budget) -> bytearray:
    """The body, read as it arrives, stopping at the deadline or when the byte allowance is used up.

    Every failure while reading (timeout, a connection cut mid-answer, a broken chunked encoding, a
    bad gzip stream) is one ``FetchFailure``: the caller never sees a urllib3 or requests exception.
    """
    body = bytearray()
    raw = resp.raw
    try:
        while True:
            budget.check()
            chunk = raw.read1(READ_CHUNK, decode_content=True)
            if not chunk:  # urllib3 answers b"" only at the end of the body
                break
            if len(body) + len(chunk) > budget.max_response_bytes:
                raise FetchFailure("too_large", "the FHIR server's answer is larger than this service reads")
            budget.spend(len(chunk))
            body += chunk
    except FetchFailure:
        raise
    except requests.Timeout:
        raise FetchFailure("timeout", "the FHIR server stopped sending in time") from None
    except Exception as exc:  # urllib3 read/decode/protocol errors: one meaning for the caller
        if _is_timeout(exc):
            raise FetchFailure("timeout", "the FHIR server stopped sending in time") from None
        raise FetchFailure("connection", "the FHIR server's answer was cut off") from None
    return body


def under_base(base: str, url: str) -> str | None:
    """``url`` as a request URL on ``base``'s origin, or None when it is not ``base``'s data.

    The same origin: ``url`` itself. Another origin whose path lies under ``base``'s path (the
    server behind a proxy or load balancer that writes its internal address into its links, e.g.
    HAPI's ``_getpages`` links): the same path and query on ``base``'s origin. Anything else is
    another server's, and the bearer token must not go there.
    """
    target, home = urlsplit(url), urlsplit(base)
    if origin(url) is None:
        return None
    if origin(url) == origin(base):
        return url
    prefix = home.path.rstrip("/") + "/"
    if not (target.path + "/").startswith(prefix) or ".." in target.path.split("/"):
        return None
    return urlunsplit((home.scheme, home.netloc, target.path, target.query, ""))


@dataclass
class SearchResult:
    """One merged searchset, and whether it is all the server holds for the query.

    ``truncated``: a cap (resources, pages, or the query's own top-N) ended the paging;
    ``incomplete``: further pages exist that could not be read (kind of the reason), so the record
    may be incomplete and the caller must say so.
    """

    bundle: dict[str, Any]
    truncated: bool = False
    incomplete: str | None = None


class FhirClient:
    """Reads from one FHIR server base through a shared Session."""

    def __init__(self, base: str, session: requests.Session) -> None:
        self.base = base.rstrip("/")
        self.origin = origin(self.base)
        self.session = session

    # ------------------------------------------------------------------ public

    def read(self, path: str, *, token: str | None, budget: Budget, resource_type: str | None) -> dict[str, Any]:
        """GET ``{base}/{path}``; the resource must be of ``resource_type`` (None: any but OperationOutcome)."""
        resource = self._get_json(self._url(path), token, budget)
        found = resource.get("resourceType")
        if (resource_type is not None and found != resource_type) or found == "OperationOutcome":
            raise FetchFailure("wrong_type", _wrong_type(resource_type or "resource", found))
        return resource

    def search(self, path: str, *, token: str | None, budget: Budget, max_resources: int,
               max_pages: int) -> SearchResult:
        """GET a search and follow ``Bundle.link[next]``; one merged searchset.

        Paging stops at ``max_resources`` entries or ``max_pages`` pages (``truncated``). A next
        link is requested at this server's origin only (``under_base``); one that names another
        server is not followed; a later page that fails (the byte allowance used up, the deadline,
        an expired paging cursor) ends the paging too. What was read is kept and the result is
        ``incomplete``, so the cards say the record may be incomplete instead of losing what was
        read. The first page failing is a failure of the query.
        """
        url: str | None = self._url(path)
        first: dict[str, Any] | None = None
        entries: list[Any] = []
        pages = 0
        truncated = False
        incomplete: str | None = None
        while url is not None:
            try:
                page = self._get_json(url, token, budget)
                raw_entries = _searchset_entries(page)
            except FetchFailure as failure:
                if first is None:
                    raise
                log.warning("a further page could not be read: the result is kept as incomplete",
                            extra={"event": "prefetch_paging", "reason": failure.kind})
                incomplete = failure.kind
                break
            pages += 1
            if first is None:
                first = page
            room = max_resources - len(entries)
            if len(raw_entries) > room:
                raw_entries = raw_entries[:room]
                truncated = True
            entries.extend(raw_entries)
            link = _next_link(page, url)
            if link is None:
                break
            if len(entries) >= max_resources or pages >= max_pages:
                truncated = True
                break
            url = under_base(self.base, link)
            if url is None:
                log.warning("next-page link names another server: not followed", extra={"event": "prefetch_paging"})
                incomplete = "other_server"
        merged = {k: v for k, v in (first or {}).items() if k not in ("entry", "link")}
        merged["resourceType"] = "Bundle"
        merged.setdefault("type", "searchset")
        merged["entry"] = entries
        return SearchResult(merged, truncated, incomplete)

    # ------------------------------------------------------------------ internals

    def _url(self, path: str) -> str:
        return f"{self.base}/{path.lstrip('/')}"

    def _headers(self, token: str | None) -> dict[str, str]:
        headers = {"Accept": ACCEPT}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        return headers

    def _get_json(self, url: str, token: str | None, budget: Budget) -> dict[str, Any]:
        """One GET (plus same-origin redirects) -> a JSON object with a resourceType."""
        for _ in range(MAX_REDIRECTS + 1):
            if origin(url) != self.origin:  # the token goes to fhirServer's origin only, whatever the caller
                raise FetchFailure("redirect", "the FHIR server pointed to another host")
            budget.check()
            try:
                resp = self.session.get(url, headers=self._headers(token), timeout=budget.timeout(),
                                        allow_redirects=False, stream=True)
            except requests.Timeout:
                raise FetchFailure("timeout", "the FHIR server did not answer in time") from None
            except requests.ConnectionError:
                raise FetchFailure("connection", "the FHIR server could not be reached") from None
            except requests.RequestException:
                raise FetchFailure("connection", "the request to the FHIR server failed") from None
            try:
                status = resp.status_code
                if status in REDIRECT_STATUSES:
                    location = resp.headers.get("Location")
                    target = urljoin(url, location) if location else None
                    if target is None or origin(target) != self.origin:
                        raise FetchFailure("redirect", "the FHIR server redirected to another host", status)
                    url = target
                    continue
                if status in (401, 403):
                    raise FetchFailure(
                        "auth",
                        "the FHIR server refused access (HTTP %d): it needs authorization the request did not give"
                        % status, status)
                if not 200 <= status < 300:
                    raise FetchFailure("http", f"the FHIR server answered HTTP {status}", status)
                body = read_body(resp, budget)
            finally:
                resp.close()
            try:
                data = orjson.loads(body)
            except orjson.JSONDecodeError:
                raise FetchFailure("invalid_json", "the FHIR server's answer is not valid JSON") from None
            finally:
                del body  # the parsed resource is what the call keeps, not its text
            if not isinstance(data, dict) or not isinstance(data.get("resourceType"), str):
                raise FetchFailure("wrong_type", "the FHIR server's answer is not a FHIR resource")
            return data
        raise FetchFailure("redirect", "the FHIR server redirected too many times")


def _is_timeout(exc: BaseException) -> bool:
    import socket

    from urllib3.exceptions import ReadTimeoutError, TimeoutError as Urllib3Timeout

    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, (ReadTimeoutError, Urllib3Timeout, socket.timeout, TimeoutError)):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


def _wrong_type(expected: str, found: Any) -> str:
    if found == "OperationOutcome":
        return f"the FHIR server answered with an OperationOutcome instead of a {expected}"
    return f"the FHIR server answered with a {found or 'document without resourceType'} instead of a {expected}"


def _searchset_entries(page: dict[str, Any]) -> list[Any]:
    if page.get("resourceType") != "Bundle":
        raise FetchFailure("wrong_type", _wrong_type("Bundle", page.get("resourceType")))
    entries = page.get("entry") or []
    if not isinstance(entries, list):
        raise FetchFailure("wrong_type", "the FHIR server answered with a malformed Bundle")
    return entries


def _next_link(bundle: dict[str, Any], current: str) -> str | None:
    for link in bundle.get("link") or []:
        if isinstance(link, dict) and link.get("relation") == "next" and isinstance(link.get("url"), str):
            return urljoin(current, link["url"])
    return None


class FhirClientPool:
    """One Session per FHIR server base for the app's lifetime; bounded, thread-safe, closable.

    A call leases a client for its duration; a Session evicted (least recently used) while a
    call still uses it is closed when that call ends, never under its feet.
    """

    def __init__(self, pool_size: int, max_sessions: int = MAX_SESSIONS) -> None:
        self.pool_size = pool_size
        self.max_sessions = max_sessions
        self._lock = threading.Lock()
        self._sessions: OrderedDict[str, requests.Session] = OrderedDict()
        self._leases: dict[int, int] = {}
        self._retired: dict[int, requests.Session] = {}
        self._closed = False

    def _new_session(self, base: str) -> requests.Session:
        session = requests.Session()
        # Proxies and .netrc from the environment must not silently reroute or add credentials;
        # a CA bundle named there (a hospital's private CA) is still honoured.
        session.trust_env = False
        session.verify = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True
        adapter = HTTPAdapter(pool_connections=1, pool_maxsize=self.pool_size, max_retries=0, pool_block=False)
        parts = urlsplit(base)
        prefix = f"{parts.scheme}://{parts.netloc}/"
        session.mount(prefix, adapter)
        # Anything else (never requested: every URL is origin-checked before a request) gets no pool.
        return session

    @contextmanager
    def lease(self, base: str) -> Iterator[FhirClient]:
        key = base.rstrip("/")
        with self._lock:
            if self._closed:
                raise FetchFailure("error", "the service is shutting down")
            session = self._sessions.get(key)
            if session is None:
                session = self._new_session(key)
                self._sessions[key] = session
                while len(self._sessions) > self.max_sessions:
                    _, old = self._sessions.popitem(last=False)
                    self._retire(old)
            else:
                self._sessions.move_to_end(key)
            self._leases[id(session)] = self._leases.get(id(session), 0) + 1
        try:
            yield FhirClient(key, session)
        finally:
            with self._lock:
                count = self._leases.get(id(session), 1) - 1
                if count <= 0:
                    self._leases.pop(id(session), None)
                    retired = self._retired.pop(id(session), None)
                else:
                    self._leases[id(session)] = count
                    retired = None
            if retired is not None:
                retired.close()

    def _retire(self, session: requests.Session) -> None:
        """Close now if unused, else when the last lease ends (caller holds the lock)."""
        if self._leases.get(id(session)):
            self._retired[id(session)] = session
        else:
            session.close()

    def session_count(self) -> int:
        with self._lock:
            return len(self._sessions)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            sessions = list(self._sessions.values()) + list(self._retired.values())
            self._sessions.clear()
            self._retired.clear()
        for session in sessions:
            try:
                session.close()
            except Exception:  # closing must never raise during shutdown
                log.warning("error while closing a FHIR session")
