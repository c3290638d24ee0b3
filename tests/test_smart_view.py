"""What the trend page is given to draw (service/smart/trend.py), and the card detail as HTML
(service/smart/card_html.py), checked against the engine's own facts and the rules' registry."""

from __future__ import annotations

import copy
import re
from datetime import date
from html.parser import HTMLParser

import pytest

import fhir_fixtures
from hooks.cards import spec_of
from hooks.engine import evaluate_patient
from service.smart.card_html import detail_html
from service.smart.trend import LINES
from service.smart.views import evaluate_record, fixture_view
from tests.smart_support import mid_interval_record

CARD_FIXTURES = sorted(n for n in fhir_fixtures.scenario_names()
                       if (fhir_fixtures.load_json(n, "expected.json")["expected"].get("patient-view")))


class _Tags(HTMLParser):
    """Every start tag with its attributes, and the text outside tags."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


def _parse(html: str) -> _Tags:
    parser = _Tags()
    parser.feed(html)
    return parser


# ------------------------------------------------------------------ card detail as HTML


def test_detail_markdown_becomes_structure_not_literal_markup():
    html = detail_html("**Trough IgG 520 mg/dL.**\n\n| Fact | Value | Date | Why it counts |\n|---|---|---|---|\n"
                       "| IgG | 520 mg/dL | 2026-11-10 | below 600 mg/dL |\n\n**What to do:**\n- one\n- two\n\n---\n_ruleset_")
    tags = [t for t, _ in _parse(html).tags]
    assert {"strong", "table", "thead", "th", "td", "ul", "li", "hr", "em"} <= set(tags)
    text = "".join(_parse(html).text)
    assert "**" not in text and "|---" not in text and "| Fact" not in text


@pytest.mark.parametrize("markdown, absent", [
    ("<script>document.body.dataset.pwned = 1</script>", "script"),
    ("<img src=x onerror=alert(1)>", "img"),
    ('<a href="https://x.org" onclick="alert(1)">x</a>', "onclick"),
    ("<style>body{display:none}</style>", "style"),
    ("<iframe src=https://x.org></iframe>", "iframe"),
    ("| a | b |\n|:-|--:|\n| 1 | 2 |", "style"),  # markdown-it's alignment attribute: CSP forbids inline style
])
def test_detail_html_keeps_no_markup_from_the_text(markdown, absent):
    html = detail_html(markdown)
    parsed = _parse(html)
    assert all(tag != absent and absent not in attrs for tag, attrs in parsed.tags), html


@pytest.mark.parametrize("link, kept", [
    ("[doi](https://doi.org/10.1016/j.jaci.2015.04.049)", True),
    ("<https://doi.org/10.3389/fimmu.2017.01056>", True),
    ("[web](http://example.org/x)", True),
    ("[js](javascript:alert(1))", False),
    ("[data](data:text/html;base64,PHNjcmlwdD4=)", False),
    ("[relative](/smart/app)", False),
    ("[scheme-relative](//evil.example.org/x)", False),
    ("[vb](vbscript:msgbox(1))", False),
])
def test_detail_links_only_to_http_and_https_opening_apart(link, kept):
    anchors = [attrs for tag, attrs in _parse(detail_html(link)).tags if tag == "a"]
    hrefs = [a["href"] for a in anchors if a.get("href")]
    assert bool(hrefs) == kept, anchors
    for a in anchors:
        assert set((a.get("rel") or "").split()) >= {"noopener", "noreferrer"}, a
        assert a.get("target") == "_blank"
    assert all(h.startswith(("http://", "https://")) for h in hrefs)


@pytest.mark.parametrize("name", CARD_FIXTURES)
def test_every_card_detail_renders_as_html(app, name):
    with app.test_request_context():
        view = fixture_view(name)
    assert view["cards"]
    for card in view["cards"]:
        parsed = _parse(card["detail_html"])
        tags = {t for t, _ in parsed.tags}
        text = "".join(parsed.text)
        assert "**" not in text and "|---" not in text, card["detail_html"]
        if "\n|---" in card["detail"]:
            assert "table" in tags
        if "**" in card["detail"]:
            assert "strong" in tags
        assert not tags - {"p", "br", "hr", "strong", "em", "s", "code", "pre", "blockquote", "ul", "ol", "li", "a",
                           "h1", "h2", "h3", "h4", "h5", "h6", "table", "thead", "tbody", "tr", "th", "td"}


# ------------------------------------------------------------------ thresholds drawn


def _chart_keys(card) -> set[str]:
    return {k for rule in card["rules"] for part in rule.split("+") if spec_of(part)
            for k in spec_of(part).thresholds if k in LINES}


@pytest.mark.parametrize("name", CARD_FIXTURES)
def test_every_threshold_that_decided_a_card_is_drawn(app, name):
    with app.test_request_context():
        view = fixture_view(name)
    drawn = {t["key"]: t for t in view["thresholds"]}
    for card in view["cards"]:
        for key in _chart_keys(card):
            if key == "trough_target_mg_dl" and not view["ivig"]["on_treatment"]:
                continue
            if key == "igg_borderline_from_mg_dl" and drawn.get("igg_deficient_mg_dl", {}).get("source") == "lab range":
                continue  # a level judged by the lab's range has no borderline band
            assert key in drawn, (card["topic"], key)
            assert card["topic"] in drawn[key]["decided"]


@pytest.mark.parametrize("name", fhir_fixtures.scenario_names())
def test_the_trough_target_is_drawn_only_for_patients_on_ivig(app, name):
    with app.test_request_context():
        view = fixture_view(name)
    keys = [t["key"] for t in view["thresholds"]]
    assert ("trough_target_mg_dl" in keys) == view["ivig"]["on_treatment"]


def test_hyper_igm_card_draws_the_iga_limit_it_was_judged_by(app, settings):
    today = date.today()
    with app.test_request_context():
        view = fixture_view("sample-hyper-igm")
    scenario = fhir_fixtures.load_scenario("sample-hyper-igm", today)
    facts = evaluate_patient([scenario["bundle"]], patient_id="sample-hyper-igm", today=today,
                             config=settings.guideline).facts
    iga = {t["key"]: t for t in view["thresholds"]}["iga_low_mg_dl"]
    assert facts.iga.deciding.ref_low is not None and "lab's range" in facts.iga.basis
    assert iga["value"] == facts.iga.deciding.ref_low and iga["source"] == "lab range"
    assert iga["decided"] == ["hyper-igm-pattern"]
    assert str(int(facts.iga.deciding.ref_low)) in iga["label"]


def test_an_adult_without_a_lab_range_gets_the_guideline_iga_limit(make_app):
    app = make_app(**{"guideline.iga_low_mg_dl": 9})
    bundle = copy.deepcopy(fhir_fixtures.load_scenario("sample-hyper-igm", date.today())["bundle"])
    for entry in bundle["entry"]:
        entry["resource"].pop("referenceRange", None)
    with app.test_request_context():
        view = evaluate_record([bundle], "sample-hyper-igm", source="fixture")
    iga = {t["key"]: t for t in view["thresholds"]}.get("iga_low_mg_dl")
    assert [c["topic"] for c in view["cards"]] == ["hyper-igm-pattern"]
    assert iga is not None and iga["value"] == 9 and iga["source"] == "guideline"


def test_thresholds_no_card_used_are_not_drawn_beyond_the_diagnostic_ones(app):
    with app.test_request_context():
        view = fixture_view("sample-isolated-igm")
    keys = {t["key"] for t in view["thresholds"]}
    assert keys == {"igm_low_mg_dl", "igg_borderline_from_mg_dl", "igg_deficient_mg_dl", "titer_protective_ug_ml"}


# ------------------------------------------------------------------ levels on treatment


def test_mid_interval_levels_are_marked_apart_from_troughs(app):
    record, patient, drawn = mid_interval_record(date.today())
    with app.test_request_context():
        view = evaluate_record(record, patient, source="fixture")
    points = {p["date"]: p for p in view["series"]["IgG"]["points"]}
    mid = points[drawn]
    assert mid["timing"] == "mid-interval"
    assert any("mid-interval" in n and "not a trough" in n for n in mid["notes"])
    troughs = [p for p in points.values() if p["timing"] == "trough"]
    assert troughs and all(p["date"] < drawn for p in troughs)
    assert view["mid_interval"].startswith("1150 mg/dL")
    # the trough the rules decided on is still the one before it, below target
    assert view["trough"].startswith("520 mg/dL")
    assert "ivig-monitoring" in [c["topic"] for c in view["cards"]]


# ------------------------------------------------------------------ facts as a table


@pytest.mark.parametrize("name", ["sample-hyper-igm", "sample-on-ivig-low-trough", "sample-impaired-ppsv23"])
def test_facts_the_rules_used_are_rows_of_words(app, name):
    with app.test_request_context():
        view = fixture_view(name)
    rows = view["decision"]["fact_rows"]
    facts = view["decision"]["facts"]
    assert [r["fact"] for r in rows][:4] == ["Age", "IgM", "IgG", "IgA"]
    assert len(rows) == len(facts)
    for row in rows:
        cell = " ".join([row["value"], *row.get("items", [])])
        assert not re.search(r"[{}\[\]]|\"\w+\":", cell), row
    by_fact = {r["fact"]: r for r in rows}
    for analyte in ("IgM", "IgG", "IgA"):
        fact = facts[analyte]
        assert by_fact[analyte]["value"] == fact["value"] and by_fact[analyte]["date"] == fact["date"]
        assert fact["basis"] in by_fact[analyte]["judged"]
    assert by_fact["Infections counted"]["items"] == facts["infections"]["episodes"]


# ------------------------------------------------------------------ the index


def test_the_page_alone_is_an_index_of_every_scenario(client):
    r = client.get("/smart/app")
    assert r.status_code == 200 and r.mimetype == "text/html"
    assert "default-src 'none'" in r.headers["Content-Security-Policy"]
    links = re.findall(r'href="/smart/app\?fixture=([^"]+)"', r.get_data(as_text=True))
    assert sorted(links) == sorted(fhir_fixtures.scenario_names())
    samples = [n for n in fhir_fixtures.scenario_names() if fhir_fixtures.load_json(n, "expected.json").get("sample")]
    assert links[:len(samples)] == sorted(samples), "the sample patients come first"
    summary = fhir_fixtures.load_json("sample-hyper-igm", "expected.json")["summary"]
    assert summary.replace("'", "&#39;") in r.get_data(as_text=True)
    assert client.get("/smart/app?fixture=no-such-scenario").status_code == 400
