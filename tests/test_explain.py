"""``ivig-cds explain``: the review document states what is loaded, in both formats, and the command
behaves as the contract says (``--help``, ``--format``, ``--config`` with changes shown, an invalid
configuration refused with the same one line as ``serve``), through click and as a real process.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from hooks import valuesets as vs
from hooks.config import DEFAULT_CONFIG, GuidelineConfig
from hooks.facts import is_immune_globulin, is_subcutaneous
from hooks.references import REFERENCES
from hooks.rules import DECISION_RULES, MONITORING_RULES, ORDER_RULES, WORKUP_RULES
from hooks.ruleset import ruleset_version
from service.cli import main
from service.governance.explain import DOCS_PATH, _alternatives, build_model, default_settings, render_explain
from service.settings import env_name, load_settings

ROOT = Path(__file__).resolve().parent.parent
ALL_RULES = DECISION_RULES + MONITORING_RULES + WORKUP_RULES + ORDER_RULES


@pytest.fixture
def clean_env(monkeypatch):
    """No IVIG_CDS_* of this machine reaches the command."""
    for var in list(os.environ):
        if var.startswith("IVIG_CDS_"):
            monkeypatch.delenv(var)


@pytest.fixture(scope="module")
def model():
    return build_model(default_settings())


@pytest.fixture(scope="module")
def markdown():
    return render_explain(default_settings(), "markdown")


class _Concept:
    """The shape fact extraction reads (text + codings), without a FHIR model."""

    def __init__(self, text=None, codings=()):
        self.text = text
        self.coding = [type("Coding", (), {"system": s, "code": c, "display": d})() for s, c, d in codings]


# ------------------------------------------------------------------ content


def test_every_rule_with_branch_facts_thresholds_cards_and_literature(model, markdown):
    for spec in ALL_RULES:
        assert f"`{spec.name}`" in markdown and spec.branch in markdown and spec.checks in markdown
        doc = next(r for r in model["rules"][spec.kind] if r["name"] == spec.name)
        assert doc["reads"] == list(spec.reads) and doc["references"]
        for key in spec.references:
            ref = REFERENCES[key]
            assert ref.citation in markdown
            if ref.url:
                assert ref.url.startswith("https://doi.org/") and f"]({ref.url})" in markdown
    first = model["rules"]["decision"][0]
    assert first["cards"][0] == {"hooks": ["patient-view"], "topic": "hyper-igm-pattern",
                                 "display": "Hyper-IgM pattern", "indicator": "critical", "exception": None}


def test_every_threshold_with_default_value_origin_and_environment_variable(model, markdown):
    rows = {t["name"]: t for t in model["thresholds"]}
    assert set(rows) == set(GuidelineConfig.model_fields)
    for name, field in GuidelineConfig.model_fields.items():
        t = rows[name]
        assert (t["default"], t["value"], t["origin"], t["changed"]) == (field.default, getattr(DEFAULT_CONFIG, name),
                                                                        "default", False)
        assert t["envVar"] == env_name(f"guideline.{name}") and f"`{t['envVar']}`" in markdown
        assert t["unit"] and t["source"] and t["description"]
    assert "None: every threshold is the guideline default." in markdown


def test_every_value_set_with_codes_verified_flags_text_and_counts(model, markdown):
    assert [v["name"] for v in model["valueSets"]] == [v.name for v in vs.ALL_VALUE_SETS]
    for doc, vset in zip(model["valueSets"], vs.ALL_VALUE_SETS):
        rows = {(c["system"], c["code"]): c for c in doc["codes"]}
        for code in (*vset.codes, *vset.prefixes):
            assert rows[(code.system, code.code)]["verified"] is code.verified
            mark = "yes" if code.verified else "no"
            assert f"| `{code.system}` | `{code.code}` | {code.display} | {mark} |" in markdown
        assert doc["counts"]["codes"] == len(vset.codes) and doc["counts"]["prefixes"] == len(vset.prefixes)
        assert doc["counts"]["unverified"] == sum(not c.verified for c in (*vset.codes, *vset.prefixes))
        if vset.text is not None:
            for display in (c.display for c in vset.codes):
                assert bool(vset.text.search(display)) == bool(
                    re.search("|".join(doc["text"]["alternatives"]), display, re.I))
    total_codes = sum(len(v.codes) for v in vs.ALL_VALUE_SETS)
    assert model["valueSetTotals"]["codes"] == total_codes
    assert f"{len(vs.ALL_VALUE_SETS)} value sets, {total_codes} codes" in markdown
    # the unverified myasthenia codes are marked as such
    assert "| `http://hl7.org/fhir/sid/icd-10-cm` | `G70.0` | Myasthenia gravis | no |" in markdown


def test_regex_alternatives_split_only_at_the_top_level():
    assert _alternatives(r"a|b(c|d)|[|]x|\|y|a") == ["a", "b(c|d)", "[|]x", r"\|y"]
    for pattern in (vs.TEXT_IMMUNE_GLOBULIN, vs.TEXT_NOT_REPLACEMENT_GLOBULIN, vs.SEROTYPE_PATTERN):
        joined = re.compile("|".join(_alternatives(pattern.pattern)), re.I)
        for probe in ("Privigen 10%", "HyperRAB", "RhoGAM", "serotype 6B", "IVIG", "anti-D", "Gammagard"):
            assert bool(joined.search(probe)) == bool(pattern.search(probe)), (pattern.pattern, probe)


def test_ivig_order_recognition_states_what_the_code_does(model, markdown):
    rec = model["ivigOrderRecognition"]
    assert [c["code"] for c in rec["hcpcs"]] == [c.code for c in vs.IMMUNE_GLOBULIN_HCPCS.codes]
    assert {c["code"] for c in rec["hcpcs"] if c["subcutaneous"]} == set(vs.SUBCUTANEOUS_HCPCS)
    assert "rhogam" in rec["excludedHyperimmuneText"]["alternatives"]
    assert "| `J1559` | Hizentra (immune globulin subcutaneous) | yes | subcutaneous |" in markdown
    # "checked first: an exclusion wins whatever the code" — true of the code explain describes
    hcpcs = sorted(vs.HCPCS_SYSTEMS)[0]
    assert is_immune_globulin([_Concept("Privigen", [(hcpcs, "J1459", "Privigen")])])
    assert not is_immune_globulin([_Concept("RhoGAM", [(hcpcs, "J1599", "Immune globulin NOS")])])
    assert is_subcutaneous([_Concept(None, [(hcpcs, "J1575", "HyQvia")])])
    assert "## IVIG order recognition" in markdown and "**Excluded — hyperimmune" in markdown
    assert "RxNorm: no product codes are used" in markdown


def test_other_indication_exclusions(model, markdown):
    oi = model["otherIndicationExclusions"]
    assert oi["rules"] == ["ordered_for_other_indication"]
    assert [c["code"] for c in oi["valueSet"]["codes"]][:4] == ["D69.3", "M30.3", "G61.0", "G61.81"]
    assert [t["name"] for t in oi["thresholds"]][0] == "immunomodulatory_dose_min_g_per_kg"
    assert "## Other-indication exclusions" in markdown and "its dose is at least 1 g/kg" in markdown


def test_mermaid_flowchart_follows_the_registry(markdown):
    block = re.search(r"```mermaid\n(.*?)```", markdown, re.S)
    assert block, "no Mermaid block"
    chart = block.group(1)
    assert chart.startswith("flowchart TD\n")
    positions = [chart.index(f"{i}. {spec.name}<br/>") for i, spec in enumerate(DECISION_RULES, 1)]
    assert positions == sorted(positions)
    for spec in MONITORING_RULES + WORKUP_RULES + ORDER_RULES:
        assert spec.name in chart
    for line in chart.splitlines()[1:]:
        assert line.count('"') % 2 == 0, line
        assert "<" not in line.replace("<br/>", ""), line
    defined = set(re.findall(r"\b([A-Za-z][A-Za-z0-9]*)(?=[\[{(])", chart))
    used = set(re.findall(r"(?:-->|-\.->)(?:\|[^|]*\|)?\s*([A-Za-z][A-Za-z0-9]*)", chart))
    assert used <= defined, used - defined


def test_json_is_the_same_knowledge(model):
    doc = json.loads(render_explain(default_settings(), "json"))
    assert doc == json.loads(json.dumps(model))
    assert doc["rulesetVersion"] == ruleset_version(DEFAULT_CONFIG)
    with pytest.raises(ValueError):
        render_explain(default_settings(), "html")


def test_config_file_changes_stand_out(tmp_path):
    site = tmp_path / "site.toml"
    site.write_text("[guideline]\nigm_low_mg_dl = 35\ntrough_target_mg_dl = 600\n")
    settings = load_settings(site, environ={"IVIG_CDS_DOSE_MAX_G_PER_KG": "0.8"})
    text = render_explain(settings, "markdown")
    assert "**2 threshold(s) changed from the guideline default**" in text
    assert f"| `guideline.igm_low_mg_dl` | 40 mg/dL | **35 mg/dL** | config file {site} |" in text
    assert "| `guideline.dose_max_g_per_kg` | 0.6 g/kg | **0.8 g/kg** | environment variable IVIG_CDS_DOSE_MAX_G_PER_KG |" in text
    assert f"`trough_target_mg_dl` = 600 mg/dL (config file {site})" in text  # set, but equal to the default
    assert f"With the guideline defaults the version would be `{ruleset_version(DEFAULT_CONFIG)}`" in text
    assert f"Ruleset version: `{ruleset_version(settings.guideline)}`" in text


# ------------------------------------------------------------------ the command (click)


def test_explain_help(clean_env):
    result = CliRunner().invoke(main, ["explain", "--help"])
    assert result.exit_code == 0
    assert "--format [markdown|json]" in result.output and "--config" in result.output


def test_explain_both_formats(clean_env):
    runner = CliRunner()
    md = runner.invoke(main, ["explain"])
    assert md.exit_code == 0, md.output
    assert "```mermaid\nflowchart TD" in md.stdout
    assert md.stdout == (ROOT / DOCS_PATH).read_text(encoding="utf-8")  # the repository copy is this output
    js = runner.invoke(main, ["explain", "--format", "json"])
    assert js.exit_code == 0
    assert json.loads(js.stdout)["rulesetVersion"] == ruleset_version(DEFAULT_CONFIG)
    bad = runner.invoke(main, ["explain", "--format", "html"])
    assert bad.exit_code == 2 and "html" in bad.output


def test_explain_with_a_valid_config_shows_the_changes(clean_env, tmp_path):
    site = tmp_path / "site.toml"
    site.write_text("[guideline]\nigm_low_mg_dl = 30\n")
    result = CliRunner().invoke(main, ["explain", "--config", str(site)])
    assert result.exit_code == 0, result.output
    assert f"| `guideline.igm_low_mg_dl` | 40 mg/dL | **30 mg/dL** | config file {site} |" in result.stdout
    js = CliRunner().invoke(main, ["explain", "--format", "json", "--config", str(site)])
    changed = json.loads(js.stdout)["changedFromDefault"]
    assert [(c["name"], c["value"], c["origin"]) for c in changed] == [("igm_low_mg_dl", 30, f"config:{site}")]


def test_explain_sees_the_environment(clean_env, monkeypatch):
    monkeypatch.setenv("IVIG_CDS_IGM_LOW_MG_DL", "30")
    doc = json.loads(CliRunner().invoke(main, ["explain", "--format", "json"]).stdout)
    igm = next(t for t in doc["thresholds"] if t["name"] == "igm_low_mg_dl")
    assert (igm["value"], igm["origin"]) == (30, "env:IVIG_CDS_IGM_LOW_MG_DL")


def test_explain_shows_the_plausibility_bounds_beside_the_thresholds(clean_env, monkeypatch):
    """A committee sees (and may change) which values are refused as impossible, like any threshold."""
    monkeypatch.setenv("IVIG_CDS_IGG_PLAUSIBLE_MAX_MG_DL", "12000")
    result = CliRunner().invoke(main, ["explain"])
    bounds = [line for line in result.stdout.splitlines() if "_plausible_" in line]
    assert {name for line in bounds for name in re.findall(r"`(\w+_plausible_\w+)`", line)} >= {
        "igg_plausible_max_mg_dl", "igm_plausible_max_mg_dl", "iga_plausible_max_mg_dl", "titer_plausible_max_ug_ml",
        "weight_plausible_min_kg", "adult_weight_plausible_min_kg", "weight_plausible_max_kg"}
    changes = result.stdout.split("Changes from the guideline defaults", 1)[1].split("\n## ", 1)[0]
    assert "igg_plausible_max_mg_dl" in changes and "12000" in changes


@pytest.mark.parametrize(("toml", "names"), [
    ("[guideline]\nigm_low_mg_dl = -5\n", "guideline.igm_low_mg_dl"),
    ("[guideline]\nigg_plausible_max_mg_dl = inf\n", "guideline.igg_plausible_max_mg_dl"),
    ("[guideline]\ndose_min_g_per_kg = 0.9\n", "dose_min_g_per_kg"),
    ("[guideline]\nigm_low = 30\n", "guideline.igm_low"),
    ("[guideline\n", "not valid TOML"),
])
def test_an_invalid_config_is_refused_like_serve(clean_env, tmp_path, toml, names):
    bad = tmp_path / "bad.toml"
    bad.write_text(toml)
    runner = CliRunner()
    explained = runner.invoke(main, ["explain", "--config", str(bad)])
    served = runner.invoke(main, ["serve", "--config", str(bad)])
    assert explained.exit_code != 0 and explained.stdout == ""
    lines = explained.stderr.strip().splitlines()
    assert len(lines) == 1 and names in lines[0], explained.stderr
    assert served.exit_code == explained.exit_code and served.stderr == explained.stderr


# ------------------------------------------------------------------ the command (a real process)


def _cli() -> str:
    found = shutil.which("ivig-cds", path=str(Path(sys.executable).parent))
    assert found, "the ivig-cds console script is not installed in this environment"
    return found


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IVIG_CDS_")}
    env.update(HOME=str(tmp_path), **extra)
    return env


def test_ivig_cds_explain_as_a_real_process(tmp_path):
    cli = _cli()
    md = subprocess.run([cli, "explain"], capture_output=True, text=True, env=_env(tmp_path), cwd=tmp_path, timeout=120)
    assert md.returncode == 0, md.stderr
    assert md.stdout == (ROOT / DOCS_PATH).read_text(encoding="utf-8")
    js = subprocess.run([cli, "explain", "--format", "json"], capture_output=True, text=True,
                        env=_env(tmp_path, IVIG_CDS_IGM_LOW_MG_DL="30"), cwd=tmp_path, timeout=120)
    doc = json.loads(js.stdout)
    assert [(c["name"], c["origin"]) for c in doc["changedFromDefault"]] == [("igm_low_mg_dl", "env:IVIG_CDS_IGM_LOW_MG_DL")]
    helped = subprocess.run([cli, "explain", "--help"], capture_output=True, text=True, env=_env(tmp_path), timeout=120)
    assert helped.returncode == 0 and "--format" in helped.stdout
    bad = tmp_path / "bad.toml"
    bad.write_text("[guideline]\nigm_low_mg_dl = 0\n")
    refused = subprocess.run([cli, "explain", "--config", str(bad)], capture_output=True, text=True,
                             env=_env(tmp_path), cwd=tmp_path, timeout=120)
    assert refused.returncode != 0 and refused.stdout == ""
    assert len(refused.stderr.strip().splitlines()) == 1 and "guideline.igm_low_mg_dl" in refused.stderr
