"""What a rule concludes, and the card topics of the contract (../shared/contract/card-topics.md)."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class Topic(StrEnum):
    """The closed list of card topic codes. Codes never change meaning."""

    IVIG_NOT_INDICATED = "ivig-not-indicated"
    IVIG_INDICATED = "ivig-indicated"
    WORKUP_INCOMPLETE = "workup-incomplete"
    HYPER_IGM_PATTERN = "hyper-igm-pattern"
    ISOLATED_IGM_DEFICIENCY = "isolated-igm-deficiency"
    LABS_CONFOUNDED_BY_IVIG = "labs-confounded-by-ivig"
    IVIG_DOSE_CHECK = "ivig-dose-check"
    IVIG_MONITORING = "ivig-monitoring"


TOPIC_SYSTEM = "urn:ivig-cds:card-topic"
TOPIC_DISPLAY = {
    Topic.IVIG_NOT_INDICATED: "IVIG not indicated",
    Topic.IVIG_INDICATED: "IVIG indicated",
    Topic.WORKUP_INCOMPLETE: "Immunology work-up incomplete",
    Topic.HYPER_IGM_PATTERN: "Hyper-IgM pattern",
    Topic.ISOLATED_IGM_DEFICIENCY: "Isolated IgM deficiency",
    Topic.LABS_CONFOUNDED_BY_IVIG: "Labs confounded by recent IVIG",
    Topic.IVIG_DOSE_CHECK: "IVIG dose check",
    Topic.IVIG_MONITORING: "IVIG trough monitoring",
}


class Verdict(StrEnum):
    """What the IVIG question's answer means for an immune globulin order."""

    SUPPORTS = "supports"  # indicated, or the patient needs it (hyper-IgM)
    AGAINST = "against"  # the guideline does not support replacement
    CANNOT_JUDGE = "cannot-judge"  # work-up incomplete
    CONFOUNDED = "confounded"  # the deciding results were drawn after IVIG


@dataclass(frozen=True)
class Evidence:
    """One fact that decided, as the card shows it: what, value with unit, date, and why it counts."""

    fact: str
    value: str
    date: str = ""
    note: str = ""


@dataclass(frozen=True)
class Assessment:
    """A rule's conclusion, with the facts that decided and what to do."""

    rule: str
    verdict: Verdict | None
    #: the conclusion in a few words, for summaries ("isolated low IgM (32 mg/dL) with normal IgG")
    conclusion: str
    evidence: tuple[Evidence, ...] = ()
    advice: tuple[str, ...] = ()
    #: work-up items that are missing or stale, worded for the clinician
    missing: tuple[str, ...] = ()
    #: keys of the missing items, for orderable suggestions ("igg", "ppsv23", "lymphocyte-subsets", ...)
    missing_keys: tuple[str, ...] = ()
    #: the threshold(s) that decided, "IgM < 40 mg/dL"
    thresholds: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class NotApplicable:
    """A rule that did not apply, and why (for the decision trace)."""

    rule: str
    reason: str


RuleResult = Assessment | NotApplicable


@dataclass
class Decision:
    """The engine's answer: the IVIG question, monitoring, work-up gaps, and the trace."""

    outcome: Assessment | None
    monitoring: Assessment | None = None
    gaps: Assessment | None = None
    trace: list[dict[str, str]] = field(default_factory=list)
    in_scope: bool = False
