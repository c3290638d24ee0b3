"""An Observation as the rules read it: one flat, typed laboratory result.

Most of what the rules read in a chart are results (a typical order-sign: 66 of its 73 usable
resources), and of each they read few elements: what was measured, when, the value with its unit
and comparator, the status, why a value is absent, the reference ranges and the lab's flags. A
``LabResult`` holds exactly those, already interpreted, so the fact extraction reads a result in
one step.

It is made in one of two ways, with the same outcome:

* ``from_json``: a well-formed Observation, read straight from its JSON. Every element the
  Observation model declares (hooks/fhir_models.py) is checked as the model checks it; at the first
  doubt (an element that fails, an element FHIR does not define, a STU3 shape, a contained
  resource, a decimal sent as text ...) it answers None and does not guess. What every patient's
  result of a test shares (status, code, category, flags, reference ranges) is checked and
  interpreted once per distinct JSON text (``_SHARED``); the rest of each result every time;
* ``from_model``: any other Observation, through the model (hooks/fhir_read.py ``validate``), which
  drops what it cannot read and says why.

tests/test_lab_results.py holds the two to the same result on every scenario's Observations and
on variants of them. Reading straight from the JSON matters because validating a result through
pydantic models (seven of them for an ordinary result: codes, subject, value) cost about three
times as much, on every result of every chart.
"""

from __future__ import annotations

import re
from datetime import date, datetime
from typing import Any, NamedTuple

import orjson

from hooks import valuesets as vs
from hooks.classify import kind_of, serotype_named
from hooks.dates import as_date
from hooks.fhir_models import ELEMENTS, fhir_datetime, fhir_instant
from hooks.units import COMPARATORS, parse_value_string

#: (comparator, value, unit) as sent: the comparator only when FHIR knows it
Quantity = tuple[str | None, float, str | None]
#: (value, unit) of a reference range's low or high end
Limit = tuple[float, str | None]


class LabResult(NamedTuple):
    """What the rules read of one Observation. Immutable: results may be shared between requests."""

    id: str | None
    #: what it measures: 'IgM', 'IgG', 'IgA', 'titer', 'CD19', ..., 'weight' (hooks/classify.py), or None
    kind: str | None
    #: the PPSV23 serotype of a titer
    serotype: str | None
    status: str | None
    #: the day it was drawn, and the time when the record gives one
    drawn: date | None
    at: datetime | None
    #: from valueQuantity, else a numeric valueString; None: no numeric value
    quantity: Quantity | None
    #: why the lab sent no value (dataAbsentReason), in words
    absent: str | None
    #: every reference range as (low, high), in the order sent
    ranges: tuple[tuple[Limit | None, Limit | None], ...]
    #: the lab's interpretation codes ('L', 'H', 'N' ...)
    flags: frozenset[str]

    @staticmethod
    def get_resource_type() -> str:
        return "Observation"


# ------------------------------------------------------------------ interpretation, shared by both ways


def _unit(system: Any, code: Any, unit: Any) -> str | None:
    """The UCUM code when the quantity is UCUM-coded, else the unit as written."""
    return code if system == vs.UCUM and code else (unit or code)


def _absent_words(texts: list[str], codes: list[tuple[str, str]]) -> str:
    return (texts[0] if texts else codes[0][1] if codes else "unknown").replace("-", " ")


def _add_flags(out: set[str], codes: list[str], text: Any) -> None:
    for code in codes:
        out.add(code.upper() if len(code) <= 2 else code)
    if text and text.strip().lower() in ("low", "l"):
        out.add("L")


def _when(candidates: tuple[Any, ...]) -> tuple[date | None, datetime | None]:
    """The first of effective[x] / issued that gives a day; its time when it has one."""
    for value in candidates:
        day = as_date(value)
        if day is not None:
            return day, value if isinstance(value, datetime) else None
    return None, None


def _quantity(value: Any, comparator: Any, unit: str | None, value_string: Any) -> Quantity | None:
    if value is not None:
        return (comparator if comparator in COMPARATORS else None), float(value), unit
    if value_string:
        return parse_value_string(value_string)
    return None


# ------------------------------------------------------------------ from a validated model


def _texts_codes(concept: Any) -> tuple[list[str], list[tuple[str, str]]]:
    texts: list[str] = []
    codes: list[tuple[str, str]] = []
    if concept is None:
        return texts, codes
    if concept.text:
        texts.append(concept.text)
    for coding in concept.coding or ():
        if coding.display:
            texts.append(coding.display)
        if coding.code:
            codes.append((coding.system or "", coding.code))
    return texts, codes


