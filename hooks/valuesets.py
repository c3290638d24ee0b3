"""Every code the rules recognise, as data, with its source and whether it was verified.

Source: ../shared/guideline/codes.md. A code marked unverified is never the only way a fact is
recognised: the matching text patterns (case-insensitive) below recognise it too. Rules and
fact extraction import these tables; no code is typed anywhere else.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Callable, NamedTuple

from hooks.lru import by_term

LOINC = "http://loinc.org"
ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
ICD10 = "http://hl7.org/fhir/sid/icd-10"
SNOMED = "http://snomed.info/sct"
CVX = "http://hl7.org/fhir/sid/cvx"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
HCPCS_SYSTEMS = frozenset({
    "http://www.cms.gov/Medicare/Coding/HCPCSReleaseCodeSets",
    "https://www.cms.gov/Medicare/Coding/HCPCSReleaseCodeSets",
})
UCUM = "http://unitsofmeasure.org"


@dataclass(frozen=True)
class Code:
    system: str
    code: str
    display: str
    verified: bool = True


@dataclass(frozen=True)
class ValueSet:
    """A named group of codes plus the text that recognises the same concept."""

    name: str
    meaning: str
    codes: tuple[Code, ...]
    text: re.Pattern[str] | None = None
    #: ICD-10 code prefixes ("J15" covers J15.x); checked after exact codes
    prefixes: tuple[Code, ...] = ()

    @functools.cached_property
    def index(self) -> _Index:
        """The codes as ``coding_in`` looks them up: every resource of a record asks, the set is fixed."""
        icd = frozenset(_icd_key(c.code) for c in self.codes if c.system in _ICD_SYSTEMS)
        hcpcs = frozenset(c.code for c in self.codes if c.system in HCPCS_SYSTEMS)
        other = frozenset((c.system, c.code) for c in self.codes)
        return _Index(icd, tuple(_icd_key(p.code) for p in self.prefixes), hcpcs, other)

    @functools.cached_property
    def names(self) -> Callable[[str], bool]:
        """Whether a text is a name of the concept: once per distinct text (see ``by_term``)."""
        pattern = self.text
        return by_term(lambda text: pattern is not None and pattern.search(text) is not None)


class _Index(NamedTuple):
    #: ICD-10 and ICD-10-CM codes, without dots, upper case (either system's code matches either)
    icd: frozenset[str]
    icd_prefixes: tuple[str, ...]
    #: HCPCS codes (either spelling of the system)
    hcpcs: frozenset[str]
    other: frozenset[tuple[str, str]]


def _icd_key(code: str) -> str:
    return code.replace(".", "").upper()


def _codes(system: str, rows: list[tuple[str, str]], verified: bool = True) -> tuple[Code, ...]:
    return tuple(Code(system, code, display, verified) for code, display in rows)


def _rx(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern, re.IGNORECASE)


# ------------------------------------------------------------------ LOINC (verified)

LOINC_IGG = frozenset({"2465-3"})
LOINC_IGM = frozenset({"2472-9"})
LOINC_IGA = frozenset({"2458-8"})
LOINC_IGG_CSF = frozenset({"2464-6"})  # excluded: CSF, not serum
LOINC_IGG_SUBCLASSES = frozenset({"2466-1", "2467-9", "2468-7", "2469-5"})
LOINC_CD19 = frozenset({"8116-6", "8117-4"})
LOINC_CD4 = frozenset({"24467-3", "8123-2"})
LOINC_CD8 = frozenset({"14135-8", "8101-8"})
LOINC_CD3 = frozenset({"8122-4", "8124-0"})
LOINC_LYMPHOCYTE_SUBSETS = LOINC_CD19 | LOINC_CD4 | LOINC_CD8 | LOINC_CD3
LOINC_BODY_WEIGHT = frozenset({"29463-7"})

LABS = ValueSet("labs", "Immunoglobulins, lymphocyte subsets and body weight (LOINC)", _codes(LOINC, [
    ("2465-3", "IgG [Mass/volume] in Serum"),
    ("2472-9", "IgM [Mass/volume] in Serum"),
    ("2458-8", "IgA [Mass/volume] in Serum"),
    ("2464-6", "IgG [Mass/volume] in Cerebral spinal fluid (excluded)"),
    ("2466-1", "IgG subclass 1 [Mass/volume] in Serum"),
    ("2467-9", "IgG subclass 2 [Mass/volume] in Serum"),
    ("2468-7", "IgG subclass 3 [Mass/volume] in Serum"),
    ("2469-5", "IgG subclass 4 [Mass/volume] in Serum"),
    ("8116-6", "CD19 cells [#/volume] in Blood"),
    ("8117-4", "CD19 cells/100 cells in Blood"),
    ("24467-3", "CD4 cells [#/volume] in Blood"),
    ("8123-2", "CD4 cells/100 cells in Blood"),
    ("14135-8", "CD8 cells [#/volume] in Blood"),
    ("8101-8", "CD8 cells/100 cells in Blood"),
    ("8122-4", "CD3 cells [#/volume] in Blood"),
    ("8124-0", "CD3 cells/100 cells in Blood"),
    ("29463-7", "Body weight"),
]))

#: Text recognisers for results sent without LOINC. Order matters: CSF and subclasses first.
TEXT_IGG_CSF = _rx(r"\b(csf|cerebrospinal|spinal fluid)\b")
TEXT_IGG_SUBCLASS = _rx(r"\bigg\s*(subclass\s*)?[1-4]\b|\bigg[1-4]\b")
TEXT_IGG = _rx(r"\b(igg|immunoglobulin\s*g)\b")
TEXT_IGM = _rx(r"\b(igm|immunoglobulin\s*m)\b")
TEXT_IGA = _rx(r"\b(iga|immunoglobulin\s*a)\b")
TEXT_NOT_TOTAL_IG = _rx(r"\b(antibod|ab\b|anti-|specific|allergen|igg4?\s*ab|subclass|index|ratio|synthesis|oligoclonal|urine)")
TEXT_CD19 = _rx(r"\bcd\s?19\b")
TEXT_CD4 = _rx(r"\bcd\s?4\b")
TEXT_CD8 = _rx(r"\bcd\s?8\b")
TEXT_MEMORY_B = _rx(r"memory\s*b|cd\s?27\+?\s*(b|cd19)")
TEXT_BODY_WEIGHT = _rx(r"\b(body\s*)?weight\b")

# ------------------------------------------------------------------ pneumococcal titers

#: The 23 serotypes of PPSV23 (Danish nomenclature), as codes.md lists them.
PPSV23_SEROTYPES: tuple[str, ...] = (
    "1", "2", "3", "4", "5", "6B", "7F", "8", "9N", "9V", "10A", "11A", "12F", "14", "15B", "17F",
    "18C", "19A", "19F", "20", "22F", "23F", "33F",
)
@dataclass(frozen=True)
class SerotypeCode:
    """The LOINC code of one PPSV23 serotype's IgG antibody result, where it was checked, and whether."""

    serotype: str
    code: str
    display: str
    verified: bool
    source: str


