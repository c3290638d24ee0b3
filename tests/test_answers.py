"""Answers memoised per record (service/protocol/answers.py): a chart sent again gets the same cards, made
for its own call; anything the answer depends on makes a new one; FHIR-server data is never reused."""

from __future__ import annotations

import copy
import uuid
from datetime import date
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fhir_fixtures
from hooks.cards import reissue
from service.protocol import cds
from tests.cds_validate import without_uuids
from tests.fhir_server import FhirServer, start_server

TODAY = fhir_fixtures.REFERENCE_TODAY
ORDER_SIGN = "ivig-order-sign"
PATIENT_VIEW = "ivig-patient-view"


def request_for(scenario: str, hook: str) -> dict[str, Any]:
    body = fhir_fixtures.load_json(scenario, f"request-{hook}.json")
    assert body is not None, f"{scenario} has no request-{hook}.json"
    return body


def with_instance(body: dict[str, Any], token: str | None = None) -> dict[str, Any]:
    """The same call made again: a new hookInstance (and, when given, a new access token)."""
    again = copy.deepcopy(body)
    again["hookInstance"] = str(uuid.uuid4())
    if token is not None:
        again.setdefault("fhirAuthorization", {})["access_token"] = token
    return again


def card_uuids(cards: list[dict[str, Any]]) -> list[str]:
    return [c["uuid"] for c in cards] + [s["uuid"] for c in cards for s in c.get("suggestions", [])]


@pytest.fixture
def make_client(make_app, monkeypatch):
    """(app, client) with given settings and no sample patients, the clock at the fixtures' day."""
    monkeypatch.setattr(cds, "today", lambda: TODAY)

    def make(**overrides):
        app = make_app(**{"sample_patients": False, **overrides})
        return app, app.test_client()

    return make