def _model_limit(q: Any) -> Limit | None:
    if q is None or q.value is None:
        return None
    return float(q.value), _unit(q.system, q.code, q.unit)


def from_model(obs: Any, rid: str | None = None) -> LabResult:
    """The result of a validated Observation model (hooks/fhir_models.py or fhir.resources)."""
    texts, codes = _texts_codes(obs.code)
    kind = kind_of(texts, codes)
    q = obs.valueQuantity
    quantity = _quantity(q.value, q.comparator, _unit(q.system, q.code, q.unit), None) \
        if q is not None and q.value is not None else _quantity(None, None, None, obs.valueString)
    flags: set[str] = set()
    for concept in obs.interpretation or ():
        _add_flags(flags, [c.code for c in concept.coding or () if c.code], concept.text)
    absent = None
    if obs.dataAbsentReason is not None:
        absent = _absent_words(*_texts_codes(obs.dataAbsentReason))
    drawn, at = _when((obs.effectiveDateTime, getattr(obs.effectivePeriod, "start", None), obs.effectiveInstant,
                       obs.issued))
    return LabResult(
        id=obs.id if rid is None else rid,
        kind=kind,
        serotype=serotype_named(texts, codes) if kind == "titer" else None,
        status=obs.status,
        drawn=drawn,
        at=at,
        quantity=quantity,
        absent=absent,
        ranges=tuple((_model_limit(rr.low), _model_limit(rr.high)) for rr in obs.referenceRange or ()),
        flags=frozenset(flags),
    )


# ------------------------------------------------------------------ straight from well-formed JSON


class _NotCommon(Exception):
    """The resource is outside the common shape: the model reads it (and says what it drops)."""


#: the model's primitive patterns (hooks/fhir_models.py ``Code``, ``Uri``, ``_ID`` of fhir_read);
#: Python's \s covers at least what pydantic's engine calls whitespace, so these are never more lenient
_CODE = re.compile(r"[^\s]+(\s[^\s]+)*")
_URI = re.compile(r"\S*")
_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
_KNOWN = ELEMENTS["Observation"] | {"resourceType", "fhir_comments"}
#: an integer a float holds exactly; beyond it the model's Decimal and a float could part ways
_EXACT_INT = 2 ** 53


def _str(value: Any) -> Any:
    if value is not None and type(value) is not str:
        raise _NotCommon
    return value


def _code(value: Any) -> Any:
    if value is not None and (type(value) is not str or _CODE.fullmatch(value) is None):
        raise _NotCommon
    return value


def _uri(value: Any) -> Any:
    if value is not None and (type(value) is not str or _URI.fullmatch(value) is None):
        raise _NotCommon
    return value


def _dict(value: Any) -> dict[str, Any] | None:
    if value is not None and type(value) is not dict:
        raise _NotCommon
    return value


def _list(value: Any) -> list[Any]:
    if value is None:
        return []
    if type(value) is not list:
        raise _NotCommon
    return value


def _item(value: Any) -> dict[str, Any]:
    """A list's element: the model admits no null in a list."""
    if type(value) is not dict:
        raise _NotCommon
    return value


#: Codings and quantity units already checked, by their primitives: every patient's result of a
#: test carries the same codes and units, so each is checked against the patterns once
_CHECKED: dict[tuple[Any, ...], bool] = {}
_CHECKED_AT_MOST = 4096


def _checked(key: tuple[Any, ...], check: Any) -> None:
    try:
        ok = _CHECKED.get(key)
    except TypeError:  # a list or an object where a primitive belongs
        raise _NotCommon from None
    if ok is None:
        try:
            ok = check(*key[1:]) is not None
        except _NotCommon:
            ok = False
        if len(_CHECKED) >= _CHECKED_AT_MOST:
            _CHECKED.clear()
        _CHECKED[key] = ok
    if not ok:
        raise _NotCommon


def _coding_primitives(system: Any, version: Any, code: Any, display: Any) -> bool:
    _uri(system), _str(version), _code(code), _str(display)
    return True


def _unit_primitives(comparator: Any, unit: Any, system: Any, code: Any) -> bool:
    _code(comparator), _str(unit), _uri(system), _code(code)
    return True


