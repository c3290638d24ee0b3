"""jti replay: the stores (SQLite, PostgreSQL, Redis, memory) and a real 2-worker gunicorn.

PostgreSQL runs in a schema of its own per test (``test`` database on 127.0.0.1:5432, trust auth)
and Redis on 127.0.0.1:6379; each is skipped with a reason when its server is not running.
"""

from __future__ import annotations

import concurrent.futures
import os
import pathlib
import subprocess
import sys
import threading
import time
import uuid

import pytest
import requests
from sqlalchemy import func, select, text

from service.auth.replay import MemoryReplayStore, RedisReplayStore, SqlReplayStore, jwt_replay, replay_key
from service.storage.db import make_engine, metadata
from tests.security_helpers import ISSUER, bearer, claims, jwks, new_key, patient_view_body, sign
from tests.servers import free_port, stop_process

PG_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


@pytest.fixture
def pg_url():
    """A PostgreSQL URL whose search_path is a fresh schema, dropped afterwards."""
    schema = f"sec_{uuid.uuid4().hex[:12]}"
    try:
        admin = make_engine(PG_URL)
        with admin.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    except Exception as exc:  # noqa: BLE001 - any failure means no server to test against
        pytest.skip(f"PostgreSQL not reachable at {PG_URL}: {type(exc).__name__}")
    yield f"{PG_URL}?options=-csearch_path%3D{schema}"
    with admin.begin() as conn:
        conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    admin.dispose()


@pytest.fixture
def redis_store():
    store = RedisReplayStore(REDIS_URL)
    try:
        store._client.ping()
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"Redis not reachable at {REDIS_URL}: {type(exc).__name__}")
    yield store
    store.close()


@pytest.fixture(params=["memory", "sqlite", "postgresql", "redis"])
def store(request, tmp_path):
    if request.param == "memory":
        yield MemoryReplayStore()
    elif request.param == "sqlite":
        s = SqlReplayStore(f"sqlite:///{tmp_path / 'replay.sqlite3'}")
        yield s
        s.close()
    elif request.param == "postgresql":
        s = SqlReplayStore(request.getfixturevalue("pg_url"))
        yield s
        s.close()
    else:
        yield request.getfixturevalue("redis_store")


def test_first_use_then_replay(store):
    now = time.time()
    key = replay_key(ISSUER, str(uuid.uuid4()))
    assert store.first_use(key, now + 300, now) is True
    assert store.first_use(key, now + 300, now + 1) is False
    assert store.first_use(replay_key("https://other.example/", key), now + 300, now) is True
    assert store.first_use(replay_key(ISSUER, str(uuid.uuid4())), now + 300, now) is True


def test_key_is_free_again_after_expiry(store):
    now = time.time()
    key = replay_key(ISSUER, str(uuid.uuid4()))
    assert store.first_use(key, now + 1, now) is True
    if isinstance(store, RedisReplayStore):
        time.sleep(1.2)  # Redis expires by its own clock
        later = time.time()
    else:
        later = now + 5
    assert store.first_use(key, later + 300, later) is True
    assert store.first_use(key, later + 300, later) is False


def test_replay_key_separates_issuers_and_hides_the_jti():
    assert replay_key("a", "bc") != replay_key("ab", "c")
    assert "secret-jti" not in replay_key(ISSUER, "secret-jti")
    assert len(replay_key(ISSUER, "x" * 1000)) == 64


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_sql_store_two_processes_worth_of_engines_one_winner(tmp_path, request, backend):
    """Two stores (as two workers would have) race 16 threads on one key: exactly one wins."""
    url = f"sqlite:///{tmp_path / 'race.sqlite3'}" if backend == "sqlite" else request.getfixturevalue("pg_url")
    stores = [SqlReplayStore(url), SqlReplayStore(url)]
    now = time.time()
    key = replay_key(ISSUER, str(uuid.uuid4()))
    barrier = threading.Barrier(16)

    def attempt(i: int) -> bool:
        barrier.wait()
        return stores[i % 2].first_use(key, now + 300, now)

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        results = list(pool.map(attempt, range(16)))
    assert results.count(True) == 1
    for s in stores:
        s.close()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_sql_store_purges_expired_rows(tmp_path, request, backend):
    url = f"sqlite:///{tmp_path / 'purge.sqlite3'}" if backend == "sqlite" else request.getfixturevalue("pg_url")
    s = SqlReplayStore(url)
    now = time.time()
    for i in range(5):
        assert s.first_use(replay_key(ISSUER, f"old-{i}"), now + 10, now)
    s._purged_at = float("-inf")  # pretend the purge interval has passed
    assert s.first_use(replay_key(ISSUER, "fresh"), now + 1000, now + 100)
    with s.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(jwt_replay)).scalar_one() == 1
    s.close()


def test_table_is_on_the_shared_metadata():
    assert metadata.tables["jwt_replay"] is jwt_replay
    assert {c.name for c in jwt_replay.columns} == {"token_key", "expires_at"}


# ---------------------------------------------------------------- across gunicorn workers