def post(client, service_id: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    response = client.post(f"/cds-services/{service_id}", json=body)
    assert response.status_code == 200, response.get_data(as_text=True)[:300]
    return response.get_json()["cards"]


def test_a_record_sent_again_gets_the_same_cards_with_its_own_uuids(make_client):
    app, client = make_client()
    first_body = request_for("sample-igg-deficiency", "order-sign")
    first = post(client, ORDER_SIGN, first_body)
    assert first, "the scenario should give cards"
    assert len(app.extensions["ivig_cds"].answers) == 0  # a body seen once is not kept
    second = post(client, ORDER_SIGN, with_instance(first_body))
    assert len(app.extensions["ivig_cds"].answers) == 1  # seen again: kept

    again = post(client, ORDER_SIGN, with_instance(first_body))
    assert len(app.extensions["ivig_cds"].answers) == 1  # answered from the memo, not stored twice
    assert without_uuids(again) == without_uuids(first) == without_uuids(second)
    assert not set(card_uuids(again)) & (set(card_uuids(first)) | set(card_uuids(second)))

    # exactly the cards (uuids included) the service makes for that call with the memo off
    _, fresh_client = make_client(**{"limits.answer_cache_entries": 0})
    second_body = with_instance(first_body)
    assert post(fresh_client, ORDER_SIGN, second_body) == post(client, ORDER_SIGN, second_body)


def test_feedback_on_a_reissued_card_is_accepted(make_client):
    _, client = make_client()
    body = request_for("sample-igg-deficiency", "order-sign")
    post(client, ORDER_SIGN, body)
    again = post(client, ORDER_SIGN, with_instance(body))
    response = client.post(f"/cds-services/{ORDER_SIGN}/feedback", json={"feedback": [
        {"card": again[0]["uuid"], "outcome": "overridden", "outcomeTimestamp": "2026-11-24T10:00:00Z",
         "overrideReason": {"reason": {"code": "clinical-judgement",
                                       "system": "https://ivig-cds.example.org/override-reasons"}}}]})
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.get_json()["stored"] == 1 and response.get_json()["unknownCards"] == 0


def _set_igg(resources: list[dict[str, Any]], value: float) -> int:
    """Every IgG result in ``resources`` set to ``value``; how many there were."""
    found = [r for r in resources if r.get("resourceType") == "Observation" and "2465-3" in str(r.get("code"))]
    for res in found:
        res["valueQuantity"]["value"] = value
    return len(found)


def _prefetch_resources(body: dict[str, Any]) -> list[dict[str, Any]]:
    return [e["resource"] for v in body["prefetch"].values() if isinstance(v, dict) for e in v.get("entry", [])]


def post_twice(client, service_id: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    """The call made twice (answers are kept from a body's second call on); the second answer."""
    post(client, service_id, body)
    return post(client, service_id, with_instance(body))


def test_a_changed_result_is_decided_afresh(make_client):
    app, client = make_client()
    body = request_for("sample-igg-deficiency", "order-sign")
    first = post_twice(client, ORDER_SIGN, body)
    assert len(app.extensions["ivig_cds"].answers) == 1
    changed = with_instance(body)
    assert _set_igg(_prefetch_resources(changed), 1100)  # every IgG now normal
    second = post(client, ORDER_SIGN, changed)
    assert without_uuids(second) != without_uuids(first)
    assert [c["source"]["topic"]["code"] for c in second] != [c["source"]["topic"]["code"] for c in first]


def test_another_day_or_another_service_url_is_decided_afresh(make_client, monkeypatch):
    app, client = make_client()
    body = request_for("sample-igg-deficiency", "order-sign")
    post_twice(client, ORDER_SIGN, body)
    monkeypatch.setattr(cds, "today", lambda: date(2026, 11, 25))
    post_twice(client, ORDER_SIGN, with_instance(body))
    assert len(app.extensions["ivig_cds"].answers) == 2
    for _ in range(2):
        response = client.post(f"/cds-services/{ORDER_SIGN}", json=with_instance(body),
                               base_url="https://ehr-proxy.test")
        assert response.status_code == 200
    assert len(app.extensions["ivig_cds"].answers) == 3
    assert "https://ehr-proxy.test/smart/launch" in str(response.get_json())


def test_the_memo_is_bounded_and_can_be_turned_off(make_client):
    app, client = make_client(**{"limits.answer_cache_entries": 2})
    body = request_for("sample-igg-deficiency", "order-sign")
    for n in range(5):
        varied = with_instance(body)
        varied["context"]["userId"] = f"Practitioner/p{n}"
        post_twice(client, ORDER_SIGN, varied)
    assert len(app.extensions["ivig_cds"].answers) == 2
    off, off_client = make_client(**{"limits.answer_cache_entries": 0})
    post_twice(off_client, ORDER_SIGN, body)
    assert len(off.extensions["ivig_cds"].answers) == 0


def test_records_with_nothing_to_decide_are_answered_without_the_memo(make_client):
    """A quiet chart (no Ig data) and an order-sign without an immune globulin order are answered at
    once: their answers are not kept, while a record the rules work on is."""
    app, client = make_client()
    memo = app.extensions["ivig_cds"].answers
    quiet = request_for("no-immunoglobulin-data", "patient-view")
    no_ivig = request_for("sample-igg-deficiency", "order-sign")
    draft = no_ivig["context"]["draftOrders"]["entry"][0]["resource"]
    draft["medicationCodeableConcept"] = {"coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm",
                                                      "code": "308182", "display": "amoxicillin 250 MG Oral Capsule"}],
                                          "text": "amoxicillin 250 MG Oral Capsule"}
    for _ in range(2):
        assert post(client, PATIENT_VIEW, with_instance(quiet)) == []
        assert post(client, ORDER_SIGN, with_instance(no_ivig)) == []
    assert len(memo) == 0
    assert post_twice(client, ORDER_SIGN, request_for("sample-igg-deficiency", "order-sign"))
    assert len(memo) == 1


def test_reissue_derives_uuids_as_the_cards_are_made():
    """``reissue`` gives a card the uuids ``to_card`` gives it for that hookInstance."""
    from hooks import SERVICES
    from hooks.service_def import HookRequest

    body = request_for("sample-igg-deficiency", "order-sign")
    service = SERVICES[ORDER_SIGN]

    def cards_for(instance: str) -> list[dict[str, Any]]:
        return service.handler(HookRequest(hook=service.hook, hook_instance=instance, service_id=service.id,
                                           context=body["context"], prefetch=body["prefetch"], today=TODAY)).cards

    a, b = cards_for("instance-a"), cards_for("instance-b")
    assert a and reissue(a, "instance-b", service.id) == b
    assert card_uuids(a) != card_uuids(b)


# ------------------------------------------------------------------ a real FHIR server: never memoised


@pytest.fixture(scope="module")
def fhir_server():
    yield from start_server()


@pytest.mark.slow
def test_answers_read_from_a_fhir_server_are_never_reused(make_client, fhir_server: FhirServer):
    """A lab result that arrives between two chart opens changes the second answer."""
    scenario = fhir_fixtures.load_scenario("sample-igg-deficiency")
    resources = [e["resource"] for e in scenario["bundle"]["entry"]]
    fhir_server.reset()
    fhir_server.load(resources)
    body = request_for("sample-igg-deficiency", "order-sign")
    body = {k: v for k, v in body.items() if k != "prefetch"}
    body["fhirServer"] = fhir_server.base
    body["fhirAuthorization"] = {"access_token": fhir_server.token, "token_type": "Bearer",
                                 "scope": "patient/*.read", "subject": "ivig-cds"}
    app, client = make_client(**{"prefetch.deadline_seconds": 10.0, "prefetch.query_timeout_seconds": 8.0})
    first = post(client, ORDER_SIGN, body)
    assert len(app.extensions["ivig_cds"].answers) == 0

    assert _set_igg(resources, 1100)
    fhir_server.reset()
    fhir_server.load(resources)
    second = post(client, ORDER_SIGN, with_instance(body))
    assert without_uuids(second) != without_uuids(first)
    assert len(app.extensions["ivig_cds"].answers) == 0


