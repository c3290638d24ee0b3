"""CDS Hooks 2.0.1 at the edge, over Flask's test client: discovery, the spec's own example
requests, every error answer, feedback, CORS and liveness.

The protocol layer is what every EHR (and the CDS Hooks sandbox) sees first; these tests pin
its answers so that a change in the rules can never turn a bad request into a 500 or a valid
one into a 400. Nothing here may reach a host outside this machine: ``no_outside_network``
refuses (and fails the test on) any such attempt.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import io
import ipaddress
import json
import re
import socket
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest
from flask.testing import FlaskClient

import hooks
from service.ops.logging import JsonFormatter
from service.settings import LimitSettings
from tests.conftest import REFERENCE, SHARED

SPEC = REFERENCE / "spec-2.0.1"
CARD_TOPICS = SHARED / "contract" / "card-topics.md"
HOOKS = ("patient-view", "order-sign", "order-select")
SERVICE_ID = {s.hook: s.id for s in hooks.SERVICES.values()}
DEFINITION = {s.hook: s for s in hooks.SERVICES.values()}
#: Context fields each hook requires (CDS Hooks Library 1.0.1), written out independently of service/protocol/models.py.
REQUIRED_CONTEXT = {
    "patient-view": ("userId", "patientId"),
    "order-sign": ("userId", "patientId", "draftOrders"),
    "order-select": ("userId", "patientId", "selections", "draftOrders"),
}
#: Prefetch tokens CDS Hooks 2.0.1 defines (only first-level primitive context fields qualify).
SPEC_TOKENS = {"context.patientId", "context.userId", "context.encounterId", "userPractitionerId",
               "userPractitionerRoleId", "userPatientId", "userRelatedPersonId"}
DEFAULT_MAX_BODY = LimitSettings().max_body_bytes  # the shipped default, whatever it is
NEEDS_SHARED = f"{SHARED} is absent: the shared CDS Hooks reference data is needed (it exists on the CI machine)"


# ------------------------------------------------------------------ no traffic off this machine

def _is_loopback(host: Any) -> bool:
    text = host.decode() if isinstance(host, bytes) else str(host)
    if text == "localhost":
        return True
    try:
        return ipaddress.ip_address(text.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


@contextlib.contextmanager
def loopback_only() -> Iterator[list[str]]:
    """Refuse, and record, every name lookup or connection to a host other than this machine."""
    attempts: list[str] = []
    real_getaddrinfo = socket.getaddrinfo
    real_connect = socket.socket.connect
    real_connect_ex = socket.socket.connect_ex

    def getaddrinfo(host, *args, **kwargs):
        if host is not None and not _is_loopback(host):
            attempts.append(f"lookup {host!r}")
            raise socket.gaierror(socket.EAI_NONAME, "blocked by the test: not this machine")
        return real_getaddrinfo(host, *args, **kwargs)

    def _check(sock: socket.socket, address: Any) -> None:
        if sock.family in (socket.AF_INET, socket.AF_INET6) and not _is_loopback(address[0]):
            attempts.append(f"connect {address!r}")
            raise ConnectionRefusedError("blocked by the test: not this machine")

    def connect(self, address):
        _check(self, address)
        return real_connect(self, address)

    def connect_ex(self, address):
        _check(self, address)
        return real_connect_ex(self, address)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket, "getaddrinfo", getaddrinfo)
        mp.setattr(socket.socket, "connect", connect)
        mp.setattr(socket.socket, "connect_ex", connect_ex)
        yield attempts


@pytest.fixture(autouse=True)
def no_outside_network() -> Iterator[None]:
    with loopback_only() as attempts:
        yield
    assert attempts == [], f"the service tried to reach outside this machine: {attempts}"


@contextlib.contextmanager
def closed_loopback_port() -> Iterator[int]:
    """A loopback port that is bound but never listens: connecting to it is refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


@pytest.fixture
def dead_fhir_server() -> Iterator[str]:
    with closed_loopback_port() as port:
        yield f"http://127.0.0.1:{port}/fhir"


# ------------------------------------------------------------------ apps and requests

def service_url(hook: str) -> str:
    return f"/cds-services/{SERVICE_ID[hook]}"


def patient(pid: str = "p1") -> dict[str, Any]:
    return {"resourceType": "Patient", "id": pid, "birthDate": "1970-01-01", "gender": "female"}


def searchset(*resources: dict[str, Any]) -> dict[str, Any]:
    bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset", "total": len(resources)}
    if resources:
        bundle["entry"] = [{"resource": r} for r in resources]
    return bundle


def full_prefetch(hook: str, pid: str = "p1") -> dict[str, Any]:
    """Every declared key answered: the Patient, and empty searches (a patient with no Ig data)."""
    return {key: patient(pid) if template.startswith("Patient/") else searchset()
            for key, template in DEFINITION[hook].prefetch.items()}


def draft_orders(pid: str = "p1") -> dict[str, Any]:
    """A draft order that is no immune globulin: nothing for the IVIG rules to say."""
    return {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": {
        "resourceType": "MedicationRequest", "id": "mr1", "status": "draft", "intent": "order",
        "subject": {"reference": f"Patient/{pid}"},
        "medicationCodeableConcept": {"text": "amoxicillin 500 mg capsule"}}}]}


def valid_request(hook: str, *, prefetch: bool = True, pid: str = "p1") -> dict[str, Any]:
    context: dict[str, Any] = {"userId": "Practitioner/u1", "patientId": pid}
    if hook in ("order-sign", "order-select"):
        context["draftOrders"] = draft_orders(pid)
    if hook == "order-select":
        context["selections"] = ["MedicationRequest/mr1"]
    body: dict[str, Any] = {"hook": hook, "hookInstance": str(uuid.uuid4()), "context": context}
    if prefetch:
        body["prefetch"] = full_prefetch(hook, pid)
    return body


