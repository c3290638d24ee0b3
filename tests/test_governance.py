"""What a governance committee approves is what runs, and every card says which logic produced it.

* explain is derived from the engine's own registry, and cross-checked against what the engine
  actually evaluates on every clinical scenario (trace names, card topics, indicators);
* a rule registered without known literature is reported by ``check_registry`` and by explain;
* a threshold changed by environment variable moves the decision of the real app on the edge
  fixture *and* the explain output;
* the ruleset version in discovery, cards and issued-card records changes exactly when the
  thresholds in force change;
* docs/clinical-logic.md is the current output for the guideline defaults.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st
from sqlalchemy import select

import fhir_fixtures
import hooks
from fhir_fixtures.builder import Record, ago
from hooks import engine
from hooks.assessment import Topic
from hooks.config import DEFAULT_CONFIG
from hooks.references import REFERENCES
from hooks.rules import DECISION_RULES, MONITORING_RULES, ORDER_RULES, PV, WORKUP_RULES, check_registry, rule
from hooks.ruleset import ruleset_version
from hooks.service_def import HookRequest
from service.app import create_app
from service.governance.explain import (DOCS_PATH, HOOK_EXCEPTIONS, HOOK_TOPIC_KEY, INDICATORS, build_model, default_settings,
                             render_docs, render_explain)
from service.settings import load_settings

ROOT = Path(__file__).resolve().parent.parent
TODAY = fhir_fixtures.REFERENCE_TODAY
VERSION_KEY = "ivig-cds-ruleset-version"
HOOKS = ("patient-view", "order-sign", "order-select")


def _documented() -> dict[str, dict[str, Any]]:
    model = build_model(default_settings())
    return {r["name"]: r for kind in model["rules"].values() for r in kind}


def _run_scenario(name: str, hook: str):
    body = fhir_fixtures.load_json(name, f"request-{hook}.json")
    if body is None:
        return None
    expected = fhir_fixtures.load_json(name, "expected.json")
    service = next(s for s in hooks.SERVICES.values() if s.hook == hook)
    return service.handler(HookRequest(
        hook=hook, hook_instance=body["hookInstance"], service_id=service.id, context=body["context"],
        prefetch=body.get("prefetch", {}), today=date.fromisoformat(expected["today"]), ruleset_version="test"))


SCENARIO_RUNS = [(n, h) for n in fhir_fixtures.scenario_names() for h in HOOKS
                 if fhir_fixtures.load_json(n, f"request-{h}.json") is not None]


# ------------------------------------------------------------------ explain is the registry, and the engine agrees


def test_the_registry_is_complete_and_explain_reports_no_problem():
    assert check_registry() == []
    assert build_model(default_settings())["registryProblems"] == []


def test_explain_documents_exactly_the_registered_rules_in_engine_order():
    model = build_model(default_settings())
    for kind, registry in (("decision", DECISION_RULES), ("monitoring", MONITORING_RULES),
                           ("workup", WORKUP_RULES), ("order", ORDER_RULES)):
        assert [r["name"] for r in model["rules"][kind]] == [s.name for s in registry]
        for doc, spec in zip(model["rules"][kind], registry):
            assert doc["branch"] == spec.branch and doc["checks"] == spec.checks
            assert [t["name"] for t in doc["thresholds"]] == list(spec.thresholds)
            assert [r["key"] for r in doc["references"]] == list(spec.references)
            assert doc["function"].endswith(spec.func.__name__)


def test_every_rule_the_engine_evaluates_on_the_scenarios_is_documented():
    """Run every scenario on every hook it has; every name in the decision and order traces is in explain,
    and every documented rule is evaluated somewhere (none is documented but dead)."""
    documented = _documented()
    model = build_model(default_settings())
    gates = {g["traceName"] for g in model["gates"]}
    seen: set[str] = set()
    decision_order = [r["name"] for r in model["rules"]["decision"]]
    for name, hook in SCENARIO_RUNS:
        trace = _run_scenario(name, hook).trace
        entries = trace.get("rules", []) + trace.get("order_rules", [])
        for entry in entries:
            assert entry["rule"] in documented or entry["rule"] in gates, (name, hook, entry)
            seen.add(entry["rule"])
        evaluated = [e["rule"] for e in trace.get("rules", []) if e["rule"] in decision_order]
        assert evaluated == decision_order[:len(evaluated)], (name, hook, "decision rules out of documented order")
    assert set(documented) <= seen, f"documented but never evaluated: {set(documented) - seen}"
    assert "(scope)" in seen


@pytest.mark.parametrize(("name", "hook"), SCENARIO_RUNS, ids=[f"{n}:{h}" for n, h in SCENARIO_RUNS])
def test_cards_match_the_documented_topics_and_indicators(name, hook):
    """Each card's topic and indicator is what explain says its rule yields on that hook; each topic explain
    says the deciding rule yields is there, unless explain documents the hook's exception."""
    documented = _documented()
    result = _run_scenario(name, hook)
    key = HOOK_TOPIC_KEY[hook]
    for card in result.cards:
        topic = card["source"]["topic"]["code"]
        rules = [part for r in card["extension"]["ivig-cds-rules"] for part in r.split("+")]
        yields = {c["topic"] for r in rules for c in documented[r]["cards"] if hook in c["hooks"]}
        assert topic in yields, (topic, rules)
        assert card["indicator"] == INDICATORS[key][Topic(topic)]
    decided = result.trace.get("decision")
    if decided is None or "reason" in result.trace:  # no decision, or no replacement order to answer about
        return
    shown = {c["source"]["topic"]["code"] for c in result.cards}
    for card in documented[decided]["cards"]:
        if hook in card["hooks"] and card["topic"] and (key, decided) not in HOOK_EXCEPTIONS:
            assert card["topic"] in shown, (decided, card["topic"], shown)


