"""The SMART trend page in a real headless Chromium (Debian's chromium + chromedriver, via selenium).

What is checked is what Chart.js drew, read back from the chart instances (the canvas's
``data-points`` / ``data-thresholds`` attributes, set after render) and from the canvas pixels,
against counts taken from the fixture's FHIR record and thresholds taken from the settings in
force. Screenshots go to ``test-artifacts/`` (gitignored) for a human to look at.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any, Iterator
from urllib.parse import urlsplit

import pytest

import fhir_fixtures
from hooks import valuesets as vs
from service.app import create_app
from service.feedback import MemoryFeedbackStore
from tests.conftest import ROOT, make_settings
from tests.servers import live_app
from tests.smart_support import LocalFhir, chromium_missing, start_chromium

pytestmark = pytest.mark.slow

ARTIFACTS = ROOT / "test-artifacts"
IG_LINES = {"igm_low_mg_dl", "igg_borderline_from_mg_dl", "igg_deficient_mg_dl", "trough_target_mg_dl"}
#: what each fixture's chart must show (independently of the page code: read off the fixture files)
EXPECTED = {
    "sample-on-ivig-low-trough": {"IgG (mg/dL)": 3, "IgM (mg/dL)": 1, "IgA (mg/dL)": 1, "IVIG infusion": 28,
                                  "Infection": 2, "PPSV23": 0},
    "sample-impaired-ppsv23": {"IgG (mg/dL)": 1, "IgM (mg/dL)": 1, "IgA (mg/dL)": 1, "IVIG infusion": 0,
                               "Infection": 2, "PPSV23": 1},
}
TITERS = {"sample-on-ivig-low-trough": None,
          "sample-impaired-ppsv23": {"Pre-vaccination (µg/mL)": 23, "Post-vaccination (µg/mL)": 23}}


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    reason = chromium_missing()
    if reason:
        pytest.skip(reason)
    yield from start_chromium()


def _raw_counts(name: str) -> dict[str, int]:
    """Ig results and infusion days straight from the fixture's FHIR record."""
    bundle = fhir_fixtures.load_json(name, "bundle.json")
    counts = {"IgG (mg/dL)": 0, "IgM (mg/dL)": 0, "IgA (mg/dL)": 0}
    days = set()
    for entry in bundle["entry"]:
        r = entry["resource"]
        codes = {c.get("code") for c in r.get("code", {}).get("coding", [])}
        if r["resourceType"] == "Observation":
            for label, loinc in (("IgG (mg/dL)", vs.LOINC_IGG), ("IgM (mg/dL)", vs.LOINC_IGM), ("IgA (mg/dL)", vs.LOINC_IGA)):
                if codes & loinc:
                    counts[label] += 1
        if r["resourceType"] == "MedicationAdministration" and r.get("status") == "completed":
            days.add(r["effectiveDateTime"][:10])
    counts["IVIG infusion"] = len(days)
    return counts


def _wait_ready(driver, timeout: float = 20.0) -> str:
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, timeout).until(
        lambda d: d.find_element("tag name", "body").get_attribute("data-ready") in ("true", "error"))
    return driver.find_element("tag name", "body").get_attribute("data-ready")


def _summary(driver, canvas_id: str) -> dict[str, Any]:
    canvas = driver.find_element("id", canvas_id)
    if canvas.get_attribute("data-rendered") != "true":
        return {}
    return {key: json.loads(canvas.get_attribute(f"data-{key}")) for key in ("points", "thresholds", "chart-area")} | {
        "dpr": float(canvas.get_attribute("data-dpr"))}


#: Share of the pixels along a threshold line's row (±1 px) that have the line's colour.
_LINE_COVERAGE_JS = """
const [id, y, x0, x1, hex, dpr] = arguments;
const canvas = document.getElementById(id);
const ctx = canvas.getContext('2d');
const want = [1, 3, 5].map(i => parseInt(hex.slice(i, i + 2), 16));
const left = Math.round(x0 * dpr), right = Math.round(x1 * dpr);
let hits = 0;
for (let x = left; x < right; x++) {
  let hit = false;
  for (let dy = -1; dy <= 1 && !hit; dy++) {
    const p = ctx.getImageData(x, Math.round(y * dpr) + dy, 1, 1).data;
    const dist = Math.abs(p[0] - want[0]) + Math.abs(p[1] - want[1]) + Math.abs(p[2] - want[2]);
    hit = p[3] > 0 && dist < 90;
  }
  if (hit) hits++;
}
return hits / Math.max(1, right - left);
"""


def _check_thresholds(driver, canvas_id: str, summary: dict[str, Any], expected: dict[str, float]) -> None:
    lines = {t["key"]: t for t in summary["thresholds"]}
    assert set(lines) == set(expected), lines
    area = summary["chart-area"]
    for key, value in expected.items():
        line = lines[key]
        assert line["configured"] == pytest.approx(value) and line["value"] == pytest.approx(value, rel=1e-3), line
        assert area["top"] <= line["y"] <= area["bottom"], (line, area)
        assert line["x1"] - line["x0"] >= 0.8 * (area["right"] - area["left"]), "the line spans the plot"
        coverage = driver.execute_script(_LINE_COVERAGE_JS, canvas_id, line["y"], line["x0"], line["x1"],
                                         line["color"], summary["dpr"])
        assert coverage >= 0.25, f"{key}: only {coverage:.0%} of its row has the line's colour — not drawn"
    ordered = sorted(expected, key=expected.get)
    ys = [lines[k]["y"] for k in ordered]
    assert ys == sorted(ys, reverse=True), "a higher threshold is drawn higher up"


