"""The SMART trend page in a real headless Chromium (Debian's chromium + chromedriver, via selenium).

What is checked is what Chart.js drew, read back from the chart instances (the canvas's
``data-points`` / ``data-thresholds`` / ``data-clipped`` attributes, set after render, and the
chart's own time scale) and from the canvas pixels, against counts taken from the fixture's FHIR
record and thresholds taken from the settings in force (or the lab's range in the record); the
card details as the rendered DOM; the page at a phone's 390 px width and as printed.
Screenshots go to ``test-artifacts/`` (gitignored) for a human to look at;
``UPDATE_DOCS_SCREENSHOT=1`` also writes the README's ``docs/trend-page.png`` from this browser.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import pathlib
import re
from datetime import date, datetime, timezone
from typing import Any, Callable, Iterator
from urllib.parse import urlsplit

import pytest
import requests

import fhir_fixtures
from hooks import valuesets as vs
from service.app import create_app
from service.settings import Settings
from service.storage.feedback import MemoryFeedbackStore
from tests.conftest import ROOT, make_settings
from tests.servers import live_app
from tests.smart_support import LocalFhir, chromium_missing, mid_interval_record, start_chromium

pytestmark = pytest.mark.slow

ARTIFACTS = ROOT / "test-artifacts"
DOCS_SCREENSHOT = ROOT / "docs" / "trend-page.png"
#: The lines every Ig chart draws: the diagnostic thresholds of the guideline.
DIAGNOSTIC = {"igm_low_mg_dl", "igg_borderline_from_mg_dl", "igg_deficient_mg_dl"}
#: what each fixture's chart must show (independently of the page code: read off the fixture files)
EXPECTED = {
    "sample-on-ivig-low-trough": {"IgG (mg/dL)": 3, "IgM (mg/dL)": 1, "IgA (mg/dL)": 1, "IVIG infusion": 28,
                                  "Infection": 2, "PPSV23": 0},
    "sample-impaired-ppsv23": {"IgG (mg/dL)": 1, "IgM (mg/dL)": 1, "IgA (mg/dL)": 1, "IVIG infusion": 0,
                               "Infection": 2, "PPSV23": 1},
    "sample-hyper-igm": {"IgG (mg/dL)": 1, "IgM (mg/dL)": 1, "IgA (mg/dL)": 1, "IVIG infusion": 0,
                         "Infection": 1, "PPSV23": 0},
    "sample-isolated-igm": {"IgG (mg/dL)": 1, "IgM (mg/dL)": 1, "IgA (mg/dL)": 1, "IVIG infusion": 0,
                            "Infection": 2, "PPSV23": 1},
}
#: the Ig lines each fixture's chart draws besides the diagnostic ones: the trough target only on
#: IVIG; the hyper-IgM card's IgA limit, which is the lab's lower limit when the record gives one
EXTRA_LINES = {"sample-on-ivig-low-trough": {"trough_target_mg_dl"}, "sample-impaired-ppsv23": set(),
               "sample-hyper-igm": {"iga_low_mg_dl"}, "sample-isolated-igm": set()}
TITERS = {"sample-on-ivig-low-trough": None, "sample-hyper-igm": None,
          "sample-isolated-igm": {"Pre-vaccination (µg/mL)": 23, "Post-vaccination (µg/mL)": 23},
          "sample-impaired-ppsv23": {"Pre-vaccination (µg/mL)": 23, "Post-vaccination (µg/mL)": 23}}


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    reason = chromium_missing()
    if reason:
        pytest.skip(reason)
    yield from start_chromium()


@pytest.fixture
def serve(browser) -> Iterator[Callable[[Settings], str]]:
    """Serve apps built from ``settings`` on 127.0.0.1 for this test; each call answers its base URL.

    Afterwards the shared browser is a desktop screen again (a test may have emulated a phone or paper).
    """
    with contextlib.ExitStack() as stack:
        def start(settings: Settings) -> str:
            app = create_app(settings, store=MemoryFeedbackStore())
            stack.callback(app.extensions["ivig_cds"].close)
            return stack.enter_context(live_app(app))

        yield start
    browser.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    browser.execute_cdp_cmd("Emulation.setEmulatedMedia", {"media": ""})


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


def _lab_lower_limit(name: str, loinc: frozenset[str]) -> float | None:
    """The referenceRange low of the fixture's result of this analyte, read off the file."""
    for entry in fhir_fixtures.load_json(name, "bundle.json")["entry"]:
        r = entry["resource"]
        if r["resourceType"] == "Observation" and {c.get("code") for c in r["code"]["coding"]} & loinc:
            for rng in r.get("referenceRange") or []:
                return float(rng["low"]["value"])
    return None


