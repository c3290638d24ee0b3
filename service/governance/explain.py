"""``ivig-cds explain``: the clinical logic actually loaded, as a document a committee can review.

Why generated: a governance committee (CDS / pharmacy-and-therapeutics) approves an alert from a
written description; when that description is written by hand it drifts from the code. Here
every rule, threshold, value set and recogniser comes from the running objects — the rule
registry (``hooks.rules``), the thresholds in force (``Settings.guideline`` with their origins),
the value sets (``hooks.valuesets``) and the hook modules' indicator tables — so what is
approved is what runs. The ruleset version printed at the top is the one every card, discovery
entry and feedback record carries.

``render_explain(settings, fmt)`` returns markdown or JSON. ``python -m service.governance.explain --write
docs/clinical-logic.md`` regenerates the repository copy from the guideline defaults (never
from the machine's environment); ``--check`` exits 1 when that copy is stale.
"""

from __future__ import annotations

import argparse
import inspect
import json
import re
import sys
from pathlib import Path
from typing import Any, Iterable, Mapping

import hooks
from hooks import engine, facts, order_sign, orders, patient_view
from hooks import valuesets as vs
from hooks.assessment import TOPIC_DISPLAY, TOPIC_SYSTEM, Topic
from hooks.config import DEFAULT_CONFIG, threshold_fields
from hooks.references import REFERENCES, Reference
from hooks.rules import DECISION_RULES, MONITORING_RULES, ORDER_RULES, OS, PV, WORKUP_RULES, RuleSpec, check_registry
from hooks.ruleset import RULES_VERSION, config_fingerprint, ruleset_version
from service.settings import Settings, env_name, load_settings

FORMATS = ("markdown", "json")
DOCS_PATH = Path("docs") / "clinical-logic.md"
REGENERATE = "python -m service.governance.explain --write docs/clinical-logic.md"

#: Registries in the order the engine runs them, with what a reader needs to know about each kind.
KINDS: tuple[tuple[str, str, list[RuleSpec], str], ...] = (
    ("decision", "Decision rules (the IVIG question)", DECISION_RULES,
     "Evaluated in this order when the patient is in scope; the first rule that applies decides and "
     "the rest are not evaluated."),
    ("monitoring", "Monitoring rules (patients on IVIG/SCIG)", MONITORING_RULES,
     "Evaluated whatever the decision and whether or not the patient is in scope, except for a patient with an "
     "active other IVIG indication and no antibody-deficiency clue (trace name `(monitoring)`: their IVIG is "
     "immunomodulation, outside this guideline); when both apply they make one card."),
    ("workup", "Work-up gap rules (beside the decision)", WORKUP_RULES,
     "Evaluated only after one of the decisions named under 'Work-up gaps are shown beside' applied and "
     "the patient is not on IVIG/SCIG: missing work-up is then shown as its own finding."),
    ("order", "Order rules (each immune globulin order being selected or signed)", ORDER_RULES,
     "Evaluated in this order for every immune globulin order among the draft orders. A rule that "
     "yields no card puts the order outside this guideline: no card and no further order rules for it."),
)

#: Which rule-topic key each hook uses and which indicator table decides the card's urgency.
HOOK_TOPIC_KEY = {"patient-view": PV, "order-sign": OS, "order-select": OS}
INDICATORS: dict[str, Mapping[Topic, str]] = {PV: patient_view.INDICATOR, OS: order_sign.INDICATOR}

#: When the IVIG question arises at all (``hooks.engine.in_scope``); outside it no decision rule runs.
#: Written by hand (the scope is code, not registry data): tests/test_governance.py checks it against
#: ``in_scope`` on generated patients, so a change of scope in the engine fails until this is updated.
SCOPE_ALWAYS = "an immune globulin order is being selected or signed"
SCOPE_EXCLUDED = ("the patient has an active diagnosis that is another IVIG indication (ITP, Kawasaki disease, "
                  "GBS, CIDP, myasthenia ...) and no antibody-deficiency clue (IgM not low, IgG not low, no "
                  "hyper-IgM diagnosis): IVIG there is immunomodulation, outside this guideline")
SCOPE_CONDITIONS = (
    "IgM is low",
    "IgG is low",
    "a hyper-IgM syndrome is diagnosed",
    "there is IVIG/SCIG history (a dose on record or an active order)",
    "the IgM result was drawn within the confounding window after IVIG/SCIG",
    "the PPSV23 response is impaired",
)