def post_json(client: FlaskClient, url: str, body: Any, **kwargs: Any):
    return client.post(url, data=json.dumps(body), content_type="application/json", **kwargs)


def nested(depth: int) -> Any:
    """A JSON value whose containers nest exactly ``depth`` levels deep."""
    value: Any = "leaf"
    for level in range(depth):
        value = {"k": value} if level % 2 else [value]
    return value


def with_depth(body: dict[str, Any], depth: int) -> dict[str, Any]:
    """``body`` (itself nesting less deeply) with an ``extension`` that makes it nest exactly ``depth`` levels."""
    return {**body, "extension": {"org.example.deep": nested(depth - 2)}}


# ------------------------------------------------------------------ what every answer looks like

def empty_values(value: Any, path: str = "$") -> list[str]:
    """Paths of null, "", [] and {} values (CDS Hooks 2.0.1 prohibits them), except the top-level cards."""
    found: list[str] = []
    if isinstance(value, dict):
        for key, item in value.items():
            here = f"{path}.{key}"
            if item is None or item == "" or item == [] or item == {}:
                if here != "$.cards":
                    found.append(here)
            found += empty_values(item, here)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            found += empty_values(item, f"{path}[{i}]")
    return found


def topic_codes() -> set[str] | None:
    """The closed list of card topic codes from the contract, when the shared folder is here."""
    if not CARD_TOPICS.is_file():
        return None
    return set(re.findall(r"^\| `([a-z0-9-]+)` \|", CARD_TOPICS.read_text(encoding="utf-8"), re.M))


def assert_cds_response(resp) -> dict[str, Any]:
    """A 200 CDS Hooks response: cards serialised per spec and per the card-topics contract."""
    assert resp.status_code == 200, resp.get_data(as_text=True)
    assert resp.mimetype == "application/json"
    body = resp.get_json()
    assert isinstance(body, dict) and isinstance(body.get("cards"), list), body
    assert set(body) <= {"cards", "systemActions"}, body
    if "systemActions" in body:
        assert isinstance(body["systemActions"], list) and body["systemActions"]
    assert empty_values(body) == []
    codes = topic_codes()
    for card in body["cards"]:
        assert isinstance(card.get("uuid"), str) and card["uuid"], card
        assert isinstance(card.get("summary"), str) and 0 < len(card["summary"]) < 140, card
        assert card.get("indicator") in ("info", "warning", "critical"), card
        assert isinstance(card.get("source"), dict) and card["source"].get("label"), card
        assert card["source"].get("topic", {}).get("code"), card
        if codes is not None:
            assert card["source"]["topic"]["code"] in codes, card
        if "suggestions" in card:
            assert card.get("selectionBehavior") in ("at-most-one", "any"), card
            for suggestion in card["suggestions"]:
                assert suggestion.get("label"), suggestion
                for action in suggestion.get("actions", []):
                    assert action.get("type") in ("create", "update", "delete") and action.get("description")
        for reason in card.get("overrideReasons", []):
            assert reason.get("code") and reason.get("system") and reason.get("display"), reason
        for link in card.get("links", []):
            assert link.get("label") and link.get("url") and link.get("type") in ("absolute", "smart"), link
    return body


def assert_error(resp, status: int, *names: str) -> dict[str, Any]:
    """An error answer: the status, a JSON body with error and message, and every name in it."""
    assert resp.status_code == status, f"{resp.status_code} {resp.get_data(as_text=True)[:300]}"
    assert resp.mimetype == "application/json", resp.headers
    body = resp.get_json()
    assert isinstance(body, dict), body
    assert isinstance(body.get("error"), str) and body["error"], body
    assert isinstance(body.get("message"), str) and body["message"], body
    text = " ".join([body["message"], *body.get("details", [])])
    for name in names:
        assert name in text, f"{name!r} not named in {body}"
    return body


def assert_details(resp, status: int, *names: str) -> list[str]:
    """An error answer whose ``details`` (not just its message) name each of ``names``."""
    body = assert_error(resp, status)
    details = body.get("details")
    assert isinstance(details, list) and all(isinstance(d, str) for d in details), body
    for name in names:
        assert any(name in d for d in details), f"{name!r} not named in details {details}"
    return details


# ------------------------------------------------------------------ discovery

def test_discovery_has_the_2_0_1_shape(client):
    resp = client.get("/cds-services")
    assert resp.status_code == 200
    assert resp.mimetype == "application/json"
    body = resp.get_json()
    assert list(body) == ["services"] and isinstance(body["services"], list)
    for service in body["services"]:
        for field in ("hook", "id", "title", "description"):
            assert isinstance(service.get(field), str) and service[field].strip(), (field, service)
        assert re.fullmatch(r"[A-Za-z0-9._~-]+", service["id"]), "the id is used as a URL path segment"
        assert isinstance(service["prefetch"], dict) and service["prefetch"], service["id"]
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in service["prefetch"].items())
        if "usageRequirements" in service:
            assert isinstance(service["usageRequirements"], str)
        if "extension" in service:
            assert isinstance(service["extension"], dict)
        assert set(service) <= {"hook", "id", "title", "description", "prefetch", "usageRequirements", "extension"}
    hooks_served = sorted(s["hook"] for s in body["services"])
    assert hooks_served == sorted(HOOKS), "exactly one service per hook"
    assert len({s["id"] for s in body["services"]}) == len(body["services"])


def test_discovery_has_no_empty_values(client):
    body = client.get("/cds-services").get_json()
    assert empty_values(body) == []


def test_prefetch_templates_are_relative_queries_with_spec_tokens_only(client):
    for service in client.get("/cds-services").get_json()["services"]:
        for key, template in service["prefetch"].items():
            path = template.split("?", 1)[0]  # code system URLs may appear in the query part
            assert "://" not in path and not path.startswith("/"), (key, template)
            tokens = set(re.findall(r"\{\{\s*([^}]*?)\s*\}\}", template))
            assert tokens and tokens <= SPEC_TOKENS, (key, tokens)
            assert "{" not in re.sub(r"\{\{[^}]*\}\}", "", template), f"stray brace in {template}"


