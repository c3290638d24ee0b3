"""Prefetch an EHR can fulfil, and the pneumococcal serotype codes behind it.

CDS Hooks 2.0.1 recommends that prefetch templates use only instance reads and type searches by
reference (``patient``), ``_id``, token parameters by equality (``system|code``, optionally ``:in``),
``date`` with the prefixes eq/lt/gt/ge/le, ``_count`` and ``_sort``: what EHRs implement and the CDS
Hooks Sandbox accepts. Discovery must publish no other kind, and say what each key is for.
"""

from __future__ import annotations

import re
from types import SimpleNamespace
from urllib.parse import unquote

import pytest

import hooks
from hooks import classify, data_needs
from hooks import valuesets as vs

#: parameter name -> what a value may look like
REFERENCE_PARAMS = {"patient", "subject", "encounter"}
TOKEN_PARAMS = {"code", "category", "_id"}
DATE_PARAMS = {"date"}
_TOKEN = r"\{\{[^}]+\}\}"
_DATE_VALUE = re.compile(rf"(eq|lt|gt|ge|le)?(\d{{4}}(-\d{{2}}(-\d{{2}})?)?|{_TOKEN})")


def _problems(template: str) -> list[str]:
    path, _, query = template.partition("?")
    segments = path.split("/")
    if not query:
        return [] if len(segments) in (1, 2) and re.fullmatch(r"[A-Z][A-Za-z]+", segments[0]) else [f"path {path}"]
    if len(segments) != 1:
        return [f"a search on {path}"]
    problems = []
    for part in query.split("&"):
        name, _, value = part.partition("=")
        bare, _, modifier = name.partition(":")
        value = unquote(value)
        if bare in REFERENCE_PARAMS and not modifier and re.fullmatch(_TOKEN, value):
            continue
        if bare in TOKEN_PARAMS and modifier in ("", "in") and value:
            continue
        if bare in DATE_PARAMS and not modifier and _DATE_VALUE.fullmatch(value):
            continue
        if name == "_count" and value.isdigit():
            continue
        if name == "_sort" and re.fullmatch(r"-?[a-z][a-z-]*", value):
            continue
        problems.append(part)
    return problems


def test_the_checker_refuses_what_the_spec_does_not_recommend():
    assert _problems("Observation?patient={{context.patientId}}&code:text=Streptococcus%20pneumoniae") == [
        "code:text=Streptococcus%20pneumoniae"]
    assert _problems("Observation?patient={{context.patientId}}&_include=Observation:subject") != []
    assert _problems("Observation?patient={{context.patientId}}&value-quantity=lt5") != []
    assert _problems("Observation?patient={{context.patientId}}&date=ge2020-01-01&_sort=-date&_count=1") == []


@pytest.mark.parametrize("service", list(hooks.SERVICES.values()), ids=list(hooks.SERVICES))
def test_discovery_templates_use_only_simple_search_parameters(service):
    assert service.prefetch, "every service declares its prefetch"
    assert {key: _problems(t) for key, t in service.prefetch.items() if _problems(t)} == {}


@pytest.mark.parametrize("service", list(hooks.SERVICES.values()), ids=list(hooks.SERVICES))
def test_discovery_says_what_each_prefetch_key_is_for(service):
    entry = service.discovery_entry()
    for key in entry["prefetch"]:
        assert f"{key} (" in entry["usageRequirements"], key
    assert set(data_needs.PURPOSE) == set(entry["prefetch"])


def test_titers_are_asked_by_serotype_codes_once_the_value_set_has_them(monkeypatch):
    monkeypatch.setattr(vs, "LOINC_PNEUMOCOCCAL_SEROTYPES", frozenset({"TEST-1", "TEST-2"}))
    template = data_needs._pneumococcal_titers()
    assert template == ("Observation?patient={{context.patientId}}&code=http://loinc.org|TEST-1,http://loinc.org|TEST-2"
                        "&_count=200")
    assert _problems(template) == []


def test_without_serotype_codes_titers_are_asked_as_laboratory_results():
    if vs.LOINC_PNEUMOCOCCAL_SEROTYPES:
        pytest.skip("the value set holds serotype codes: the code query is in force")
    assert data_needs.PREFETCH["pneumococcalTiters"] == (
        "Observation?patient={{context.patientId}}&category=laboratory&_count=200")


# ------------------------------------------------------------------ recognising a titer by its code

def _obs(code: str, text: str | None = None):
    coding = SimpleNamespace(system=vs.LOINC, code=code, display=None)
    return SimpleNamespace(code=SimpleNamespace(text=text, coding=[coding]))


def test_a_titer_coded_only_by_a_verified_serotype_code_is_a_titer_of_that_serotype(monkeypatch):
    monkeypatch.setattr(vs, "LOINC_SEROTYPE_VERIFIED", {"TEST-6B": "6B"})
    obs = _obs("TEST-6B")
    assert (classify.classify_observation(obs), classify.serotype_of(obs)) == ("titer", "6B")


def test_an_unverified_code_alone_recognises_nothing_its_text_still_does(monkeypatch):
    monkeypatch.setattr(vs, "LOINC_SEROTYPE_VERIFIED", {})
    assert classify.classify_observation(_obs("TEST-6B")) is None
    named = _obs("TEST-6B", "Streptococcus pneumoniae Danish serotype 6B IgG Ab [Mass/volume] in Serum")
    assert (classify.classify_observation(named), classify.serotype_of(named)) == ("titer", "6B")


def test_every_serotype_code_names_a_ppsv23_serotype_and_its_source():
    codes = [c.code for c in vs.PNEUMOCOCCAL_SEROTYPE_LOINC]
    assert len(codes) == len(set(codes))
    for entry in vs.PNEUMOCOCCAL_SEROTYPE_LOINC:
        assert entry.serotype in vs.PPSV23_SEROTYPES and entry.source and entry.display
    assert set(vs.LOINC_SEROTYPE_VERIFIED) <= set(codes)
