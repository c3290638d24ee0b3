"""Reading a JSON request body safely: media type, size, syntax, nesting depth, and memory.

What a body costs in memory is far more than its bytes: parsed, then validated as FHIR, a body
takes some 30-50 times its size (bench/memory_limits.py measures it under gunicorn). The bytes
one call may send are bounded (``limits.max_body_bytes``, 413 past it), and so are the bytes one
worker process works on at once (``limits.worker_body_bytes``, ``BODIES``): a call whose body
would pass that waits for others to finish, at most ``BODY_WAIT_SECONDS``, then gets 503 with
Retry-After. A body alone always fits, so a call at the size limit is served when the worker is
otherwise idle; small calls fit beside large ones in what the budget keeps above the size limit.

An error answer to a call whose body was never read (too large, no valid token, no budget)
reads and throws the body away first (``discard_unread``, up to ``DISCARD_LIMIT_BYTES``): a
server that closes a connection with unread data in it resets it, and the client would see the
reset instead of the 413 or 401.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import orjson
from flask import Flask, Request, after_this_request, request as current_request
from werkzeug.exceptions import RequestEntityTooLarge

from service.errors import BadRequest, PayloadTooLarge, ServiceUnavailable

#: Longest a call waits for its worker's body budget.
BODY_WAIT_SECONDS = 3.0
#: Most bytes of a refused body read and discarded, and for how long.
DISCARD_LIMIT_BYTES = 64 * 1024 * 1024
DISCARD_SECONDS = 10.0


class BodyBudget:
    """Bytes of request bodies this process works on at once (a semaphore weighed in bytes)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._reset()
        os.register_at_fork(after_in_child=self._reset)  # a worker's budget is its own

    def _reset(self) -> None:
        self.in_use = 0
        self._cond = threading.Condition()

    def acquire(self, size: int, timeout: float) -> bool:
        """Take ``size`` bytes; wait at most ``timeout`` for them. Alone, a body always fits."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self.in_use and self.in_use + size > self.capacity:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
            self.in_use += size
            return True

    def release(self, size: int) -> None:
        with self._cond:
            self.in_use -= size
            self._cond.notify_all()


#: The process's budget; sized from ``limits.worker_body_bytes`` by service/app.py.
BODIES = BodyBudget(16 * 1024 * 1024)


def _reserve(size: int) -> None:
    """Hold ``size`` bytes of the budget until this request's answer is made (503 if none comes free)."""
    if not BODIES.acquire(size, BODY_WAIT_SECONDS):
        raise ServiceUnavailable("the service is busy with large requests; send this one again shortly",
                                 headers={"Retry-After": "2"})

    @after_this_request
    def _release(response: Any) -> Any:
        BODIES.release(size)
        return response


#: Set in the WSGI environ once the body has been read (whole, or as far as it will ever be).
BODY_READ = "ivig_cds.body_read"


def discard_unread(environ: dict[str, Any]) -> None:
    """Read and drop a body nothing has read, within bounds (see the module docstring).

    A body of announced length is read to that length, a chunked one to its end; either way at
    most ``DISCARD_LIMIT_BYTES`` for at most ``DISCARD_SECONDS``.
    """
    if environ.get(BODY_READ):
        return
    environ[BODY_READ] = True
    try:
        announced = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        return
    chunked = "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower()
    if announced <= 0 and not chunked:
        return
    left = min(announced, DISCARD_LIMIT_BYTES) if announced > 0 else DISCARD_LIMIT_BYTES
    stream = environ["wsgi.input"]
    deadline = time.monotonic() + DISCARD_SECONDS
    try:
        while left > 0 and time.monotonic() < deadline:
            chunk = stream.read(min(left, 64 * 1024))
            if not chunk:
                return
            left -= len(chunk)
    except (OSError, ValueError):  # the client went away, or the stream is done: nothing more to drop
        return


def init_app(app: Flask) -> None:
    """Before an error answer leaves, a request body nothing has read is read and dropped."""

    @app.after_request
    def _discard_unread_body(response):
        if response.status_code >= 400:
            discard_unread(current_request.environ)
        return response


JSON_TYPES = ("application/json", "application/fhir+json")


def _is_json_type(mimetype: str) -> bool:
    return mimetype in JSON_TYPES or mimetype.endswith("+json")


_KEEP_QUOTES_AND_BRACKETS = bytes(b for b in range(256) if b not in b'{}[]"')
_PARENS = bytes.maketrans(b"{[}]", b"(())")