def test_discovery_asks_for_the_data_the_rules_need(client):
    for service in client.get("/cds-services").get_json()["services"]:
        types = {template.split("?", 1)[0].split("/", 1)[0] for template in service["prefetch"].values()}
        assert {"Patient", "Observation", "Condition", "Immunization"} <= types, service["id"]
        assert types & {"MedicationRequest", "MedicationAdministration"}, service["id"]


def test_every_discovered_service_answers_at_its_url(client):
    for service in client.get("/cds-services").get_json()["services"]:
        assert_cds_response(post_json(client, f"/cds-services/{service['id']}", valid_request(service["hook"])))


# ------------------------------------------------------------------ the spec's own requests

def _load(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def _request_examples(*wanted_hooks: str) -> list[Any]:
    if not SPEC.is_dir():
        return [pytest.param(None, marks=pytest.mark.skip(reason=NEEDS_SHARED))]
    found = []
    for path in sorted(SPEC.glob("*.json")):
        body = _load(path)
        if isinstance(body, dict) and body.get("hook") in wanted_hooks and "hookInstance" in body:
            found.append(pytest.param(path, id=path.name))
    return found


def _loopback(body: dict[str, Any], fhir_server: str) -> dict[str, Any]:
    body = copy.deepcopy(body)
    if "fhirServer" in body:
        body["fhirServer"] = fhir_server
    return body


def test_the_spec_examples_are_all_found():
    if not SPEC.is_dir():
        pytest.skip(NEEDS_SHARED)
    hooks_seen = [p.values[0] for p in _request_examples(*HOOKS)]
    assert len(hooks_seen) >= 10
    for hook in HOOKS:
        assert any(_load(p)["hook"] == hook for p in hooks_seen), hook
    assert len(_feedback_examples()) == 3


@pytest.mark.parametrize("path", _request_examples("order-sign", "order-select"))
def test_spec_order_examples_get_no_cards(client, dead_fhir_server, path):
    """The examples order a diet and a non-IVIG drug: no patient data needed, nothing to say."""
    body = _loopback(_load(path), dead_fhir_server)
    resp = post_json(client, service_url(body["hook"]), body)
    assert assert_cds_response(resp) == {"cards": []}


@pytest.mark.parametrize("path", _request_examples("patient-view"))
def test_spec_patient_view_examples_are_answered(client, dead_fhir_server, path):
    """No data and no way to read it is the spec's 412; the JSON body says what is missing."""
    body = _loopback(_load(path), dead_fhir_server)
    resp = post_json(client, service_url("patient-view"), body)
    ours = set(DEFINITION["patient-view"].prefetch)
    required = sorted(f"prefetch.{key}" for key in DEFINITION["patient-view"].required_prefetch)
    assert not ours & set(body.get("prefetch", {})), "no spec example carries our prefetch keys"
    if "patientId" not in body["context"]:  # the extension example: no patient named at all
        assert_details(resp, 412, "context.patientId")
    else:  # no fhirServer, or one that refuses connections: the data cannot be got
        assert_details(resp, 412, *required)


@pytest.mark.parametrize("path", _request_examples(*HOOKS))
def test_spec_examples_sent_to_another_service_are_400_for_the_hook(client, dead_fhir_server, path):
    """The first complaint names the hook: the EHR called the wrong service."""
    body = _loopback(_load(path), dead_fhir_server)
    for hook in HOOKS:
        if hook != body["hook"]:
            details = assert_details(post_json(client, service_url(hook), body), 400, "hook")
            assert details[0].startswith("hook:"), details


# ------------------------------------------------------------------ valid requests and prefetch

@pytest.mark.parametrize("hook", HOOKS)
def test_full_prefetch_gets_cards(client, hook):
    assert_cds_response(post_json(client, service_url(hook), valid_request(hook)))


@pytest.mark.parametrize("content_type", ["application/json; charset=utf-8", "application/fhir+json",
                                          "APPLICATION/JSON"])
def test_json_media_types_are_accepted(client, content_type):
    resp = client.post(service_url("patient-view"), data=json.dumps(valid_request("patient-view")),
                       content_type=content_type)
    assert_cds_response(resp)


def test_extra_fields_and_extension_are_tolerated(client):
    body = valid_request("patient-view")
    body["context"]["encounterId"] = "e1"
    body["context"]["selections"] = ["ServiceRequest/1"]  # the sandbox's PAMA screen sends extra context
    body["extension"] = {"com.example.timestamp": "2017-11-27T22:13:25Z"}
    body["prefetch"]["somethingElse"] = {"resourceType": "Patient", "id": "x"}
    body["fhirAuthorization"] = {"access_token": "t", "token_type": "Bearer", "expires_in": 300,
                                 "scope": "user/Patient.read", "subject": "cds-service4"}
    body["fhirServer"] = "http://127.0.0.1:9/fhir"
    assert_cds_response(post_json(client, service_url("patient-view"), body))


@pytest.mark.parametrize("hook", HOOKS)
@pytest.mark.parametrize("absent", [None, {"resourceType": "OperationOutcome",
                                           "issue": [{"severity": "error", "code": "not-found"}]}],
                         ids=["null", "OperationOutcome"])
def test_null_or_operation_outcome_prefetch_counts_as_missing(client, hook, absent):
    """Not an error (400): the key is missing, and with no fhirServer that is the spec's 412."""
    body = valid_request(hook)
    for key in DEFINITION[hook].required_prefetch:
        body["prefetch"][key] = copy.deepcopy(absent)
    resp = post_json(client, service_url(hook), body)
    if hook == "patient-view":
        assert_details(resp, 412, *(f"prefetch.{key}" for key in DEFINITION[hook].required_prefetch))
    else:  # no immune globulin in the draft orders: the order hooks need no patient data at all
        assert_cds_response(resp)


@pytest.mark.parametrize("hook", HOOKS)
def test_optional_prefetch_null_or_operation_outcome_is_fine(client, hook):
    body = valid_request(hook)
    optional = sorted(set(DEFINITION[hook].prefetch) - DEFINITION[hook].required_prefetch)
    assert optional
    for i, key in enumerate(optional):
        body["prefetch"][key] = None if i % 2 else {"resourceType": "OperationOutcome", "issue": [
            {"severity": "error", "code": "forbidden"}]}
    assert_cds_response(post_json(client, service_url(hook), body))


def test_missing_prefetch_keys_are_412_naming_them(client):
    body = valid_request("patient-view")
    del body["prefetch"]["immunoglobulins"]
    assert_details(post_json(client, service_url("patient-view"), body), 412, "prefetch.immunoglobulins")


# ------------------------------------------------------------------ malformed bodies

@pytest.mark.parametrize("raw", [b"{not json", b"{'hook': 'x'}", b'{"hook": "order-sign",}', b"NaN", b"\xff\xfe{}",
                                 b'"\\ud800"', b"1e999", b"[1, 2"],
                         ids=["garbage", "single-quotes", "trailing-comma", "nan", "not-utf8", "lone-surrogate",
                              "infinity", "truncated"])
@pytest.mark.parametrize("target", ["service", "feedback"])
def test_not_json_is_400(client, raw, target):
    url = service_url("order-sign") + ("/feedback" if target == "feedback" else "")
    assert_error(client.post(url, data=raw, content_type="application/json"), 400)


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded",
                                          "multipart/form-data; boundary=x", "application/xml", "text/json"])
