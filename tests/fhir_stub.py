"""A scripted FHIR-like HTTP server on 127.0.0.1 for fault injection (hang, slow pages, 500, 401, ...).

Why not the real FHIR server for these: a real server never hangs, lies about its resourceType
or redirects elsewhere on request. This stub does exactly that, per resource type or per path,
and records every request (path, query, headers, client port) so tests can check what the
service sent — and what it never sent (no request to another host, no token where it must not go).
Hanging handlers wait on an event that ``stop()`` sets, so shutting the stub down never hangs.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable
from urllib.parse import parse_qs, urlsplit


@dataclass
class Behaviour:
    """How the stub answers one route.

    kind: ok | hang | status | invalid_json | wrong_type | redirect | pages | trickle | operation_outcome |
    huge (a valid searchset of ``size`` bytes, Content-Length given) | endless (a chunked searchset that
    never ends) | truncated (a chunked answer whose connection is cut mid-body)
    """

    kind: str = "ok"
    delay: float = 0.0  # before answering (every page, for "pages")
    status: int = 200
    body: Any = None  # JSON answer for "ok" (default: an empty searchset or a bare resource)
    location: str | None = None  # for "redirect"
    pages: int = 1  # for "pages"
    entries_per_page: int = 1
    next_base: str | None = None  # for "pages": base URL of next links (default: this stub)
    wrong_type: str = "Observation"
    size: int = 0  # for "huge": body bytes; for "pages": padding bytes added to every page


@dataclass
class Recorded:
    method: str
    path: str  # relative to the FHIR base, e.g. "Patient/p1"
    query: dict[str, list[str]]
    headers: dict[str, str]
    client_port: int


@dataclass
class FhirStub:
    """Start with ``with FhirStub() as stub:``; ``stub.base`` is the FHIR base URL."""

    host: str = "127.0.0.1"
    base_host: str | None = None  # host name used in URLs (e.g. "localhost" for "another host")
    routes: dict[str, Behaviour] = field(default_factory=dict)
    default: Behaviour = field(default_factory=Behaviour)
    requests: list[Recorded] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._release = threading.Event()
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------ lifecycle

    def start(self) -> "FhirStub":
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body go out at once: no 40 ms delayed-ACK stall

            def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
                return

            def do_GET(self) -> None:  # noqa: N802 - http.server naming
                stub._handle(self)

            def do_POST(self) -> None:  # noqa: N802 - a token endpoint is POSTed to
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                stub._handle(self)

        class Server(ThreadingHTTPServer):
            request_queue_size = 128  # the default backlog of 5 drops concurrent connects
            daemon_threads = True

            def handle_error(self, request: Any, client_address: Any) -> None:
                import sys

                if not isinstance(sys.exc_info()[1], OSError):  # a client that hung up is no error here
                    super().handle_error(request, client_address)

        self._server = Server((self.host, 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._release.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> "FhirStub":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._server is not None
        return self._server.server_address[1]

    @property
    def base(self) -> str:
        return f"http://{self.base_host or self.host}:{self.port}/fhir"

    def paths(self) -> list[str]:
        with self._lock:
            return [r.path for r in self.requests]

    # ------------------------------------------------------------ answering

    def _behaviour(self, path: str) -> Behaviour:
        if path in self.routes:
            return self.routes[path]
        resource_type = path.split("/", 1)[0]
        return self.routes.get(resource_type, self.default)

    def _wait(self, seconds: float) -> None:
        if seconds > 0:
            self._release.wait(seconds)

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        parts = urlsplit(h.path)
        path = parts.path
        path = path[len("/fhir/"):] if path.startswith("/fhir/") else path.lstrip("/")
        query = parse_qs(parts.query)
        with self._lock:
            self.requests.append(Recorded(h.command, path, query, {k: v for k, v in h.headers.items()},
                                          h.client_address[1]))
        b = self._behaviour(path)
        self._wait(b.delay)
        if b.kind == "hang":
            self._wait(120)
            return self._send(h, 504, b"{}")
        if b.kind == "status":
            body = {"resourceType": "OperationOutcome",
                    "issue": [{"severity": "error", "code": "processing", "diagnostics": f"HTTP {b.status}"}]}
            headers = {"WWW-Authenticate": 'Bearer realm="fhir"'} if b.status == 401 else {}
            return self._send(h, b.status, json.dumps(body).encode(), headers)
        if b.kind == "invalid_json":
            return self._send(h, 200, b'{"resourceType": "Bundle", "entry": [')
        if b.kind == "operation_outcome":
            body = {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "exception"}]}
            return self._send(h, 200, json.dumps(body).encode())
        if b.kind == "wrong_type":
            return self._send(h, 200, json.dumps({"resourceType": b.wrong_type, "id": "x"}).encode())
        if b.kind == "redirect":
            return self._send(h, 302, b"", {"Location": b.location or "/"})
        if b.kind == "trickle":
            return self._trickle(h)
        if b.kind == "huge":
            return self._huge(h, b.size)
        if b.kind in ("endless", "truncated"):
            return self._chunked(h, endless=b.kind == "endless")
        if b.kind == "pages":
            return self._send(h, 200, json.dumps(self._page(path, query, b)).encode())
        body = b.body if b.body is not None else self._default_body(path)
        if callable(body):
            body = body(path, query)
        return self._send(h, b.status, json.dumps(body).encode())

    def _default_body(self, path: str) -> dict[str, Any]:
        segments = [s for s in path.split("/") if s]
        if len(segments) == 2:
            return {"resourceType": segments[0], "id": segments[1]}
        return {"resourceType": "Bundle", "type": "searchset", "total": 0, "entry": []}

    def _page(self, path: str, query: dict[str, list[str]], b: Behaviour) -> dict[str, Any]:
        resource_type = path.split("/", 1)[0]
        page = int((query.get("_page") or ["1"])[0])
        entries = [{"resource": {"resourceType": resource_type, "id": f"{resource_type}-{page}-{i}"}}
                   for i in range(b.entries_per_page)]
        bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset",
                                  "total": b.pages * b.entries_per_page, "entry": entries, "link": []}
        if page < b.pages:
            base = b.next_base or self.base
            bundle["link"].append({"relation": "next", "url": f"{base}/{resource_type}?_page={page + 1}"})
        if b.size:
            bundle["padding"] = "x" * b.size
        return bundle

    def _huge(self, h: BaseHTTPRequestHandler, size: int) -> None:
        """A valid searchset of ``size`` bytes, written in pieces (the stub never holds it whole)."""
        head, tail = b'{"resourceType": "Bundle", "type": "searchset", "entry": [], "padding": "', b'"}'
        piece = b"x" * 65536
        try:
            h.send_response(200)
            h.send_header("Content-Type", "application/fhir+json")
            h.send_header("Content-Length", str(size))
            h.end_headers()
            h.wfile.write(head)
            left = size - len(head) - len(tail)
            while left > 0 and not self._release.is_set():
                h.wfile.write(piece[:left])
                left -= len(piece)
            h.wfile.write(tail)
        except OSError:  # the client stopped reading (its cap): expected
            pass
        h.close_connection = True

    def _chunked(self, h: BaseHTTPRequestHandler, endless: bool) -> None:
        """A chunked searchset: ``endless`` never ends; otherwise the connection is cut mid-answer."""
        entry = b'{"resource": {"resourceType": "Observation", "status": "final"}},' * 512

        def chunk(data: bytes) -> None:
            h.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))

        try:
            h.send_response(200)
            h.send_header("Content-Type", "application/fhir+json")
            h.send_header("Transfer-Encoding", "chunked")
            h.end_headers()
            chunk(b'{"resourceType": "Bundle", "type": "searchset", "entry": [')
            if endless:
                while not self._release.is_set():
                    chunk(entry)
            else:
                chunk(entry)
                h.wfile.write(b"%x\r\n" % 65536 + entry[:100])  # a chunk announced, never completed
                h.wfile.flush()
                h.connection.shutdown(2)
        except OSError:  # the client stopped reading (its cap): expected
            pass
        h.close_connection = True

    def _trickle(self, h: BaseHTTPRequestHandler) -> None:
        """Headers at once, then one byte every 0.1 s of a body that never completes in time."""
        try:
            h.send_response(200)
            h.send_header("Content-Type", "application/fhir+json")
            h.send_header("Content-Length", "100000")
            h.end_headers()
            h.wfile.write(b'{"resourceType": "Bundle", "entry": [')
            h.wfile.flush()
            while not self._release.is_set():
                h.wfile.write(b" ")
                h.wfile.flush()
                self._release.wait(0.1)
        except OSError:
            pass
        h.close_connection = True

    @staticmethod
    def _send(h: BaseHTTPRequestHandler, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        try:
            h.send_response(status)
            h.send_header("Content-Type", "application/fhir+json")
            h.send_header("Content-Length", str(len(body)))
            for key, value in (headers or {}).items():
                h.send_header(key, value)
            h.end_headers()
            h.wfile.write(body)
        except OSError:  # the client gave up (deadline): nothing to do
            h.close_connection = True


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    """(result or raised exception, seconds) of ``fn()``."""
    start = time.monotonic()
    try:
        result: Any = fn()
    except Exception as exc:  # the test inspects it
        result = exc
    return result, time.monotonic() - start
