"""CDS Hooks 2.0.1 response rules as a checker for tests: returns the list of violations."""

from __future__ import annotations

from typing import Any

TOPICS = {"ivig-not-indicated", "ivig-indicated", "workup-incomplete", "hyper-igm-pattern",
          "isolated-igm-deficiency", "labs-confounded-by-ivig", "ivig-dose-check", "ivig-monitoring"}
INDICATORS = {"info", "warning", "critical"}


def without_uuids(value: Any) -> Any:
    """Cards compared by content: uuids are per call."""
    if isinstance(value, dict):
        return {k: without_uuids(v) for k, v in value.items() if k != "uuid"}
    if isinstance(value, list):
        return [without_uuids(v) for v in value]
    return value


def _empty(value: Any) -> bool:
    return value is None or value == "" or value == [] or value == {}


def empty_paths(obj: Any, path: str = "$") -> list[str]:
    out: list[str] = []
    if isinstance(obj, dict):
        for key, value in obj.items():
            if _empty(value) and not (path == "$" and key == "cards"):
                out.append(f"{path}.{key}")
            out += empty_paths(value, f"{path}.{key}")
    elif isinstance(obj, list):
        for i, value in enumerate(obj):
            out += empty_paths(value, f"{path}[{i}]")
    return out


def response_problems(body: Any) -> list[str]:
    problems: list[str] = []
    if not isinstance(body, dict) or not isinstance(body.get("cards"), list):
        return ["response has no cards array"]
    problems += [f"empty value at {p}" for p in empty_paths(body)]
    for key in body:
        if key not in ("cards", "systemActions"):
            problems.append(f"unexpected response member {key}")
    order = {"critical": 0, "warning": 1, "info": 2}
    seen_topics: set[str] = set()
    for i, card in enumerate(body["cards"]):
        where = f"cards[{i}]"
        summary = card.get("summary")
        if not isinstance(summary, str) or not summary or len(summary) >= 140:
            problems.append(f"{where}.summary missing or not under 140 characters ({len(summary or '')})")
        if card.get("indicator") not in INDICATORS:
            problems.append(f"{where}.indicator {card.get('indicator')!r}")
        source = card.get("source") or {}
        if not source.get("label"):
            problems.append(f"{where}.source.label missing")
        topic = (source.get("topic") or {}).get("code")
        if topic not in TOPICS:
            problems.append(f"{where}.source.topic.code {topic!r} not in the contract")
        if topic in seen_topics:
            problems.append(f"{where}: topic {topic} twice")
        seen_topics.add(topic)
        if not card.get("uuid"):
            problems.append(f"{where}.uuid missing")
        if not isinstance(card.get("detail", ""), str):
            problems.append(f"{where}.detail not a string")
        suggestions = card.get("suggestions")
        if suggestions is not None:
            if card.get("selectionBehavior") not in ("at-most-one", "any"):
                problems.append(f"{where}.selectionBehavior required with suggestions")
            for j, s in enumerate(suggestions):
                if not s.get("label"):
                    problems.append(f"{where}.suggestions[{j}].label missing")
                for k, action in enumerate(s.get("actions", [])):
                    at = f"{where}.suggestions[{j}].actions[{k}]"
                    if action.get("type") not in ("create", "update", "delete"):
                        problems.append(f"{at}.type {action.get('type')!r}")
                    if not action.get("description"):
                        problems.append(f"{at}.description missing")
                    if action.get("type") == "delete" and not action.get("resourceId"):
                        problems.append(f"{at}: delete without resourceId")
                    if action.get("type") in ("create", "update") and not isinstance(action.get("resource"), dict):
                        problems.append(f"{at}: {action.get('type')} without resource")
        for j, reason in enumerate(card.get("overrideReasons", [])):
            if not all(reason.get(k) for k in ("code", "system", "display")):
                problems.append(f"{where}.overrideReasons[{j}] needs code, system and display")
        for j, link in enumerate(card.get("links", [])):
            if not all(link.get(k) for k in ("label", "url", "type")) or link.get("type") not in ("absolute", "smart"):
                problems.append(f"{where}.links[{j}] invalid")
            if "appContext" in link and link.get("type") != "smart":
                problems.append(f"{where}.links[{j}].appContext only with smart links")
    indicators = [order.get(c.get("indicator"), 9) for c in body["cards"]]
    if indicators != sorted(indicators):
        problems.append("cards not ordered critical > warning > info")
    return problems


def topics(body: dict[str, Any]) -> list[str]:
    return [c["source"]["topic"]["code"] for c in body["cards"]]