@pytest.mark.parametrize("target", ["service", "feedback"])
def test_wrong_or_missing_content_type_is_400(client, content_type, target):
    url = service_url("patient-view") + ("/feedback" if target == "feedback" else "")
    kwargs = {"content_type": content_type} if content_type else {}
    resp = client.post(url, data=json.dumps(valid_request("patient-view")), **kwargs)
    assert_error(resp, 400, "Content-Type")


@pytest.mark.parametrize("raw", [b"", b"   \n\t "], ids=["empty", "whitespace"])
@pytest.mark.parametrize("target", ["service", "feedback"])
def test_empty_body_is_400(client, raw, target):
    url = service_url("order-sign") + ("/feedback" if target == "feedback" else "")
    assert_error(client.post(url, data=raw, content_type="application/json"), 400, "empty")


@pytest.mark.parametrize("value", [[], [{"hook": "order-sign"}], "order-sign", 1, 1.5, True, None],
                         ids=["array", "array-of-request", "string", "int", "float", "bool", "null"])
@pytest.mark.parametrize("hook", HOOKS)
def test_json_that_is_not_an_object_is_400(client, value, hook):
    assert_error(post_json(client, service_url(hook), value), 400, "object")
    assert_error(post_json(client, service_url(hook) + "/feedback", value), 400, "feedback")


# ------------------------------------------------------------------ the envelope

@pytest.mark.parametrize("hook", HOOKS)
@pytest.mark.parametrize("value", ["<absent>", "", "   ", None, 5, ["order-sign"], {"hook": "x"}])
def test_missing_or_blank_hook_is_400(client, hook, value):
    body = valid_request(hook)
    if value == "<absent>":
        del body["hook"]
    else:
        body["hook"] = value
    assert_details(post_json(client, service_url(hook), body), 400, "hook")


@pytest.mark.parametrize(("hook", "other"), [(h, o) for h in HOOKS for o in (*HOOKS, "encounter-start", "Patient-View")
                                             if o != h])
def test_hook_mismatch_is_400(client, hook, other):
    body = valid_request(hook)
    body["hook"] = other
    details = assert_details(post_json(client, service_url(hook), body), 400, "hook")
    assert any(hook in d and other in d for d in details), details


@pytest.mark.parametrize("hook", HOOKS)
@pytest.mark.parametrize("value", ["<absent>", "", " ", None, 5, ["d1577c69"], {"id": "x"}])
def test_missing_or_bad_hook_instance_is_400(client, hook, value):
    body = valid_request(hook)
    if value == "<absent>":
        del body["hookInstance"]
    else:
        body["hookInstance"] = value
    assert_details(post_json(client, service_url(hook), body), 400, "hookInstance")


@pytest.mark.parametrize("hook", HOOKS)
@pytest.mark.parametrize("value", ["<absent>", None, [], ["userId"], "context", 1])
def test_missing_or_bad_context_is_400(client, hook, value):
    body = valid_request(hook)
    if value == "<absent>":
        del body["context"]
    else:
        body["context"] = value
    assert_details(post_json(client, service_url(hook), body), 400, "context")


def _required_fields() -> list[Any]:
    return [pytest.param(hook, field, id=f"{hook}-{field}") for hook in HOOKS for field in REQUIRED_CONTEXT[hook]]


@pytest.mark.parametrize(("hook", "field"), _required_fields())
@pytest.mark.parametrize("value", ["", None, 7, {"id": "x"}], ids=["blank", "null", "number", "object"])
def test_bad_required_context_field_is_400(client, hook, field, value):
    body = valid_request(hook)
    body["context"][field] = value
    assert_details(post_json(client, service_url(hook), body), 400, f"context.{field}")


@pytest.mark.parametrize(("hook", "field"), _required_fields())
def test_absent_required_context_field_is_named(client, hook, field):
    """400 for every field, except a patient-view naming no patient: its data cannot be got, so 412."""
    body = valid_request(hook)
    del body["context"][field]
    status = 412 if (hook, field) == ("patient-view", "patientId") else 400
    assert_details(post_json(client, service_url(hook), body), status, f"context.{field}")