#: Cards a hook leaves out although the rule's topic is registered for it: (topic key, rule) -> the
#: hook-module function that decides it. Its docstring is quoted; a missing function is a problem.
HOOK_EXCEPTIONS: dict[tuple[str, str], tuple[Any, str]] = {
    (PV, "antibody_deficiency_without_infection_criterion"): (patient_view, "outside_igm_deficiency"),
    (PV, "workup_gaps"): (patient_view, "outside_igm_deficiency"),
}

ORIGIN_LABELS = {"default": "default", "override": "command-line override"}

REGEX_LEGEND = (
    "Text patterns are case-insensitive regular expressions, shown as their alternatives (any one "
    "matching is enough): `\\b` word boundary, `\\s*` optional space, `\\s+` one or more spaces, `?` "
    "the item before is optional, `(a|b)` either, `[- ]` one of the characters, `.` any character, "
    "`\\.` a full stop, `\\d` a digit.")


# ------------------------------------------------------------------ the model (one dict, two renderings)


def default_settings() -> Settings:
    """The guideline defaults, independent of this machine's environment and files."""
    return load_settings(environ={})


def _all_specs() -> list[RuleSpec]:
    return [spec for _, _, registry, _ in KINDS for spec in registry]


def _origin_label(origin: str) -> str:
    kind, _, rest = origin.partition(":")
    if kind == "profile":
        return f"profile {rest}"
    if kind == "config":
        return f"config file {rest}"
    if kind == "env":
        return f"environment variable {rest}"
    return ORIGIN_LABELS.get(origin, origin)


def _thresholds(settings: Settings) -> list[dict[str, Any]]:
    used_by: dict[str, list[str]] = {}
    for spec in _all_specs():
        for name in spec.thresholds:
            used_by.setdefault(name, []).append(spec.name)
    out = []
    for name, meta in threshold_fields().items():
        dotted = f"guideline.{name}"
        value = getattr(settings.guideline, name)
        origin = settings.origins.get(dotted, "default")
        out.append({
            "name": name,
            "setting": dotted,
            "description": meta["description"],
            "unit": meta["unit"],
            "source": meta["source"],
            "default": meta["default"],
            "value": value,
            "changed": value != meta["default"],
            "origin": origin,
            "originLabel": _origin_label(origin),
            "envVar": env_name(dotted),
            "usedBy": used_by.get(name, []),
        })
    return out


def _reference(key: str) -> dict[str, Any]:
    ref: Reference | None = REFERENCES.get(key)
    if ref is None:
        return {"key": key, "short": key, "citation": "(unknown reference: not in hooks/references.py)", "url": None}
    return {"key": ref.key, "short": ref.short, "citation": ref.citation, "url": ref.url}


def _services_by_key() -> dict[str, list[dict[str, str]]]:
    out: dict[str, list[dict[str, str]]] = {}
    for service in hooks.SERVICES.values():
        key = HOOK_TOPIC_KEY.get(service.hook)
        if key is not None:
            out.setdefault(key, []).append({"id": service.id, "hook": service.hook})
    return out


def _cards(spec: RuleSpec) -> list[dict[str, Any]]:
    services = _services_by_key()
    cards = []
    for key in (PV, OS):
        if key not in spec.topics:
            continue
        hooks_ = [s["hook"] for s in services.get(key, [])]
        topics = spec.topics[key]
        if not topics:
            cards.append({"hooks": hooks_, "topic": None, "display": None, "indicator": None,
                          "note": "the order is outside this guideline"})
        exception = _exception(key, spec.name)
        for topic in topics:
            cards.append({"hooks": hooks_, "topic": topic.value, "display": TOPIC_DISPLAY[topic],
                          "indicator": INDICATORS[key].get(topic), "exception": exception})
    return cards


def _exception(key: str, rule_name: str) -> dict[str, Any] | None:
    """A hook's documented reason to leave the rule's card out (see HOOK_EXCEPTIONS)."""
    if (key, rule_name) not in HOOK_EXCEPTIONS:
        return None
    module, name = HOOK_EXCEPTIONS[(key, rule_name)]
    func = getattr(module, name, None)
    doc = inspect.getdoc(func) if func is not None else None
    return {"function": f"{module.__name__}.{name}", "exists": func is not None,
            "condition": " ".join(doc.split()) if doc else None}


def _rule(spec: RuleSpec, order: int, thresholds: Mapping[str, dict[str, Any]]) -> dict[str, Any]:
    doc = inspect.getdoc(spec.func)
    return {
        "order": order,
        "name": spec.name,
        "kind": spec.kind,
        "function": f"{spec.func.__module__}.{spec.func.__qualname__}",
        "branch": spec.branch,
        "checks": spec.checks,
        "reads": list(spec.reads),
        "thresholds": [
            {"name": name, "value": thresholds[name]["value"], "default": thresholds[name]["default"],
             "unit": thresholds[name]["unit"], "changed": thresholds[name]["changed"]}
            if name in thresholds else {"name": name, "value": None, "default": None, "unit": None, "changed": False}
            for name in spec.thresholds
        ],
        "cards": _cards(spec),
        "references": [_reference(k) for k in spec.references],
        "rationale": doc.split("\n\n")[0].replace("\n", " ") if doc else None,
    }


