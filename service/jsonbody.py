"""Reading a JSON request body safely: media type, size, syntax, nesting depth."""

from __future__ import annotations

from typing import Any

import orjson
from flask import Request
from werkzeug.exceptions import RequestEntityTooLarge

from service.errors import BadRequest, PayloadTooLarge

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
    costs more than the rules themselves.) Two shortcuts, 3x faster on FHIR bodies: a body
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
    raw, body = parse_body(request, max_bytes=max_bytes, max_depth=max_depth)
    check_depth(raw, max_depth)
    return body


def _read_announced(request: Request, length: int) -> bytes:
    """A body of known length (checked against the limit by the caller) in one read.

    Werkzeug's limited stream reads a large body in 64 KB pieces and copies it several times; the
    allocations made a large hook call's parsing measurably slower (bench/run.py). The endpoints
    that call this are the only readers of their request's body.
    """
    raw = request.environ["wsgi.input"].read(length) if length else b""
    if len(raw) != length:
        raise BadRequest(f"the request body ended after {len(raw)} of the {length} bytes its Content-Length announced")
    return raw


def parse_body(request: Request, *, max_bytes: int, max_depth: int) -> tuple[bytes, Any]:
    """The body's bytes and their parse, checked for media type, size and syntax, not yet for depth.

    The hook endpoint checks depth only for a body it has not answered before (service/answers.py):
    a body identical to an answered one but for its hookInstance has that one's depth.
    """
    if not _is_json_type(request.mimetype or ""):
        raise BadRequest(
            f"Content-Type must be application/json (got {request.mimetype or 'none'})")
    length = request.content_length
    if length is not None and length > max_bytes:
        raise PayloadTooLarge(f"request body exceeds {max_bytes} bytes")
    try:
        raw = _read_announced(request, length) if length is not None else request.get_data(cache=True)
    except RequestEntityTooLarge:
        raise PayloadTooLarge(f"request body exceeds {max_bytes} bytes") from None
    if len(raw) > max_bytes:
        raise PayloadTooLarge(f"request body exceeds {max_bytes} bytes")
    if not raw.strip():
        raise BadRequest("the request body is empty; a JSON object is required")
    try:
        return raw, orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        message = str(exc).split(":", 1)[0]
        if "recursion" in str(exc).lower():
            raise BadRequest(f"JSON nests deeper than {max_depth} levels") from None
        raise BadRequest(f"the request body is not valid JSON ({message})") from None


def check_depth(raw: bytes, max_depth: int) -> None:
    """400 when the (parsed, so valid) JSON text nests deeper than ``max_depth``."""
    # Each level takes an opening and a closing bracket, so depth <= len / 2: small bodies need no
    # scan. (Counting the brackets cost half as much as the scan, and every real body passed that test.)
    if len(raw) > 2 * max_depth and json_depth(raw, stop_above=max_depth) > max_depth:
        raise BadRequest(f"JSON nests deeper than {max_depth} levels")