#: PPSV23 serotype IgG antibody [Mass/volume] in Serum: LOINC has one code per serotype (codes.md).
#: A code enters this table only with its source; ``verified`` only when that source is LOINC's own
#: table or an authoritative public copy of it. None could be checked from this project's
#: workplace yet (LOINC's tables and the reference laboratories' LOINC listings were not readable
#: there), and a code typed from memory could name another test, so the table is empty rather
#: than guessed. While it holds no verified code: the prefetch asks for the patient's laboratory
#: results (hooks/data_needs.py) and titers are recognised by their text, as they arrive; each
#: verified code added here becomes part of the prefetch query and recognises a titer and its
#: serotype on its own, an unverified one only widens the query (its text must still match).
PNEUMOCOCCAL_SEROTYPE_LOINC: tuple[SerotypeCode, ...] = ()
LOINC_PNEUMOCOCCAL_SEROTYPES = frozenset(c.code for c in PNEUMOCOCCAL_SEROTYPE_LOINC)
#: code -> serotype, verified codes only: the ones that recognise a titer without its text
LOINC_SEROTYPE_VERIFIED = {c.code: c.serotype for c in PNEUMOCOCCAL_SEROTYPE_LOINC if c.verified}

#: S. pneumoniae, not Mycoplasma/Klebsiella/Chlamydia pneumoniae (their antibodies are other tests)
TEXT_PNEUMOCOCCAL = _rx(r"pneumococ|\bs(trep(tococcus)?)?\.?\s*pneumoniae|\bstrep\w*\.?\s*pneumo|\bspn\b")
#: "serotype 6B", "Danish type 23F", "(19A)", "S. pneumoniae 14 IgG Ab" ...
SEROTYPE_PATTERN = _rx(
    r"(?:sero\s*type|danish\s*(?:sero)?type|\btype|\bst|pneumoniae|pneumococcal|\()\s*"
    r"(?:danish\s*)?(?:type\s*)?(\d{1,2}[A-Z]?)\b"
)

