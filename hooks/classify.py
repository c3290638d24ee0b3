"""What a validated resource is, in the guideline's terms: which lab, which serotype.

Computed once per distinct resource (when it is validated, see hooks/fhir_read.py) — a record
is read by many extractors and classifying it again for each costs more than the rules.
"""

from __future__ import annotations

from typing import Any

from hooks import valuesets as vs

_SEROTYPES = frozenset(s.upper() for s in vs.PPSV23_SEROTYPES)
#: LOINC groups in the order they are tried; None = recognised and deliberately not used (CSF IgG,
#: IgG subclasses must never pass for serum total IgG)
_LOINC_KINDS: tuple[tuple[frozenset[str], str | None], ...] = (
    (vs.LOINC_IGG_CSF, None), (vs.LOINC_IGM, "IgM"), (vs.LOINC_IGG, "IgG"), (vs.LOINC_IGA, "IgA"),
    (vs.LOINC_IGG_SUBCLASSES, None), (vs.LOINC_CD19, "CD19"), (vs.LOINC_CD4, "CD4"), (vs.LOINC_CD8, "CD8"),
    (vs.LOINC_CD3, "CD3"), (vs.LOINC_BODY_WEIGHT, "weight"),
)


def texts_and_codes(concept: Any) -> tuple[list[str], list[tuple[str, str]]]:
    texts: list[str] = []
    codes: list[tuple[str, str]] = []
    if concept is None:
        return texts, codes
    if getattr(concept, "text", None):
        texts.append(concept.text)
    for coding in getattr(concept, "coding", None) or ():
        if coding.display:
            texts.append(coding.display)
        if coding.code:
            codes.append((coding.system or "", coding.code))
    return texts, codes


def classify_observation(obs: Any) -> str | None:
    """'IgM', 'IgG', 'IgA', 'titer', 'CD19', 'CD4', 'CD8', 'CD3', 'memory B', 'weight' or None."""
    texts, codes = texts_and_codes(obs.code)
    loinc = {c for s, c in codes if s in (vs.LOINC, "")}
    for group, kind in _LOINC_KINDS:
        if loinc & group:
            return kind
    text = " ".join(texts)
    if not text:
        return None
    if vs.TEXT_PNEUMOCOCCAL.search(text):
        return "titer"
    if vs.TEXT_MEMORY_B.search(text):
        return "memory B"
    if vs.TEXT_CD19.search(text):
        return "CD19"
    if vs.TEXT_CD4.search(text) and not vs.TEXT_CD8.search(text):
        return "CD4"
    if vs.TEXT_CD8.search(text) and not vs.TEXT_CD4.search(text):
        return "CD8"
    if vs.TEXT_IGG_CSF.search(text) or vs.TEXT_IGG_SUBCLASS.search(text) or vs.TEXT_NOT_TOTAL_IG.search(text):
        return None
    if vs.TEXT_IGM.search(text):
        return "IgM"
    if vs.TEXT_IGG.search(text):
        return "IgG"
    if vs.TEXT_IGA.search(text):
        return "IgA"
    if vs.TEXT_BODY_WEIGHT.search(text):
        return "weight"
    return None


def serotype_of(obs: Any) -> str | None:
    texts, _ = texts_and_codes(obs.code)
    valid = _SEROTYPES
    for text in texts:
        for match in vs.SEROTYPE_PATTERN.finditer(text):
            candidate = match.group(1).upper()
            if candidate in valid:
                return candidate
    return None