def test_absent_patient_id_with_other_problems_is_400(client):
    body = valid_request("patient-view")
    del body["context"]["patientId"]
    body["hookInstance"] = 3
    assert_details(post_json(client, service_url("patient-view"), body), 400, "hookInstance")


@pytest.mark.parametrize("hook", ["order-sign", "order-select"])
@pytest.mark.parametrize("value", [
    [], "Bundle", {"resourceType": "Patient", "id": "p1"}, {"entry": []}, {"resourceType": "bundle"},
    {"resourceType": "Bundle", "entry": {"resource": {}}}, {"resourceType": "Bundle", "entry": [1, "x"]},
    {"resourceType": "Bundle", "entry": "MedicationRequest/mr1"},
], ids=["array", "string", "patient", "no-resourceType", "lower-case", "entry-object", "entry-scalars", "entry-string"])
def test_draft_orders_not_a_bundle_is_400(client, hook, value):
    body = valid_request(hook)
    body["context"]["draftOrders"] = value
    assert_details(post_json(client, service_url(hook), body), 400, "context.draftOrders")


def test_draft_orders_bundle_without_type_or_entries_is_accepted(client):
    """The hook library's and the sandbox's Bundles have no ``type``; an empty order list is still a list."""
    for bundle in ({"resourceType": "Bundle"}, {"resourceType": "Bundle", "entry": []},
                   {k: v for k, v in draft_orders().items() if k != "type"}):
        body = valid_request("order-sign")
        body["context"]["draftOrders"] = bundle
        assert_cds_response(post_json(client, service_url("order-sign"), body))


@pytest.mark.parametrize("value", ["MedicationRequest/mr1", [1], [""], ["ok/1", None], {"0": "a/b"}, None, 3],
                         ids=["string", "numbers", "blank", "null-item", "object", "null", "number"])
def test_selections_not_an_array_of_strings_is_400(client, value):
    body = valid_request("order-select")
    body["context"]["selections"] = value
    assert_details(post_json(client, service_url("order-select"), body), 400, "context.selections")


@pytest.mark.parametrize("value", [5, "", ["e1"], {"id": "e1"}])
def test_encounter_id_of_wrong_type_is_400(client, value):
    body = valid_request("patient-view")
    body["context"]["encounterId"] = value
    assert_details(post_json(client, service_url("patient-view"), body), 400, "context.encounterId")


@pytest.mark.parametrize("auth", [{}, {"token_type": "Bearer", "scope": "user/*.read", "subject": "s"},
                                  {"access_token": ""}, {"access_token": 42}, "some-token", ["some-token"]],
                         ids=["empty", "no-token", "blank-token", "number-token", "string", "array"])
def test_fhir_authorization_without_access_token_is_400(client, dead_fhir_server, auth):
    body = valid_request("patient-view")
    body["fhirServer"] = dead_fhir_server
    body["fhirAuthorization"] = auth
    assert_details(post_json(client, service_url("patient-view"), body), 400, "fhirAuthorization")


def test_fhir_authorization_without_fhir_server_is_400(client):
    body = valid_request("order-sign")
    body["fhirAuthorization"] = {"access_token": "opaque", "token_type": "Bearer", "expires_in": 300,
                                 "scope": "user/Patient.read", "subject": "cds-service"}
    details = assert_details(post_json(client, service_url("order-sign"), body), 400, "fhirServer")
    assert not any("opaque" in d for d in details), "the token must never be echoed"


@pytest.mark.parametrize("value", ["", "fhir.example.org", "ftp://127.0.0.1/fhir", 8080, ["http://127.0.0.1"], {}])
def test_fhir_server_that_is_not_an_http_url_is_400(client, value):
    body = valid_request("patient-view")
    body["fhirServer"] = value
    assert_details(post_json(client, service_url("patient-view"), body), 400, "fhirServer")


@pytest.mark.parametrize(("field", "value"), [("prefetch", []), ("prefetch", "Patient/1"), ("extension", []),
                                              ("extension", "x")])
def test_prefetch_and_extension_must_be_objects(client, field, value):
    body = valid_request("patient-view")
    body[field] = value
    assert_details(post_json(client, service_url("patient-view"), body), 400, field)


def test_every_problem_is_reported_at_once(client):
    body = {"hook": "order-sign", "hookInstance": "", "context": {"patientId": 1, "draftOrders": []},
            "fhirAuthorization": {"token_type": "Bearer"}}
    assert_details(post_json(client, service_url("order-sign"), body), 400, "hookInstance", "context.userId",
                   "context.patientId", "context.draftOrders", "fhirAuthorization")


# ------------------------------------------------------------------ routes and methods

@pytest.mark.parametrize("url", ["/cds-services/no-such-service", "/cds-services/no-such-service/feedback",
                                 "/cds-services/ivig", "/cds-services/%2e%2e"])
def test_unknown_service_is_404(client, url):
    assert_error(post_json(client, url, valid_request("order-sign")), 404)


def test_unknown_path_is_404_json(client):
    assert_error(client.get("/no/such/path"), 404)


def test_a_doubled_slash_is_redirected_with_a_json_body_naming_the_endpoint(client):
    """A base URL joined with a trailing slash gives '//' (a common integration slip): werkzeug
    redirects to the tidy URL, keeping the method, and the answer is JSON like any other."""
    resp = post_json(client, "/cds-services//" + SERVICE_ID["order-sign"], valid_request("order-sign"))
    body = assert_error(resp, 308)
    assert resp.headers["Location"].endswith(service_url("order-sign"))
    assert body["error"] == "moved" and service_url("order-sign") in body["message"]


@pytest.mark.parametrize("method", ["PUT", "DELETE", "GET", "PATCH"])
@pytest.mark.parametrize("hook", HOOKS)
def test_wrong_method_on_a_service_is_405(client, method, hook):
    resp = client.open(service_url(hook), method=method, data=json.dumps(valid_request(hook)),
                       content_type="application/json")
    assert_error(resp, 405)
    assert "POST" in resp.headers.get("Allow", "")


