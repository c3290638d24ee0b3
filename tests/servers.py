"""Real servers for tests: the app on a real local port, and the CLI as a real process."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from typing import Iterator, Mapping

import requests
from werkzeug.serving import make_server


def stop_process(proc: subprocess.Popen, timeout: float) -> bool:
    """SIGTERM (what an orchestrator sends), SIGKILL after ``timeout``; whether it stopped in time."""
    if proc.poll() is not None:
        return True
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
        return True
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def live_app(app) -> Iterator[str]:
    """Serve a Flask app on 127.0.0.1:<free port> in a thread; yields the base URL."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(timeout=5)


def wait_http(url: str, timeout: float = 30.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {url} answered")
        try:
            requests.get(url, timeout=1)
            return
        except requests.ConnectionError:
            time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer within {timeout}s")


@contextlib.contextmanager
def cli_server(args: list[str], env: Mapping[str, str] | None = None, cwd: str | None = None,
               port: int | None = None, health_path: str = "/healthz") -> Iterator[tuple[str, subprocess.Popen]]:
    """Run ``ivig-cds serve ... --port P`` as a real process; yields (base URL, process)."""
    port = port or free_port()
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("IVIG_CDS_")}
    full_env.update(env or {})
    exe = os.path.join(os.path.dirname(sys.executable), "ivig-cds")
    proc = subprocess.Popen([exe, *args, "--port", str(port)], env=full_env, cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http(base + health_path, proc=proc)
        yield base, proc
    finally:
        stop_process(proc, timeout=15)
