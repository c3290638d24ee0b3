"""SMART launch state and sessions survive being served by different workers (a shared database)."""

from __future__ import annotations

import sqlite3
from urllib.parse import urlsplit

import pytest
import requests

from service.app import create_app
from service.storage.db import make_engine
from service.storage.smart_sessions import SqlSessionStore
from service.storage.sql_store import open_store
from tests.conftest import make_settings
from tests.servers import live_app
from tests.smart_support import LocalFhir
from tests.test_smart_launch import PATIENT, _sample_resources


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def engine(tmp_path):
    eng = make_engine(f"sqlite:///{tmp_path / 'sessions.sqlite3'}")
    yield eng
    eng.dispose()


def test_put_get_pop_expire(engine):
    clock = Clock()
    store = SqlSessionStore(engine, "session", clock=clock)
    key = store.put({"access_token": "secret-token-123", "iss": "https://fhir.example"}, ttl=60)
    assert store.get(key) == {"access_token": "secret-token-123", "iss": "https://fhir.example"}
    assert store.get(key + "x") is None and store.get(None) is None
    clock.now += 61
    assert store.get(key) is None and len(store) == 0
    key2 = store.put({"a": 1}, ttl=60)
    assert store.pop(key2) == {"a": 1} and store.pop(key2) is None


def test_another_worker_sees_the_entry_and_a_launch_is_used_once(engine, tmp_path):
    worker_a = SqlSessionStore(engine, "launch")
    other_engine = make_engine(f"sqlite:///{tmp_path / 'sessions.sqlite3'}")
    try:
        worker_b = SqlSessionStore(other_engine, "launch")
        key = worker_a.put({"state": "s", "verifier": "v"}, ttl=60)
        assert worker_b.pop(key) == {"state": "s", "verifier": "v"}
        assert worker_a.pop(key) is None  # consumed: a replayed callback finds nothing
    finally:
        other_engine.dispose()


def test_kinds_are_separate_and_bounded(engine):
    launches = SqlSessionStore(engine, "launch", max_entries=3)
    sessions = SqlSessionStore(engine, "session", max_entries=3)
    open_session = sessions.put({"access_token": "t"}, ttl=600)
    keys = [launches.put({"n": i}, ttl=600) for i in range(10)]
    assert len(launches) == 3 and launches.get(keys[-1]) == {"n": 9} and launches.get(keys[0]) is None
    assert sessions.get(open_session) == {"access_token": "t"}  # a flood of launches never evicts a session
    assert launches.get(open_session) is None  # and a session key is no launch key


def test_the_database_alone_never_yields_a_token(engine, tmp_path):
    store = SqlSessionStore(engine, "session")
    store.put({"access_token": "very-secret-access-token"}, ttl=60)
    raw = sqlite3.connect(tmp_path / "sessions.sqlite3").execute("select key_hash, payload from smart_session").fetchall()
    assert raw and all(b"very-secret-access-token" not in bytes(payload) for _, payload in raw)


def test_launch_on_one_worker_callback_on_another(tmp_path):
    """Two apps on one database stand in for two gunicorn workers (or two replicas)."""
    settings = make_settings(tmp_path)
    apps = [create_app(settings, store=open_store(settings)) for _ in range(2)]
    try:
        with LocalFhir(patient=PATIENT) as fhir, live_app(apps[0]) as base_a, live_app(apps[1]) as base_b:
            fhir.load(_sample_resources())
            browser = requests.Session()
            browser.trust_env = False
            r = browser.get(f"{base_a}/smart/launch", params={"iss": fhir.base, "launch": "l-1"},
                            allow_redirects=False, timeout=10)
            assert r.status_code == 302, r.text
            r = browser.get(r.headers["Location"], allow_redirects=False, timeout=10)  # the EHR authorizes
            callback = urlsplit(r.headers["Location"])
            # the callback reaches the other worker (cookies are per host:port in requests, so carry it over)
            for cookie in list(browser.cookies):
                browser.cookies.set(cookie.name, cookie.value, domain=cookie.domain, path=cookie.path)
            r = browser.get(f"{base_b}{callback.path}?{callback.query}", allow_redirects=False, timeout=10)
            assert r.status_code == 303, r.text
            for base in (base_b, base_a):  # and the session works on either
                data = browser.get(f"{base}/smart/api/patient", timeout=30)
                assert data.status_code == 200, data.text
                assert data.json()["source"] == "fhir"
    finally:
        for app in apps:
            app.extensions["ivig_cds"].close()
