"""Helpers for the deployment tests: real server processes, a TCP proxy to cut, file parsers.

Server output goes to a file, never to a pipe nobody reads: gunicorn and the app log a JSON line
per request, and a full pipe would stall the server mid-test.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import select
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

import requests

from tests.servers import free_port, stop_process

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent

#: Variables of the caller's shell that would change what a server under test does.
_SCRUB_PREFIXES = ("IVIG_CDS_", "GUNICORN_", "PROMETHEUS_MULTIPROC_DIR", "prometheus_multiproc_dir",
                   "WEB_CONCURRENCY", "FORWARDED_ALLOW_IPS", "PORT")


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment without anything that configures ivig-cds or gunicorn."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_SCRUB_PREFIXES)}
    env.update(extra or {})
    return env


@dataclass
class Server:
    """A server process under test, its base URL and its captured output."""

    proc: subprocess.Popen
    base: str
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def json_lines(self) -> list[dict[str, Any]]:
        """Every complete line of output as JSON (raises on a line that is not: logs are structured)."""
        complete = self.log().split("\n")[:-1]  # a line still being written has no newline yet
        return [json.loads(line) for line in complete if line.strip()]

    def stop(self, timeout: float = 40.0) -> int:
        """SIGTERM (what Docker and Kubernetes send), then wait; the exit status."""
        if not stop_process(self.proc, timeout):
            raise AssertionError(f"server did not stop within {timeout}s of SIGTERM:\n{self.log()[-3000:]}")
        return self.proc.returncode


def wait_ready(base: str, proc: subprocess.Popen, log_path: Path, path: str = "/healthz",
               timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited with {proc.returncode} before answering:\n"
                                 f"{log_path.read_text(errors='replace')[-4000:]}")
        try:
            if requests.get(base + path, timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{base}{path} did not answer 200 within {timeout}s:\n"
                         f"{log_path.read_text(errors='replace')[-4000:]}")


@contextlib.contextmanager
def run_server(cmd: list[str], env: Mapping[str, str], cwd: Path, port: int, log_path: Path,
               ready_path: str = "/healthz") -> Iterator[Server]:
    """Start ``cmd`` (which must listen on 127.0.0.1:``port`` or 0.0.0.0), wait for it, stop it after."""
    cwd.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w", encoding="utf-8") as out:
        proc = subprocess.Popen(cmd, env=dict(env), cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    server = Server(proc, f"http://127.0.0.1:{port}", log_path)
    try:
        wait_ready(server.base, proc, log_path, ready_path)
        yield server
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)  # the group: the master and its workers
                proc.wait()


def hook_request(patient_id: str = "deploy-test-1", igm_mg_dl: float = 18.0) -> dict[str, Any]:
    """A patient-view call with its data in prefetch: an adult with a low IgM and nothing else."""
    observation = {
        "resourceType": "Observation", "id": "igm-1", "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "2472-0", "display": "IgM [Mass/volume] in Serum"}]},
        "subject": {"reference": f"Patient/{patient_id}"},
        "effectiveDateTime": "2026-01-10",
        "valueQuantity": {"value": igm_mg_dl, "unit": "mg/dL", "system": "http://unitsofmeasure.org", "code": "mg/dL"},
    }
    return {
        "hook": "patient-view",
        "hookInstance": str(uuid.uuid4()),
        "context": {"userId": "Practitioner/deploy-test", "patientId": patient_id},
        "prefetch": {
            "patient": {"resourceType": "Patient", "id": patient_id, "gender": "female", "birthDate": "1970-03-01"},
            "immunoglobulins": {"resourceType": "Bundle", "type": "searchset",
                                "entry": [{"resource": observation}]},
        },
    }


# ------------------------------------------------------------------ fault injection

class TcpProxy:
    """A local TCP forwarder that can be cut (listener closed, live connections reset) and restored.

    Stands between the service and PostgreSQL: cutting it is what a database outage looks like
    from the service (connection refused, existing connections dropped), without touching the
    shared database server.
    """

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = free_port()
        self._listener: socket.socket | None = None
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    def start(self) -> "TcpProxy":
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        thread = threading.Thread(target=self._accept, args=(listener,), daemon=True)
        thread.start()
        self._threads.append(thread)
        return self

    def cut(self) -> None:
        """Refuse new connections and reset the open ones."""
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        with self._lock:
            conns, self._conns = self._conns, set()
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                conn.close()

    def restore(self) -> None:
        self.start()

    def close(self) -> None:
        self.cut()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                if self._listener is not listener:  # cut while connecting
                    client.close()
                    upstream.close()
                    return
                self._conns.update((client, upstream))
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()

    def _pump(self, a: socket.socket, b: socket.socket) -> None:
        peers = {a: b, b: a}
        try:
            while True:
                readable, _, _ = select.select([a, b], [], [], 1.0)
                if a.fileno() < 0 or b.fileno() < 0:
                    return
                for sock in readable:
                    data = sock.recv(65536)
                    if not data:
                        return
                    peers[sock].sendall(data)
        except (OSError, ValueError):
            return
        finally:
            for sock in (a, b):
                with contextlib.suppress(OSError):
                    sock.close()
            with self._lock:
                self._conns.discard(a)
                self._conns.discard(b)


# ------------------------------------------------------------------ metrics

def metric_value(text: str, name: str, **labels: str) -> float:
    """Sum of the samples called ``name`` whose labels include ``labels`` (0 when none)."""
    from prometheus_client.parser import text_string_to_metric_families

    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def per_process_counts(directory: Path, metric: str, **labels: str) -> dict[int, float]:
    """pid -> value of a counter as each worker wrote it in the multiprocess directory."""
    from prometheus_client.mmap_dict import MmapedDict

    counts: dict[int, float] = {}
    for path in directory.glob("counter_*.db"):
        pid = int(path.stem.split("_")[-1])
        value = 0.0
        for key, val, _ts, _pos in MmapedDict.read_all_values_from_file(str(path)):
            _metric_name, sample_name, sample_labels, _help = json.loads(key)
            if sample_name == metric and all(sample_labels.get(k) == v for k, v in labels.items()):
                value += val
        counts[pid] = value
    return counts


# ------------------------------------------------------------------ Dockerfile and .dockerignore

@dataclass
class Instruction:
    keyword: str
    args: str
    stage: int
    flags: dict[str, str] = field(default_factory=dict)

    def exec_form(self) -> list[str]:
        """The JSON (exec) form of CMD/ENTRYPOINT/HEALTHCHECK CMD; shell form is split like sh."""
        text = self.args
        if self.keyword == "HEALTHCHECK":
            text = text.split("CMD", 1)[1].strip()
        if text.startswith("["):
            value = json.loads(text)
            assert isinstance(value, list) and all(isinstance(v, str) for v in value)
            return value
        return shlex.split(text)


def dockerfile_instructions(path: Path) -> list[Instruction]:
    """Instructions with continuation lines joined and comments dropped; ``stage`` counts FROMs."""
    lines: list[str] = []
    current = ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        stripped = raw.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if current and stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        current += stripped
        lines.append(current)
        current = ""
    if current:
        lines.append(current)
    out: list[Instruction] = []
    stage = -1
    for line in lines:
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            stage += 1
        flags: dict[str, str] = {}
        if keyword == "HEALTHCHECK":
            for match in re.finditer(r"--([a-z-]+)=(\S+)", rest.split("CMD", 1)[0]):
                flags[match.group(1)] = match.group(2)
        out.append(Instruction(keyword, rest.strip(), stage, flags))
    return out


def dockerfile_env(instructions: list[Instruction], stage: int) -> dict[str, str]:
    """ENV of one stage, ``KEY=value`` pairs (values may be quoted)."""
    env: dict[str, str] = {}
    for ins in instructions:
        if ins.stage == stage and ins.keyword == "ENV":
            for token in shlex.split(ins.args):
                key, _, value = token.partition("=")
                env[key] = value
    return env


def _dockerignore_regex(pattern: str) -> re.Pattern[str]:
    """Docker's .dockerignore pattern syntax (Go filepath.Match plus ``**``) as a regex."""
    pattern = pattern.strip().strip("/")
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out, i = out + pattern[i:end + 1], end + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out + r"\Z")


