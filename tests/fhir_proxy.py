"""A loopback reverse proxy in front of a FHIR server, as hospitals run one: it rewrites nothing.

The backend builds its links from the Host it is sent, and this proxy sends the backend's own
address (``localhost:<backend port>``, as nginx's default ``proxy_set_header Host $proxy_host``
does), so every ``Bundle.link`` and ``fullUrl`` names an address the EHR never gave: the service
is called with ``fhirServer`` = the proxy (``127.0.0.1:<proxy port>``). Bodies and headers pass
through untouched, and every request is recorded (path and query, whether a token came with it).
"""

from __future__ import annotations

import http.client
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-authorization",
              "proxy-authenticate", "host", "content-length"}


@dataclass
class Passed:
    method: str
    target: str  # path and query as received
    authorized: bool


@dataclass
class ReverseProxy:
    """``with ReverseProxy(backend_base) as proxy:`` — ``proxy.base`` is the FHIR base to hand out."""

    backend_base: str  # e.g. http://127.0.0.1:PORT/fhir
    requests: list[Passed] = field(default_factory=list)

    def __post_init__(self) -> None:
        parts = urlsplit(self.backend_base)
        self._backend = (parts.hostname or "127.0.0.1", parts.port or 80)
        self._path = parts.path
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def base(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}{self._path}"

    @property
    def backend_address(self) -> str:
        """What the backend writes into its links: its own port, under the name localhost."""
        return f"localhost:{self._backend[1]}"

    def start(self) -> "ReverseProxy":
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                return

            def do_GET(self) -> None:  # noqa: N802 - http.server naming
                proxy._forward(self)

            do_POST = do_PUT = do_GET  # noqa: N815

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            request_queue_size = 128

        self._server = Server(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> "ReverseProxy":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def _forward(self, h: BaseHTTPRequestHandler) -> None:
        with self._lock:
            self.requests.append(Passed(h.command, h.path, "Authorization" in h.headers))
        length = int(h.headers.get("Content-Length") or 0)
        body = h.rfile.read(length) if length else None
        headers = {k: v for k, v in h.headers.items() if k.lower() not in HOP_BY_HOP}
        headers["Host"] = self.backend_address
        conn = http.client.HTTPConnection(*self._backend, timeout=60)
        try:
            conn.request(h.command, h.path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            h.send_response(resp.status)
            for key, value in resp.getheaders():
                if key.lower() not in HOP_BY_HOP:
                    h.send_header(key, value)
            h.send_header("Content-Length", str(len(data)))
            h.end_headers()
            h.wfile.write(data)
        except OSError:
            h.close_connection = True
        finally:
            conn.close()