def _concept(value: Any, texts: list[str] | None = None, codes: list[tuple[str, str]] | None = None) -> None:
    """Checks a CodeableConcept; collects its texts and (system, code) pairs when asked."""
    concept = _dict(value)
    if concept is None:
        return
    text = _str(concept.get("text"))
    if text and texts is not None:
        texts.append(text)
    for coding in _list(concept.get("coding")):
        if type(coding) is not dict:
            raise _NotCommon
        system, code, display = coding.get("system"), coding.get("code"), coding.get("display")
        _checked(("coding", system, coding.get("version"), code, display), _coding_primitives)
        if texts is not None and display:
            texts.append(display)
        if codes is not None and code:
            codes.append((system or "", code))


def _reference(value: Any) -> None:
    if value is None or (type(value) is dict and len(value) == 1 and type(value.get("reference")) is str):
        return  # absent, or a plain reference: what nearly every result's subject is
    ref = _dict(value)
    if ref is not None:
        _str(ref.get("reference"))
        _uri(ref.get("type"))
        _str(ref.get("display"))


def _decimal(value: Any) -> float | None:
    if value is None:
        return None
    kind = type(value)
    if kind is float or (kind is int and -_EXACT_INT <= value <= _EXACT_INT):
        return float(value)
    raise _NotCommon  # a decimal string, a boolean, a huge integer: the model decides


def _json_quantity(value: Any) -> tuple[float | None, Any, str | None] | None:
    """(value, comparator, unit) of a checked Quantity."""
    q = _dict(value)
    if q is None:
        return None
    return _decimal(q.get("value")), q.get("comparator"), _units_of(q)


#: A quantity's unit elements (comparator, unit, system, code), checked, -> the unit the rules
#: read (``_unit``), or ``_BAD``: every patient's result of a test is sent in the same unit
_UNITS: dict[tuple[Any, ...], Any] = {}
_BAD = object()


def _units_of(q: dict[str, Any]) -> str | None:
    key = (q.get("comparator"), q.get("unit"), q.get("system"), q.get("code"))
    try:
        unit = _UNITS.get(key, _BAD)
    except TypeError:  # a list or an object where a primitive belongs
        raise _NotCommon from None
    if unit is _BAD:
        try:
            _unit_primitives(*key)
            unit = _unit(key[2], key[3], key[1])
        except _NotCommon:
            unit = _BAD
        if len(_UNITS) >= _CHECKED_AT_MOST:
            _UNITS.clear()
        _UNITS[key] = unit
        if unit is _BAD:
            raise _NotCommon
    return unit


def _json_limit(value: Any) -> Limit | None:
    q = _json_quantity(value)
    return None if q is None or q[0] is None else (q[0], q[2])


def _datetime(value: Any) -> Any:
    if value is None:
        return None
    if type(value) is not str:
        raise _NotCommon
    try:
        return fhir_datetime(value)
    except ValueError:
        raise _NotCommon from None


def _instant(value: Any) -> Any:
    if value is None:
        return None
    if type(value) is not str:
        raise _NotCommon
    try:
        return fhir_instant(value)
    except ValueError:
        raise _NotCommon from None


class _Shared(NamedTuple):
    """What a result's shared elements say (see ``_SHARED``)."""

    kind: str | None
    serotype: str | None
    absent: str | None
    ranges: tuple[tuple[Limit | None, Limit | None], ...]
    flags: frozenset[str]


#: The shared elements of a result, interpreted, by their JSON text (None: outside the common
#: shape). Every patient's result of one test from one lab carries the same status, code,
#: category, flags and reference ranges; only its id, subject, times and value differ, and those
#: are checked on every result. The JSON text is an exact key: values that differ in any way
#: (1 and 1.0, true and 1, key order) have different texts.
_SHARED: dict[bytes, _Shared | None] = {}
_SHARED_AT_MOST = 4096


