"""Prometheus metrics in one process: what is counted, under which labels, and what is not.

The metric objects are per process (prometheus_client's default registry), so every test reads
a value before and after and checks the difference. Cross-worker aggregation under gunicorn is
in tests/test_deploy_gunicorn.py.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from datetime import datetime, timezone

import pytest

from hooks.service_def import HookRequest, HookResult, ServiceDefinition
from service.app import create_app
from service.ops import metrics
from service.storage.feedback import MemoryFeedbackStore
from tests.conftest import make_settings
from tests.deploy_support import ROOT, clean_env, metric_value

REQUESTS = "ivig_cds_http_requests_total"
LATENCY_COUNT = "ivig_cds_http_request_duration_seconds_count"
CARDS = "ivig_cds_cards_issued_total"
FEEDBACK = "ivig_cds_feedback_outcomes_total"
PREFETCH_COUNT = "ivig_cds_prefetch_fetch_duration_seconds_count"
PREFETCH_FAILURES = "ivig_cds_prefetch_fetch_failures_total"


def _two_card_handler(request: HookRequest) -> HookResult:
    def card(topic: str | None) -> dict:
        source = {"label": "test"}
        if topic:
            source["topic"] = {"system": "urn:test", "code": topic}
        return {"uuid": str(uuid.uuid4()), "summary": "s", "indicator": "info", "source": source,
                "suggestions": [{"label": "do it", "uuid": str(uuid.uuid4())}]}

    return HookResult(cards=[card("metrics-topic-a"), card("metrics-topic-a"), card(None)])


CARD_SERVICE = ServiceDefinition(
    id="metrics-test-service", hook="patient-view", title="t", description="d",
    prefetch={}, handler=_two_card_handler)


@pytest.fixture
def app(tmp_path):
    app = create_app(make_settings(tmp_path), store=MemoryFeedbackStore())
    app.extensions["ivig_cds"].services[CARD_SERVICE.id] = CARD_SERVICE
    yield app
    app.extensions["ivig_cds"].close()


@pytest.fixture
def client(app):
    return app.test_client()


def scrape(client) -> str:
    resp = client.get("/metrics")
    assert resp.status_code == 200
    assert resp.content_type.startswith("text/plain")
    return resp.get_data(as_text=True)


def _call(patient_id: str = "m1") -> dict:
    return {"hook": "patient-view", "hookInstance": str(uuid.uuid4()),
            "context": {"userId": "Practitioner/1", "patientId": patient_id}, "prefetch": {}}


def test_metrics_endpoint_describes_every_metric(client):
    text = scrape(client)
    for name in ("ivig_cds_http_requests", "ivig_cds_http_request_duration_seconds", "ivig_cds_cards_issued",
                 "ivig_cds_prefetch_fetch_duration_seconds", "ivig_cds_prefetch_fetch_failures",
                 "ivig_cds_feedback_outcomes"):
        assert f"# HELP {name}" in text, name
        assert f"# TYPE {name}" in text, name


def test_requests_counted_by_endpoint_service_and_status(client):
    before = scrape(client)
    assert client.get("/cds-services").status_code == 200
    assert client.get("/cds-services").status_code == 200
    assert client.post("/cds-services/ivig-patient-view", json={"hook": "patient-view"}).status_code == 400
    after = scrape(client)

    def delta(name: str, **labels: str) -> float:
        return metric_value(after, name, **labels) - metric_value(before, name, **labels)

    assert delta(REQUESTS, endpoint="cds.discovery", service="", status="200") == 2
    assert delta(LATENCY_COUNT, endpoint="cds.discovery", service="", status="200") == 2
    assert delta(REQUESTS, endpoint="cds.invoke", service="ivig-patient-view", status="400") == 1
    assert delta(LATENCY_COUNT, endpoint="cds.invoke", service="ivig-patient-view", status="400") == 1
    # the scrape before this one was counted too
    assert delta(REQUESTS, endpoint="metrics.metrics_view", status="200") == 1


def test_made_up_service_ids_and_paths_do_not_create_series(client):
    before = scrape(client)
    for i in range(25):
        assert client.post(f"/cds-services/no-such-service-{i}", json=_call()).status_code == 404
        assert client.get(f"/no/such/path/{i}").status_code == 404
    after = scrape(client)
    assert (metric_value(after, REQUESTS, endpoint="cds.invoke", service="unknown", status="404")
            - metric_value(before, REQUESTS, endpoint="cds.invoke", service="unknown", status="404")) == 25
    assert (metric_value(after, REQUESTS, endpoint="unmatched", status="404")
            - metric_value(before, REQUESTS, endpoint="unmatched", status="404")) == 25
    assert "no-such-service" not in after
    assert "/no/such/path" not in after


def test_cards_counted_per_service_and_topic(client):
    before = scrape(client)
    resp = client.post(f"/cds-services/{CARD_SERVICE.id}", json=_call())
    assert resp.status_code == 200
    assert len(resp.get_json()["cards"]) == 3
    after = scrape(client)
    assert (metric_value(after, CARDS, service=CARD_SERVICE.id, topic="metrics-topic-a")
            - metric_value(before, CARDS, service=CARD_SERVICE.id, topic="metrics-topic-a")) == 2
    assert (metric_value(after, CARDS, service=CARD_SERVICE.id, topic="none")
            - metric_value(before, CARDS, service=CARD_SERVICE.id, topic="none")) == 1


def test_feedback_outcomes_counted(client):
    cards = client.post(f"/cds-services/{CARD_SERVICE.id}", json=_call()).get_json()["cards"]
    now = datetime.now(timezone.utc).isoformat()
    body = {"feedback": [
        {"card": cards[0]["uuid"], "outcome": "accepted", "outcomeTimestamp": now,
         "acceptedSuggestions": [{"id": cards[0]["suggestions"][0]["uuid"]}]},
        {"card": cards[1]["uuid"], "outcome": "overridden", "outcomeTimestamp": now},
        {"card": cards[2]["uuid"], "outcome": "overridden", "outcomeTimestamp": now},
    ]}
    before = scrape(client)
    resp = client.post(f"/cds-services/{CARD_SERVICE.id}/feedback", json=body)
    assert resp.status_code == 200, resp.get_json()
    # a rejected feedback body counts nothing
    assert client.post(f"/cds-services/{CARD_SERVICE.id}/feedback", json={"feedback": []}).status_code == 400
    after = scrape(client)

    def delta(outcome: str) -> float:
        return (metric_value(after, FEEDBACK, service=CARD_SERVICE.id, outcome=outcome)
                - metric_value(before, FEEDBACK, service=CARD_SERVICE.id, outcome=outcome))

    assert delta("accepted") == 1
    assert delta("overridden") == 2


def test_prefetch_and_feedback_recorders_for_other_modules(client):
    before = scrape(client)
    metrics.observe_prefetch("immunoglobulins", 0.12, ok=True)
    metrics.observe_prefetch("immunoglobulins", 2.5, ok=False)
    metrics.observe_prefetch("weight", -1.0, ok=True)  # a clock step backwards is recorded as 0
    metrics.count_feedback("overridden", service="ivig-order-sign", n=3)
    after = scrape(client)

    def delta(name: str, **labels: str) -> float:
        return metric_value(after, name, **labels) - metric_value(before, name, **labels)

    assert delta(PREFETCH_COUNT, key="immunoglobulins") == 2
    assert delta(PREFETCH_FAILURES, key="immunoglobulins") == 1
    assert delta(PREFETCH_COUNT, key="weight") == 1
    assert delta(PREFETCH_FAILURES, key="weight") == 0
    assert delta("ivig_cds_prefetch_fetch_duration_seconds_bucket", key="immunoglobulins", le="0.25") == 1
    assert delta(FEEDBACK, service="ivig-order-sign", outcome="overridden") == 3


def test_recorders_are_safe_before_any_app_exists(tmp_path):
    """A CLI command or a library test calls them without init_app: nothing happens, nothing fails."""
    code = (
        "from service.ops import metrics\n"
        "metrics.observe_prefetch('patient', 0.1, ok=False)\n"
        "metrics.count_feedback('accepted')\n"
        "metrics.count_cards('x', ['t'])\n"
        "assert metrics._metrics is None\n"
        "import sys; assert 'prometheus_client' not in sys.modules, 'imported prometheus_client eagerly'\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=tmp_path,
                          env=clean_env({"PYTHONPATH": str(ROOT)}))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_metrics_failure_never_changes_an_answer(client, monkeypatch):
    """Fault injection: the metrics backend raises; the request still gets its answer."""
    def broken(*_args, **_kwargs):
        raise RuntimeError("metrics backend broken")

    monkeypatch.setattr(metrics._metrics.requests, "labels", broken)
    monkeypatch.setattr(metrics, "_child", broken)  # children already made are looked up, not labelled again
    warned: list[str] = []
    monkeypatch.setattr(metrics.log, "warning", lambda message, *a, **k: warned.append(message))
    resp = client.get("/cds-services")
    assert resp.status_code == 200
    assert resp.get_json()["services"]
    assert warned == ["could not record request metrics"]


def test_openmetrics_when_the_scraper_asks(client):
    resp = client.get("/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert resp.status_code == 200
    assert resp.content_type.startswith("application/openmetrics-text")
    assert resp.get_data(as_text=True).rstrip().endswith("# EOF")


# ------------------------------------------------------------------ who may scrape, and where

TOKEN = "metrics-token-0123456789abcdef"


def _production(make_app, tmp_path, **overrides):
    from tests.security_helpers import new_key, secure_settings, trusted_issuer

    return make_app(secure_settings(tmp_path, [trusted_issuer(new_key("ES384"))], **overrides)).test_client()


def test_production_serves_no_metrics_on_the_service_port_by_default(make_app, tmp_path):
    client = _production(make_app, tmp_path)
    resp = client.get("/metrics")
    assert resp.status_code == 404
    assert resp.mimetype == "application/json"
    assert "metrics.port" in resp.get_json()["message"] and "metrics.token" in resp.get_json()["message"]
    assert "ivig_cds_http_requests" not in resp.get_data(as_text=True)


def test_with_a_token_every_scrape_must_carry_it(make_app, tmp_path):
    for client in (_production(make_app, tmp_path, **{"metrics.token": TOKEN}),
                   make_app(**{"metrics.token": TOKEN}).test_client()):
        for headers in ({}, {"Authorization": "Bearer wrong-token-0123456789"}, {"Authorization": TOKEN},
                        {"Authorization": f"Basic {TOKEN}"}):
            resp = client.get("/metrics", headers=headers)
            assert resp.status_code == 401, headers
            assert resp.get_json()["error"] == "unauthorized"
            assert resp.headers["WWW-Authenticate"].startswith("Bearer")
        ok = client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
        assert ok.status_code == 200
        assert "ivig_cds_http_requests_total" in ok.get_data(as_text=True)


def test_a_scrape_finding_another_in_progress_is_turned_away_at_once(client):
    """A flood of scrapes must not occupy the request threads: one renders, the others hear 429."""
    import time

    assert metrics._render_lock.acquire(blocking=False)  # a scrape in progress
    try:
        began = time.monotonic()
        resp = client.get("/metrics")
        assert time.monotonic() - began < 0.5
        assert resp.status_code == 429 and resp.headers["Retry-After"] == "1"
        assert resp.get_json()["error"] == "too_many_requests"
        assert client.get("/cds-services").status_code == 200
    finally:
        metrics._render_lock.release()
    assert client.get("/metrics").status_code == 200


def test_the_metrics_port_serves_metrics_and_nothing_else(app, client):
    import requests

    from tests.servers import free_port

    settings = app.extensions["ivig_cds"].settings.model_copy(
        update={"metrics": metrics_settings(port=free_port(), token=TOKEN)})
    listener = metrics.serve_metrics_port(settings)
    try:
        base = f"http://127.0.0.1:{listener.port}"
        assert client.get("/cds-services").status_code == 200
        ok = requests.get(f"{base}/metrics", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=5)
        assert ok.status_code == 200 and ok.headers["Content-Type"].startswith("text/plain")
        assert metric_value(ok.text, REQUESTS, endpoint="cds.discovery", status="200") >= 1
        refused = requests.get(f"{base}/metrics", timeout=5)
        assert refused.status_code == 401 and refused.json()["error"] == "unauthorized"
        other = requests.get(f"{base}/cds-services", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=5)
        assert other.status_code == 404 and other.json()["error"] == "not_found"
        assert requests.post(f"{base}/metrics", timeout=5).status_code == 405
        openmetrics = requests.get(f"{base}/metrics", timeout=5, headers={
            "Authorization": f"Bearer {TOKEN}", "Accept": "application/openmetrics-text; version=1.0.0"})
        assert openmetrics.text.rstrip().endswith("# EOF")
    finally:
        listener.close()


def test_a_metrics_port_that_cannot_be_opened_is_one_line_naming_it(app):
    import socket

    from service.settings import ConfigError

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        settings = app.extensions["ivig_cds"].settings.model_copy(update={"metrics": metrics_settings(port=port)})
        with pytest.raises(ConfigError, match=f"metrics.port {port} on 127.0.0.1 cannot be opened"):
            metrics.serve_metrics_port(settings)


def metrics_settings(**values):
    from service.settings import MetricsSettings

    return MetricsSettings.model_validate(values)


def test_the_metric_files_process_id_is_renewed_in_a_forked_child():
    """Workers are forked from the gunicorn master: each must name its metric files by its own
    pid, or two workers would write one file."""
    import os

    assert metrics._process_id() == os.getpid()
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:  # the child reports what it would name its files by, and leaves at once
        os.write(write_end, f"{metrics._process_id()} {os.getpid()}".encode())
        os._exit(0)
    os.close(write_end)
    named, own = os.read(read_end, 64).decode().split()
    os.waitpid(child, 0)
    os.close(read_end)
    assert named == own and int(own) != os.getpid()