def test_documented_hook_exceptions_exist():
    for (key, rule_name), (module, function) in HOOK_EXCEPTIONS.items():
        assert callable(getattr(module, function, None)), f"{module.__name__}.{function}"
        assert rule_name in _documented()


# The scope, as service/governance/explain.py words it (SCOPE_ALWAYS, SCOPE_EXCLUDED, SCOPE_CONDITIONS), as an oracle.
def _documented_scope(facts, ordered: bool) -> bool:
    if ordered:
        return True
    clue = facts.igm.is_low or facts.igg.is_low or facts.hyper_igm_diagnosis is not None
    if facts.other_indications and not clue:
        return False
    return (clue or facts.ivig.any or facts.igm.status == "confounded"
            or facts.pneumococcal.status == "impaired")


@hsettings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.fixed_dictionaries({
    "igm": st.sampled_from([None, 25, 80]), "igg": st.sampled_from([None, 300, 900]),
    "hyper": st.booleans(), "ivig": st.sampled_from([None, 2, 10]), "impaired": st.booleans(),
    "other": st.booleans(), "ordered": st.booleans(),
}))
def test_the_documented_scope_is_the_engine_scope(p):
    """A change of scope in hooks/engine.py fails here until explain's scope text (and this oracle) follow."""
    rec = Record("scope", birth="1980-01-01")
    if p["igm"] is not None:
        rec.igm(p["igm"], when=ago(days=20))
    if p["igg"] is not None:
        rec.igg(p["igg"], when=ago(days=20))
    if p["hyper"]:
        rec.diagnosis("D80.5", "Immunodeficiency with increased immunoglobulin M [IgM]", ago(months=3))
    if p["ivig"] is not None:
        rec.ivig_given(ago(months=p["ivig"]))
    if p["impaired"]:
        rec.ppsv23_challenge(protective_post=8)
    if p["other"]:
        rec.diagnosis("D69.3", "Immune thrombocytopenic purpura", ago(months=4))
    rec.office_visit(ago(days=10))
    facts = engine.evaluate_patient([rec.bundle()], patient_id="scope", today=TODAY, config=DEFAULT_CONFIG).facts
    assert engine.in_scope(facts, p["ordered"]) == _documented_scope(facts, p["ordered"]), p


# ------------------------------------------------------------------ a rule without literature fails


def test_a_rule_registered_without_known_literature_is_reported():
    """Registering a rule is all it takes to appear in explain; without known literature the registry
    check (and so test_the_registry_is_complete_and_explain_reports_no_problem) fails."""
    before = list(DECISION_RULES)

    def _bogus(facts, cfg):  # pragma: no cover - never evaluated
        raise AssertionError

    try:
        rule(kind="decision", branch="criteria.md Decision 99: test", checks="nothing",
             reads=("IgM",), topics={PV: (Topic.ISOLATED_IGM_DEFICIENCY,)},
             references=("no-such-paper-2099",))(_bogus)
        problems = check_registry()
        assert any(p.startswith("_bogus:") and "no-such-paper-2099" in p for p in problems), problems
        model = build_model(default_settings())
        assert "_bogus" in [r["name"] for r in model["rules"]["decision"]]
        text = render_explain(default_settings(), "markdown")
        assert "this ruleset is not ready for review" in text and "no-such-paper-2099" in text
    finally:
        DECISION_RULES[:] = before
    assert check_registry() == []

    try:
        rule(kind="decision", branch="criteria.md Decision 99: test", checks="nothing",
             reads=("IgM",), topics={PV: (Topic.ISOLATED_IGM_DEFICIENCY,)}, references=())(_bogus)
        assert any(p.startswith("_bogus:") for p in check_registry())
    finally:
        DECISION_RULES[:] = before
    assert check_registry() == [] and "no-such-paper-2099" not in REFERENCES