@pytest.mark.parametrize(("method", "url"), [
    ("POST", "/cds-services"), ("PUT", "/cds-services"), ("DELETE", "/cds-services"),
    ("GET", service_url("order-sign") + "/feedback"), ("PUT", service_url("order-sign") + "/feedback"),
    ("POST", "/healthz"),
])
def test_wrong_method_elsewhere_is_405(client, method, url):
    assert_error(client.open(url, method=method, data=b"{}", content_type="application/json"), 405)


# ------------------------------------------------------------------ size and depth limits

def _padded(body: dict[str, Any], size: int) -> bytes:
    """``body`` serialised to exactly ``size`` bytes by a padding extension."""
    base = json.dumps({**body, "extension": {"pad": ""}}).encode()
    assert len(base) <= size
    return json.dumps({**body, "extension": {"pad": "x" * (size - len(base))}}).encode()


def _chunked(client: FlaskClient, url: str, raw: bytes):
    """A body streamed without Content-Length, as a WSGI server hands over a chunked request."""
    resp = client.post(url, input_stream=io.BytesIO(raw), content_type="application/json",
                       headers={"Transfer-Encoding": "chunked"}, environ_overrides={"wsgi.input_terminated": True})
    assert resp.request.content_length is None, "the request must reach the app without a Content-Length"
    return resp


@pytest.mark.parametrize("limit", [2048, DEFAULT_MAX_BODY], ids=["small", "default"])
def test_body_at_the_limit_is_accepted_and_one_byte_more_is_413(make_client, limit):
    client = make_client() if limit == DEFAULT_MAX_BODY else make_client(**{"limits.max_body_bytes": limit})
    url = service_url("patient-view")
    at_limit = _padded(valid_request("patient-view"), limit)
    assert len(at_limit) == limit
    assert_cds_response(client.post(url, data=at_limit, content_type="application/json"))
    assert_cds_response(_chunked(client, url, at_limit))
    over = _padded(valid_request("patient-view"), limit + 1)
    assert_error(client.post(url, data=over, content_type="application/json"), 413)
    assert_error(_chunked(client, url, over), 413)


@pytest.mark.parametrize("limit", [2048, DEFAULT_MAX_BODY], ids=["small", "default"])
@pytest.mark.parametrize("target", ["service", "feedback"])
def test_far_too_large_body_is_413_with_or_without_content_length(make_client, limit, target):
    client = make_client() if limit == DEFAULT_MAX_BODY else make_client(**{"limits.max_body_bytes": limit})
    url = service_url("order-sign") + ("/feedback" if target == "feedback" else "")
    raw = b'{"a": "' + b"x" * (limit + 1024 * 1024) + b'"}'
    assert_error(client.post(url, data=raw, content_type="application/json"), 413)
    assert_error(_chunked(client, url, raw), 413)


def test_too_large_is_413_even_when_not_json(make_client):
    """The size is judged before anything else is read: no parsing of huge garbage."""
    client = make_client(**{"limits.max_body_bytes": 1024})
    assert_error(client.post(service_url("order-sign"), data=b"<" * 5000, content_type="application/json"), 413)


@pytest.mark.parametrize("limit", [10, 100], ids=["small", "default"])
def test_nesting_up_to_the_limit_is_accepted_and_deeper_is_400(make_client, limit):
    client = make_client() if limit == 100 else make_client(**{"limits.max_json_depth": limit})
    url = service_url("patient-view")
    assert_cds_response(post_json(client, url, with_depth(valid_request("patient-view"), limit)))
    assert_error(post_json(client, url, with_depth(valid_request("patient-view"), limit + 1)), 400, "deeper")
    feedback = {"feedback": [_feedback_item()], "extension": nested(limit)}
    assert_error(post_json(client, url + "/feedback", feedback), 400, "deeper")


@pytest.mark.parametrize("depth", [1000, 100_000])
def test_absurd_nesting_is_400_not_a_crash(client, depth):
    raw = b'{"a":' * depth + b"1" + b"}" * depth
    assert_error(client.post(service_url("order-sign"), data=raw, content_type="application/json"), 400)
    raw = b"[" * depth + b"]" * depth
    assert_error(client.post(service_url("order-sign") + "/feedback", data=raw, content_type="application/json"), 400)


# ------------------------------------------------------------------ unexpected failures

def test_a_failing_handler_is_a_generic_500_without_request_data(app, caplog):
    """Fault injection: a handler bug must not leak the request (tokens, patient ids) in the answer or the log."""
    state = app.extensions["ivig_cds"]

    def boom(request):
        raise RuntimeError(f"bug while reading {request.context['patientId']}")

    state.services["ivig-order-sign"] = dataclasses.replace(state.services["ivig-order-sign"], handler=boom,
                                                            at_once=boom)
    body = valid_request("order-sign", pid="secret-patient-4711")
    body["prefetch"] = full_prefetch("order-sign", "secret-patient-4711")
    body["fhirServer"] = "http://127.0.0.1:9/fhir"
    body["fhirAuthorization"] = {"access_token": "secret-token-0815", "token_type": "Bearer", "subject": "s"}
    resp = post_json(app.test_client(), service_url("order-sign"), body, headers={"Origin": "https://ehr.example"})
    payload = assert_error(resp, 500)
    assert "secret" not in resp.get_data(as_text=True)
    assert set(payload) == {"error", "message"}
    assert resp.headers.get("Access-Control-Allow-Origin") == "*"
    assert any("unhandled" in r.getMessage() for r in caplog.records), "the failure must be logged"
    formatter = JsonFormatter()
    for record in caplog.records:
        assert "secret" not in formatter.format(record), record.getMessage()


# ------------------------------------------------------------------ feedback

def _feedback_item(**fields: Any) -> dict[str, Any]:
    item = {"card": str(uuid.uuid4()), "outcome": "overridden", "outcomeTimestamp": "2026-01-01T12:00:00Z"}
    item.update(fields)
    return {k: v for k, v in item.items() if v is not None}


