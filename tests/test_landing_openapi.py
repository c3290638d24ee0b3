"""The first things a newcomer and an integrator meet: ``GET /``, ``/cds-services/`` and the
OpenAPI 3.1 description at ``/openapi.json``, over a real HTTP server.

The description is checked by a maintained validator (openapi-spec-validator), compared with the
app's own URL map so that no endpoint goes undescribed, and the service's real answers are
validated against the response schemas it publishes.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urljoin

import pytest
import requests
from openapi_schema_validator import OAS31Validator
from openapi_spec_validator import validate

import fhir_fixtures
from service.app import create_app
from service.storage.feedback import MemoryFeedbackStore
from tests.conftest import make_settings
from tests.servers import live_app


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    app = create_app(make_settings(tmp_path_factory.mktemp("landing")), store=MemoryFeedbackStore())
    with live_app(app) as base:
        yield base, app
    app.extensions["ivig_cds"].close()


@pytest.fixture(scope="module")
def document(served) -> dict[str, Any]:
    base, _ = served
    r = requests.get(f"{base}/openapi.json", timeout=10)
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("application/json")
    return r.json()


def _conforms(document: dict[str, Any], path: str, method: str, status: int, body: Any) -> None:
    """``body`` is valid against the JSON schema the description gives for this answer."""
    response = document["paths"][path][method]["responses"][str(status)]
    schema = response["content"]["application/json"]["schema"]
    OAS31Validator({**schema, "components": document["components"]}).validate(body)


# ------------------------------------------------------------------ GET /


def test_landing_page_says_what_the_service_is_and_links_what_a_newcomer_needs(served):
    base, app = served
    r = requests.get(f"{base}/", timeout=10)
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/html")
    assert "default-src 'none'" in r.headers["Content-Security-Policy"] and "<script" not in r.text
    html = r.text
    assert "CDS Hooks 2.0.1" in html and "IgM deficiency" in html
    assert re.search(rf'id="discovery">{re.escape(base)}/cds-services<', html), "the discovery URL, absolute"
    for service in app.extensions["ivig_cds"].services.values():
        assert f"<code>{service.id}</code>" in html and f"<code>{service.hook}</code>" in html
    links = set(re.findall(r'href="([^"]+)"', html))
    samples = [n for n in fhir_fixtures.scenario_names() if fhir_fixtures.load_json(n, "expected.json").get("sample")]
    assert {f"/smart/app?fixture={n}" for n in samples} <= links
    assert {"/healthz", "/openapi.json", "/cds-services", "/smart/app", "/readyz", "/metrics"} <= links
    for link in sorted(links):
        if link.startswith("/"):
            assert requests.get(urljoin(base, link), timeout=30).status_code == 200, link


def test_discovery_answers_with_and_without_the_trailing_slash(served):
    base, _ = served
    plain = requests.get(f"{base}/cds-services", timeout=10)
    slash = requests.get(f"{base}/cds-services/", timeout=10, allow_redirects=False)
    assert plain.status_code == slash.status_code == 200
    assert slash.json() == plain.json() and len(plain.json()["services"]) == 3


# ------------------------------------------------------------------ /openapi.json


def test_openapi_document_is_valid_openapi_3_1(document):
    validate(document)  # raises OpenAPIValidationError naming the first problem
    assert document["openapi"].startswith("3.1.")


def test_every_endpoint_of_the_app_is_described(served, document):
    _, app = served
    services = app.extensions["ivig_cds"].services
    described = {(path, method.upper()) for path, item in document["paths"].items() for method in item}
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":  # Flask's own /static/, with no files behind it
            continue
        paths = [re.sub(r"<(?:[^:>]+:)?([^>]+)>", r"{\1}", rule.rule)]
        if "<service_id>" in rule.rule:  # described per published service: each has its own request body
            paths = [rule.rule.replace("<service_id>", sid) for sid in services]
        for path in paths:
            if path.endswith("/") and path != "/":  # /cds-services/ is described with /cds-services
                path = path.rstrip("/")
            for method in rule.methods - {"HEAD", "OPTIONS"}:
                assert (path, method) in described, f"{method} {path} is not in /openapi.json"


def test_the_published_request_schemas_follow_the_request_models(document):
    from service.protocol.models import OUTCOMES, REQUIRED_CONTEXT

    schemas = document["components"]["schemas"]
    for hook, required in REQUIRED_CONTEXT.items():
        name = "".join(p.capitalize() for p in hook.split("-")) + "Request"
        assert schemas[name]["properties"]["context"]["required"] == list(required)
        assert schemas[name]["properties"]["hook"] == {"const": hook}
    assert schemas["FeedbackItem"]["properties"]["outcome"]["enum"] == list(OUTCOMES)


def test_real_answers_match_the_published_schemas(served, document):
    base, _ = served
    discovery = requests.get(f"{base}/cds-services", timeout=10)
    _conforms(document, "/cds-services", "get", 200, discovery.json())

    body = fhir_fixtures.load_json("sample-isolated-igm", "request-order-sign.json")
    schema = document["components"]["schemas"]["OrderSignRequest"]
    OAS31Validator({**schema, "components": document["components"]}).validate(body)
    answer = requests.post(f"{base}/cds-services/ivig-order-sign", json=body, timeout=30)
    assert answer.status_code == 200 and answer.json()["cards"]
    _conforms(document, "/cds-services/ivig-order-sign", "post", 200, answer.json())

    card = answer.json()["cards"][0]
    feedback = {"feedback": [{"card": card["uuid"], "outcome": "overridden",
                              "outcomeTimestamp": datetime.now(timezone.utc).isoformat()}]}
    OAS31Validator({**document["components"]["schemas"]["Feedback"],
                    "components": document["components"]}).validate(feedback)
    stored = requests.post(f"{base}/cds-services/ivig-order-sign/feedback", json=feedback, timeout=10)
    assert stored.status_code == 200
    _conforms(document, "/cds-services/ivig-order-sign/feedback", "post", 200, stored.json())

    bad = requests.post(f"{base}/cds-services/ivig-patient-view", json={"hook": "patient-view"}, timeout=10)
    assert bad.status_code == 400
    _conforms(document, "/cds-services/ivig-patient-view", "post", 400, bad.json())
    for path, status in (("/healthz", 200), ("/readyz", 200)):
        r = requests.get(f"{base}{path}", timeout=10)
        assert r.status_code == status
        _conforms(document, path, "get", status, r.json())
    view = requests.get(f"{base}/smart/api/patient?fixture=sample-hyper-igm", timeout=30)
    _conforms(document, "/smart/api/patient", "get", 200, view.json())
    missing = requests.get(f"{base}/smart/api/patient?fixture=no-such-scenario", timeout=10)
    assert missing.status_code == 400
    _conforms(document, "/smart/api/patient", "get", 400, missing.json())


def test_the_description_says_when_a_token_is_required(make_app):
    open_app = make_app().test_client().get("/openapi.json").get_json()
    sandbox = make_app(profile="sandbox").test_client().get("/openapi.json").get_json()
    hook = "/cds-services/ivig-patient-view"
    assert {} in open_app["paths"][hook]["post"]["security"], "development: a token is optional"
    assert sandbox["paths"][hook]["post"]["security"] == [{"cdsClientJwt": []}]
    assert sandbox["paths"][f"{hook}/feedback"]["post"]["security"] == [{"cdsClientJwt": []}]
    validate(sandbox)


def test_the_servers_url_is_the_one_clients_call(make_app):
    doc = make_app(**{"security.public_base_url": "https://cds.example.org/ivig"}).test_client() \
        .get("/openapi.json").get_json()
    assert doc["servers"] == [{"url": "https://cds.example.org/ivig"}]
