"""No access token, JWT, patient id, name or birthDate in any log line, over full request cycles.

The app runs on a real local server with the service's own logging setup (JSON lines, root at
DEBUG so that nothing is filtered out by level); every record of every logger is captured and
rendered with the service's formatter, and its plain message is checked as well.
"""

from __future__ import annotations

import logging
import time
import uuid
from unittest import mock

import pytest
import requests

from service.app import create_app
from service.ops.logging import JsonFormatter, configure_logging
from service.storage.feedback import MemoryFeedbackStore
from tests.security_helpers import (PATIENT_VIEW, bearer, claims, json_server, new_key, secure_settings, sign,
                                    trusted_issuer)
from tests.servers import live_app


class Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.lines: list[str] = []
        self.formatter_ = JsonFormatter()

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.formatter_.format(record))
        self.lines.append(record.getMessage())


@pytest.fixture
def captured():
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    werkzeug_level = logging.getLogger("werkzeug").level
    configure_logging("DEBUG")
    handler = Capture()
    root.addHandler(handler)
    try:
        yield handler
    finally:
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
        logging.getLogger("werkzeug").setLevel(werkzeug_level)


def test_full_request_cycles_leave_no_secrets_or_identifiers_in_logs(tmp_path, captured):
    key = new_key("ES384")
    patient_id = f"pt-{uuid.uuid4().hex}"
    family, given, birth_date = "Zyxwarblington", "Quillimena", "1937-04-19"
    access_token = f"at-{uuid.uuid4().hex}{uuid.uuid4().hex}"
    patient = {"resourceType": "Patient", "id": patient_id, "birthDate": birth_date, "gender": "female",
               "name": [{"family": family, "given": [given], "text": f"{given} {family}"}],
               "identifier": [{"system": "urn:mrn", "value": patient_id}]}
    empty = {"resourceType": "Bundle", "type": "searchset", "entry": []}
    tokens: list[str] = []

    def token(url: str, **extra) -> dict[str, str]:
        tokens.append(sign(key, claims(url, tenant=f"tenant-{patient_id}", **extra)))
        return bearer(tokens[-1])

    def body(**extra):
        out = {"hook": "patient-view", "hookInstance": str(uuid.uuid4()),
               "context": {"userId": "Practitioner/doc-1", "patientId": patient_id},
               "prefetch": {"patient": patient, "immunoglobulins": empty}}
        out.update(extra)
        return {k: v for k, v in out.items() if v is not None}

    with json_server(empty, routes={"/fhir/Patient": patient}) as fhir:
        # the server's port is known only once it listens: the audience follows its Host header
        settings = secure_settings(tmp_path, [trusted_issuer(key)], **{"security.public_base_url": None,
                                                                       "security.behind_proxy": True})
        app = create_app(settings, store=MemoryFeedbackStore())
        with live_app(app) as base:
            hook_url = f"{base}/cds-services/{PATIENT_VIEW}"
            statuses = {}
            # valid call, patient with name and birthDate in prefetch
            statuses["valid"] = requests.post(hook_url, json=body(), headers=token(hook_url), timeout=30).status_code
            # fhirAuthorization with an access token, data to be read from fhirServer
            auth_body = body(fhirServer=fhir.url + "/fhir", prefetch={"patient": patient},
                             fhirAuthorization={"access_token": access_token, "token_type": "Bearer",
                                                "expires_in": 300, "scope": "patient/*.read",
                                                "subject": patient_id, "patient": patient_id})
            statuses["fhir"] = requests.post(hook_url, json=auth_body, headers=token(hook_url), timeout=30).status_code
            # 400: the patient's data in a malformed request
            bad = body(context={"userId": 7, "patientId": patient_id, "encounterId": [family, birth_date]})
            statuses["400"] = requests.post(hook_url, json=bad, headers=token(hook_url), timeout=30).status_code
            # 401: expired token, and a token whose claims carry the patient's data
            now = int(time.time())
            statuses["401"] = requests.post(hook_url, json=body(), timeout=30,
                                            headers=token(hook_url, iat=now - 900, exp=now - 600)).status_code
            statuses["401b"] = requests.post(hook_url, json=body(), timeout=30,
                                             headers=token(hook_url, iss=f"https://{patient_id}.example/",
                                                           sub=family)).status_code
            # 404: unknown service
            missing_url = f"{base}/cds-services/no-such-service"
            statuses["404"] = requests.post(missing_url, json=body(), headers=token(missing_url), timeout=30).status_code
            # 412: nothing sent, nowhere to read from
            statuses["412"] = requests.post(hook_url, json=body(prefetch=None), headers=token(hook_url),
                                            timeout=30).status_code
            # feedback
            fb_url = hook_url + "/feedback"
            fb = {"feedback": [{"card": str(uuid.uuid4()), "outcome": "overridden",
                                "outcomeTimestamp": "2026-01-01T12:00:00.000Z",
                                "overrideReason": {"userComment": f"{given} {family} {birth_date}"}}]}
            statuses["feedback"] = requests.post(fb_url, json=fb, headers=token(fb_url), timeout=30).status_code
            # 500: a handler that fails with the patient's data in its exception message
            service = app.extensions["ivig_cds"].services[PATIENT_VIEW]

            def explode(request):
                raise ValueError(f"cannot handle {patient_id} {family} {birth_date} {access_token}")

            app.extensions["ivig_cds"].answers.clear()  # else the memo answers as for the valid call above
            with mock.patch.dict(app.extensions["ivig_cds"].services,
                                 {PATIENT_VIEW: type(service)(**{**service.__dict__, "handler": explode,
                                                                 "at_once": explode})}):
                statuses["500"] = requests.post(hook_url, json=body(), headers=token(hook_url), timeout=30).status_code
        app.extensions["ivig_cds"].close()

    assert statuses["valid"] == 200 and statuses["fhir"] == 200, statuses
    assert (statuses["400"], statuses["401"], statuses["401b"], statuses["404"], statuses["412"],
            statuses["500"]) == (400, 401, 401, 404, 412, 500), statuses
    assert statuses["feedback"] == 200, statuses
    # the fhirAuthorization call really read from fhirServer with the access token
    assert any(h == f"Bearer {access_token}" for h in fhir.auth_headers), fhir.hits

    secrets = {"access token": access_token, "patient id": patient_id, "family name": family,
               "given name": given, "birthDate": birth_date}
    for i, t in enumerate(tokens):
        secrets[f"jwt {i}"] = t
        secrets[f"jwt {i} signature"] = t.split(".")[2]
        secrets[f"jwt {i} payload"] = t.split(".")[1]
    lines = captured.lines
    assert any('"status":500' in line for line in lines)  # the access log saw every call
    assert any('"reason":"expired"' in line for line in lines)  # and the auth failures
    leaks = [(what, line) for line in lines for what, value in secrets.items() if value in line]
    assert not leaks, leaks[:5]


def test_unknown_service_ids_from_the_url_never_reach_the_log(caplog, tmp_path):
    import logging

    from service.app import create_app
    from service.settings import load_settings
    from service.storage.feedback import MemoryFeedbackStore

    app = create_app(load_settings(environ={}, overrides={"data_dir": str(tmp_path)}), store=MemoryFeedbackStore())
    with caplog.at_level(logging.INFO, logger="ivig_cds.access"):
        app.test_client().post("/cds-services/Patient-Jane-Doe-1970", json={})
        app.test_client().get("/cds-services")
    records = [r for r in caplog.records if r.name == "ivig_cds.access"]
    assert records and all(getattr(r, "service", None) in (None, "ivig-order-sign", "ivig-patient-view",
                                                            "ivig-order-select") for r in records)
    assert not any("Jane" in str(vars(r)) for r in records)
