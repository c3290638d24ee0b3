"""The literature behind the rules (criteria.md's numbered references)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Reference:
    key: str
    short: str
    citation: str
    url: str | None = None


REFERENCES: dict[str, Reference] = {r.key: r for r in (
    Reference(
        "bonilla-2015", "Bonilla 2015 (AAAAI practice parameter)",
        "Bonilla FA et al. Practice parameter for the diagnosis and management of primary immunodeficiency. "
        "J Allergy Clin Immunol 2015;136:1186–1205.",
        "https://doi.org/10.1016/j.jaci.2015.04.049"),
    Reference(
        "gupta-2017", "Gupta 2017 (selective IgM deficiency)",
        "Gupta S, Gupta A. Selective IgM deficiency — an underestimated primary immunodeficiency. "
        "Front Immunol 2017;8:1056.",
        "https://doi.org/10.3389/fimmu.2017.01056"),
    Reference(
        "orange-2012", "Orange 2012 (diagnostic vaccination)",
        "Orange JS et al. Use and interpretation of diagnostic vaccination in primary immunodeficiency: a working "
        "group report of the AAAAI. J Allergy Clin Immunol 2012;130(3 Suppl):S1–24.",
        "https://doi.org/10.1016/j.jaci.2012.07.002"),
    Reference(
        "perez-2017", "Perez 2017 (immunoglobulin use)",
        "Perez EE et al. Update on the use of immunoglobulin in human disease: a review of evidence. "
        "J Allergy Clin Immunol 2017;139(3S):S1–S46.",
        None),
    Reference(
        "taietti-2023", "Taietti 2023 (paediatric selective IgM deficiency)",
        "Taietti I et al. Selective IgM deficiency: evidence, controversies, and gaps. Diagnostics 2023;13(17):2861.",
        "https://doi.org/10.3390/diagnostics13172861"),
    Reference(
        "higm", "Hyper-IgM syndrome literature (guideline refs 5–6)",
        "Hyper-IgM syndromes (CD40 ligand / AID deficiencies): regular IVIG and prophylactic antibiotics; "
        "references 5–6 of the guideline text.",
        None),
    Reference(
        "guideline", "Treatment of IgM Deficiency (guideline text)",
        "Treatment of IgM Deficiency — the guideline this service applies (criteria.md).",
        None),
)}

GUIDELINE_URL = REFERENCES["bonilla-2015"].url