# ------------------------------------------------------------------ vaccines

CVX_PPSV23 = frozenset({"33"})
VACCINES = ValueSet("ppsv23", "Pneumococcal polysaccharide vaccine PPSV23 (CVX)", _codes(CVX, [
    ("33", "pneumococcal polysaccharide PPV23"),
]), text=_rx(r"ppsv\s*-?23|ppv\s*-?23|pneumovax|23[- ]valent|polysaccharide\s+pneumococcal|pneumococcal\s+polysaccharide"))

# ------------------------------------------------------------------ infections

SEVERE_INFECTIONS = ValueSet(
    "severe_infection",
    "Severe bacterial infection: pneumonia, sepsis/bacteremia, meningitis",
    _codes(ICD10CM, [
        ("J13", "Pneumonia due to Streptococcus pneumoniae"),
        ("J14", "Pneumonia due to Haemophilus influenzae"),
        ("A40.3", "Sepsis due to Streptococcus pneumoniae"),
        ("A41.9", "Sepsis, unspecified organism"),
        ("G00.0", "Haemophilus meningitis"),
        ("G00.1", "Pneumococcal meningitis"),
        ("G00.9", "Bacterial meningitis, unspecified"),
        ("A39.0", "Meningococcal meningitis"),
        ("R78.81", "Bacteremia"),
    ]) + _codes(SNOMED, [
        ("233604007", "Pneumonia"),
        ("91302008", "Sepsis"),
        ("95883001", "Bacterial meningitis"),
        ("5758002", "Bacteremia"),
    ]),
    text=_rx(r"pneumonia|sepsis|septic|septicaemia|septicemia|bacteraemia|bacteremia|meningitis|empyema|"
             r"osteomyelitis|culture[- ]proven"),
    prefixes=_codes(ICD10CM, [
        ("J15", "Bacterial pneumonia, not elsewhere classified"),
        ("J18", "Pneumonia, unspecified organism"),
        ("A40", "Streptococcal sepsis"),
        ("A41", "Other sepsis"),
        ("G00", "Bacterial meningitis"),
        ("A39", "Meningococcal infection"),
    ]),
)

