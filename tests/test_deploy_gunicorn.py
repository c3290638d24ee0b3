"""The production server as real processes on real ports: gunicorn with the shipped config.

- ``gunicorn -c deploy/gunicorn.conf.py`` with two workers serves discovery and a hook call, and
  ``/metrics`` sums both workers' counters (checked against each worker's own file).
- ``ivig-cds serve --production`` starts, answers, stops gracefully on SIGTERM, and its workers
  flush queued issued-card records on the way out.
- ``/readyz`` turns 503 naming the database when PostgreSQL becomes unreachable (a TCP proxy in
  front of the real server is cut) and 200 again when it comes back.
"""

from __future__ import annotations

import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from sqlalchemy.engine import make_url

from service.settings import load_settings
from tests.deploy_support import (ROOT, VENV_BIN, TcpProxy, clean_env, hook_request, metric_value,
                                  per_process_counts, run_server)
from tests.pg import pg_database, pg_url  # noqa: F401 - fixtures
from tests.servers import free_port

pytestmark = pytest.mark.slow

DISCOVERY = {"endpoint": "cds.discovery", "service": "", "status": "200"}


def _fresh_connection_get(url: str) -> int:
    # a new TCP connection per request, so that the kernel hands them to either worker
    return requests.get(url, headers={"Connection": "close"}, timeout=10).status_code


def _worker_pids(server, expected: int, timeout: float = 30.0) -> set[int]:
    """The pids of the booted workers, once ``expected`` of them have said so (or the timeout passed)."""
    deadline = time.monotonic() + timeout
    while True:
        pids = set()
        for line in server.json_lines():
            message = line.get("message", "")
            if message.startswith("Booting worker with pid:"):
                pids.add(int(message.rsplit(":", 1)[1]))
        if len(pids) >= expected or time.monotonic() > deadline:
            return pids
        time.sleep(0.2)


def _write_stale_counter(directory: Path) -> None:
    """A previous run's file claiming 1000 discovery calls: must be gone before workers count."""
    from prometheus_client.mmap_dict import MmapedDict, mmap_key

    directory.mkdir(parents=True, exist_ok=True)
    stale = MmapedDict(str(directory / "counter_999999.db"))
    stale.write_value(mmap_key("ivig_cds_http_requests", "ivig_cds_http_requests_total",
                               list(DISCOVERY), list(DISCOVERY.values()), "stale"), 1000.0, 0.0)
    stale.close()


def test_gunicorn_config_two_workers_serve_and_metrics_sum_across_them(tmp_path):
    port = free_port()
    prom = tmp_path / "prometheus"
    _write_stale_counter(prom)
    env = clean_env({
        "IVIG_CDS_DATA_DIR": str(tmp_path / "data"),
        "IVIG_CDS_PORT": str(port),
        "WEB_CONCURRENCY": "2",
        "GUNICORN_THREADS": "4",
        "PROMETHEUS_MULTIPROC_DIR": str(prom),
    })
    cmd = [str(VENV_BIN / "gunicorn"), "-c", str(ROOT / "deploy" / "gunicorn.conf.py")]
    with run_server(cmd, env, tmp_path / "cwd", port, tmp_path / "gunicorn.log") as server:
        base = server.base
        discovery = requests.get(f"{base}/cds-services", timeout=10)
        assert discovery.status_code == 200
        assert "ivig-patient-view" in {s["id"] for s in discovery.json()["services"]}
        call = requests.post(f"{base}/cds-services/ivig-patient-view", json=hook_request(), timeout=30)
        assert call.status_code == 200, call.text
        assert isinstance(call.json()["cards"], list)
        sent = 1

        workers = _worker_pids(server, 2)
        assert len(workers) == 2, server.log()[-3000:]
        # hit discovery until both workers have served some of it (bounded)
        with ThreadPoolExecutor(max_workers=8) as pool:
            for _ in range(20):
                statuses = list(pool.map(_fresh_connection_get, [f"{base}/cds-services"] * 100))
                assert statuses == [200] * 100
                sent += 100
                served = {pid for pid, n in per_process_counts(prom, "ivig_cds_http_requests_total", **DISCOVERY).items()
                          if n > 0}
                if workers <= served:
                    break
        # each worker counts a request before its answer leaves: nothing is left to wait for
        per_worker = per_process_counts(prom, "ivig_cds_http_requests_total", **DISCOVERY)
        text = requests.get(f"{base}/metrics", timeout=10).text
        assert {pid for pid, n in per_worker.items() if n > 0} == workers, per_worker
        assert 999999 not in per_worker, "the stale metrics file of a previous run was not removed"
        assert sum(per_worker.values()) == sent
        assert metric_value(text, "ivig_cds_http_requests_total", **DISCOVERY) == sent
        assert metric_value(text, "ivig_cds_http_request_duration_seconds_count", **DISCOVERY) == sent
        assert metric_value(text, "ivig_cds_http_requests_total", endpoint="cds.invoke",
                            service="ivig-patient-view", status="200") == 1
        assert metric_value(text, "ivig_cds_cards_issued_total", service="ivig-patient-view") == len(call.json()["cards"])

        assert server.stop() == 0
    log = server.log()
    assert "WORKER TIMEOUT" not in log
    assert "Traceback" not in log