# ------------------------------------------------------------------ thresholds by environment, through the real app


def _app(tmp_path: Path, environ: dict[str, str] | None = None, config_file: Path | None = None):
    data = tmp_path / f"data-{len(list(tmp_path.iterdir()))}"
    data.mkdir()
    settings = load_settings(config_file, environ={"IVIG_CDS_DATA_DIR": str(data), **(environ or {})})
    return create_app(settings), settings


def _post(app, name: str, hook: str, monkeypatch) -> dict[str, Any]:
    import service.protocol.cds as cds

    expected = fhir_fixtures.load_json(name, "expected.json")
    monkeypatch.setattr(cds, "today", lambda: date.fromisoformat(expected["today"]))
    service = next(s for s in hooks.SERVICES.values() if s.hook == hook)
    resp = app.test_client().post(f"/cds-services/{service.id}", json=fhir_fixtures.load_json(name, f"request-{hook}.json"))
    assert resp.status_code == 200, resp.get_data(as_text=True)
    return resp.get_json()


def _topics(body: dict[str, Any]) -> list[str]:
    return sorted(c["source"]["topic"]["code"] for c in body["cards"])


def test_threshold_by_environment_moves_the_edge_decision_and_the_explain_output(tmp_path, monkeypatch):
    default_app, default = _app(tmp_path)
    moved_app, moved = _app(tmp_path, {"IVIG_CDS_IGM_LOW_MG_DL": "30"})
    try:
        assert _topics(_post(default_app, "edge-igm-39", "patient-view", monkeypatch)) == ["isolated-igm-deficiency"]
        assert _topics(_post(moved_app, "edge-igm-39", "patient-view", monkeypatch)) == []
    finally:
        default_app.extensions["ivig_cds"].close()
        moved_app.extensions["ivig_cds"].close()

    doc = json.loads(render_explain(moved, "json"))
    igm = next(t for t in doc["thresholds"] if t["name"] == "igm_low_mg_dl")
    assert (igm["value"], igm["default"], igm["origin"], igm["changed"]) == (30, 40, "env:IVIG_CDS_IGM_LOW_MG_DL", True)
    assert [c["name"] for c in doc["changedFromDefault"]] == ["igm_low_mg_dl"]
    assert doc["rulesetVersion"] == ruleset_version(moved.guideline) != ruleset_version(default.guideline)
    text = render_explain(moved, "markdown")
    assert "| `guideline.igm_low_mg_dl` | 40 mg/dL | **30 mg/dL** | environment variable IVIG_CDS_IGM_LOW_MG_DL |" in text
    assert "`igm_low_mg_dl` = 30 mg/dL **(changed from default 40 mg/dL)**" in text
    assert "`igm_low_mg_dl` = 30 mg/dL" not in render_explain(default, "markdown")


def test_threshold_by_environment_can_also_create_a_card(tmp_path, monkeypatch):
    """The other side of the edge: IgM 40 is not low by default; with 41 it is."""
    app, _ = _app(tmp_path, {"IVIG_CDS_IGM_LOW_MG_DL": "41"})
    try:
        assert _topics(_post(app, "edge-igm-40", "patient-view", monkeypatch)) == ["isolated-igm-deficiency"]
    finally:
        app.extensions["ivig_cds"].close()


# ------------------------------------------------------------------ the version follows the configuration, only it


def _versions(app, monkeypatch) -> set[str]:
    """Every ruleset version the app shows: discovery entries and card extensions (the detail is for the
    prescriber and carries no version)."""
    found = set()
    for entry in app.test_client().get("/cds-services").get_json()["services"]:
        found.add(entry["extension"][VERSION_KEY])
    for name, hook in (("edge-igm-39", "patient-view"), ("sample-isolated-igm", "order-sign")):
        for card in _post(app, name, hook, monkeypatch)["cards"]:
            found.add(card["extension"][VERSION_KEY])
    return found


