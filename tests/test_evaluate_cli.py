"""``ivig-cds evaluate``: the offline checking tool gives the same decision as the service."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

import fhir_fixtures
from service.cli import main

ROOT = Path(fhir_fixtures.__file__).parent


def _run(*args: str):
    result = CliRunner().invoke(main, ["evaluate", *args], env={k: None for k in os.environ if k.startswith("IVIG_CDS_")})
    return result


def test_evaluate_a_cds_hooks_request():
    result = _run(str(ROOT / "sample-isolated-igm" / "request-order-sign.json"), "--today", "2026-11-24")
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert out["hook"] == "order-sign"
    assert [c["source"]["topic"]["code"] for c in out["cards"]] == ["ivig-not-indicated"]
    assert out["trace"]["decision"] == "isolated_igm_deficiency"
    assert any(r["rule"] == "hyper_igm_pattern" and r["result"] == "not applicable" for r in out["trace"]["rules"])


def test_evaluate_a_bundle_as_patient_view_and_as_order_sign(tmp_path):
    bundle = fhir_fixtures.load_json("sample-hyper-igm", "bundle.json")
    result = _run(str(ROOT / "sample-hyper-igm" / "bundle.json"), "--today", "2026-11-24")
    assert json.loads(result.output)["cards"][0]["source"]["topic"]["code"] == "hyper-igm-pattern"
    drafts = fhir_fixtures.load_json("sample-isolated-igm", "draft-orders.json")["entry"]
    record = fhir_fixtures.load_json("sample-isolated-igm", "bundle.json")
    record["entry"] += drafts
    path = tmp_path / "record-with-draft.json"
    path.write_text(json.dumps(record))
    out = json.loads(_run(str(path), "--hook", "order-sign", "--today", "2026-11-24").output)
    assert [c["source"]["topic"]["code"] for c in out["cards"]] == ["ivig-not-indicated"]
    assert bundle["type"] == "collection"


def test_today_changes_the_decision():
    """The same record 13 months later: every result is stale, so it counts as missing."""
    view = str(ROOT / "sample-isolated-igm" / "request-patient-view.json")
    assert json.loads(_run(view, "--today", "2026-11-24").output)["trace"]["decision"] == "isolated_igm_deficiency"
    later_view = json.loads(_run(view, "--today", "2027-12-24").output)
    assert later_view["cards"] == [] and later_view["trace"]["decision"] is None  # no current low IgM
    sign = str(ROOT / "sample-isolated-igm" / "request-order-sign.json")
    later_sign = json.loads(_run(sign, "--today", "2027-12-24").output)
    assert later_sign["trace"]["decision"] == "workup_incomplete"
    assert {c["source"]["topic"]["code"] for c in later_sign["cards"]} == {"ivig-not-indicated", "workup-incomplete"}


def test_bad_input_is_one_line_and_non_zero(tmp_path):
    bad = tmp_path / "x.json"
    bad.write_text("{nope")
    result = _run(str(bad))
    assert result.exit_code != 0 and "not JSON" in result.output and len(result.output.strip().splitlines()) == 1
    assert _run(str(ROOT / "sample-isolated-igm" / "bundle.json"), "--today", "24/11/2026").exit_code != 0
    notfhir = tmp_path / "y.json"
    notfhir.write_text("[1, 2]")
    assert _run(str(notfhir)).exit_code != 0


def test_evaluate_as_a_real_process():
    exe = Path(sys.executable).with_name("ivig-cds")
    env = {k: v for k, v in os.environ.items() if not k.startswith("IVIG_CDS_")}
    proc = subprocess.run([str(exe), "evaluate", str(ROOT / "sample-igg-deficiency" / "request-order-sign.json"),
                           "--today", "2026-11-24"], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["cards"][0]["source"]["topic"]["code"] == "ivig-indicated"