def _gunicorn(tmp_path: pathlib.Path, database_url: str, key, port: int, access_log: pathlib.Path):
    jwks_path = tmp_path / "issuer-jwks.json"
    jwks_path.write_text(__import__("json").dumps(jwks(key)))
    config = tmp_path / "ivig-cds.toml"
    config.write_text(
        f'database_url = "{database_url}"\n'
        f'data_dir = "{tmp_path / "data"}"\n'
        "[security]\n"
        f'public_base_url = "http://127.0.0.1:{port}"\n'
        'fhir_server_allowlist = ["http://127.0.0.1:*"]\n'
        f'trusted_issuers = [{{ iss = "{ISSUER}", jwks_file = "{jwks_path}" }}]\n'
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("IVIG_CDS_")}
    env.update({"IVIG_CDS_PROFILE": "production", "IVIG_CDS_CONFIG": str(config)})
    exe = os.path.join(os.path.dirname(sys.executable), "gunicorn")
    root = pathlib.Path(__file__).resolve().parent.parent
    return subprocess.Popen(
        [exe, "-w", "2", "-b", f"127.0.0.1:{port}", "--access-logfile", str(access_log),
         "--access-logformat", "%(p)s %(s)s %({x-probe}i)s", "service.wsgi:app"],
        env=env, cwd=str(root), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_replay_rejected_across_two_gunicorn_workers(tmp_path, request, backend):
    database_url = (f"sqlite:///{tmp_path / 'gunicorn.sqlite3'}" if backend == "sqlite"
                    else request.getfixturevalue("pg_url"))
    key = new_key("ES384")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    access_log = tmp_path / "access.log"
    proc = _gunicorn(tmp_path, database_url, key, port, access_log)
    try:
        _wait_ready(base + "/healthz", proc)
        url = base + "/cds-services/ivig-patient-view"
        session_results: dict[str, list[int]] = {}
        for batch in range(10):
            token = sign(key, claims(url))
            body = patient_view_body()

            def send(i: int, token=token, body=body, batch=batch) -> int:
                headers = {**bearer(token), "X-Probe": f"b{batch}-{i}"}
                return requests.post(url, json=body, headers=headers, timeout=30).status_code

            with concurrent.futures.ThreadPoolExecutor(12) as pool:
                statuses = list(pool.map(send, range(12)))
            session_results[f"b{batch}"] = statuses
            # exactly one acceptance per token, whichever worker got it; the others are 401
            accepted = [s for s in statuses if s != 401]
            assert len(accepted) == 1, statuses
            assert accepted[0] < 500, statuses
            if batch >= 1 and _workers_per_batch(access_log).get(f"b{batch}", 0) >= 2:
                break
        workers = _workers_per_batch(access_log)
        print(f"gunicorn replay ({backend}): statuses per token {session_results}; workers per token {workers}")
        assert max(workers.values()) >= 2, f"never reached both workers: {workers}"
    finally:
        stop_process(proc, timeout=20)
    stderr = proc.stderr.read() if proc.stderr else ""
    assert "Traceback" not in stderr, stderr[-3000:]


def _wait_ready(url: str, proc: subprocess.Popen, timeout: float = 90.0) -> None:
    """Until both workers have booted far enough to answer (a slow import is a read timeout, not an error)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"gunicorn exited with {proc.returncode}: {proc.stderr.read()[-3000:]}")
        try:
            if requests.get(url, timeout=5).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer within {timeout}s")


def _workers_per_batch(access_log: pathlib.Path) -> dict[str, int]:
    """batch -> number of distinct worker pids that answered its requests (from gunicorn's access log)."""
    time.sleep(0.2)  # the access log is written after the response
    pids: dict[str, set[str]] = {}
    if not access_log.exists():
        return {}
    for line in access_log.read_text().splitlines():
        parts = line.split()
        if len(parts) == 3 and "-" in parts[2]:
            pids.setdefault(parts[2].split("-")[0], set()).add(parts[0])
    return {batch: len(p) for batch, p in pids.items()}


# ---------------------------------------------------------------- the configured store, through the app


@pytest.mark.parametrize("kind", ["database", "memory", "redis"])
def test_configured_replay_store_rejects_a_replay(tmp_path, request, kind):
    from service.app import create_app
    from service.storage.feedback import MemoryFeedbackStore
    from tests.security_helpers import HOOK_PATH, HOOK_URL, assert_401, secure_settings, trusted_issuer

    overrides: dict = {"security.replay_store": kind}
    if kind == "redis":
        request.getfixturevalue("redis_store")  # skips when no Redis answers
        overrides["security.redis_url"] = REDIS_URL
    key = new_key("ES384")
    app = create_app(secure_settings(tmp_path, [trusted_issuer(key)], **overrides), store=MemoryFeedbackStore())
    client = app.test_client()
    token = sign(key, claims(HOOK_URL))
    assert client.post(HOOK_PATH, json=patient_view_body(), headers=bearer(token)).status_code == 200
    assert_401(client.post(HOOK_PATH, json=patient_view_body(), headers=bearer(token)))
    app.extensions["ivig_cds"].close()


def test_replay_store_down_fails_closed_with_503(tmp_path):
    from service.app import create_app
    from service.storage.feedback import MemoryFeedbackStore
    from tests.security_helpers import HOOK_PATH, HOOK_URL, secure_settings, trusted_issuer

    key = new_key("ES384")
    dead = f"postgresql://postgres@127.0.0.1:{free_port()}/test?connect_timeout=2"
    app = create_app(secure_settings(tmp_path, [trusted_issuer(key)], database_url=dead), store=MemoryFeedbackStore())
    resp = app.test_client().post(HOOK_PATH, json=patient_view_body(), headers=bearer(sign(key, claims(HOOK_URL))))
    assert resp.status_code == 503  # not 200 (fail open), not 401 (the caller did nothing wrong)
    assert resp.get_json()["message"] == "authentication is temporarily unavailable"
    app.extensions["ivig_cds"].close()


def test_redis_store_needs_a_url(tmp_path):
    from service.auth.tokens import Authenticator, AuthNotReady
    from tests.security_helpers import secure_settings, trusted_issuer

    auth = Authenticator(secure_settings(tmp_path, [trusted_issuer(new_key("ES384"))],
                                         **{"security.replay_store": "redis"}))
    with pytest.raises(AuthNotReady, match="redis_url"):
        auth.ready()