def json_depth(raw: bytes, stop_above: int | None = None) -> int:
    """The deepest nesting of a (valid) JSON document, computed on its bytes at C speed.

    Escaped backslashes and quotes go first; then only quotes and brackets are kept, and every
    other quote-separated segment lies outside a string. Each round of deleting adjacent "()"
    pairs peels one level, so the number of rounds is the depth. (A walk over the parsed tree
    would cost more than the rules themselves.) Two shortcuts keep it cheap on FHIR bodies: a body
    without a backslash has nothing to unescape, and adjacent quotes ("" - a string without
    brackets in it, or the end of one and the start of the next) are dropped before splitting:
    removing two quotes with nothing between them leaves every bracket inside or outside a
    string as it was, and leaves few segments to split.
    """
    unescaped = raw.replace(b"\\\\", b"").replace(b'\\"', b"") if b"\\" in raw else raw
    marks = unescaped.translate(None, _KEEP_QUOTES_AND_BRACKETS).replace(b'""', b"")
    outside = b"".join(marks.split(b'"')[::2]) if b'"' in marks else marks
    nest = outside.translate(_PARENS)
    depth = 0
    while nest:
        shorter = nest.replace(b"()", b"")
        if len(shorter) == len(nest):  # unbalanced: not JSON, let the parser have said so
            break
        nest = shorter
        depth += 1
        if stop_above is not None and depth > stop_above:
            break
    return depth


def read_json(request: Request, *, max_bytes: int, max_depth: int) -> Any:
    """The parsed body, or a CdsError that says what is wrong with it."""
    raw = read_body(request, max_bytes=max_bytes)
    body = parse_json(raw, max_depth=max_depth)
    check_depth(raw, max_depth)
    return body


def _read_announced(request: Request, length: int) -> bytes:
    """A body of known length (checked against the limit by the caller) in one read.

    Werkzeug's limited stream reads a large body in 64 KB pieces and copies it several times;
    one read makes one copy. The endpoints that call this are the only readers of their
    request's body.
    """
    raw = request.environ["wsgi.input"].read(length) if length else b""
    request.environ[BODY_READ] = True  # as far as it goes: a short body must not be waited for again
    if len(raw) != length:
        raise BadRequest(f"the request body ended after {len(raw)} of the {length} bytes its Content-Length announced")
    return raw


def _announced(request: Request) -> tuple[bool, int | None]:
    """(is the body JSON, its announced length): what nearly every caller sends (a bare JSON media
    type, a plain Content-Length) read from the WSGI environ; anything else as werkzeug reads it."""
    environ = request.environ
    media, length = environ.get("CONTENT_TYPE"), environ.get("CONTENT_LENGTH")
    if media in JSON_TYPES and "HTTP_TRANSFER_ENCODING" not in environ and length and length.isascii() \
            and length.isdigit():
        return True, int(length)
    return _is_json_type(request.mimetype or ""), request.content_length


def read_body(request: Request, *, max_bytes: int) -> bytes:
    """The body's bytes, checked for media type and size, not yet parsed (``parse_json``)."""
    is_json, length = _announced(request)
    if not is_json:
        raise BadRequest(
            f"Content-Type must be application/json (got {request.mimetype or 'none'})")

    def too_large() -> PayloadTooLarge:
        return PayloadTooLarge(f"request body exceeds {max_bytes} bytes (limits.max_body_bytes)")

    if length is not None and length > max_bytes:
        raise too_large()
    if length is not None:
        _reserve(length)
    try:
        raw = _read_announced(request, length) if length is not None else request.get_data(cache=True)
    except RequestEntityTooLarge:
        raise too_large() from None  # cut at the limit: the rest is discarded with the error answer
    if len(raw) > max_bytes:
        raise too_large()
    if length is None:
        request.environ[BODY_READ] = True
        _reserve(len(raw))
    return raw


def parse_json(raw: bytes, *, max_depth: int) -> Any:
    """The parse of a body's bytes, checked for syntax, not yet for depth (``check_depth``: the
    hook endpoint checks it on the bytes it already holds)."""
    if not raw.strip():
        raise BadRequest("the request body is empty; a JSON object is required")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        message = str(exc).split(":", 1)[0]
        if "recursion" in str(exc).lower():
            raise BadRequest(f"JSON nests deeper than {max_depth} levels") from None
        raise BadRequest(f"the request body is not valid JSON ({message})") from None


_COUNT_BRACKETS_UP_TO = 16 * 1024


def check_depth(raw: bytes, max_depth: int) -> None:
    """400 when the (parsed, so valid) JSON text nests deeper than ``max_depth``."""
    # Each level takes an opening and a closing bracket, so depth <= len / 2: small bodies need no
    # scan; and a body with no more brackets than the limit cannot nest deeper. Counting them is
    # cheaper than the scan for a quiet patient-view's few kilobytes, dearer for a long record's
    # megabyte (where nearly every bracket is counted for nothing): so only for small bodies.
    if len(raw) <= 2 * max_depth:
        return
    if len(raw) <= _COUNT_BRACKETS_UP_TO and raw.count(b"{") + raw.count(b"[") <= max_depth:
        return
    if json_depth(raw, stop_above=max_depth) > max_depth:
        raise BadRequest(f"JSON nests deeper than {max_depth} levels")