def _alternatives(pattern: str) -> list[str]:
    """The top-level alternatives of a regular expression, duplicates dropped (a|b(c|d) -> a, b(c|d))."""
    parts: list[str] = []
    depth = 0
    in_class = False
    current = []
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\" and i + 1 < len(pattern):
            current.append(pattern[i:i + 2])
            i += 2
            continue
        if in_class:
            in_class = ch != "]"
        elif ch == "[":
            in_class = True
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == "|" and depth == 0:
            parts.append("".join(current))
            current = []
            i += 1
            continue
        current.append(ch)
        i += 1
    parts.append("".join(current))
    return list(dict.fromkeys(p for p in parts if p))


def _pattern(p: re.Pattern[str] | None) -> dict[str, Any] | None:
    if p is None:
        return None
    return {"regex": p.pattern, "caseInsensitive": bool(p.flags & re.IGNORECASE), "alternatives": _alternatives(p.pattern)}


def _code(c: vs.Code, match: str) -> dict[str, Any]:
    return {"system": c.system, "code": c.code, "display": c.display, "verified": c.verified, "match": match}


def _value_set(v: vs.ValueSet) -> dict[str, Any]:
    codes = [_code(c, "exact") for c in v.codes] + [_code(c, "prefix") for c in v.prefixes]
    text = _pattern(v.text)
    return {
        "name": v.name,
        "meaning": v.meaning,
        "codes": codes,
        "text": text,
        "counts": {
            "codes": len(v.codes),
            "prefixes": len(v.prefixes),
            "verified": sum(c["verified"] for c in codes),
            "unverified": sum(not c["verified"] for c in codes),
            "textAlternatives": len(text["alternatives"]) if text else 0,
        },
    }


#: Shown in the IVIG order recognition section, so not repeated among the other recognisers.
_SHOWN_WITH_ORDERS = (vs.TEXT_IMMUNE_GLOBULIN, vs.TEXT_NOT_REPLACEMENT_GLOBULIN, vs.TEXT_SUBCUTANEOUS,
                      vs.TEXT_IVIG_PROCEDURE, vs.SUBCUTANEOUS_HCPCS, vs.HCPCS_SYSTEMS, vs.RXNORM_INGREDIENT_NAMES)


def _other_recognisers() -> dict[str, Any]:
    """Every further pattern and code list in hooks/valuesets.py, found by introspection, not listed by hand."""
    shown = {id(v.text) for v in vs.ALL_VALUE_SETS if v.text is not None} | {id(x) for x in _SHOWN_WITH_ORDERS}
    patterns, code_lists = [], []
    for name, value in vars(vs).items():
        if name.startswith("_") or id(value) in shown:
            continue
        if isinstance(value, re.Pattern):
            patterns.append({"name": name, **_pattern(value)})
        elif isinstance(value, (frozenset, tuple)) and value and all(isinstance(x, str) for x in value):
            values = sorted(value) if isinstance(value, frozenset) else list(value)
            code_lists.append({"name": name, "values": values})
    return {"patterns": patterns, "codeLists": code_lists}


def _ivig_recognition(thresholds: Mapping[str, dict[str, Any]]) -> dict[str, Any]:
    hcpcs = [{**_code(c, "exact"), "subcutaneous": c.code in vs.SUBCUTANEOUS_HCPCS} for c in vs.IMMUNE_GLOBULIN_HCPCS.codes]
    doc = inspect.getdoc(orders) or ""
    return {
        "how": " ".join(doc.split("\n\n")[1:]).replace("\n", " ") if "\n\n" in doc else doc,
        "orderResourceTypes": list(orders.ORDER_TYPES),
        "ignoredStatuses": sorted(orders._IGNORED_STATUSES),
        "hcpcsSystems": sorted(vs.HCPCS_SYSTEMS),
        "hcpcs": hcpcs,
        "rxnorm": {"system": vs.RXNORM, "productCodes": [], "ingredientNames": list(vs.RXNORM_INGREDIENT_NAMES),
                   "note": "RxNorm product codes are unverified (codes.md): an RxNorm coding is recognised by its "
                           "display text with the product pattern, never by its code alone"},
        "productText": _pattern(vs.TEXT_IMMUNE_GLOBULIN),
        "excludedHyperimmuneText": _pattern(vs.TEXT_NOT_REPLACEMENT_GLOBULIN),
        "exclusionNote": "checked first: an order whose text matches an exclusion is never an IVIG order, "
                         "whatever its code",
        "subcutaneous": {"hcpcs": sorted(vs.SUBCUTANEOUS_HCPCS), "text": _pattern(vs.TEXT_SUBCUTANEOUS),
                         "effect": "a subcutaneous product (SCIG) is dosed weekly: the replacement dose and "
                                   "interval check (dose_outside_replacement_range) does not apply"},
        "historyProcedureText": _pattern(vs.TEXT_IVIG_PROCEDURE),
        "historyNote": "Past IVIG/SCIG (for the confounding window and 'on treatment'), with the same product "
                       "recognition: " + " ".join((inspect.getdoc(facts.extract_ivig_history) or "").split())
                       + " A Procedure counts only when its text matches the procedure pattern.",
    }


