"""The byte-level JSON depth used at the edge agrees with the parsed structure, for any JSON; the
announced media type and length are read as werkzeug reads them."""

from __future__ import annotations

import io
import json

import orjson
import pytest
from hypothesis import given, settings, strategies as st

from service.protocol.jsonbody import json_depth


def depth(value) -> int:
    if isinstance(value, dict):
        return 1 + max((depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((depth(v) for v in value), default=0)
    return 0


TRICKY = st.text(alphabet='{}[]"\\ab\n/\u00e9', max_size=8)
JSON = st.recursive(st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=False, allow_infinity=False) | TRICKY,
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TRICKY, inner, max_size=4), max_leaves=40)


@settings(max_examples=2000)
@given(JSON)
def test_byte_depth_equals_structural_depth(value):
    for raw in (orjson.dumps(value), json.dumps(value).encode(), json.dumps(value, indent=2, ensure_ascii=False).encode()):
        assert json_depth(raw) == depth(value)


def test_stop_above_bounds_the_work():
    raw = b"[" * 5000 + b"]" * 5000
    assert json_depth(raw, stop_above=100) == 101
    assert json_depth(raw) == 5000


@pytest.mark.parametrize("media", ["application/json", "application/fhir+json", "Application/JSON",
                                   "application/json; charset=utf-8", "application/x+json", "text/plain", "", None])
@pytest.mark.parametrize("length", ["0", "25", "0025", "-1", "1e3", " 25", "25 ", "\u0661\u0662", "", None])
@pytest.mark.parametrize("transfer", [None, "chunked", "gzip"])
def test_the_announced_type_and_length_are_read_as_werkzeug_reads_them(media, length, transfer):
    """The environ's plain spellings are read directly; every spelling means what werkzeug says it does."""
    from werkzeug.wrappers import Request

    from service.protocol.jsonbody import _announced, _is_json_type

    environ = {"REQUEST_METHOD": "POST", "wsgi.input": io.BytesIO(b"{}"), "SERVER_NAME": "x", "SERVER_PORT": "80"}
    for key, value in (("CONTENT_TYPE", media), ("CONTENT_LENGTH", length), ("HTTP_TRANSFER_ENCODING", transfer)):
        if value is not None:
            environ[key] = value
    expected = Request(dict(environ))
    assert _announced(Request(environ)) == (_is_json_type(expected.mimetype or ""), expected.content_length)
