"""Every card of every scenario, read as a prescriber reads it: clinical words, short, nothing raw.

A card that quotes a rule's function name, a file, a raw UCUM annotation or "every 0.143 weeks", or
runs past what an EHR card panel shows, gets the alert switched off. This walks all of them, on each
hook a scenario has, with and without the trend-page link (which adds a line to "Data not used").
"""

from __future__ import annotations

import re
from datetime import date

import pytest

import fhir_fixtures
import hooks
from hooks.cards import DETAIL_MAX
from hooks.service_def import HookRequest

#: what must never reach a prescriber, and why
FORBIDDEN = {
    "a file name": re.compile(r"\b[\w-]+\.(?:py|md|json|txt|toml|ya?ml|js|cjs)\b"),
    "a code identifier (snake_case)": re.compile(r"\b[a-z][a-z0-9]*(?:_[a-z0-9]+)+\b"),
    "code formatting": re.compile(r"`"),
    "a raw UCUM annotation": re.compile(r"\{[^}]*\}|\[[a-z]+_[a-z]+\]"),
    "a fractional interval": re.compile(r"every \d+\.\d+ (?:weeks?|days?|months?|hours?)"),
    "a Python value": re.compile(r"\b(?:None|nan|inf|True|False)\b"),
    "an empty fact": re.compile(r"^\| [^|]+ \| (?:given|—|) \|", re.MULTILINE),
    "the ruleset version": re.compile(r"\bcfg\.[0-9a-f]{8}\b|ruleset \d"),
}

CASES = [(name, hook) for name in fhir_fixtures.scenario_names()
         for hook in ("patient-view", "order-sign", "order-select")
         if fhir_fixtures.load_json(name, f"request-{hook}.json") is not None]


def _cards(name: str, hook: str, smart: bool) -> list[dict]:
    body = fhir_fixtures.load_json(name, f"request-{hook}.json")
    today = date.fromisoformat(fhir_fixtures.load_json(name, "expected.json")["today"])
    service = next(s for s in hooks.SERVICES.values() if s.hook == hook)
    result = service.handler(HookRequest(
        hook=hook, hook_instance=body["hookInstance"], service_id=service.id, context=body["context"],
        prefetch=body["prefetch"], today=today, ruleset_version="1.0.1+cfg.0123abcd",
        smart_launch_url="https://cds.example.org/smart/launch" if smart else None))
    return result.cards


def test_the_walk_covers_every_scenario_and_hook():
    assert len({name for name, _ in CASES}) == len(fhir_fixtures.scenario_names())
    assert {hook for _, hook in CASES} == {"patient-view", "order-sign", "order-select"}


@pytest.mark.parametrize("smart", [False, True], ids=["no-trend-page", "trend-page"])
@pytest.mark.parametrize(("name", "hook"), CASES, ids=[f"{n}:{h}" for n, h in CASES])
def test_every_card_reads_as_clinical_words(name, hook, smart):
    for card in _cards(name, hook, smart):
        topic = card["source"]["topic"]["code"]
        summary, detail = card["summary"], card["detail"]
        assert len(summary) < 140, (topic, summary)
        assert len(detail) <= DETAIL_MAX, (topic, len(detail))
        for text, where in ((summary, "summary"), (detail, "detail")):
            for what, pattern in FORBIDDEN.items():
                found = pattern.search(text)
                assert found is None, f"{topic} {where} has {what}: {found.group(0)!r} in {text!r}"
        for link in card.get("links", []):
            assert link["url"].startswith(("https://", "http://")), link
        for suggestion in card.get("suggestions", []):
            for what, pattern in FORBIDDEN.items():
                assert pattern.search(suggestion["label"]) is None, (what, suggestion["label"])


@pytest.mark.parametrize(("name", "hook"), CASES, ids=[f"{n}:{h}" for n, h in CASES])
def test_no_row_or_count_is_said_twice(name, hook):
    """The same fact row twice, or a count repeated in one sentence ('2 minor ..., 2 minor'), is noise."""
    for card in _cards(name, hook, False):
        rows = [line for line in card["detail"].splitlines() if line.startswith("| ") and not line.startswith("| Fact")]
        assert len(rows) == len(set(rows)), card["detail"]
        for sentence in re.split(r"[.\n]", card["summary"] + "\n" + card["detail"]):
            counts = re.findall(r"\b\d+ (?:minor|severe)\b", sentence)
            assert len(counts) == len(set(counts)), sentence


def test_the_walk_catches_what_the_cards_used_to_say():
    """The patterns match the defects they are for (a walk that cannot fail proves nothing)."""
    old = {
        "a file name": "Rule: criteria.md Decision 7",
        "a code identifier (snake_case)": "Isolated IgM deficiency (isolated_igm_deficiency)",
        "code formatting": "(`trough_below_target`)",
        "a raw UCUM annotation": "2 {pill} ordered",
        "a fractional interval": "every 0.143 weeks",
        "a Python value": "IgG None mg/dL",
        "an empty fact": "| Last IVIG/SCIG dose | given | 2026-10-20 | — |",
        "the ruleset version": "_ivig-cds ruleset 1.0.1+cfg.8150feae_",
    }
    for what, text in old.items():
        assert FORBIDDEN[what].search(text), what