def _other_indications(thresholds: Mapping[str, dict[str, Any]]) -> dict[str, Any]:
    specs = [s for s in ORDER_RULES if OS in s.topics and not s.topics[OS]]
    return {
        "valueSet": _value_set(vs.OTHER_IVIG_INDICATIONS),
        "rules": [s.name for s in specs],
        "checks": [s.checks for s in specs],
        "thresholds": [{"name": n, **{k: thresholds[n][k] for k in ("value", "default", "unit", "changed")}}
                       for s in specs for n in s.thresholds if n in thresholds],
        "when": "The order's own reason (reasonCode, or a reasonReference to a Condition) is in the value set "
                "below; or the patient has an active diagnosis in it and the order either gives no reason or its "
                f"dose is at least {_with_unit(thresholds['immunomodulatory_dose_min_g_per_kg']['value'], 'g/kg')} "
                "(immunomodulatory). A diagnosis counts when its clinical status is active, recurrence, relapse "
                "or not given.",
        "effect": "The order is outside this guideline: no card for it (never ivig-not-indicated) and no "
                  "replacement dose check.",
    }


def _flowchart(rules: Mapping[str, list[dict[str, Any]]]) -> str:
    """A Mermaid flowchart of the evaluation order, drawn from the registry."""

    def label(text: str) -> str:
        return text.replace('"', "'").replace("<", "below ").replace(">", "above ").replace("#", "no. ")

    def cards_text(rule: dict[str, Any]) -> str:
        lines = []
        for card in rule["cards"]:
            where = ", ".join(card["hooks"])
            if card["topic"] is None:
                lines.append(f"{where}: no card")
            else:
                lines.append(f"{where}: {card['topic']} ({card['indicator']}" + (", with an exception)" if card.get("exception") else ")"))
        return "<br/>".join(label(line) for line in lines) or "no card"

    def short_branch(branch: str) -> str:
        return branch.removeprefix("criteria.md ").removeprefix("criteria.md: ")

    out = ["flowchart TD",
           '    start(["FHIR data from the EHR, turned into facts"]) --> scope{"In scope for the IVIG question?"}',
           '    scope -->|no| noscope["No card about the IVIG question"]']
    decision = rules["decision"]
    for i, r in enumerate(decision, 1):
        node = f"D{i}"
        out.append(f'    {node}{{{{"{i}. {r["name"]}<br/>{label(short_branch(r["branch"]))}"}}}}')
        out.append(f'    {node} -->|applies| {node}c["{cards_text(r)}"]')
        nxt = f"D{i + 1}" if i < len(decision) else "nodecision"
        out.append(f"    {node} -->|does not apply| {nxt}")
    if decision:
        out.insert(3, "    scope -->|yes| D1")
        out.append('    nodecision["No decision rule applies: no card about the IVIG question"]')
    gaps_after = [i for i, r in enumerate(decision, 1) if r["name"] in engine._GAPS_BESIDE]
    for j, r in enumerate(rules["workup"], 1):
        node = f"W{j}"
        out.append(f'    {node}{{{{"{r["name"]}<br/>only if not on IVIG/SCIG"}}}}')
        for i in gaps_after:
            out.append(f"    D{i}c -.-> {node}")
        out.append(f'    {node} -->|applies| {node}c["{cards_text(r)}"]')
    for j, r in enumerate(rules["monitoring"], 1):
        node = f"M{j}"
        out.append(f'    start --> {node}{{{{"{r["name"]}<br/>always evaluated"}}}}')
        out.append(f'    {node} -->|applies| {node}c["{cards_text(r)}"]')
    if rules["order"]:
        out.append('    order(["Each immune globulin order being selected or signed"]) --> O1')
    for j, r in enumerate(rules["order"], 1):
        node = f"O{j}"
        out.append(f'    {node}{{{{"{r["name"]}<br/>{label(short_branch(r["branch"]))}"}}}}')
        no_card = all(c["topic"] is None for c in r["cards"])
        target = "outside this guideline: no card, no further order rules" if no_card else cards_text(r)
        out.append(f'    {node} -->|applies| {node}c["{target}"]')
        if j < len(rules["order"]):
            out.append(f"    {node} -->|does not apply| O{j + 1}")
    return "\n".join(out)