LIFE_THREATENING_INFECTIONS = ValueSet(
    "life_threatening_infection",
    "Life-threatening infection: sepsis, meningitis (and any infection needing intensive care)",
    _codes(ICD10CM, [
        ("A40.3", "Sepsis due to Streptococcus pneumoniae"),
        ("A41.9", "Sepsis, unspecified organism"),
        ("G00.0", "Haemophilus meningitis"),
        ("G00.1", "Pneumococcal meningitis"),
        ("G00.9", "Bacterial meningitis, unspecified"),
        ("A39.0", "Meningococcal meningitis"),
    ]) + _codes(SNOMED, [
        ("91302008", "Sepsis"),
        ("95883001", "Bacterial meningitis"),
    ]),
    text=_rx(r"sepsis|septic\s*shock|septicaemia|septicemia|meningitis|meningococcaemia|meningococcemia"),
    prefixes=_codes(ICD10CM, [
        ("A40", "Streptococcal sepsis"),
        ("A41", "Other sepsis"),
        ("G00", "Bacterial meningitis"),
        ("A39", "Meningococcal infection"),
    ]),
)

ENCAPSULATED_ORGANISM_INFECTIONS = ValueSet(
    "encapsulated_organism",
    "Infection by encapsulated bacteria: S. pneumoniae, H. influenzae, N. meningitidis",
    _codes(ICD10CM, [
        ("J13", "Pneumonia due to Streptococcus pneumoniae"),
        ("J14", "Pneumonia due to Haemophilus influenzae"),
        ("A40.3", "Sepsis due to Streptococcus pneumoniae"),
        ("G00.0", "Haemophilus meningitis"),
        ("G00.1", "Pneumococcal meningitis"),
        ("A39.0", "Meningococcal meningitis"),
    ]) + _codes(ICD10CM, [
        ("A41.3", "Sepsis due to Haemophilus influenzae"),
    ], verified=False),
    text=_rx(r"pneumococ|streptococcus\s+pneumoniae|s\.\s*pneumoniae|h(a)?emophilus|h\.\s*influenzae|"
             r"meningococ|neisseria\s+meningitidis|n\.\s*meningitidis"),
    prefixes=_codes(ICD10CM, [("A39", "Meningococcal infection")]),
)

MINOR_INFECTIONS = ValueSet(
    "minor_infection",
    "Minor infection: upper respiratory infection, sinusitis, otitis media (outpatient)",
    _codes(ICD10CM, [
        ("J06.9", "Acute upper respiratory infection, unspecified"),
    ]) + _codes(SNOMED, [
        ("36971009", "Sinusitis"),
        ("65363002", "Otitis media"),
        ("54150009", "Upper respiratory infection"),
    ]),
    text=_rx(r"sinusitis|otitis|upper\s+respiratory|\buri\b|rhinosinusitis|pharyngitis|tonsillitis|bronchitis|"
             r"common\s+cold|nasopharyngitis"),
    prefixes=_codes(ICD10CM, [
        ("J01", "Acute sinusitis"),
        ("J32", "Chronic sinusitis"),
        ("H66", "Suppurative and unspecified otitis media"),
        ("J06", "Acute upper respiratory infections of multiple and unspecified sites"),
    ]),
)

#: Encounter class codes (v3 ActCode) that mean a hospital admission.
INPATIENT_CLASSES = frozenset({"IMP", "ACUTE", "NONAC", "inpatient"})
TEXT_INPATIENT = _rx(r"inpatient|in-patient|admission|hospitali[sz]")
TEXT_INTENSIVE_CARE = _rx(r"\bicu\b|\bpicu\b|\bnicu\b|intensive\s+care|critical\s+care")
SNOMED_INTENSIVE_CARE = frozenset({"309904001"})  # Intensive care unit (environment)

# ------------------------------------------------------------------ diagnoses

