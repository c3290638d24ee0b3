"""Value-set membership: the indexed lookup answers as reading the codes one by one would.

``coding_in`` and ``text_in`` are asked for every coded element of every resource a rule reads,
so they look codes up in an index made once per value set and remember each text's answer. The
reading below is the rule as codes.md states it, code by code: exact code in the same system
(ICD-10 and ICD-10-CM count as one system, dots and case aside; so do the HCPCS spellings), or an
ICD-10 code under one of the set's prefixes.
"""

from __future__ import annotations

import pytest

from hooks import valuesets as vs

ICD = (vs.ICD10, vs.ICD10CM)


def _plain_reading(valueset: vs.ValueSet, system: str | None, code: str | None) -> bool:
    if not system or not code:
        return False
    code = code.strip()
    bare = code.replace(".", "").upper()
    for c in valueset.codes:
        if system in ICD and c.system in ICD and c.code.replace(".", "").upper() == bare:
            return True
        if system in vs.HCPCS_SYSTEMS and c.system in vs.HCPCS_SYSTEMS and c.code == code:
            return True
        if c.system == system and c.code == code:
            return True
    return system in ICD and any(bare.startswith(p.code.replace(".", "").upper()) for p in valueset.prefixes)


def _spellings(code: str) -> list[str]:
    bare = code.replace(".", "")
    return [code, code.lower(), f" {code} ", bare, bare.lower(), code + "1", code + ".9", code[:-1], code[:3]]


SYSTEMS = sorted({c.system for s in vs.ALL_VALUE_SETS for c in s.codes} | set(ICD) | vs.HCPCS_SYSTEMS
                 | {vs.LOINC, "urn:oid:2.16.840.1.113883.6.90", ""}) + [None]
CODES = sorted({spelling for s in vs.ALL_VALUE_SETS for c in (*s.codes, *s.prefixes) for spelling in _spellings(c.code)}
               | {"", "J18", "A41", "Z99.9"})


@pytest.mark.parametrize("valueset", vs.ALL_VALUE_SETS, ids=lambda s: s.name)
def test_the_index_answers_as_reading_code_by_code(valueset):
    disagree = [(system, code) for system in SYSTEMS for code in CODES
                if vs.coding_in(valueset, system, code) is not _plain_reading(valueset, system, code)]
    assert disagree == []
    assert any(vs.coding_in(valueset, c.system, c.code) for c in valueset.codes) or not valueset.codes


@pytest.mark.parametrize("valueset", vs.ALL_VALUE_SETS, ids=lambda s: s.name)
def test_a_text_is_recognised_as_the_pattern_finds_it_and_so_again(valueset):
    texts = [c.display for c in valueset.codes] + ["", "Essential (primary) hypertension", "PNEUMONIA", "x" * 500]
    for _ in range(2):  # the second time from what was remembered
        assert [vs.text_in(valueset, t) for t in texts] == [
            bool(t) and valueset.text is not None and valueset.text.search(t) is not None for t in texts]
