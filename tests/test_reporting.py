"""The override picture: the store's report, ``ivig-cds report`` in three formats (CliRunner and a
real process), ``ivig-cds retention``, and ``GET /analytics/overrides`` — on SQLite and PostgreSQL."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone

import pytest
from click.testing import CliRunner

from service.app import create_app
from service.cli import main
from service.storage.sql_store import feedback
from tests.conftest import make_settings
from tests.pg import db_url, pg_database, pg_url  # noqa: F401 - fixtures
from tests.storage_support import SERVICE, fb_item, issued, items, store_for

PV = "ivig-patient-view"
NOW = datetime.now(timezone.utc).replace(microsecond=0)
RECENT = (NOW - timedelta(days=2)).isoformat().replace("+00:00", "Z")
LONG_AGO = datetime(2024, 1, 1, tzinfo=timezone.utc)
SECRET_COMMENT = "discussed with Mrs Example, MRN 12345"
DELETE, ORDER = "Delete the IVIG order", "Order IgG and vaccine titers"


def populate(tmp_path, url: str) -> None:
    """A known history: what the report must say about it is spelled out in the tests below."""
    s = store_for(tmp_path, url)
    try:
        not_indicated = [issued(f"ni-{i}", at=NOW - timedelta(days=3),
                                suggestions=((f"ni-{i}-del", DELETE), (f"ni-{i}-ord", ORDER))) for i in range(6)]
        dose = [issued(f"dose-{i}", topic="ivig-dose-check", at=NOW - timedelta(days=3)) for i in range(2)]
        pv = [issued(f"pv-{i}", service=PV, topic="isolated-igm-deficiency", at=NOW - timedelta(days=3))
              for i in range(3)]
        old = [issued("old-1", at=LONG_AGO, suggestions=(("old-1-del", DELETE),))]
        s.record_issued(not_indicated + dose + pv + old)
        s.store_feedback(SERVICE, items(
            fb_item("ni-0", "accepted", accepted=["ni-0-del"], stamp=RECENT),
            fb_item("ni-1", "accepted", accepted=["ni-1-del", "ni-1-ord"], stamp=RECENT),
            fb_item("ni-2", code="other-indication", display="Other indication", stamp=RECENT,
                    comment=SECRET_COMMENT),
            fb_item("ni-3", code="other-indication", display="Other indication", stamp=RECENT),
            fb_item("ni-4", code="immunology-consulted", display="Immunology already consulted", stamp=RECENT),
            fb_item("dose-0", stamp=RECENT),
            fb_item("old-1", "accepted", accepted=["old-1-del"], stamp="2024-01-02T08:00:00Z"),
        ))
        s.store_feedback(PV, items(fb_item("pv-unknown", stamp=RECENT)))
    finally:
        s.close()  # flushes the issued cards


def by_topic(report: dict) -> dict:
    return {(r["service"], r["topic"]): r for r in report["topics"]}


@pytest.fixture
def populated(tmp_path, db_url):  # noqa: F811
    populate(tmp_path, db_url)
    return db_url


@pytest.fixture
def cli_env(tmp_path, populated, monkeypatch):
    """The environment a steward's shell would have: the database URL and a data dir."""
    for name in [n for n in os.environ if n.startswith("IVIG_CDS_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("IVIG_CDS_DATABASE_URL", populated)
    monkeypatch.setenv("IVIG_CDS_DATA_DIR", str(tmp_path / "data"))
    return {"IVIG_CDS_DATABASE_URL": populated, "IVIG_CDS_DATA_DIR": str(tmp_path / "data")}


# ------------------------------------------------------------------ the numbers


def test_report_per_service_and_topic(tmp_path, populated):
    s = store_for(tmp_path, populated)
    try:
        report = s.report()
    finally:
        s.close()
    rows = by_topic(report)
    assert set(rows) == {(SERVICE, "ivig-not-indicated"), (SERVICE, "ivig-dose-check"),
                         (PV, "isolated-igm-deficiency"), (PV, None)}
    ni = rows[(SERVICE, "ivig-not-indicated")]
    assert (ni["cardsShown"], ni["feedback"], ni["accepted"], ni["overridden"]) == (7, 6, 3, 3)
    assert (ni["acceptanceRate"], ni["overrideRate"], ni["withComment"]) == (0.5, 0.5, 1)
    assert [(r["rank"], r["code"], r["display"], r["count"]) for r in ni["overrideReasons"]] == [
        (1, "other-indication", "Other indication", 2),
        (2, "immunology-consulted", "Immunology already consulted", 1),
    ]
    assert [(x["label"], x["offered"], x["accepted"]) for x in ni["suggestions"]] == [
        (DELETE, 7, 3), (ORDER, 6, 1)]
    dose = rows[(SERVICE, "ivig-dose-check")]
    assert (dose["cardsShown"], dose["overridden"]) == (2, 1)
    assert [(r["code"], r["display"], r["count"]) for r in dose["overrideReasons"]] == [
        (None, "(no reason given)", 1)]
    assert rows[(PV, "isolated-igm-deficiency")]["cardsShown"] == 3
    assert rows[(PV, "isolated-igm-deficiency")]["feedback"] == 0
    unknown = rows[(PV, None)]
    assert (unknown["knownCards"], unknown["feedback"], unknown["cardsShown"]) == (False, 1, 0)
    assert report["totals"] == {"cardsShown": 12, "feedback": 8, "accepted": 3, "overridden": 5,
                                "unknownCardFeedback": 1}
    assert SECRET_COMMENT not in json.dumps(report)


def test_report_since_leaves_out_older_cards_and_feedback(tmp_path, populated):
    s = store_for(tmp_path, populated)
    try:
        report = s.report((NOW - timedelta(days=30)).date())
    finally:
        s.close()
    ni = by_topic(report)[(SERVICE, "ivig-not-indicated")]
    assert (ni["cardsShown"], ni["accepted"], ni["overridden"]) == (6, 2, 3)
    assert [(x["label"], x["offered"], x["accepted"]) for x in ni["suggestions"]] == [
        (DELETE, 6, 2), (ORDER, 6, 1)]
    assert report["since"].startswith((NOW - timedelta(days=30)).date().isoformat())
    assert report["totals"]["feedback"] == 7


def test_an_empty_database_reports_nothing(tmp_path, db_url):  # noqa: F811
    s = store_for(tmp_path, db_url)
    try:
        report = s.report()
    finally:
        s.close()
    assert report["topics"] == [] and report["totals"]["feedback"] == 0


# ------------------------------------------------------------------ ivig-cds report


def test_report_command_json(cli_env, tmp_path, populated):
    result = CliRunner().invoke(main, ["report", "--format", "json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["totals"] == {"cardsShown": 12, "feedback": 8, "accepted": 3, "overridden": 5,
                              "unknownCardFeedback": 1}
    ni = by_topic(data)[(SERVICE, "ivig-not-indicated")]
    assert ni["overrideReasons"][0]["code"] == "other-indication"


def test_report_command_csv(cli_env):
    result = CliRunner().invoke(main, ["report", "--format", "csv"])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.output)))
    assert list(rows[0]) == ["service", "topic", "measure", "rank", "code", "system", "display", "count", "of"]

    def value(topic: str, measure: str, **match: str) -> list[tuple[str, str]]:
        return [(r["count"], r["of"]) for r in rows if r["service"] == SERVICE and r["topic"] == topic
                and r["measure"] == measure and all(r[k] == v for k, v in match.items())]

    assert value("ivig-not-indicated", "cards_shown") == [("7", "")]
    assert value("ivig-not-indicated", "accepted") == [("3", "")]
    assert value("ivig-not-indicated", "overridden") == [("3", "")]
    assert value("ivig-not-indicated", "override_reason", rank="1", code="other-indication") == [("2", "3")]
    assert value("ivig-not-indicated", "suggestion_accepted", display=DELETE) == [("3", "7")]
    assert [r["count"] for r in rows if r["topic"] == "" and r["measure"] == "feedback"] == ["1"]
    assert SECRET_COMMENT not in result.output