IMMUNODEFICIENCY = ValueSet(
    "immunodeficiency",
    "Antibody deficiency diagnoses (D80.x, D83.x, hyper-IgM)",
    _codes(ICD10CM, [
        ("D80.4", "Selective deficiency of immunoglobulin M [IgM]"),
        ("D80.5", "Immunodeficiency with increased immunoglobulin M [IgM]"),
        ("D80.7", "Transient hypogammaglobulinemia of infancy"),
    ]) + _codes(SNOMED, [
        ("23238000", "Common variable immunodeficiency"),
        ("403835002", "X-linked hyper-IgM syndrome"),
        ("234536003", "CD40 ligand deficiency"),
    ]),
    text=_rx(r"hypogammaglobulin|immunodeficien|agammaglobulin|hyper[- ]?igm|cd40|igm\s+deficien"),
    prefixes=_codes(ICD10CM, [
        ("D80", "Immunodeficiency with predominantly antibody defects"),
        ("D83", "Common variable immunodeficiency"),
    ]),
)

HYPER_IGM_DIAGNOSES = ValueSet(
    "hyper_igm",
    "Hyper-IgM syndrome diagnoses",
    _codes(ICD10CM, [("D80.5", "Immunodeficiency with increased immunoglobulin M [IgM]")])
    + _codes(SNOMED, [
        ("403835002", "X-linked hyper-IgM syndrome"),
        ("234536003", "CD40 ligand deficiency"),
    ]),
    text=_rx(r"hyper[- ]?igm|cd40\s*(ligand)?\s*deficien|increased\s+immunoglobulin\s+m"),
)

OTHER_IVIG_INDICATIONS = ValueSet(
    "other_ivig_indication",
    "IVIG indications outside this guideline (immunomodulation): ITP, Kawasaki, GBS, CIDP, myasthenia",
    _codes(ICD10CM, [
        ("D69.3", "Immune thrombocytopenic purpura"),
        ("M30.3", "Mucocutaneous lymph node syndrome [Kawasaki]"),
        ("G61.0", "Guillain-Barre syndrome"),
        ("G61.81", "Chronic inflammatory demyelinating polyneuritis"),
    ]) + _codes(ICD10CM, [
        ("G70.0", "Myasthenia gravis"),
        ("G70.00", "Myasthenia gravis without (acute) exacerbation"),
        ("G70.01", "Myasthenia gravis with (acute) exacerbation"),
    ], verified=False),
    text=_rx(r"\bitp\b|thrombocytopeni|kawasaki|mucocutaneous\s+lymph\s+node|guillain|\bgbs\b|\bcidp\b|"
             r"demyelinating\s+poly|myasthen|multifocal\s+motor\s+neuropathy|dermatomyositis|"
             r"stiff[- ]person|alloimmune|autoimmune\s+encephalitis|toxic\s+shock|necrotizing\s+fasciitis"),
)

# ------------------------------------------------------------------ immune globulin products

IMMUNE_GLOBULIN_HCPCS = ValueSet(
    "immune_globulin_hcpcs",
    "Immune globulin products (HCPCS Level II)",
    tuple(Code(sorted(HCPCS_SYSTEMS)[0], code, display) for code, display in [
        ("J1459", "Privigen (immune globulin intravenous)"),
        ("J1556", "Bivigam (immune globulin)"),
        ("J1557", "Gammaplex (immune globulin)"),
        ("J1561", "Gamunex-C / Gammaked (immune globulin)"),
        ("J1566", "Immune globulin, intravenous, lyophilized"),
        ("J1568", "Octagam (immune globulin)"),
        ("J1569", "Gammagard Liquid (immune globulin)"),
        ("J1572", "Flebogamma (immune globulin)"),
        ("J1599", "Immune globulin, intravenous, non-lyophilized, NOS"),
        ("J1559", "Hizentra (immune globulin subcutaneous)"),
        ("J1575", "HyQvia (immune globulin subcutaneous with hyaluronidase)"),
    ]),
)
SUBCUTANEOUS_HCPCS = frozenset({"J1559", "J1575"})