# ------------------------------------------------------------------ the key: exactly "the same request but for its hookInstance and token"


def _key(body: dict[str, Any], raw: bytes | None = None, **overrides):
    import orjson

    from service.protocol.answers import AnswerMemo

    args = {"service_id": ORDER_SIGN, "today": TODAY, "base_url": "http://127.0.0.1:8080", "tenant": None}
    args.update(overrides)
    return AnswerMemo(8).key(orjson.dumps(body) if raw is None else raw, body, **args)


def _authorised(body: dict[str, Any], token: str) -> dict[str, Any]:
    out = copy.deepcopy(body)
    out["fhirServer"] = "http://127.0.0.1:9/fhir"
    out["fhirAuthorization"] = {"access_token": token, "token_type": "Bearer", "scope": "patient/*.read",
                                "subject": "ivig-cds"}
    return out


def test_the_key_ignores_only_the_hook_instance_and_the_access_token():
    body = _authorised(request_for("sample-igg-deficiency", "order-sign"), "eyJhbGciOi.first-token.sig")
    again = with_instance(body, token="eyJhbGciOi.second-token.sig")
    assert _key(body) is not None and _key(body) == _key(again)
    changed = copy.deepcopy(again)
    assert _set_igg(_prefetch_resources(changed), 1100)
    assert _key(changed) != _key(body)
    assert _key(body, tenant="other") != _key(body)
    assert _key(body, today=date(2026, 11, 25)) != _key(body)
    assert _key(body, base_url="https://cds.example.org") != _key(body)
    assert _key(body, service_id=PATIENT_VIEW) != _key(body)
    same = _authorised(body, body["hookInstance"])  # a token equal to the hookInstance: two cuts in one place
    assert _key(same) is None


@pytest.mark.parametrize("how", ["JSON punctuation", "escaped in the text", "not a string"])
def test_a_request_whose_hook_instance_cannot_be_cut_out_exactly_is_not_memoised(how):
    import orjson

    body = request_for("sample-igg-deficiency", "order-sign")
    raw = None
    if how == "JSON punctuation":
        body["hookInstance"] = "a\",\"b"
    elif how == "escaped in the text":
        raw = orjson.dumps(body).replace(orjson.dumps(body["hookInstance"]),
                                         b'"' + "".join(f"\\u{ord(c):04x}" for c in body["hookInstance"]).encode() + b'"')
        assert orjson.loads(raw) == body
    else:
        body["hookInstance"] = 42
    assert _key(body, raw) is None


def test_a_hook_instance_repeated_in_the_data_is_cut_where_it_first_occurs():
    """Only the first occurrence is cut: the repeat stays part of the key, so changing it is another key."""
    body = request_for("sample-igg-deficiency", "order-sign")
    body["prefetch"]["patient"]["id"] = body["hookInstance"]
    again = with_instance(body)  # a new hookInstance; the patient id keeps the old value
    assert _key(body) is not None and _key(again) == _key(body)
    other_patient = copy.deepcopy(again)
    other_patient["prefetch"]["patient"]["id"] = again["hookInstance"]
    assert _key(other_patient) != _key(body)


def _volatile_stripped(raw: bytes) -> Any:
    import orjson

    body = orjson.loads(raw)
    body.pop("hookInstance", None)
    if isinstance(body.get("fhirAuthorization"), dict):
        body["fhirAuthorization"].pop("access_token", None)
    return body


#: Few values, so that hookInstance, token and other strings often coincide and keys often meet.
_VALUES = st.sampled_from(["h1", "h2", "t1", "t2", "x"])
_STRINGS = st.one_of(_VALUES, st.sampled_from(["Practitioner/h1", "h1h2", "x y"]))
_BODIES = st.fixed_dictionaries(
    {"hookInstance": _VALUES, "hook": st.just("order-sign"),
     "context": st.fixed_dictionaries({"userId": _STRINGS, "patientId": _STRINGS}),
     "note": st.lists(_STRINGS, max_size=3)},
    optional={"fhirAuthorization": st.fixed_dictionaries({"access_token": _VALUES})})