def test_a_scrape_right_after_calls_counts_every_one_whichever_worker_answered(tmp_path):
    """Each worker counts a call before answering it, so no call answered before a scrape is
    missing from it, whichever worker answered."""
    port = free_port()
    env = clean_env({
        "IVIG_CDS_DATA_DIR": str(tmp_path / "data"),
        "IVIG_CDS_PORT": str(port),
        "WEB_CONCURRENCY": "2",
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "prometheus"),
    })
    cmd = [str(VENV_BIN / "gunicorn"), "-c", str(ROOT / "deploy" / "gunicorn.conf.py")]
    with run_server(cmd, env, tmp_path / "cwd", port, tmp_path / "gunicorn.log") as server:
        base = server.base
        assert len(_worker_pids(server, 2)) == 2, server.log()[-3000:]
        for calls in (3, 40):
            before = metric_value(requests.get(f"{base}/metrics", timeout=10).text, "ivig_cds_http_requests_total",
                                  **DISCOVERY)
            assert [_fresh_connection_get(f"{base}/cds-services") for _ in range(calls)] == [200] * calls
            after = metric_value(requests.get(f"{base}/metrics", timeout=10).text, "ivig_cds_http_requests_total",
                                 **DISCOVERY)
            assert after - before == calls
        assert server.stop() == 0


def test_serve_production_starts_answers_and_flushes_on_sigterm(tmp_path):
    port = free_port()
    data = tmp_path / "data"
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    env = clean_env({
        "IVIG_CDS_DATA_DIR": str(data),
        "WEB_CONCURRENCY": "2",
        "TMPDIR": str(tmpdir),
        # records stay queued until shutdown: only the worker_exit hook can have written them
        "IVIG_CDS_FEEDBACK_ISSUED_FLUSH_SECONDS": "3600",
        "IVIG_CDS_FEEDBACK_PATIENT_HASH_KEY": "deploy-test-key",
    })
    cmd = [str(VENV_BIN / "ivig-cds"), "serve", "--production", "--port", str(port)]
    with run_server(cmd, env, tmp_path / "empty", port, tmp_path / "serve.log") as server:
        base = server.base
        assert requests.get(f"{base}/healthz", timeout=5).json() == {"status": "ok"}
        ready = requests.get(f"{base}/readyz", timeout=5)
        assert ready.status_code == 200, ready.text
        assert requests.get(f"{base}/cds-services", timeout=5).status_code == 200
        call = requests.post(f"{base}/cds-services/ivig-patient-view", json=hook_request("deploy-patient-77"),
                             headers={"X-Request-ID": "deploy-test-rid-1"}, timeout=30)
        assert call.status_code == 200, call.text
        assert call.headers["X-Request-ID"] == "deploy-test-rid-1"
        cards = call.json()["cards"]
        assert cards, "a low IgM with nothing else must at least ask for the work-up"
        assert len(_worker_pids(server, 2)) == 2
        metrics_dirs = list(tmpdir.glob("ivig-cds-prometheus-*"))
        assert len(metrics_dirs) == 1
        assert server.stop() == 0

    lines = server.json_lines()  # every line of output is a JSON object (fails on any other line)
    closed = [line for line in lines if line.get("event") == "worker_exit"]
    assert len(closed) == 2, server.log()[-3000:]
    assert any(line.get("request_id") == "deploy-test-rid-1" for line in lines)
    assert "deploy-patient-77" not in server.log()
    assert not list(tmpdir.glob("ivig-cds-prometheus-*")), "the server's own metrics directory was left behind"

    from service.storage.sql_store import open_store

    store = open_store(load_settings(environ={"IVIG_CDS_DATA_DIR": str(data)}))
    try:
        assert store.count()["issued"] == len(cards)
    finally:
        store.close()