def _shared(status: Any, code: Any, category: Any, coded_value: Any, absent_reason: Any, interpretation: Any,
            reference_ranges: Any) -> _Shared:
    """Checks and interprets the shared elements (raises ``_NotCommon``)."""
    _checked(("code", status), _code)
    texts: list[str] = []
    codes: list[tuple[str, str]] = []
    if type(code) is not dict:
        raise _NotCommon
    _concept(code, texts, codes)
    kind = kind_of(texts, codes)
    for concept in map(_item, _list(category)):
        _concept(concept)
    _concept(coded_value)
    absent = None
    if absent_reason is not None:
        absent_texts: list[str] = []
        absent_codes: list[tuple[str, str]] = []
        _concept(absent_reason, absent_texts, absent_codes)
        absent = _absent_words(absent_texts, absent_codes)
    flags: set[str] = set()
    for concept in map(_item, _list(interpretation)):
        flag_codes: list[tuple[str, str]] = []
        _concept(concept, None, flag_codes)
        _add_flags(flags, [c for _, c in flag_codes], concept.get("text"))
    ranges = []
    for rr in map(_item, _list(reference_ranges)):
        _concept(rr.get("type"))
        for concept in map(_item, _list(rr.get("appliesTo"))):
            _concept(concept)
        age = _dict(rr.get("age"))
        if age is not None:
            _json_quantity(age.get("low"))
            _json_quantity(age.get("high"))
        _str(rr.get("text"))
        ranges.append((_json_limit(rr.get("low")), _json_limit(rr.get("high"))))
    return _Shared(kind, serotype_named(texts, codes) if kind == "titer" else None, absent, tuple(ranges),
                   frozenset(flags))


def _shared_of(raw: dict[str, Any]) -> _Shared | None:
    parts = (raw.get("status"), raw.get("code"), raw.get("category"), raw.get("valueCodeableConcept"),
             raw.get("dataAbsentReason"), raw.get("interpretation"), raw.get("referenceRange"))
    try:
        key = orjson.dumps(parts)
    except TypeError:  # an integer beyond 64 bits, nesting orjson will not write: the model decides
        return None
    try:
        return _SHARED[key]
    except KeyError:
        pass
    try:
        shared: _Shared | None = _shared(*parts)
    except _NotCommon:
        shared = None
    if len(_SHARED) >= _SHARED_AT_MOST:
        _SHARED.clear()
    _SHARED[key] = shared
    return shared


def may_measure(raw: dict[str, Any], kinds: tuple[str, ...]) -> bool:
    """Whether an Observation, as sent, may be a result of one of ``kinds``: False only when its
    code, read as ``from_json`` and the model read it, names something else."""
    shared = _shared_of(raw)
    return shared is None or shared.kind in kinds


def from_json(raw: dict[str, Any]) -> LabResult | None:
    """The result of a well-formed Observation, or None when the model must read it."""
    if not raw.keys() <= _KNOWN or raw.get("contained") is not None:
        return None  # an element FHIR does not define (noted by the model), a contained resource
    get = raw.get
    status = get("status")
    if status is None:
        return None
    shared = _shared_of(raw)
    if shared is None:
        return None
    rid = get("id")
    if rid is not None and (type(rid) is not str or _ID.fullmatch(rid) is None):
        return None  # 'Observation/x' and the like: the model path cuts it
    # what nearly every result sends is read inline: a plain subject, one effectiveDateTime, a
    # valueQuantity; elements most results lack are looked at only when sent
    subject = get("subject")
    effective = get("effectiveDateTime")
    q = get("valueQuantity")
    try:
        if subject is not None and not (type(subject) is dict and len(subject) == 1
                                        and type(subject.get("reference")) is str):
            _reference(subject)
        if (encounter := get("encounter")) is not None:
            _reference(encounter)
        if effective is not None:
            effective = _datetime(effective)
        others = get("effectivePeriod"), get("effectiveInstant"), get("issued")
        value_string = get("valueString")
        if value_string is not None and type(value_string) is not str:
            return None
        value = comparator = unit = None
        if q is not None:
            if type(q) is not dict:
                return None
            value, comparator, unit = _decimal(q.get("value")), q.get("comparator"), _units_of(q)
        if others == (None, None, None):
            drawn, at = _when((effective,))
        else:
            period, instant, issued = others
            start = None
            if period is not None:
                period = _dict(period)
                start = _datetime(period.get("start"))
                _datetime(period.get("end"))
            drawn, at = _when((effective, start, _instant(instant), _instant(issued)))
    except _NotCommon:
        return None
    quantity = _quantity(value, comparator, unit, value_string)
    # the tuple made directly: LabResult(...) goes through the named tuple's generated __new__
    return _new_tuple(LabResult, (rid, shared.kind, shared.serotype, status, drawn, at, quantity, shared.absent,
                                  shared.ranges, shared.flags))


_new_tuple = tuple.__new__
