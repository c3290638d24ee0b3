"""Logs are written by a background thread: nothing lost, request ids kept, exception text never written."""

from __future__ import annotations

import io
import json
import logging
import sys

from flask import Flask

from service.ops import logging as cds_logging


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


class _CountingStream(io.StringIO):
    """stderr that counts its writes."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)


def _with_logging(stream: io.StringIO, monkeypatch, body) -> None:
    monkeypatch.setattr(sys, "stderr", stream)
    root = logging.getLogger()
    saved = list(root.handlers), root.level
    try:
        cds_logging.configure_logging("INFO")
        body()
    finally:
        cds_logging._stop_listener()
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])


def _ours(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.startswith('{"time"')]


def test_a_burst_of_records_is_written_in_order_in_few_writes(monkeypatch):
    """Records queued while the writer is busy go out together: one write for many lines."""
    stream = _CountingStream()
    log = logging.getLogger("ivig_cds.test")

    def burst() -> None:
        for i in range(2000):
            log.info("line %d", i)

    _with_logging(stream, monkeypatch, burst)
    numbers = [int(x["message"].split()[1]) for x in _ours(stream) if x["message"].startswith("line ")]
    assert numbers == list(range(2000))
    assert stream.writes < 2000 / 2, stream.writes


def test_a_lone_record_is_written_without_waiting_for_more(monkeypatch):
    """The batch is written as soon as the queue is empty, not when it fills or at exit."""
    import time

    stream = io.StringIO()
    seen: list[bool] = []

    def lone() -> None:
        logging.getLogger("ivig_cds.test").warning("alone")
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and '"alone"' not in stream.getvalue():
            time.sleep(0.01)
        seen.append('"alone"' in stream.getvalue())

    _with_logging(stream, monkeypatch, lone)
    assert seen == [True]


def test_request_ids_are_unique_and_differ_in_a_forked_worker():
    """Ids are random per request: a gunicorn worker must not repeat its master's."""
    import os
    import re

    ids = [cds_logging.new_request_id() for _ in range(20000)]
    assert len(set(ids)) == len(ids) and all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the worker: its next ids, to the parent
        os.close(read_end)
        os.write(write_end, " ".join(cds_logging.new_request_id() for _ in range(100)).encode())
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        child = pipe.read().split()
    os.waitpid(pid, 0)
    parent = [cds_logging.new_request_id() for _ in range(100)]
    assert len(child) == 100 and not set(child) & set(parent)


def _one_hook_call() -> None:
    """A hook call that issued one card, through an app with the logging hooks only."""
    app = Flask("t")
    cds_logging.init_app(app)

    @app.get("/cds-services/<service_id>")
    def view(service_id):
        from flask import g

        g.cds_topics, g.cds_ruleset = ["ivig-not-indicated"], "rs-1"
        return "ok"

    app.test_client().get("/cds-services/ivig-order-sign", headers={"X-Request-ID": "req-1"})


def test_the_access_line_carries_its_fields_in_order(monkeypatch):
    stream = io.StringIO()
    _with_logging(stream, monkeypatch, _one_hook_call)
    (line,) = [x for x in _ours(stream) if x["logger"] == "ivig_cds.access"]
    assert list(line) == ["time", "level", "logger", "message", "request_id", "method", "path", "service", "status",
                          "duration_ms", "cards", "topics", "ruleset"]
    assert line["path"] == "/cds-services/<service_id>" and line["topics"] == ["ivig-not-indicated"]
    assert line["request_id"] == "req-1" and line["service"] == "ivig-order-sign"
    import re

    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", line["time"])


def test_the_access_line_is_the_same_whether_made_in_the_request_or_by_the_writer(monkeypatch):
    """With only our writer listening, the access line is made in the request's thread and queued
    as text; with anyone else listening (a capture, a deployment's handler) it is a record they get
    too. The line written is the same either way."""
    captured: list[logging.LogRecord] = []

    class Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            captured.append(record)

    prepared: list[str] = []
    original_prepare = cds_logging.RequestQueueHandler.prepare
    monkeypatch.setattr(cds_logging.RequestQueueHandler, "prepare",
                        lambda self, record: prepared.append(record.name) or original_prepare(self, record))
    lines = []
    for others in ([], [Capture()]):
        stream = io.StringIO()

        def requests() -> None:
            root = logging.getLogger()
            root.handlers[:] = [h for h in root.handlers if getattr(h, "_ivig_cds", False)] + others
            _one_hook_call()

        _with_logging(stream, monkeypatch, requests)
        (line,) = [x for x in _ours(stream) if x["logger"] == "ivig_cds.access"]
        lines.append({k: v for k, v in line.items() if k not in ("time", "duration_ms")} | {"keys": list(line)})
    assert lines[0] == lines[1]
    assert [r.name for r in captured] == ["ivig_cds.access"]  # the capture got its record
    assert prepared == ["ivig_cds.access"]  # as a record only when another handler listened


def test_timestamps_keep_milliseconds_across_second_boundaries():
    import time

    for created in (1_800_000_000.0, 1_800_000_000.9995, 1_800_000_001.001, 1_800_000_000.5):
        expected = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created)) + f".{int((created % 1) * 1000):03d}Z"
        assert cds_logging.timestamp(created) == expected


def test_a_line_whose_fields_cannot_be_written_keeps_its_message_and_the_writer_keeps_going(monkeypatch):
    stream = io.StringIO()
    handler = cds_logging.LineBatchHandler(stream)
    handler.setFormatter(cds_logging.JsonFormatter())
    log = logging.getLogger("ivig_cds.access")
    for count in (2 ** 70, 3):  # orjson: the first integer is too big
        handler.handle(log.makeRecord(log.name, logging.INFO, __file__, 1, "request", None, None,
                                      extra={"count": count}))
    handler.write_pending()
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["message"] == "request" and first["event"] == "log_fields_unwritable" and "count" not in first
    assert second["count"] == 3


def test_an_access_line_made_in_the_request_writes_only_the_safe_fields(monkeypatch):
    """The line made without a record is held to the same whitelist as every record's line."""
    stream = io.StringIO()

    def log() -> None:
        root = logging.getLogger()
        root.handlers[:] = [h for h in root.handlers if getattr(h, "_ivig_cds", False)]
        cds_logging.log_access(logging.getLogger("ivig_cds.access"),
                               {"status": 200, "patient_id": "Jane-Doe-1937", "cards": None})

    _with_logging(stream, monkeypatch, log)
    (line,) = [x for x in _ours(stream) if x["logger"] == "ivig_cds.access"]
    assert line["status"] == 200 and "patient_id" not in line and "cards" not in line
    assert "Jane" not in stream.getvalue()