def _spelled(body: dict[str, Any], escape_first_string: bool) -> bytes:
    """orjson's text, or the same JSON with its first string value spelled with a \\u escape."""
    import orjson

    raw = orjson.dumps(body)
    if escape_first_string:
        raw = raw.replace(b':"', b':"\\u0020', 1)
        body_again = orjson.loads(raw)
        assert body_again != body
    return raw


@settings(max_examples=400, deadline=None)
@given(first=_BODIES, second=_BODIES, escape=st.tuples(st.booleans(), st.booleans()),
       order=st.permutations(["hookInstance", "hook", "context", "note", "fhirAuthorization"]))
def test_equal_keys_mean_equal_requests_but_for_hook_instance_and_token(first, second, escape, order):
    """The argument in service/protocol/answers.py, checked on bodies made to collide: one key, one request."""
    import orjson

    first = {k: first[k] for k in order if k in first}
    raws = [_spelled(first, escape[0]), _spelled(second, escape[1])]
    keys = [_key(orjson.loads(raw), raw) for raw in raws]
    if keys[0] is not None and keys[0] == keys[1]:
        assert _volatile_stripped(raws[0]) == _volatile_stripped(raws[1])


_INPUTS = {"service_id": ORDER_SIGN, "today": TODAY, "base_url": "http://ivig-cds.test", "tenant": None}


@pytest.mark.parametrize("where", ["first", "last"])
@pytest.mark.parametrize("token", [None, "eyJ.token-1.sig"])
def test_a_body_is_keyed_from_its_second_sight_whatever_its_hook_instance_and_token(where, token):
    """The fingerprint leaves out the cut values, wherever they stand and however long they are."""
    import orjson

    from service.protocol.answers import AnswerMemo

    memo = AnswerMemo(8)
    base = request_for("sample-igg-deficiency", "order-sign")

    def spelled(instance: str, access_token: str | None) -> tuple[bytes, dict[str, Any]]:
        body = {k: v for k, v in base.items() if k != "hookInstance"}
        if access_token is not None:
            body["fhirAuthorization"] = {"access_token": access_token, "token_type": "Bearer"}
        body = {"hookInstance": instance, **body} if where == "first" else {**body, "hookInstance": instance}
        return orjson.dumps(body), body

    first = spelled(str(uuid.uuid4()), token)
    second = spelled(f"instance-{uuid.uuid4()}-again", token and token + "-rotated")
    assert memo.key_if_seen_before(*first, **_INPUTS) is None  # first sight: no key, nothing to keep
    key = memo.key_if_seen_before(*second, **_INPUTS)
    assert key is not None and key == memo.key(*first, **_INPUTS)


def test_bodies_that_share_a_fingerprint_still_get_their_own_keys():
    """Two records alike but for a value far from the ends: the fingerprint says 'seen', the key tells them apart."""
    import orjson

    from service.protocol.answers import AnswerMemo

    memo = AnswerMemo(8)
    body = request_for("sample-igg-deficiency", "order-sign")
    changed = copy.deepcopy(body)
    igg = next(r for r in _prefetch_resources(changed) if "2465-3" in str(r.get("code")))
    value = igg["valueQuantity"]["value"]
    igg["valueQuantity"]["value"] = value + 1 if int(value) % 10 != 9 else value - 1  # as many digits
    raws = [orjson.dumps(b) for b in (body, changed)]
    assert len(raws[0]) == len(raws[1]) and raws[0][-2048:] == raws[1][-2048:]  # the same fingerprint
    assert memo.key_if_seen_before(raws[0], body, **_INPUTS) is None
    key = memo.key_if_seen_before(raws[1], changed, **_INPUTS)
    assert key is not None and key != memo.key(raws[0], body, **_INPUTS)


def test_the_memo_off_keys_nothing():
    from service.protocol.answers import AnswerMemo

    body = request_for("sample-igg-deficiency", "order-sign")
    memo = AnswerMemo(0)
    raw = __import__("orjson").dumps(body)
    assert memo.key_if_seen_before(raw, body, **_INPUTS) is None
    assert memo.key_if_seen_before(raw, body, **_INPUTS) is None


def test_a_request_answered_again_over_http_with_a_rotated_token(make_client):
    """Complete prefetch and a fhirServer: nothing is read, so the answer is memoised despite the token."""
    app, client = make_client()
    body = _authorised(request_for("sample-igg-deficiency", "order-sign"), "eyJ.token-1.sig")
    first = post(client, ORDER_SIGN, body)
    again = post(client, ORDER_SIGN, with_instance(body, token="eyJ.token-2.sig"))
    assert len(app.extensions["ivig_cds"].answers) == 1
    assert without_uuids(again) == without_uuids(first)