def consistency_problems(model_rules: Iterable[dict[str, Any]]) -> list[str]:
    """What this document could not state truthfully: a topic without an indicator on its hook, or an
    unverified code that its value set's text would not also recognise (codes.md forbids relying on it)."""
    problems = []
    for rule in model_rules:
        for card in rule["cards"]:
            if card["topic"] is not None and card["indicator"] is None:
                problems.append(f"{rule['name']}: topic {card['topic']} has no indicator on {', '.join(card['hooks'])}")
            if card.get("exception") and not card["exception"]["exists"]:
                problems.append(f"{rule['name']}: documented exception {card['exception']['function']} no longer exists")
    for v in vs.ALL_VALUE_SETS:
        for c in (*v.codes, *v.prefixes):
            if not c.verified and not vs.text_in(v, c.display):
                problems.append(f"value set {v.name}: unverified code {c.code} ({c.display}) is not recognised by text")
    return problems


def build_model(settings: Settings) -> dict[str, Any]:
    """Everything explain states, as plain data (the JSON format is exactly this)."""
    thresholds = _thresholds(settings)
    by_name = {t["name"]: t for t in thresholds}
    rules = {kind: [_rule(spec, i, by_name) for i, spec in enumerate(registry, 1)]
             for kind, _, registry, _ in KINDS}
    all_rules = [r for kind in rules.values() for r in kind]
    value_sets = [_value_set(v) for v in vs.ALL_VALUE_SETS]
    used_refs = list(dict.fromkeys(k for spec in _all_specs() for k in spec.references))
    version = ruleset_version(settings.guideline)
    changed = [t for t in thresholds if t["changed"]]
    return {
        "title": "ivig-cds clinical logic",
        "rulesetVersion": version,
        "rulesVersion": RULES_VERSION,
        "configFingerprint": config_fingerprint(settings.guideline),
        "defaultRulesetVersion": ruleset_version(DEFAULT_CONFIG),
        "profile": settings.profile.value,
        "configFiles": sorted({o.partition(":")[2] for o in settings.origins.values() if o.startswith("config:")}),
        "changedFromDefault": [{k: t[k] for k in ("name", "setting", "default", "value", "unit", "origin",
                                                  "originLabel", "envVar")} for t in changed],
        "setButUnchanged": [{k: t[k] for k in ("name", "setting", "value", "unit", "origin", "originLabel")}
                            for t in thresholds if not t["changed"] and t["origin"] != "default"],
        "services": [{"id": s.id, "hook": s.hook, "title": s.title, "description": s.description,
                      "topicKey": HOOK_TOPIC_KEY.get(s.hook)} for s in hooks.SERVICES.values()],
        "topicSystem": TOPIC_SYSTEM,
        "scope": {"traceName": "(scope)", "always": SCOPE_ALWAYS, "excludedWhen": SCOPE_EXCLUDED,
                  "conditions": list(SCOPE_CONDITIONS),
                  "function": f"{engine.in_scope.__module__}.{engine.in_scope.__qualname__}"},
        "gates": [{"traceName": "(scope)", "what": "the patient is not in scope: no decision rule runs"},
                  {"traceName": "(monitoring)", "what": "monitoring rules skipped: IVIG for another indication"}],
        "evaluation": {kind: note for kind, _, _, note in KINDS},
        "workupBeside": [r["name"] for r in rules["decision"] if r["name"] in engine._GAPS_BESIDE],
        "rules": rules,
        "thresholds": thresholds,
        "valueSets": value_sets,
        "valueSetTotals": {
            "valueSets": len(value_sets),
            **{k: sum(v["counts"][k] for v in value_sets)
               for k in ("codes", "prefixes", "verified", "unverified", "textAlternatives")},
        },
        "otherRecognisers": _other_recognisers(),
        "ivigOrderRecognition": _ivig_recognition(by_name),
        "otherIndicationExclusions": _other_indications(by_name),
        "references": [_reference(k) for k in used_refs],
        "flowchart": _flowchart(rules),
        "registryProblems": check_registry() + consistency_problems(all_rules),
    }