def test_the_version_in_cards_and_discovery_changes_with_the_thresholds_and_only_then(tmp_path, monkeypatch):
    same_file = tmp_path / "same.toml"
    same_file.write_text("log_level = \"DEBUG\"\n[guideline]\nigm_low_mg_dl = 40.0\n[prefetch]\ndeadline_seconds = 5\n")
    changed_file = tmp_path / "changed.toml"
    changed_file.write_text("[guideline]\nigm_low_mg_dl = 35\n")
    configs = {
        "defaults": ({}, None),
        "defaults again": ({}, None),
        "other settings only": ({"IVIG_CDS_LOG_LEVEL": "WARNING", "IVIG_CDS_PREFETCH_QUERY_TIMEOUT_SECONDS": "1"}, None),
        "threshold set to its default": ({"IVIG_CDS_TROUGH_TARGET_MG_DL": "600"}, same_file),
        "threshold by environment": ({"IVIG_CDS_IGM_LOW_MG_DL": "30"}, None),
        "threshold by file": ({}, changed_file),
    }
    versions: dict[str, str] = {}
    for label, (environ, file) in configs.items():
        app, settings = _app(tmp_path, environ, file)
        try:
            shown = _versions(app, monkeypatch)
        finally:
            app.extensions["ivig_cds"].close()
        assert shown == {ruleset_version(settings.guideline)}, (label, shown)
        assert json.loads(render_explain(settings, "json"))["rulesetVersion"] in shown
        versions[label] = shown.pop()
    unchanged = {versions[k] for k in ("defaults", "defaults again", "other settings only", "threshold set to its default")}
    assert unchanged == {ruleset_version(DEFAULT_CONFIG)}
    assert len({versions["defaults"], versions["threshold by environment"], versions["threshold by file"]}) == 3


def test_issued_card_records_carry_the_ruleset_version(tmp_path, monkeypatch):
    """The SQL feedback store keeps, per issued card, the version shown on it: an overridden card can be
    traced to the logic that produced it."""
    from service.storage.sql_store import issued_card

    app, settings = _app(tmp_path, {"IVIG_CDS_IGM_LOW_MG_DL": "45"})
    st_ = app.extensions["ivig_cds"]
    try:
        cards = _post(app, "edge-igm-39", "patient-view", monkeypatch)["cards"]
        st_.write_records()
        with st_.store.engine.connect() as conn:
            rows = {r.uuid: r.ruleset_version for r in conn.execute(select(issued_card.c.uuid, issued_card.c.ruleset_version))}
    finally:
        st_.close()
    assert cards and {c["uuid"]: c["extension"][VERSION_KEY] for c in cards} == rows
    assert set(rows.values()) == {ruleset_version(settings.guideline)} != {ruleset_version(DEFAULT_CONFIG)}


# ------------------------------------------------------------------ the repository copy


def test_docs_clinical_logic_is_current():
    on_disk = (ROOT / DOCS_PATH).read_text(encoding="utf-8")
    assert on_disk == render_docs(), f"{DOCS_PATH} is stale: run python -m service.governance.explain --write {DOCS_PATH}"
    assert f"Ruleset version: `{ruleset_version(DEFAULT_CONFIG)}`" in on_disk


def test_docs_do_not_depend_on_the_machine(monkeypatch, tmp_path):
    """Whatever IVIG_CDS_* this machine has set, the repository copy shows the guideline defaults."""
    config = tmp_path / "site.toml"
    config.write_text("[guideline]\nigm_low_mg_dl = 20\n")
    monkeypatch.setenv("IVIG_CDS_IGM_LOW_MG_DL", "33")
    monkeypatch.setenv("IVIG_CDS_CONFIG", str(config))
    monkeypatch.chdir(tmp_path)
    text = render_docs()
    assert text == (ROOT / DOCS_PATH).read_text(encoding="utf-8")
    assert str(tmp_path) not in text and "33 mg/dL" not in text


def test_the_documented_regeneration_command_checks_and_writes(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("IVIG_CDS_")}
    env["IVIG_CDS_IGM_LOW_MG_DL"] = "31"  # must not leak into the repository copy
    check = subprocess.run([sys.executable, "-m", "service.governance.explain", "--check", str(DOCS_PATH)], cwd=ROOT,
                           env=env, capture_output=True, text=True, timeout=120)
    assert check.returncode == 0, check.stderr
    stale = tmp_path / "clinical-logic.md"
    stale.write_text((ROOT / DOCS_PATH).read_text(encoding="utf-8").replace("40 mg/dL", "41 mg/dL"))
    again = subprocess.run([sys.executable, "-m", "service.governance.explain", "--check", str(stale)], cwd=ROOT,
                           env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 1 and "--write" in again.stderr
    written = subprocess.run([sys.executable, "-m", "service.governance.explain", "--write", str(stale)], cwd=ROOT,
                             env=env, capture_output=True, text=True, timeout=120)
    assert written.returncode == 0 and stale.read_text(encoding="utf-8") == render_docs()