def _feedback_examples() -> list[Any]:
    if not SPEC.is_dir():
        return [pytest.param(None, marks=pytest.mark.skip(reason=NEEDS_SHARED))]
    return [pytest.param(p, id=p.name) for p in sorted(SPEC.glob("feedback-*.json"))]


@pytest.mark.parametrize("path", _feedback_examples())
@pytest.mark.parametrize("hook", HOOKS)
def test_spec_feedback_examples_are_200(client, path, hook):
    resp = post_json(client, service_url(hook) + "/feedback", _load(path))
    assert resp.status_code == 200, resp.get_data(as_text=True)
    assert resp.mimetype == "application/json"
    assert resp.get_json()["stored"] == 1


def test_sandbox_style_feedback_is_200(client):
    """The sandbox's dismiss: reason with only code and system, toISOString() timestamps."""
    body = {"feedback": [
        _feedback_item(outcomeTimestamp="2026-01-01T12:00:00.000Z",
                       overrideReason={"reason": {"code": "already-consulted",
                                                  "system": "http://example.org/reasons"}}),
        _feedback_item(outcome="accepted", outcomeTimestamp="2026-01-01T12:00:01.123Z",
                       acceptedSuggestions=[{"id": str(uuid.uuid4())}]),
        _feedback_item(overrideReason={"userComment": "seen by immunology"}),
    ]}
    resp = post_json(client, service_url("order-sign") + "/feedback", body)
    assert resp.status_code == 200, resp.get_data(as_text=True)
    assert resp.get_json()["stored"] == 3


@pytest.mark.parametrize("stamp", ["2026-01-01T12:00:00Z", "2026-01-01T12:00:00.000Z",
                                   "2026-01-01T12:00:00.123456+00:00", "2026-01-01T13:00:00+01:00",
                                   "2026-01-01t12:00:00z"])
def test_feedback_timestamps_with_a_zone_are_accepted(client, stamp):
    body = {"feedback": [_feedback_item(outcomeTimestamp=stamp)]}
    resp = post_json(client, service_url("patient-view") + "/feedback", body)
    assert resp.status_code == 200, resp.get_data(as_text=True)


BAD_ITEMS = {
    "bad-outcome": ({"outcome": "dismissed"}, "outcome"),
    "outcome-case": ({"outcome": "Accepted", "acceptedSuggestions": [{"id": "s1"}]}, "outcome"),
    "outcome-array": ({"outcome": ["overridden"]}, "outcome"),
    "no-outcome": ({"outcome": None}, "outcome"),
    "no-card": ({"card": None}, "card"),
    "blank-card": ({"card": ""}, "card"),
    "card-number": ({"card": 12}, "card"),
    "no-timestamp": ({"outcomeTimestamp": None}, "outcomeTimestamp"),
    "timestamp-not-a-time": ({"outcomeTimestamp": "yesterday"}, "outcomeTimestamp"),
    "timestamp-without-zone": ({"outcomeTimestamp": "2026-01-01T12:00:00"}, "outcomeTimestamp"),
    "timestamp-date-only": ({"outcomeTimestamp": "2026-01-01"}, "outcomeTimestamp"),
    "timestamp-number": ({"outcomeTimestamp": 1767268800}, "outcomeTimestamp"),
    "timestamp-out-of-range": ({"outcomeTimestamp": "9999-12-31T23:59:59-23:59"}, "outcomeTimestamp"),
    "accepted-without-suggestions": ({"outcome": "accepted"}, "acceptedSuggestions"),
    "accepted-empty-suggestions": ({"outcome": "accepted", "acceptedSuggestions": []}, "acceptedSuggestions"),
    "suggestions-not-objects": ({"outcome": "accepted", "acceptedSuggestions": ["s1"]}, "acceptedSuggestions"),
    "suggestion-without-id": ({"outcome": "accepted", "acceptedSuggestions": [{"uuid": "s1"}]}, "acceptedSuggestions"),
    "override-reason-string": ({"overrideReason": "other"}, "overrideReason"),
    "reason-without-code": ({"overrideReason": {"reason": {"system": "http://x"}}}, "overrideReason.reason"),
    "comment-number": ({"overrideReason": {"userComment": 5}}, "overrideReason.userComment"),
}


@pytest.mark.parametrize(("fields", "name"), list(BAD_ITEMS.values()), ids=list(BAD_ITEMS))
def test_malformed_feedback_item_is_400_naming_the_item(client, fields, name):
    body = {"feedback": [_feedback_item(), _feedback_item(**fields)]}
    resp = post_json(client, service_url("order-sign") + "/feedback", body)
    details = assert_details(resp, 400, f"feedback[1].{name}")
    assert not any(d.startswith("feedback[0]") for d in details), details


@pytest.mark.parametrize("item", [None, "card-uuid", 3, ["card"], True])
def test_feedback_item_that_is_not_an_object_is_400_naming_it(client, item):
    body = {"feedback": [_feedback_item(), item, _feedback_item()]}
    assert_details(post_json(client, service_url("order-sign") + "/feedback", body), 400, "feedback[1]")


def test_nothing_is_stored_when_one_item_is_bad(app):
    store = app.extensions["ivig_cds"].store
    body = {"feedback": [_feedback_item(), _feedback_item(outcome="nope")]}
    assert_error(post_json(app.test_client(), service_url("order-sign") + "/feedback", body), 400)
    assert store.feedback == {}


@pytest.mark.parametrize("body", [{}, {"feedback": []}, {"feedback": {}}, {"feedback": "x"}, {"feedback": None},
                                  {"Feedback": [{"card": "x"}]}],
                         ids=["no-feedback", "empty-array", "object", "string", "null", "wrong-case"])
def test_feedback_body_without_a_feedback_array_is_400(client, body):
    assert_error(post_json(client, service_url("order-sign") + "/feedback", body), 400, "feedback")


