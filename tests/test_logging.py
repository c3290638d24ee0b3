"""Logs are written by a background thread: nothing lost, request ids kept, exception text never written."""

from __future__ import annotations

import io
import json
import logging
import sys

from flask import Flask

from service import logging as cds_logging


def test_queued_records_keep_the_request_id_and_lose_exception_messages(monkeypatch):
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    root = logging.getLogger()
    saved = list(root.handlers), root.level
    try:
        cds_logging.configure_logging("INFO")
        app = Flask("t")
        cds_logging.init_app(app)

        @app.get("/boom")
        def boom():
            try:
                raise ValueError("patient Jane Doe born 1937-04-19")
            except ValueError:
                logging.getLogger("ivig_cds.test").exception("handler failed")
            return "ok"

        app.test_client().get("/boom", headers={"X-Request-ID": "req-123"})
        for i in range(500):  # a burst: every record must arrive
            logging.getLogger("ivig_cds.test").info("burst %d", i)
        cds_logging._stop_listener()  # what atexit does: drain, then stop
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
    # other tests' lingering threads may print to the (patched) stderr too: read our JSON lines only
    lines = [json.loads(line) for line in stream.getvalue().splitlines() if line.startswith('{"time"')]
    failed = next(x for x in lines if x["message"] == "handler failed")
    assert failed["request_id"] == "req-123" and failed["exception"] == "ValueError"
    assert any("boom" in frame for frame in failed["stack"])
    assert "Jane" not in stream.getvalue() and "1937" not in stream.getvalue()
    assert sum(1 for x in lines if x["message"].startswith("burst ")) == 500
    access = next(x for x in lines if x["logger"] == "ivig_cds.access")
    assert access["request_id"] == "req-123" and access["path"] == "/boom"