# ------------------------------------------------------------------ markdown


def _num(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, (int, float)):
        return f"{value:g}"
    return str(value)


def _cell(text: Any) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _with_unit(value: Any, unit: str | None) -> str:
    if unit == "fraction" and isinstance(value, (int, float)):
        return f"{_num(value)} ({_num(round(value * 100, 1))} %)"
    return f"{_num(value)} {unit}" if unit and unit != "count" else _num(value)


def _ref_link(ref: dict[str, Any]) -> str:
    return f"[{ref['short']}]({ref['url']})" if ref["url"] else f"{ref['short']} (no DOI recorded)"


def _code_spans(items: Iterable[str]) -> str:
    return ", ".join(f"`{x}`" for x in items)


def _cards_md(rule: dict[str, Any]) -> str:
    parts = []
    for card in rule["cards"]:
        where = ", ".join(card["hooks"]) or "(no service)"
        if card["topic"] is None:
            parts.append(f"{where}: no card — {card.get('note', '')}")
        else:
            text = f"{where}: `{card['topic']}` ({card['indicator'] or 'NO INDICATOR'})"
            if card.get("exception"):
                text += f" — exception (`{card['exception']['function']}`): {card['exception']['condition'] or ''}"
            parts.append(text)
    return "; ".join(parts) or "no card"


def _threshold_md(t: dict[str, Any]) -> str:
    text = f"`{t['name']}` = {_with_unit(t['value'], t['unit'])}"
    if t["changed"]:
        text += f" **(changed from default {_with_unit(t['default'], t['unit'])})**"
    return text