#: Brand and generic names that identify immune globulin (IgG) replacement products.
TEXT_IMMUNE_GLOBULIN = _rx(
    r"immune\s*-?\s*globulin|immuno\s*-?\s*globulin|\bivig\b|\bscig\b|\bigiv\b|\bigsc\b|"
    r"privigen|bivigam|gammaplex|gamunex|gammaked|octagam|gammagard|flebogamma|hizentra|hyqvia|"
    r"panzyga|asceniv|cutaquig|xembify|cuvitru|carimune|yimmugo|alyglo|gammanorm|kiovig|intratect"
)
#: Immune globulin brands sold in one concentration only (percent, g per 100 mL; US prescribing
#: information), so that a dose ordered in mL is a known mass. Brands sold in several strengths
#: (Octagam 5 %/10 %, Gammaplex 5 %/10 %, Flebogamma 5 %/10 %) are not listed: their mL are not
#: turned into grams unless the order or its Medication states the strength.
SINGLE_CONCENTRATION_PRODUCTS: dict[str, float] = {
    "privigen": 10, "gamunex": 10, "gammaked": 10, "gammagard liquid": 10, "bivigam": 10, "panzyga": 10,
    "asceniv": 10, "alyglo": 10, "yimmugo": 10, "hizentra": 20, "xembify": 20, "cuvitru": 20, "cutaquig": 16.5,
    "hyqvia": 10,
}

#: Hyperimmune and other globulins that are not IgG replacement: never an IVIG order.
TEXT_NOT_REPLACEMENT_GLOBULIN = _rx(
    r"hepatitis\s*b|\bhbig\b|rabies|hyperrab|kedrab|imogam|tetanus|hypertet|rho\s*\(?d\)?|\banti-?d\b|rhogam|"
    r"winrho|rhophylac|varicella|varizig|zoster|botulism|babybig|cytomegalovirus|cytogam|\bcmv\b|vaccinia|"
    r"anthrax|thymocyte|lymphocyte\s+immune|atgam|thymoglobulin|digoxin|antivenin|antivenom|crotalidae|"
    r"anti-?inhibitor|respiratory\s+syncytial|\brsv\b|palivizumab|nirsevimab|hepagam|nabi-?hb|hyperhep"
)
TEXT_SUBCUTANEOUS = _rx(r"subcutaneous|\bscig\b|\bigsc\b|hizentra|hyqvia|cutaquig|xembify|cuvitru|\bs\.?c\.?\b|\bsubq\b")
#: RxNorm product codes are not verified here (codes.md): an RxNorm coding is recognised by its
#: display text with the pattern above. Ingredient-level names are listed for explain only.
RXNORM_INGREDIENT_NAMES = ("immunoglobulin G", "immune globulin")
TEXT_IVIG_PROCEDURE = _rx(r"immune\s*globulin|immunoglobulin|\bivig\b|\bscig\b")

ALL_VALUE_SETS: tuple[ValueSet, ...] = (
    LABS, VACCINES, SEVERE_INFECTIONS, LIFE_THREATENING_INFECTIONS, ENCAPSULATED_ORGANISM_INFECTIONS,
    MINOR_INFECTIONS, IMMUNODEFICIENCY, HYPER_IGM_DIAGNOSES, OTHER_IVIG_INDICATIONS, IMMUNE_GLOBULIN_HCPCS,
)


_ICD_SYSTEMS = frozenset({ICD10, ICD10CM})


def coding_in(valueset: ValueSet, system: str | None, code: str | None) -> bool:
    """Whether one Coding belongs to the value set: exact code, or an ICD-10 prefix (J15 -> J15.x).
    ICD-10 and ICD-10-CM codes match across the two systems, with or without their dot."""
    if not system or not code:
        return False
    code = code.strip()
    index = valueset.index
    if system in _ICD_SYSTEMS:
        key = _icd_key(code)
        return key in index.icd or key.startswith(index.icd_prefixes)
    if system in HCPCS_SYSTEMS:
        return code in index.hcpcs
    return (system, code) in index.other


def text_in(valueset: ValueSet, text: str | None) -> bool:
    return bool(text) and valueset.names(text)  # type: ignore[arg-type]
