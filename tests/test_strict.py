"""``ivig-cds evaluate --strict``: every resource of a file validated as FHIR R4 by fhir.resources."""

from __future__ import annotations

import json
import os

from click.testing import CliRunner

import fhir_fixtures
from service.cli import main


def _evaluate(path, *args: str):
    return CliRunner().invoke(main, ["evaluate", str(path), "--today", "2026-11-24", *args],
                              env={k: None for k in os.environ if k.startswith("IVIG_CDS_")})


def test_a_valid_request_passes_and_says_how_many_resources_it_checked(tmp_path):
    body = fhir_fixtures.load_json("sample-igg-deficiency", "request-order-sign.json")
    path = tmp_path / "request.json"
    path.write_text(json.dumps(body))
    result = _evaluate(path, "--strict")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)["fhir_validation"]
    assert report["checked"] > 50 and report["valid"] == report["checked"] and report["invalid"] == []


def test_what_a_strict_reader_refuses_is_named_and_the_cards_are_still_made(tmp_path):
    bundle = fhir_fixtures.load_json("sample-isolated-igm", "bundle.json")
    patient = next(e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient")["id"]
    bundle["entry"] += [
        {"resource": {"resourceType": "Observation", "id": "odd", "status": "final", "code": {"text": "Sodium"},
                      "subject": {"reference": f"Patient/{patient}"}, "vendorNote": "x"}},
        {"resource": {"resourceType": "Obsrvation", "id": "typo"}},
    ]
    path = tmp_path / "bundle.json"
    path.write_text(json.dumps(bundle))
    strict = _evaluate(path, "--strict")
    assert strict.exit_code == 1
    out = json.loads(strict.output)
    invalid = {item["resource"]: item["errors"] for item in out["fhir_validation"]["invalid"]}
    assert set(invalid) == {"Observation/odd", "Obsrvation/typo"}
    assert any("vendorNote" in e for e in invalid["Observation/odd"])
    assert invalid["Obsrvation/typo"] == ["resourceType: not a FHIR R4 resource type"]
    lenient = _evaluate(path)
    assert lenient.exit_code == 0 and "fhir_validation" not in json.loads(lenient.output)
    assert [c["source"]["topic"]["code"] for c in out["cards"]] == \
        [c["source"]["topic"]["code"] for c in json.loads(lenient.output)["cards"]]