class DockerIgnore:
    """Which context-relative paths ``docker build`` leaves out (last matching rule wins)."""

    def __init__(self, ignore_file: Path) -> None:
        self.rules: list[tuple[bool, str, re.Pattern[str]]] = []
        for raw in ignore_file.read_text(encoding="utf-8").splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            negate = line.startswith("!")
            text = (line[1:] if negate else line).strip().strip("/")
            self.rules.append((negate, text, _dockerignore_regex(text)))

    def excluded(self, relpath: str) -> bool:
        parts = relpath.split("/")
        candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]  # the path and its parents
        result = False
        for negate, _text, regex in self.rules:
            if any(regex.match(c) for c in candidates):
                result = not negate
        return result

    def may_reinclude_below(self, reldir: str) -> bool:
        """Could an exception rule bring back something under this excluded directory?"""
        return any(negate and (text.startswith(reldir + "/") or "*" in text.split("/")[0])
                   for negate, text, _ in self.rules)


def build_context_files(root: Path, ignore_file: Path) -> list[str]:
    """The files ``docker build`` would send, as paths relative to ``root``."""
    ignore = DockerIgnore(ignore_file)
    files: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        reldir = Path(dirpath).relative_to(root).as_posix()
        prefix = "" if reldir == "." else reldir + "/"
        dirnames[:] = sorted(d for d in dirnames
                             if not ignore.excluded(prefix + d) or ignore.may_reinclude_below(prefix + d))
        files.extend(prefix + f for f in sorted(filenames) if not ignore.excluded(prefix + f))
    return sorted(files)