def test_report_command_table(cli_env):
    result = CliRunner().invoke(main, ["report"])  # table is the default
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    header = next(line for line in lines if line.startswith("service"))
    assert header.split() == ["service", "topic", "shown", "feedback", "accepted", "overridden", "accept%",
                              "override%"]
    ni = next(line for line in lines if line.startswith(SERVICE) and "ivig-not-indicated" in line)
    assert ni.split() == [SERVICE, "ivig-not-indicated", "7", "6", "3", "3", "50%", "50%"]
    assert "    override reason #1: Other indication [other-indication] — 2" in lines
    assert f'    suggestion "{DELETE}": accepted 3 of 7 offered (43%)' in lines
    assert any(line.startswith(PV) and "(unknown card)" in line for line in lines)
    assert SECRET_COMMENT not in result.output


def test_report_command_since(cli_env):
    since = (NOW - timedelta(days=30)).date().isoformat()
    result = CliRunner().invoke(main, ["report", "--since", since, "--format", "json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["totals"]["feedback"] == 7


def test_report_command_rejects_a_bad_date(cli_env):
    result = CliRunner().invoke(main, ["report", "--since", "last tuesday"])
    assert result.exit_code == 2
    assert "YYYY-MM-DD" in result.output


def test_report_as_a_real_process(cli_env, tmp_path):
    exe = os.path.join(os.path.dirname(sys.executable), "ivig-cds")
    env = {k: v for k, v in os.environ.items() if not k.startswith("IVIG_CDS_")}
    env.update(cli_env)
    outputs = {}
    for fmt in ("json", "csv", "table"):
        done = subprocess.run([exe, "report", "--format", fmt], env=env, cwd=tmp_path, capture_output=True,
                              text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        outputs[fmt] = done.stdout
    assert json.loads(outputs["json"])["totals"]["overridden"] == 5
    assert "measure" in outputs["csv"].splitlines()[0]
    assert "ivig-not-indicated" in outputs["table"]


# ------------------------------------------------------------------ ivig-cds retention


def test_retention_command_deletes_old_records(cli_env, tmp_path, populated):
    s = store_for(tmp_path, populated)
    try:
        with s.engine.begin() as conn:  # the 2024 feedback arrived in 2024
            conn.execute(feedback.update().where(feedback.c.card_uuid == "old-1").values(received_at=LONG_AGO))
        before = s.count()
    finally:
        s.close()
    result = CliRunner().invoke(main, ["retention", "--older-than-days", "30"])
    assert result.exit_code == 0, result.output
    assert "deleted 1 issued-card record(s) and 1 feedback item(s)" in result.output
    s = store_for(tmp_path, populated)
    try:
        assert s.count() == {"issued": before["issued"] - 1, "feedback": before["feedback"] - 1}
    finally:
        s.close()


def test_retention_command_uses_the_setting(cli_env, monkeypatch):
    monkeypatch.setenv("IVIG_CDS_FEEDBACK_RETENTION_DAYS", "365000")
    result = CliRunner().invoke(main, ["retention"])
    assert result.exit_code == 0, result.output
    assert "deleted 0 issued-card record(s) and 0 feedback item(s)" in result.output


# ------------------------------------------------------------------ GET /analytics/overrides


@pytest.fixture
def analytics_client(tmp_path, populated):
    app = create_app(make_settings(tmp_path, database_url=populated))
    yield app.test_client()
    app.extensions["ivig_cds"].close()


def test_analytics_overrides_json(analytics_client):
    resp = analytics_client.get("/analytics/overrides")
    assert resp.status_code == 200 and resp.mimetype == "application/json"
    data = resp.get_json()
    assert data["totals"]["overridden"] == 5
    ni = by_topic(data)[(SERVICE, "ivig-not-indicated")]
    assert [r["code"] for r in ni["overrideReasons"]] == ["other-indication", "immunology-consulted"]
    assert SECRET_COMMENT not in resp.get_data(as_text=True)


def test_analytics_overrides_since(analytics_client):
    since = (NOW - timedelta(days=30)).date().isoformat()
    assert analytics_client.get(f"/analytics/overrides?since={since}").get_json()["totals"]["feedback"] == 7
    bad = analytics_client.get("/analytics/overrides?since=yesterday")
    assert bad.status_code == 400 and "since" in bad.get_json()["message"]


def test_analytics_overrides_is_protected_like_the_cds_endpoints(tmp_path, populated):
    from tests.security_helpers import bearer, claims, new_key, sign, trusted_issuer

    key = new_key("ES384")
    settings = make_settings(tmp_path, database_url=populated, **{
        "security.require_token": True, "security.trusted_issuers": [trusted_issuer(key)],
        "security.replay_store": "memory"})
    app = create_app(settings)
    try:
        client = app.test_client()
        refused = client.get("/analytics/overrides")
        assert refused.status_code == 401
        assert "totals" not in refused.get_json()
        token = sign(key, claims("http://localhost/analytics/overrides"))
        allowed = client.get("/analytics/overrides", headers=bearer(token))
        assert allowed.status_code == 200, allowed.get_json()
        assert allowed.get_json()["totals"]["feedback"] == 8
    finally:
        app.extensions["ivig_cds"].close()


def test_report_breaks_outcomes_down_by_ruleset_version(tmp_path):
    """A committee can tell which logic produced the overridden cards."""
    from datetime import datetime, timezone

    from service.protocol.models import FeedbackItem
    from service.storage.feedback import IssuedCard
    from service.storage.reporting import render_csv, render_table
    from service.storage.sql_store import open_store
    from tests.conftest import make_settings

    store = open_store(make_settings(tmp_path))
    now = datetime.now(timezone.utc)
    try:
        store.record_issued([
            IssuedCard("c-old", "ivig-order-sign", "h1", "ivig-not-indicated", "warning", "1.0.0+cfg.aaaa", now),
            IssuedCard("c-new", "ivig-order-sign", "h2", "ivig-not-indicated", "warning", "1.0.1+cfg.bbbb", now),
            IssuedCard("c-new2", "ivig-order-sign", "h3", "ivig-not-indicated", "warning", "1.0.1+cfg.bbbb", now),
        ])
        store.flush()
        store.store_feedback("ivig-order-sign", [
            FeedbackItem("c-old", "overridden", now, (), "other-indication", "urn:x", "Other", None),
            FeedbackItem("c-new", "overridden", now, (), "immunology-consulted", "urn:x", "Immunology", None),
            FeedbackItem("c-new2", "accepted", now, ("s1",), None, None, None, None),
        ])
        data = store.report(None)
    finally:
        store.close()
    by_version = {v["rulesetVersion"]: v for v in data["rulesetVersions"]}
    assert by_version["1.0.0+cfg.aaaa"] == {"rulesetVersion": "1.0.0+cfg.aaaa", "cardsShown": 1, "accepted": 0,
                                            "overridden": 1, "overrideRate": 1.0}
    assert by_version["1.0.1+cfg.bbbb"]["cardsShown"] == 2 and by_version["1.0.1+cfg.bbbb"]["overrideRate"] == 0.5
    assert "1.0.1+cfg.bbbb: 2 shown, 1 accepted, 1 overridden (50% overridden)" in render_table(data)
    assert ",,ruleset_overridden,,1.0.0+cfg.aaaa,,,1," in render_csv(data)
