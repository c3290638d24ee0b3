"""The byte-level JSON depth used at the edge agrees with the parsed structure, for any JSON."""

from __future__ import annotations

import json

import orjson
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