def test_serve_production_hands_config_file_and_profile_to_the_workers(tmp_path):
    """Workers rebuild Settings themselves: --config and --profile must reach them."""
    from hooks.ruleset import ruleset_version

    config = tmp_path / "site.toml"
    config.write_text("[guideline]\nigm_low_mg_dl = 30\n[limits]\nrequest_timeout_seconds = 45\n", encoding="utf-8")
    expected = ruleset_version(load_settings(config, environ={}).guideline)
    assert expected != ruleset_version(load_settings(environ={}).guideline)
    port = free_port()
    env = clean_env({"IVIG_CDS_DATA_DIR": str(tmp_path / "data"), "WEB_CONCURRENCY": "2"})
    cmd = [str(VENV_BIN / "ivig-cds"), "serve", "--production", "--config", "site.toml", "--profile", "sandbox",
           "--port", str(port)]
    with run_server(cmd, env, tmp_path, port, tmp_path / "serve.log") as server:
        with ThreadPoolExecutor(max_workers=4) as pool:
            answers = list(pool.map(lambda _: requests.get(f"{server.base}/cds-services", timeout=10,
                                                           headers={"Connection": "close"}).json(), range(20)))
        versions = {s["extension"]["ivig-cds-ruleset-version"] for a in answers for s in a["services"]}
        assert versions == {expected}
        # sandbox profile: a hook call without a token is refused
        call = requests.post(f"{server.base}/cds-services/ivig-patient-view", json=hook_request(), timeout=10)
        assert call.status_code == 401
        assert server.stop() == 0


def test_gunicorn_cmd_args_win_over_the_packaged_config(tmp_path):
    port = free_port()
    env = clean_env({"IVIG_CDS_DATA_DIR": str(tmp_path / "data"), "WEB_CONCURRENCY": "2",
                     "GUNICORN_CMD_ARGS": "--workers 1"})
    cmd = [str(VENV_BIN / "ivig-cds"), "serve", "--production", "--port", str(port)]
    with run_server(cmd, env, tmp_path, port, tmp_path / "serve.log") as server:
        assert requests.get(f"{server.base}/cds-services", timeout=10).status_code == 200
        time.sleep(1.0)  # time for a second worker, were one started
        assert len(_worker_pids(server, 1)) == 1
        assert server.stop() == 0


def test_serve_production_refuses_bad_gunicorn_settings(tmp_path):
    """A typo in a process variable stops the start with one line naming it."""
    env = clean_env({"IVIG_CDS_DATA_DIR": str(tmp_path / "data"), "WEB_CONCURRENCY": "two"})
    cmd = [str(VENV_BIN / "ivig-cds"), "serve", "--production", "--port", str(free_port())]
    done = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "Traceback" not in done.stdout + done.stderr
    lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    assert len(lines) == 1 and "WEB_CONCURRENCY" in lines[0], lines


def _proxied(url: str, port: int) -> str:
    parsed = make_url(url).set(host="127.0.0.1", port=port, query={"connect_timeout": "3"})
    return parsed.render_as_string(hide_password=False)


def _poll(base: str, want: int, consecutive: int, timeout: float) -> list[dict]:
    """Poll /readyz until ``consecutive`` answers in a row have status ``want``; their bodies."""
    deadline = time.monotonic() + timeout
    streak: list[dict] = []
    last = None
    while time.monotonic() < deadline:
        resp = requests.get(f"{base}/readyz", headers={"Connection": "close"}, timeout=10)
        last = (resp.status_code, resp.text)
        streak = streak + [resp.json()] if resp.status_code == want else []
        if len(streak) >= consecutive:
            return streak
        time.sleep(0.2)
    raise AssertionError(f"/readyz never answered {want} {consecutive} times in a row; last: {last}")


