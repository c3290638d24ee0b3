"""The records of issued cards across a stop: a normal stop writes every one, a crash loses at most
what was queued, and says how many.

Real processes on real ports, each with ``feedback.issued_flush_seconds`` far in the future so
that the writer thread never writes on its own: whatever reaches the database was written by the
shutdown path. ``ivig-cds serve`` is stopped with Ctrl-C and with SIGTERM right after a call;
a gunicorn worker is killed with SIGKILL, and the master counts what it held.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
import requests

from fhir_fixtures import load_json
from service.settings import load_settings
from tests.deploy_support import ROOT, VENV_BIN, clean_env, metric_value, run_server
from tests.servers import free_port

pytestmark = pytest.mark.slow

LOST = "ivig_cds_issued_cards_lost_total"
QUEUED = "ivig_cds_issued_cards_queued"


def _order_sign(n: int) -> dict:
    body = load_json("sample-isolated-igm", "request-order-sign.json")
    return {**body, "hookInstance": f"00000000-0000-4000-8000-{n:012d}"}


def _issued_in_database(data: Path) -> int:
    from service.storage.sql_store import open_store

    store = open_store(load_settings(environ={"IVIG_CDS_DATA_DIR": str(data)}))
    try:
        return store.count()["issued"]
    finally:
        store.close()


def _env(data: Path, **extra: str) -> dict[str, str]:
    return clean_env({"IVIG_CDS_DATA_DIR": str(data), "IVIG_CDS_FEEDBACK_ISSUED_FLUSH_SECONDS": "3600",
                      "IVIG_CDS_FEEDBACK_PATIENT_HASH_KEY": "shutdown-test", **extra})


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_serve_writes_the_last_calls_records_when_stopped(tmp_path, stop):
    data = tmp_path / "data"
    port = free_port()
    cmd = [str(VENV_BIN / "ivig-cds"), "serve", "--port", str(port)]
    with run_server(cmd, _env(data), tmp_path / "cwd", port, tmp_path / "serve.log") as server:
        resp = requests.post(f"{server.base}/cds-services/ivig-order-sign", json=_order_sign(1), timeout=30)
        assert resp.status_code == 200 and resp.json()["cards"], resp.text
        cards = len(resp.json()["cards"])
        server.proc.send_signal(stop)  # right after the answer: the writer has not run
        assert server.proc.wait(timeout=30) == 0, server.log()[-3000:]
    assert "Traceback" not in server.log()
    assert _issued_in_database(data) == cards


def _worker_pids(log: str) -> list[int]:
    return [int(line.rsplit(":", 1)[1].split('"')[0]) for line in log.splitlines()
            if "Booting worker with pid:" in line]


def test_a_killed_worker_loses_at_most_its_queue_and_the_master_counts_it(tmp_path):
    data = tmp_path / "data"
    port = free_port()
    env = _env(data, IVIG_CDS_PORT=str(port), WEB_CONCURRENCY="1",
               PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "prometheus"))
    cmd = [str(VENV_BIN / "gunicorn"), "-c", str(ROOT / "deploy" / "gunicorn.conf.py")]
    with run_server(cmd, env, tmp_path / "cwd", port, tmp_path / "gunicorn.log") as server:
        with requests.Session() as http:
            cards = 0
            for n in range(5):
                resp = http.post(f"{server.base}/cds-services/ivig-order-sign", json=_order_sign(n), timeout=30)
                assert resp.status_code == 200, resp.text
                cards += len(resp.json()["cards"])
            scrape = http.get(f"{server.base}/metrics", timeout=10).text
        assert cards and metric_value(scrape, QUEUED) == cards  # what a crash now would lose
        assert metric_value(scrape, LOST) == 0
        (worker,) = _worker_pids(server.log())
        os.kill(worker, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while len(_worker_pids(server.log())) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert len(_worker_pids(server.log())) == 2, server.log()[-3000:]
        scrape = ""
        while time.monotonic() < deadline:
            try:
                scrape = requests.get(f"{server.base}/metrics", timeout=10).text
                break
            except requests.ConnectionError:  # the new worker is still loading the app
                time.sleep(0.2)
        assert metric_value(scrape, LOST, reason="worker_died") == cards
        assert metric_value(scrape, QUEUED) == 0  # the dead worker's gauge is retired
        assert server.stop() == 0
    assert _issued_in_database(data) == 0  # lost indeed, and counted above
    lost = [json.loads(line) for line in server.log().splitlines()
            if line.startswith("{") and '"issued_lost"' in line]
    assert [(line["count"], line["worker"]) for line in lost] == [(cards, worker)]
