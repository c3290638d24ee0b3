"""What a validated resource is, in the guideline's terms: which lab, which serotype.

Computed once per distinct resource (when it is validated, see hooks/fhir_read.py): a record
is read by many extractors, and each of them needs to know which lab a result is.
"""

from __future__ import annotations

from typing import Any

from hooks import valuesets as vs
from hooks.lru import by_term

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
    return kind_of(*texts_and_codes(obs.code))


def kind_of(texts: list[str], codes: list[tuple[str, str]]) -> str | None:
    """What a result measures, from its names and (system, code) pairs: LOINC first, then names."""
    loinc = " ".join(c for s, c in codes if s in (vs.LOINC, ""))
    if loinc:
        kind = _kind_by_loinc(loinc)
        if kind is not _NO_KIND:
            return kind
        if any(code in vs.LOINC_SEROTYPE_VERIFIED for code in loinc.split()):
            return "titer"
    return _kind_by_name(" ".join(texts)) if texts else None


#: what ``_kind_by_loinc`` answers for codes it does not know (None means: known, and not used)
_NO_KIND = "?"


@by_term
def _kind_by_loinc(loinc_codes: str) -> str | None:
    """The kind of the first LOINC group the codes (space-separated) fall in; worked out once per
    test, since every patient's result of a test carries its codes."""
    loinc = set(loinc_codes.split())
    for group, kind in _LOINC_KINDS:
        if loinc & group:
            return kind
    return _NO_KIND


@by_term
def _kind_by_name(text: str) -> str | None:
    """The kind a result's names (joined) give: once per test name."""
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
    """The serotype named by the text, else by a verified serotype LOINC code."""
    return serotype_named(*texts_and_codes(obs.code))


def serotype_named(texts: list[str], codes: list[tuple[str, str]]) -> str | None:
    """The serotype a titer's names give, else its verified serotype LOINC code."""
    for text in texts:
        serotype = _serotype_in(text)
        if serotype is not None:
            return serotype
    return next((vs.LOINC_SEROTYPE_VERIFIED[c] for s, c in codes
                 if s in (vs.LOINC, "") and c in vs.LOINC_SEROTYPE_VERIFIED), None)


@by_term
def _serotype_in(text: str) -> str | None:
    """The first PPSV23 serotype a titer's name gives ("... serotype 6B IgG Ab" -> "6B")."""
    for match in vs.SEROTYPE_PATTERN.finditer(text):
        candidate = match.group(1).upper()
        if candidate in _SEROTYPES:
            return candidate
    return None


# ------------------------------------------------------------------ immune globulin products, by name


@by_term
def names_immune_globulin(text: str) -> bool:
    """An IgG replacement product by its generic or brand name ("Privigen 10% ...")."""
    return vs.TEXT_IMMUNE_GLOBULIN.search(text) is not None


@by_term
def names_other_globulin(text: str) -> bool:
    """A hyperimmune or other globulin that is not IgG replacement (anti-D, HBIG, ATG ...)."""
    return vs.TEXT_NOT_REPLACEMENT_GLOBULIN.search(text) is not None


@by_term
def names_subcutaneous(text: str) -> bool:
    return vs.TEXT_SUBCUTANEOUS.search(text) is not None