def _only_own_origin(driver, base: str) -> None:
    urls = driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert urls, "the page loads its script, style and data"
    origin = urlsplit(base).netloc
    assert all(urlsplit(u).netloc == origin for u in urls), urls
    assert any(u.endswith("/smart/static/chart.umd.min.js") for u in urls)
    severe = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    assert not severe, severe  # CSP violations, script errors and failed loads all land here


def _screenshot(driver, name: str) -> pathlib.Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"smart-{name}.png"
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1280, max(900, min(int(height) + 40, 4000)))
    assert driver.save_screenshot(str(path))
    assert path.stat().st_size > 10_000
    return path


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_fixture_page_draws_levels_thresholds_infusions_infections_titers(tmp_path, browser, name):
    settings = make_settings(tmp_path)
    app = create_app(settings, store=MemoryFeedbackStore())
    try:
        with live_app(app) as base:
            browser.get(f"{base}/smart/app?fixture={name}")
            assert _wait_ready(browser) == "true", browser.find_element("id", "status").text
            ig = _summary(browser, "ig-chart")
            titers = _summary(browser, "titer-chart")
            raw = _raw_counts(name)
            assert {k: ig["points"][k] for k in raw} == raw, "one drawn point per result / infusion day in the record"
            assert ig["points"] == EXPECTED[name]
            g = settings.guideline
            _check_thresholds(browser, "ig-chart", ig, {k: getattr(g, k) for k in IG_LINES})
            if TITERS[name] is None:
                assert titers == {}
            else:
                assert titers["points"] == TITERS[name]
                _check_thresholds(browser, "titer-chart", titers, {"titer_protective_ug_ml": g.titer_protective_ug_ml})
            topics = [li.get_attribute("data-topic") for li in browser.find_elements("css selector", "#cards li.card")]
            expected_topics = fhir_fixtures.load_json(name, "expected.json")["expected"]["patient-view"]
            assert sorted(topics) == sorted(expected_topics)
            applied = browser.find_elements("css selector", "#trace tbody tr.applies")
            assert applied, "the decision trace shows the rule that decided"
            _only_own_origin(browser, base)
            _screenshot(browser, name)
    finally:
        app.extensions["ivig_cds"].close()


def test_threshold_lines_follow_the_configuration_in_force(tmp_path, browser):
    overrides = {"guideline.igm_low_mg_dl": 45, "guideline.igg_deficient_mg_dl": 450,
                 "guideline.igg_borderline_from_mg_dl": 350, "guideline.trough_target_mg_dl": 800,
                 "guideline.titer_protective_ug_ml": 1.0}
    app = create_app(make_settings(tmp_path, **overrides), store=MemoryFeedbackStore())
    try:
        with live_app(app) as base:
            browser.get(f"{base}/smart/app?fixture=sample-impaired-ppsv23")
            assert _wait_ready(browser) == "true"
            ig = _summary(browser, "ig-chart")
            _check_thresholds(browser, "ig-chart", ig, {k.split(".")[1]: v for k, v in overrides.items()
                                                        if k.split(".")[1] in IG_LINES})
            _check_thresholds(browser, "titer-chart", _summary(browser, "titer-chart"), {"titer_protective_ug_ml": 1.0})
    finally:
        app.extensions["ivig_cds"].close()


def test_smart_launch_in_the_browser_escapes_patient_data(tmp_path, browser):
    """EHR launch end to end in Chromium, with markup in the patient's name and a diagnosis text."""
    from datetime import datetime, timezone

    today = datetime.now(timezone.utc).date()
    resources = [e["resource"] for e in fhir_fixtures.sample_transaction(today)["entry"]]
    patient_id = "sample-igg-deficiency"
    name_markup = '<img src=x onerror="document.body.setAttribute(\'data-pwned\',\'name\')">'
    text_markup = "<script>document.body.setAttribute('data-pwned','condition')</script>Pneumonia"
    for r in resources:
        if r["resourceType"] == "Patient" and r["id"] == patient_id:
            r["name"] = [{"text": name_markup}]
        if r["resourceType"] == "Condition" and r.get("subject", {}).get("reference") == f"Patient/{patient_id}":
            r["code"]["text"] = text_markup
    app = create_app(make_settings(tmp_path), store=MemoryFeedbackStore())
    try:
        with LocalFhir(patient=patient_id) as fhir, live_app(app) as base:
            fhir.load(resources)
            browser.get(f"{base}/smart/launch?iss={fhir.base}&launch=browser-launch")
            assert _wait_ready(browser) == "true", browser.page_source[:2000]
            assert urlsplit(browser.current_url).path == "/smart/app" and "code=" not in browser.current_url
            body = browser.find_element("tag name", "body")
            assert body.get_attribute("data-pwned") is None
            assert browser.find_element("css selector", "#patient dd").text == name_markup
            assert not browser.find_elements("css selector", "#patient img, main img, main script")
            infections = browser.find_element("id", "infections").text
            assert "<script>" in infections
            ig = _summary(browser, "ig-chart")
            assert ig["points"]["IgG (mg/dL)"] == 1 and ig["points"]["Infection"] == 2
            cookies = browser.get_cookies()
            assert all(c["httpOnly"] for c in cookies if c["name"].startswith("ivig_cds"))
            assert fhir.issued_tokens and all(fhir.issued_tokens[0] not in c["value"] for c in cookies)
            assert fhir.issued_tokens[0] not in browser.page_source
            _screenshot(browser, "smart-launch-escaped")
    finally:
        app.extensions["ivig_cds"].close()
