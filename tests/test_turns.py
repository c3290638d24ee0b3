"""Hook calls take turns on their records, and a call waiting on a FHIR server holds up no other.

service/protocol/turns.py: a worker's calls parse, read and free their records one at a time (it
keeps each record's objects together in memory); what waits on the network is done outside a
turn. Checked here with real threads, the real app on a real HTTP server, and the FHIR stub
(tests/fhir_stub.py) standing in for a FHIR server that answers slowly.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.request

from fhir_fixtures import load_json
from service.protocol.turns import RecordTurns
from tests.conftest import make_settings
from tests.fhir_stub import Behaviour, FhirStub
from tests.servers import live_app

#: how long the stub takes to answer each FHIR search
SLOW = 1.5


def post(url: str, body: dict) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return r.status, json.loads(r.read())


def test_one_turn_at_a_time_and_waiting_gives_the_turn_up():
    turns = RecordTurns()
    events: list[str] = []
    in_wait, other_done = threading.Event(), threading.Event()

    def waiter() -> None:
        with turns:
            with turns.waiting():
                in_wait.set()
                assert other_done.wait(5), "another call could not take a turn while this one waited"
            events.append("waiter back")
            time.sleep(0.2)  # holding its turn again: the next call must wait for it
            events.append("waiter done")

    def other() -> None:
        with turns:
            events.append("other")
        other_done.set()
        time.sleep(0.05)
        with turns:
            events.append("other again")

    a = threading.Thread(target=waiter)
    a.start()
    assert in_wait.wait(5)
    b = threading.Thread(target=other)
    b.start()
    a.join(10)
    b.join(10)
    assert events == ["other", "waiter back", "waiter done", "other again"]


def test_a_call_waiting_on_a_slow_fhir_server_does_not_hold_up_another(make_app, tmp_path):
    quiet = load_json("no-immunoglobulin-data", "request-patient-view.json")
    with FhirStub(default=Behaviour(delay=SLOW)) as stub:
        settings = make_settings(tmp_path / "app", **{"prefetch.deadline_seconds": 10.0,
                                                        "prefetch.query_timeout_seconds": 5.0})
        with live_app(make_app(settings)) as base:
            url = f"{base}/cds-services/ivig-patient-view"
            fetching = {"hook": "patient-view", "hookInstance": "4f0d7a52-7f0c-4a0e-9a53-1b1c0e5a9f10",
                        "fhirServer": stub.base,
                        "context": {"userId": "Practitioner/prac-1", "patientId": "pat-slow"}}
            outcome: dict[str, object] = {}

            def slow_call() -> None:
                started = time.monotonic()
                outcome["status"], _ = post(url, fetching)
                outcome["seconds"] = time.monotonic() - started

            thread = threading.Thread(target=slow_call)
            thread.start()
            deadline = time.monotonic() + 10
            while not stub.requests and time.monotonic() < deadline:
                time.sleep(0.01)
            assert stub.requests, "the fetching call never reached the FHIR server"
            started = time.monotonic()
            status, answer = post(url, quiet)
            quick = time.monotonic() - started
            thread.join(30)
    assert status == 200 and answer == {"cards": []}
    assert outcome["status"] == 200 and outcome["seconds"] >= SLOW
    assert quick < SLOW / 2, f"a call with its record in the body waited {quick:.2f} s for one waiting on a FHIR server"