# ------------------------------------------------------------------ CORS

def _allowed(header: str) -> set[str]:
    return {part.strip().lower() for part in header.split(",") if part.strip()}


@pytest.mark.parametrize("url", ["/cds-services", service_url("order-sign"), service_url("patient-view") + "/feedback"])
def test_cors_preflight_is_answered(client, url):
    resp = client.options(url, headers={"Origin": "https://sandbox.cds-hooks.org",
                                        "Access-Control-Request-Method": "POST",
                                        "Access-Control-Request-Headers": "authorization,content-type"})
    assert resp.status_code == 204
    assert resp.headers.get("Access-Control-Allow-Origin") in ("*", "https://sandbox.cds-hooks.org")
    assert {"get", "post", "options"} <= _allowed(resp.headers.get("Access-Control-Allow-Methods", ""))
    assert {"authorization", "content-type"} <= _allowed(resp.headers.get("Access-Control-Allow-Headers", ""))
    assert resp.get_data() == b""


def test_cors_headers_on_actual_responses(client):
    origin = {"Origin": "https://sandbox.cds-hooks.org"}
    responses = [
        client.get("/cds-services", headers=origin),
        post_json(client, service_url("patient-view"), valid_request("patient-view"), headers=origin),
        post_json(client, service_url("order-sign") + "/feedback", {"feedback": [_feedback_item()]}, headers=origin),
        post_json(client, service_url("order-sign"), {"hook": "order-sign"}, headers=origin),
        post_json(client, "/cds-services/nope", valid_request("order-sign"), headers=origin),
        client.put(service_url("order-sign"), headers=origin),
        client.get("/healthz", headers=origin),
    ]
    assert [r.status_code for r in responses] == [200, 200, 200, 400, 404, 405, 200]
    for resp in responses:
        assert resp.headers.get("Access-Control-Allow-Origin") == "*", resp.status_code


def test_a_call_without_origin_gets_no_cors_headers(client):
    """An EHR's server-side call is not a browser's cross-origin request: no CORS headers to add."""
    resp = post_json(client, service_url("patient-view"), valid_request("patient-view"))
    assert resp.status_code == 200
    assert not [h for h in resp.headers.keys() if h.lower().startswith("access-control-")]


def test_cors_restricted_to_configured_origins(make_client):
    client = make_client(**{"security.cors_origins": ["https://ehr.example.org"]})
    preflight = {"Access-Control-Request-Method": "POST"}
    good = client.options(service_url("order-sign"), headers={"Origin": "https://ehr.example.org", **preflight})
    assert good.headers.get("Access-Control-Allow-Origin") == "https://ehr.example.org"
    assert "Origin" in good.headers.get("Vary", "")
    bad = client.get("/cds-services", headers={"Origin": "https://evil.example.org"})
    assert "Access-Control-Allow-Origin" not in bad.headers


def test_preflight_needs_no_token_but_the_call_does(make_client):
    """Browsers send preflights without credentials: they must pass even where tokens are required."""
    client = make_client(**{"security.require_token": True})
    origin = "https://sandbox.cds-hooks.org"
    pre = client.options(service_url("order-sign"), headers={"Origin": origin, "Access-Control-Request-Method": "POST",
                                                             "Access-Control-Request-Headers": "authorization"})
    assert pre.status_code == 204
    resp = post_json(client, service_url("order-sign"), valid_request("order-sign"), headers={"Origin": origin})
    assert_error(resp, 401)
    assert resp.headers.get("Access-Control-Allow-Origin") in ("*", origin)
    assert resp.headers.get("WWW-Authenticate", "").startswith("Bearer")


# ------------------------------------------------------------------ liveness and media type

def test_healthz(client):
    resp = client.get("/healthz")
    assert resp.status_code == 200
    assert resp.mimetype == "application/json"
    assert resp.get_json()["status"] == "ok"


def test_responses_are_json(client):
    calls = [
        client.get("/cds-services"),
        post_json(client, service_url("order-select"), valid_request("order-select")),
        post_json(client, service_url("order-select") + "/feedback", {"feedback": [_feedback_item()]}),
        post_json(client, service_url("order-select"), {}),
        client.get("/cds-services/x/y/z"),
    ]
    for resp in calls:
        assert resp.mimetype == "application/json", (resp.status_code, resp.headers)
        json.loads(resp.get_data(as_text=True))


def test_private_network_access_preflight_is_answered(client):
    """A public page (the sandbox) calling a service on localhost asks first (Chrome's PNA)."""
    resp = client.options("/cds-services/ivig-order-sign", headers={
        "Origin": "https://sandbox.cds-hooks.org", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Private-Network": "true"})
    assert resp.status_code == 204
    assert resp.headers["Access-Control-Allow-Private-Network"] == "true"
    plain = client.options("/cds-services/ivig-order-sign", headers={
        "Origin": "https://sandbox.cds-hooks.org", "Access-Control-Request-Method": "POST"})
    assert "Access-Control-Allow-Private-Network" not in plain.headers


def test_views_and_request_hooks_are_run_as_flask_would_run_them(app):
    """The app asks once per function whether it is a coroutine (service/app.py ``CdsFlask``):
    a plain function is run as it is, on every ask, and a coroutine function still goes through
    Flask's own handling (wrapped with asgiref, or refused without it), never run as is."""

    def plain():
        return "plain"

    async def coroutine():
        return "coroutine"

    for _ in range(3):
        assert app.ensure_sync(plain) is plain
    for _ in range(2):
        try:
            wrapped = app.ensure_sync(coroutine)
        except RuntimeError as exc:  # Flask without its async extra
            assert "async" in str(exc)
        else:
            assert wrapped is not coroutine and wrapped() == "coroutine"
    many = [lambda i=i: i for i in range(1000)]  # more functions than are remembered
    assert all(app.ensure_sync(f) is f for f in many)