def _expected_lines(name: str, guideline) -> dict[str, float]:
    lines = {k: getattr(guideline, k) for k in DIAGNOSTIC | EXTRA_LINES[name]}
    if "iga_low_mg_dl" in lines:
        lines["iga_low_mg_dl"] = _lab_lower_limit(name, vs.LOINC_IGA) or guideline.iga_low_mg_dl
    return lines


def _wait_ready(driver, timeout: float = 20.0) -> str:
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, timeout).until(
        lambda d: d.find_element("tag name", "body").get_attribute("data-ready") in ("true", "error"))
    return driver.find_element("tag name", "body").get_attribute("data-ready")


def _summary(driver, canvas_id: str) -> dict[str, Any]:
    canvas = driver.find_element("id", canvas_id)
    if canvas.get_attribute("data-rendered") != "true":
        return {}
    keys = ("points", "thresholds", "chart-area", "clipped")
    return {key: json.loads(canvas.get_attribute(f"data-{key}")) for key in keys} | {
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
    assert any(u.endswith("/smart/static/chartjs-adapter-date-fns.bundle.min.js") for u in urls)
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


#: The Ig chart's time axis as Chart.js laid it out, and its first Ig points' pixels and dates.
_TIME_AXIS_JS = """
const chart = Chart.getChart('ig-chart');
const x = chart.scales.x;
const points = [];
chart.data.datasets.forEach((ds, i) => {
  if (ds.ivigThreshold) return;
  chart.getDatasetMeta(i).data.forEach((el, j) => {
    const raw = ds.data[j];
    const date = raw.point ? raw.point.date : raw.infusion ? raw.infusion.date : raw.episode ? raw.episode.date : raw.vaccination;
    points.push({dataset: i, index: j, date: date, x: el.x, value: raw.x});
  });
});
return {type: x.type, unit: x._unit, ticks: x.ticks.map(t => ({value: t.value, label: t.label,
        day: new Date(t.value).getDate(), hours: new Date(t.value).getHours()})),
        points: points, left: x.left, right: x.right};
"""

#: The tooltip Chart.js shows over a point (made active as a pointer would).
_TOOLTIP_JS = """
const [dataset, index] = arguments;
const chart = Chart.getChart('ig-chart');
const el = chart.getDatasetMeta(dataset).data[index];
chart.tooltip.setActiveElements([{datasetIndex: dataset, index: index}], {x: el.x, y: el.y});
chart.update();
return {title: chart.tooltip.title, body: chart.tooltip.body.map(b => b.lines.join(' '))};
"""


def _check_time_axis(driver) -> None:
    """A real time scale: ticks on calendar boundaries, distinct labels, pixels proportional to days,
    and the tooltip naming the exact date of the result."""
    axis = driver.execute_script(_TIME_AXIS_JS)
    assert axis["type"] == "time", axis["type"]
    ticks = axis["ticks"]
    labels = [t["label"] for t in ticks if t["label"]]
    assert len(labels) >= 2 and len(labels) == len(set(labels)), f"a label appears twice: {labels}"
    assert all(re.fullmatch(r"(\d{1,2} )?[A-Z][a-z]{2} \d{4}|\d{4}", label) for label in labels), labels
    assert [t["value"] for t in ticks] == sorted(t["value"] for t in ticks)
    assert all(t["hours"] == 0 for t in ticks), "ticks fall on local midnights"
    if axis["unit"] in ("month", "quarter", "year"):
        assert all(t["day"] == 1 for t in ticks), f"{axis['unit']} ticks fall on the first of the month"
    dated = [p for p in axis["points"] if p["date"]]
    first, last = min(dated, key=lambda p: p["value"]), max(dated, key=lambda p: p["value"])
    if last["value"] > first["value"]:
        per_day = (last["x"] - first["x"]) / (date.fromisoformat(last["date"]) - date.fromisoformat(first["date"])).days
        for p in dated:
            days = (date.fromisoformat(p["date"]) - date.fromisoformat(first["date"])).days
            assert abs(first["x"] + days * per_day - p["x"]) < 1.5, ("spaced by elapsed time", p, first)
    ig = next(p for p in axis["points"] if p["dataset"] == 0)
    tip = driver.execute_script(_TOOLTIP_JS, ig["dataset"], ig["index"])
    assert tip["title"] == [ig["date"]], tip


def _check_rendered_cards(driver) -> None:
    """Each card detail as the EHR renders its Markdown: a table, bold, lists; no literal markup."""
    cards = driver.find_elements("css selector", "#cards li.card")
    assert cards
    for card in cards:
        detail = card.find_element("css selector", ".detail")
        assert detail.find_elements("css selector", "table thead th"), detail.get_attribute("innerHTML")[:300]
        assert detail.find_elements("css selector", "strong") and detail.find_elements("css selector", "ul li")
        text = detail.get_attribute("textContent")
        assert "**" not in text and "|---" not in text and "| Fact" not in text, text[:300]
        for link in detail.find_elements("css selector", "a"):
            assert link.get_attribute("href").startswith(("http://", "https://"))
            assert set(link.get_attribute("rel").split()) >= {"noopener", "noreferrer"}


def _check_facts_table(driver, expected_facts: int) -> None:
    rows = driver.find_elements("css selector", "#facts tbody tr")
    assert len(rows) == expected_facts
    assert not driver.find_elements("css selector", "#trace-section pre"), "no JSON dump"
    text = driver.find_element("id", "facts").text
    assert "{" not in text and '":' not in text


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_fixture_page_draws_levels_thresholds_infusions_infections_titers(tmp_path, browser, serve, name):
    settings = make_settings(tmp_path)
    base = serve(settings)
    browser.get(f"{base}/smart/app?fixture={name}")
    assert _wait_ready(browser) == "true", browser.find_element("id", "status").text
    ig = _summary(browser, "ig-chart")
    titers = _summary(browser, "titer-chart")
    raw = _raw_counts(name)
    assert {k: ig["points"][k] for k in raw} == raw, "one drawn point per result / infusion day in the record"
    assert ig["points"] == EXPECTED[name]
    assert ig["clipped"] == [], "every point lies wholly inside its axis, none cut at the baseline"
    g = settings.guideline
    _check_thresholds(browser, "ig-chart", ig, _expected_lines(name, g))
    if TITERS[name] is None:
        assert titers == {}
    else:
        assert titers["points"] == TITERS[name]
        _check_thresholds(browser, "titer-chart", titers, {"titer_protective_ug_ml": g.titer_protective_ug_ml})
    topics = [li.get_attribute("data-topic") for li in browser.find_elements("css selector", "#cards li.card")]
    expected_topics = fhir_fixtures.load_json(name, "expected.json")["expected"]["patient-view"]
    assert sorted(topics) == sorted(expected_topics)
    _check_rendered_cards(browser)
    _check_time_axis(browser)
    view = requests.get(f"{base}/smart/api/patient?fixture={name}", timeout=30).json()
    _check_facts_table(browser, len(view["decision"]["facts"]))
    applied = browser.find_elements("css selector", "#trace tbody tr.applies")
    assert applied, "the decision trace shows the rule that decided"
    _only_own_origin(browser, base)
    _screenshot(browser, name)


def test_threshold_lines_follow_the_configuration_in_force(tmp_path, browser, serve):
    overrides = {"guideline.igm_low_mg_dl": 45, "guideline.igg_deficient_mg_dl": 450,
                 "guideline.igg_borderline_from_mg_dl": 350, "guideline.trough_target_mg_dl": 800,
                 "guideline.titer_protective_ug_ml": 1.0}
    lines = {k.split(".")[1]: v for k, v in overrides.items()}
    base = serve(make_settings(tmp_path, **overrides))
    browser.get(f"{base}/smart/app?fixture=sample-impaired-ppsv23")
    assert _wait_ready(browser) == "true"
    ig = _summary(browser, "ig-chart")
    _check_thresholds(browser, "ig-chart", ig, {k: v for k, v in lines.items() if k in DIAGNOSTIC})
    _check_thresholds(browser, "titer-chart", _summary(browser, "titer-chart"), {"titer_protective_ug_ml": 1.0})
    browser.get(f"{base}/smart/app?fixture=sample-on-ivig-low-trough")  # on IVIG: the trough target too
    assert _wait_ready(browser) == "true"
    _check_thresholds(browser, "ig-chart", _summary(browser, "ig-chart"),
                      {k: v for k, v in lines.items() if k in DIAGNOSTIC | {"trough_target_mg_dl"}})


def test_smart_launch_in_the_browser_escapes_patient_data(tmp_path, browser, serve):
    """EHR launch end to end in Chromium, with markup in the patient's name and a diagnosis text."""
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
    base = serve(make_settings(tmp_path))
    with LocalFhir(patient=patient_id) as fhir:
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


# ------------------------------------------------------------------ levels on treatment, via a SMART launch


def test_mid_interval_levels_are_drawn_apart_and_never_against_the_trough_target(tmp_path, browser, serve):
    """A level drawn a week after an infusion (from the EHR's FHIR server): its own marker, off the
    trough line, and its tooltip says it is not a trough."""
    today = datetime.now(timezone.utc).date()
    record, patient_id, drawn = mid_interval_record(today)
    resources = [e["resource"] for e in record[0]["entry"]]
    base = serve(make_settings(tmp_path))
    with LocalFhir(patient=patient_id) as fhir:
        fhir.load(resources)
        browser.get(f"{base}/smart/launch?iss={fhir.base}&launch=mid-interval")
        assert _wait_ready(browser) == "true", browser.page_source[:2000]
        ig = _summary(browser, "ig-chart")
        assert ig["points"]["IgG mid-interval (mg/dL)"] == 1
        assert ig["points"]["IgG (mg/dL)"] == EXPECTED[patient_id]["IgG (mg/dL)"], "the trough line is unchanged"
        datasets = browser.execute_script(
            "return Chart.getChart('ig-chart').data.datasets.map(d => ({label: d.label, type: d.type || '',"
            " style: d.pointStyle || '', dates: (d.data || []).map(p => p.point ? p.point.date : null)}))")
        by_label = {d["label"]: d for d in datasets}
        assert by_label["IgG mid-interval (mg/dL)"]["dates"] == [drawn]
        assert by_label["IgG mid-interval (mg/dL)"]["type"] == "scatter", "not joined to the troughs"
        assert by_label["IgG mid-interval (mg/dL)"]["style"] != by_label["IgG (mg/dL)"]["style"]
        assert drawn not in by_label["IgG (mg/dL)"]["dates"]
        index = [i for i, d in enumerate(datasets) if d["label"] == "IgG mid-interval (mg/dL)"][0]
        tip = browser.execute_script(_TOOLTIP_JS, index, 0)
        assert tip["title"] == [drawn] and "not a trough" in " ".join(tip["body"]), tip
        rows = [r.text for r in browser.find_elements("css selector", "#ig-table tbody tr")]
        assert any(drawn in r and "mid-interval" in r for r in rows), rows


# ------------------------------------------------------------------ a phone, and paper


#: Elements whose right edge lies beyond the viewport (what makes a page scroll sideways).
_OVERFLOW_JS = """
const width = document.documentElement.clientWidth;
const out = [];
for (const e of document.querySelectorAll('body *')) {
  const r = e.getBoundingClientRect();
  if (r.width > 0 && (r.right > width + 0.5 || r.left < -0.5)) out.push(e.tagName + '#' + e.id + '.' + e.className);
}
return {width: width, scrollWidth: document.documentElement.scrollWidth, out: out.slice(0, 10)};
"""


def _emulate(driver, width: int, height: int = 844, media: str = "") -> None:
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                           {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": width < 600})
    driver.execute_cdp_cmd("Emulation.setEmulatedMedia", {"media": media})


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_the_page_fits_a_phone_without_sideways_scrolling(tmp_path, browser, serve, name):
    base = serve(make_settings(tmp_path))
    _emulate(browser, 390)
    browser.get(f"{base}/smart/app?fixture={name}")
    assert _wait_ready(browser) == "true"
    browser.execute_script("document.querySelectorAll('details').forEach(d => d.open = true)")
    layout = browser.execute_script(_OVERFLOW_JS)
    assert layout["width"] == 390
    assert layout["scrollWidth"] <= 390 and not layout["out"], layout
    area = _summary(browser, "ig-chart")["chart-area"]
    assert 0 <= area["left"] < area["right"] <= 390 and area["right"] - area["left"] > 200
    for page in ("/smart/app", "/"):  # the index and the landing page too
        browser.get(base + page)
        layout = browser.execute_script(_OVERFLOW_JS)
        assert layout["scrollWidth"] <= 390 and not layout["out"], (page, layout)


#: Recorded while the page is being printed (the listener runs after the page's own).
_WATCH_PRINT_JS = """
window.__printed = null;
document.querySelectorAll('details').forEach(d => d.open = false);
window.addEventListener('beforeprint', () => {
  window.__printed = {
    detailsOpen: [...document.querySelectorAll('details')].filter(d => !d.hidden && !d.closest('[hidden]')).every(d => d.open),
    pictures: [...document.querySelectorAll('.chart img.print-copy')].map(i => ({w: i.naturalWidth, h: i.naturalHeight})),
    canvases: [...document.querySelectorAll('.chart:not([hidden]) canvas')].length,
  };
});
"""


def test_the_page_prints_everything_unfolded_with_the_charts_as_pictures(tmp_path, browser, serve):
    base = serve(make_settings(tmp_path))
    browser.get(f"{base}/smart/app?fixture=sample-impaired-ppsv23")
    assert _wait_ready(browser) == "true"
    browser.execute_script(_WATCH_PRINT_JS)
    pdf = browser.execute_cdp_cmd("Page.printToPDF", {"paperWidth": 8.27, "paperHeight": 11.69})
    data = base64.b64decode(pdf["data"])
    assert data.startswith(b"%PDF") and len(data) > 50_000
    printed = browser.execute_script("return window.__printed")
    assert printed is not None, "the browser printed without telling the page (beforeprint)"
    assert printed["detailsOpen"], "card details, facts and data problems are on paper"
    assert len(printed["pictures"]) == printed["canvases"] == 2  # the Ig chart and the titers
    assert all(p["w"] >= 1400 and p["h"] >= 600 for p in printed["pictures"]), printed["pictures"]
    # after printing, the screen is as the reader left it
    assert not browser.find_elements("css selector", "img.print-copy")
    assert not any(d.get_attribute("open") for d in browser.find_elements("css selector", "details"))
    # print media: the screen's chrome is gone and nothing is wider than an A4 page's text (186 mm)
    _emulate(browser, 703, 1000, media="print")
    assert not browser.find_element("id", "status").is_displayed()
    assert all(not c.is_displayed() for c in browser.find_elements("css selector", ".chart canvas"))
    layout = browser.execute_script(_OVERFLOW_JS)
    assert layout["scrollWidth"] <= 703 and not layout["out"], layout
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "smart-print.pdf").write_bytes(data)  # for a human to look at


def test_the_readme_shows_a_small_screenshot_of_the_page_this_browser_takes(tmp_path, browser, serve):
    """docs/trend-page.png is a picture of the trend page taken here; ``UPDATE_DOCS_SCREENSHOT=1`` retakes it."""
    base = serve(make_settings(tmp_path))
    _emulate(browser, 900, 1500)
    browser.execute_cdp_cmd("Emulation.setScrollbarsHidden", {"hidden": True})
    browser.get(f"{base}/smart/app?fixture=sample-on-ivig-low-trough")
    assert _wait_ready(browser) == "true"
    # the first card's detail as rendered, the others folded, then the chart
    browser.execute_script("document.querySelectorAll('#cards details').forEach((d, i) => d.open = i === 0);"
                           "window.scrollTo(0, 0);")
    png = base64.b64decode(browser.execute_cdp_cmd("Page.captureScreenshot", {"format": "png"})["data"])
    browser.execute_cdp_cmd("Emulation.setScrollbarsHidden", {"hidden": False})
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "trend-page.png").write_bytes(png)
    if os.environ.get("UPDATE_DOCS_SCREENSHOT") == "1":
        DOCS_SCREENSHOT.write_bytes(png)
    kept = DOCS_SCREENSHOT.read_bytes()
    assert kept.startswith(b"\x89PNG\r\n\x1a\n") and 20_000 < len(kept) < 400_000, len(kept)
    width, height = int.from_bytes(kept[16:20], "big"), int.from_bytes(kept[20:24], "big")
    assert (width, height) == (900, 1500)
    assert "](docs/trend-page.png)" in (ROOT / "README.md").read_text(encoding="utf-8")