def test_readiness_follows_postgresql_down_and_back(tmp_path, pg_url):  # noqa: F811 - fixture
    proxy = TcpProxy(("127.0.0.1", 5432)).start()
    port = free_port()
    env = clean_env({
        "IVIG_CDS_DATA_DIR": str(tmp_path / "data"),
        "IVIG_CDS_DATABASE_URL": _proxied(pg_url, proxy.port),
        "WEB_CONCURRENCY": "2",
    })
    cmd = [str(VENV_BIN / "ivig-cds"), "serve", "--production", "--port", str(port)]
    try:
        with run_server(cmd, env, tmp_path / "cwd", port, tmp_path / "serve.log") as server:
            base = server.base
            _poll(base, 200, consecutive=6, timeout=30)

            proxy.cut()
            down = _poll(base, 503, consecutive=6, timeout=30)
            for body in down:
                assert body["status"] == "unavailable"
                assert body["failed"] == ["database"]
                assert body["checks"]["database"].startswith("failed: ")
                assert body["checks"]["configuration"] == "ok"
            # liveness and discovery do not depend on the database
            assert requests.get(f"{base}/healthz", timeout=5).status_code == 200
            assert requests.get(f"{base}/cds-services", timeout=5).status_code == 200

            proxy.restore()
            up = _poll(base, 200, consecutive=6, timeout=45)
            assert all(body["checks"]["database"] == "ok" for body in up)
            assert server.stop() == 0
        readiness = [line for line in server.json_lines() if line.get("event") == "readiness"]
        assert any(line["level"] == "warning" for line in readiness)
        assert any(line["message"] == "ready again" for line in readiness)
        assert "postgres@" not in server.log(), "a database URL reached the log"
    finally:
        proxy.close()


def test_the_metrics_port_answers_while_every_request_thread_is_busy(tmp_path):
    """The master serves the metrics port: a scrape needs no worker thread, and takes none from hooks."""
    import socket

    port, metrics_port = free_port(), free_port()
    env = clean_env({
        "IVIG_CDS_DATA_DIR": str(tmp_path / "data"),
        "IVIG_CDS_PORT": str(port),
        "IVIG_CDS_METRICS_PORT": str(metrics_port),
        "WEB_CONCURRENCY": "1",
        "GUNICORN_THREADS": "1",
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "prometheus"),
    })
    cmd = [str(VENV_BIN / "gunicorn"), "-c", str(ROOT / "deploy" / "gunicorn.conf.py")]
    with run_server(cmd, env, tmp_path / "cwd", port, tmp_path / "gunicorn.log") as server:
        base, scrape_url = server.base, f"http://127.0.0.1:{metrics_port}/metrics"
        assert requests.get(f"{base}/cds-services", timeout=10).status_code == 200
        # the one request thread reads a body that is slow to come
        held = socket.create_connection(("127.0.0.1", port), timeout=10)
        body = b'{"feedback": []}'
        held.sendall(b"POST /cds-services/ivig-patient-view/feedback HTTP/1.1\r\nHost: x\r\n"
                     b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body[:5])
        time.sleep(0.5)  # the worker has handed the connection to its thread, which waits for the rest
        with ThreadPoolExecutor(max_workers=1) as pool:
            waiting = pool.submit(requests.get, f"{base}/cds-services", timeout=30)
            for _ in range(5):
                scrape = requests.get(scrape_url, timeout=5)
                assert scrape.status_code == 200
                assert metric_value(scrape.text, "ivig_cds_http_requests_total", **DISCOVERY) >= 1
            assert not waiting.done(), "the request thread was free after all: the test proves nothing"
            held.sendall(body[5:])
            assert waiting.result(timeout=30).status_code == 200
        assert b"400" in held.recv(4096).split(b"\r\n", 1)[0]  # the held call's own answer (empty feedback)
        held.close()
        assert requests.get(f"{base}/metrics", timeout=10).status_code == 200  # development: the service port too
        assert server.stop() == 0
    assert "Traceback" not in server.log()