def _table(header: list[str], rows: Iterable[Iterable[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return lines


def render_markdown(m: dict[str, Any]) -> str:
    """The review document; stable for a given configuration (no dates, no machine paths unless configured)."""
    out: list[str] = [f"# {m['title']}", ""]
    out += [
        "Generated from the code by `ivig-cds explain`: the rules, thresholds, value sets and recognisers "
        "the service actually loads, derived from the rule registry (`hooks/rules.py`, `hooks/orders.py`), "
        "the thresholds in force and `hooks/valuesets.py`. Do not edit by hand. The repository copy "
        f"(`{DOCS_PATH.as_posix()}`) shows the guideline defaults and is regenerated with `{REGENERATE}`; "
        "for a deployment's configuration run `ivig-cds explain --config FILE` with its environment.",
        "",
        f"- **Ruleset version: `{m['rulesetVersion']}`** — rules version `{m['rulesVersion']}` plus the "
        f"fingerprint `cfg.{m['configFingerprint']}` of the thresholds in force. Every card carries it "
        "(`extension.ivig-cds-ruleset-version` and the detail's footer), as do discovery and the feedback records.",
    ]
    if m["rulesetVersion"] != m["defaultRulesetVersion"]:
        out.append(f"- With the guideline defaults the version would be `{m['defaultRulesetVersion']}`.")
    out.append(f"- Profile: `{m['profile']}`; configuration file: "
               + (_code_spans(m["configFiles"]) if m["configFiles"] else "none") + ".")
    out += ["", "## Changes from the guideline defaults", ""]
    if m["changedFromDefault"]:
        out.append(f"**{len(m['changedFromDefault'])} threshold(s) changed from the guideline default** "
                   "— the committee reviews each:")
        out.append("")
        out += _table(["setting", "guideline default", "value in force", "origin", "environment variable"],
                      [[f"`{c['setting']}`", _with_unit(c["default"], c["unit"]),
                        f"**{_with_unit(c['value'], c['unit'])}**", c["originLabel"], f"`{c['envVar']}`"]
                       for c in m["changedFromDefault"]])
    else:
        out.append("None: every threshold is the guideline default.")
    if m["setButUnchanged"]:
        out += ["", "Set by the configuration but equal to the guideline default: " + "; ".join(
            f"`{t['name']}` = {_with_unit(t['value'], t['unit'])} ({t['originLabel']})" for t in m["setButUnchanged"]) + "."]

    out += ["", "## How the rules are evaluated", ""]
    out.append("Services (from discovery):")
    out.append("")
    for s in m["services"]:
        out.append(f"- `{s['id']}` (`{s['hook']}`): {s['title']}. {s['description']}")
    sc = m["scope"]
    out += ["", f"The IVIG question is asked only when the patient is in scope (`{sc['function']}`; when not, the "
            f"trace shows `{sc['traceName']}`): always when {sc['always']}; otherwise not when {sc['excludedWhen']}; "
            "else when any of these holds:", ""]
    out += [f"- {c}" for c in sc["conditions"]]
    out.append("")
    for kind, title, _, _ in KINDS:
        out.append(f"- **{title}**: {m['evaluation'][kind]}")
    out.append(f"- Work-up gaps are shown beside: {_code_spans(m['workupBeside'])}.")
    out += ["", "Card topics are codes of the closed list (`" + m["topicSystem"] + "`); the indicator per hook "
            "comes from the hook modules (`hooks/patient_view.py`, `hooks/order_sign.py`; order-select uses "
            "order-sign's).", "", "```mermaid", m["flowchart"], "```", ""]

    out += ["## Rules", ""]
    for kind, title, _, _ in KINDS:
        rules = m["rules"][kind]
        out += [f"### {title}", "", m["evaluation"][kind], ""]
        out += _table(["#", "rule", "guideline branch", "cards"],
                      [[r["order"], f"`{r['name']}`", r["branch"], _cards_md(r)] for r in rules])
        out.append("")
        for r in rules:
            out += [f"#### {kind[0].upper()}{r['order']}. `{r['name']}`", ""]
            out.append(f"- **Guideline branch:** {r['branch']}")
            out.append(f"- **Checks:** {r['checks']}")
            if r["rationale"]:
                out.append(f"- **Why:** {r['rationale']}")
            out.append(f"- **Facts read:** {', '.join(r['reads'])}")
            out.append("- **Thresholds:** " + ("; ".join(_threshold_md(t) for t in r["thresholds"]) or "none"))
            out.append(f"- **Cards:** {_cards_md(r)}")
            out.append("- **Literature:** " + "; ".join(_ref_link(ref) for ref in r["references"]))
            out.append(f"- **Code:** `{r['function']}`")
            out.append("")

    out += ["## Thresholds", "",
            "Each can be changed in a TOML configuration file (`--config FILE` or `IVIG_CDS_CONFIG`; the "
            "setting's name under `[guideline]`, e.g. `igm_low_mg_dl = 35`) or by its environment variable; the "
            "environment wins. Every change changes the ruleset version.", ""]
    out += _table(
        ["setting", "meaning", "default", "value in force", "origin", "environment variable", "source", "used by"],
        [[f"`{t['name']}`" + (" **changed from default**" if t["changed"] else ""), t["description"],
          _with_unit(t["default"], t["unit"]),
          f"**{_with_unit(t['value'], t['unit'])}**" if t["changed"] else _with_unit(t["value"], t["unit"]),
          t["originLabel"], f"`{t['envVar']}`", t["source"],
          ", ".join(f"`{n}`" for n in t["usedBy"]) or "fact extraction (no rule lists it)"]
         for t in m["thresholds"]])
    out.append("")

    rec = m["ivigOrderRecognition"]
    out += ["## IVIG order recognition", "", rec["how"], "",
            f"- Order resource types: {_code_spans(rec['orderResourceTypes'])}; ignored statuses: "
            f"{_code_spans(rec['ignoredStatuses'])}.",
            f"- HCPCS systems accepted: {_code_spans(rec['hcpcsSystems'])}.",
            f"- RxNorm: no product codes are used; {rec['rxnorm']['note']}. Ingredient names: "
            f"{', '.join(rec['rxnorm']['ingredientNames'])}.", ""]
    out += _table(["HCPCS", "display", "verified", "route"],
                  [[f"`{c['code']}`", c["display"], "yes" if c["verified"] else "no",
                    "subcutaneous" if c["subcutaneous"] else "intravenous"] for c in rec["hcpcs"]])
    out += ["", f"Product and brand text ({len(rec['productText']['alternatives'])} alternatives): "
            + _code_spans(rec["productText"]["alternatives"]), "",
            f"**Excluded — hyperimmune and other non-replacement globulins** "
            f"({len(rec['excludedHyperimmuneText']['alternatives'])} alternatives; {rec['exclusionNote']}): "
            + _code_spans(rec["excludedHyperimmuneText"]["alternatives"]), "",
            f"**Subcutaneous detection:** HCPCS {_code_spans(rec['subcutaneous']['hcpcs'])} or text "
            + _code_spans(rec["subcutaneous"]["text"]["alternatives"]) + f" — {rec['subcutaneous']['effect']}.", "",
            f"**IVIG history:** {rec['historyNote']} Procedure text: "
            + _code_spans(rec["historyProcedureText"]["alternatives"]) + ".", "", REGEX_LEGEND, ""]

    oi = m["otherIndicationExclusions"]
    out += ["## Other-indication exclusions", "",
            f"Rule(s) {_code_spans(oi['rules'])}: " + " ".join(oi["checks"]), "",
            f"- **When:** {oi['when']}",
            f"- **Effect:** {oi['effect']}",
            "- **Thresholds:** " + ("; ".join(_threshold_md(t) for t in oi["thresholds"]) or "none"),
            f"- **Diagnoses and reasons** (value set `{oi['valueSet']['name']}`): see the table below; text "
            + _code_spans(oi["valueSet"]["text"]["alternatives"] if oi["valueSet"]["text"] else []) + ".", ""]
    out += _value_set_table(oi["valueSet"])
    out.append("")

    totals = m["valueSetTotals"]
    out += ["## Value sets", "",
            f"{totals['valueSets']} value sets, {totals['codes']} codes and {totals['prefixes']} code prefixes "
            f"({totals['verified']} verified, {totals['unverified']} unverified against the code system's own "
            f"listing, per `codes.md`), {totals['textAlternatives']} text alternatives. An unverified code is "
            "never the only way a fact is recognised: the value set's text matches too.", ""]
    out += _table(["value set", "meaning", "codes", "prefixes", "verified", "unverified", "text alternatives"],
                  [[f"`{v['name']}`", v["meaning"], v["counts"]["codes"], v["counts"]["prefixes"],
                    v["counts"]["verified"], v["counts"]["unverified"], v["counts"]["textAlternatives"]]
                   for v in m["valueSets"]])
    out.append("")
    for v in m["valueSets"]:
        out += [f"### `{v['name']}` — {v['meaning']}", ""]
        out += _value_set_table(v)
        if v["text"]:
            out += ["", "Text: " + _code_spans(v["text"]["alternatives"])]
        out.append("")

    other = m["otherRecognisers"]
    out += ["## Other recognisers", "",
            "Further patterns and code lists in `hooks/valuesets.py` (lab results sent without LOINC, "
            "encounter classes, serotypes ...).", ""]
    out += _table(["name", "alternatives"], [[f"`{p['name']}`", _code_spans(p["alternatives"])] for p in other["patterns"]])
    out.append("")
    out += _table(["name", "values"], [[f"`{c['name']}`", _code_spans(c["values"])] for c in other["codeLists"]])
    out += ["", REGEX_LEGEND, ""]

    out += ["## Literature", ""]
    for ref in m["references"]:
        link = f" <{ref['url']}>" if ref["url"] else " (no DOI recorded)"
        out.append(f"- **{ref['short']}** (`{ref['key']}`): {ref['citation']}{link}")
    out += ["", "## Registry check", ""]
    if m["registryProblems"]:
        out.append("**Problems — this ruleset is not ready for review:**")
        out += [f"- {p}" for p in m["registryProblems"]]
    else:
        n = sum(len(v) for v in m["rules"].values())
        out.append(f"All {n} rules have a guideline branch, a description, known thresholds, topics with an "
                   "indicator on each hook, and literature.")
    return "\n".join(out)


def _value_set_table(v: dict[str, Any]) -> list[str]:
    return _table(["system", "code", "display", "verified", "match"],
                  [[f"`{c['system']}`", f"`{c['code']}`", c["display"], "yes" if c["verified"] else "no",
                    "code prefix (covers sub-codes)" if c["match"] == "prefix" else "exact"]
                   for c in v["codes"]])


def render_explain(settings: Settings, fmt: str = "markdown") -> str:
    """The clinical logic loaded with ``settings``, as markdown or JSON."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r} (markdown or json)")
    model = build_model(settings)
    if fmt == "json":
        return json.dumps(model, indent=2, ensure_ascii=False)
    return render_markdown(model)


def render_docs() -> str:
    """The repository copy: guideline defaults, whatever this machine's environment says.

    Byte for byte what ``ivig-cds explain`` prints with no configuration (``click.echo`` adds the
    final newline), so either way of producing it gives the same file.
    """
    return render_explain(default_settings(), "markdown") + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m service.governance.explain",
                                     description="Print, write or check docs/clinical-logic.md (guideline defaults).")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--write", metavar="FILE", help="write the document to FILE")
    group.add_argument("--check", metavar="FILE", help="exit 1 when FILE differs from the generated document")
    args = parser.parse_args(argv)
    text = render_docs()
    if args.write:
        Path(args.write).write_text(text, encoding="utf-8")
        return 0
    if args.check:
        path = Path(args.check)
        try:
            current = path.read_text(encoding="utf-8")
        except OSError as exc:
            print(f"{path}: {exc.strerror}", file=sys.stderr)
            return 2
        if current != text:
            print(f"{path} is stale; run {REGENERATE}", file=sys.stderr)
            return 1
        return 0
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
