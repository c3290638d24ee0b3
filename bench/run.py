"""The service against its floor on distinct records and on the same body: one command, real
gunicorn, real HTTP load.

    .venv/bin/python bench/run.py                   # full run: 3 rounds x 8 s per workload, 60 s mixed run
    .venv/bin/python bench/run.py --short           # CI: 1 round x 2 s, 10 s mixed run; prints, never fails on noise
    .venv/bin/python bench/run.py --json out.json   # the figures as JSON as well

In one run, on 127.0.0.1 ephemeral ports, it starts

* the service: ``python -m gunicorn -c python:service.ops.gunicorn_conf`` (the packaged production
  settings: gthread workers, WEB_CONCURRENCY, GUNICORN_THREADS), development profile so that no
  JWT is needed, data dir and SQLite database in a fresh tmp dir;
* the floor: the same command serving bench/floor_app.py, a bare Flask app that parses the same
  JSON body (orjson, as the service does) and answers ``{"cards": []}``;

writes the workloads (bench/workloads.py, from fhir_fixtures/) to the tmp dir, and drives both
with wrk over keep-alive connections (bench/wrk_post.lua), floor and service on the same bodies,
back to back in alternating order, several rounds; the medians of the rounds are compared.

The headline is distinct records: every request another patient's record (ids, references and
values made unique per request by the wrk script, the clinical content unchanged; checked by
comparing the cards of a varied body with those of the record itself). Targets (issue 22), on
distinct records: requests/s at least 0.25 x the floor's for typical, 0.5 x for large, 0.8 x for
quiet; p99 under 500 ms for large at 16 connections; no timeouts or errors. The same body on
every call is measured beside them, with issue 9's targets (p99 <= 1.5 x and requests/s >=
0.67 x the floor's; p99 < 50 ms typical, < 200 ms large), and once with the answer memo off, to
show what the memo is worth. The JWT row is distinct typical with ES384 tokens (unique jti).

Memory: RSS of every worker after the distinct large workload, and through a mixed run of
distinct records (quiet, typical and large) on a freshly started service, against the memory
limit of the container in deploy/k8s (master and workers together, both workers busy).

Exit status: 0 whatever the figures (the machine is shared and noisy; ``--strict`` exits 1 when
a target is missed), 2 when wrk is missing, 3 when a server fails.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import signal
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.workloads import MIX, Workload, body_file, write_workloads  # noqa: E402
from service.ops.production import GUNICORN_ENV, PACKAGED_CONFIG  # noqa: E402 - light, no side effects

#: Tries to get a run whose connections are spread over the workers (see ``wrk``).
BALANCE_ATTEMPTS = 40
LUA = ROOT / "bench" / "wrk_post.lua"
FLOOR_APP = "bench.floor_app:app"
JWT_ISSUER = "https://ehr.bench.invalid/"
K8S_DEPLOYMENT = ROOT / "deploy" / "k8s" / "deployment.yaml"
#: Variables of the caller's shell that would change what a server does; the benchmark sets its own.
_SCRUB = ("IVIG_CDS_", "GUNICORN_", "WEB_CONCURRENCY", "PROMETHEUS_MULTIPROC_DIR", "prometheus_multiproc_dir",
          "FORWARDED_ALLOW_IPS")


class BenchError(Exception):
    """A failure that makes the figures meaningless (a server died or logged an error)."""


# ------------------------------------------------------------------ servers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _read_proc(path: str) -> str | None:
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            return f.read()
    except OSError:
        return None


def children(pid: int) -> list[int]:
    """Direct child processes of ``pid`` (gunicorn's workers of its master)."""
    text = _read_proc(f"/proc/{pid}/task/{pid}/children")
    if text is not None:
        return sorted(int(p) for p in text.split())
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _read_proc(f"/proc/{entry}/stat")
            if stat and int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry))
    return sorted(found)


def rss_mib(pid: int) -> float | None:
    text = _read_proc(f"/proc/{pid}/status")
    for line in (text or "").splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return None


def _established_inodes(port: int) -> set[str] | None:
    """Socket inodes of the established TCP connections to local ``port`` (None: no /proc/net)."""
    found: set[str] = set()
    seen_table = False
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        text = _read_proc(table)
        if text is None:
            continue
        seen_table = True
        for line in text.splitlines()[1:]:
            fields = line.split()
            if len(fields) > 9 and fields[3] == "01" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                found.add(fields[9])
    return found if seen_table else None


def connections_per_worker(server: "Server") -> list[int] | None:
    """How many of the clients' connections each worker holds (None where /proc cannot tell)."""
    inodes = _established_inodes(server.port)
    if inodes is None:
        return None
    counts = []
    for pid in server.workers():
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            return None
        held = 0
        for fd in fds:
            try:
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:  # closed meanwhile
                continue
            held += link.startswith("socket:[") and link[8:-1] in inodes
        counts.append(held)
    return counts


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of one process so far."""
    stat = _read_proc(f"/proc/{pid}/stat")
    if not stat:
        return 0.0
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Server:
    """A gunicorn master we started, on its own port, logging to a file."""

    name: str
    proc: subprocess.Popen
    port: int
    log_path: Path

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def workers(self) -> list[int]:
        return children(self.proc.pid)

    def cpu(self) -> float:
        return sum(cpu_seconds(pid) for pid in [self.proc.pid, *self.workers()])

    def rss(self) -> dict[int, float]:
        return {pid: mib for pid in self.workers() if (mib := rss_mib(pid)) is not None}

    def alive(self) -> None:
        if self.proc.poll() is not None:
            raise BenchError(f"{self.name} exited with {self.proc.returncode}:\n{self.tail()}")

    def tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")[-chars:]

    def stop(self) -> None:
        """SIGTERM to the master (it drains and stops its workers), SIGKILL to the group if it hangs."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)  # our own session: master and its workers
                self.proc.wait()


def server_env(data_dir: Path, port: int, workers: int | None, threads: int | None,
               extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(_SCRUB)}
    env.update({
        "IVIG_CDS_PROFILE": "development",
        "IVIG_CDS_HOST": "127.0.0.1",
        "IVIG_CDS_PORT": str(port),
        "IVIG_CDS_DATA_DIR": str(data_dir),
        "PROMETHEUS_MULTIPROC_DIR": str(data_dir / "prometheus"),
        "PYTHONPATH": str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""),
    })
    if workers:
        env["WEB_CONCURRENCY"] = str(workers)
    if threads:
        env["GUNICORN_THREADS"] = str(threads)
    env.update(extra or {})
    return env


def start_server(name: str, tmp: Path, app: str | None, workers: int | None, threads: int | None,
                 extra_env: dict[str, str] | None = None) -> Server:
    data_dir = tmp / f"{name}-data"
    data_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    cmd = [sys.executable, "-m", "gunicorn", "-c", PACKAGED_CONFIG, *([app] if app else [])]
    log_path = tmp / f"{name}.log"
    with open(log_path, "w", encoding="utf-8") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=server_env(data_dir, port, workers, threads, extra_env),
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    server = Server(name, proc, port, log_path)
    expected = workers or _default("WEB_CONCURRENCY")
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        server.alive()
        try:
            with urllib.request.urlopen(server.base + "/healthz", timeout=2) as r:
                if r.status == 200 and len(server.workers()) >= expected:
                    return server
        except OSError:
            pass
        time.sleep(0.2)
    server.stop()
    raise BenchError(f"{name} did not answer /healthz within 90 s:\n{server.tail()}")


def _default(name: str) -> int:
    """The packaged default of a process variable (the benchmark scrubs the caller's own)."""
    return int(next(v.default for v in GUNICORN_ENV if v.name == name))


def post(url: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    req = urllib.request.Request(url, data=body, method="POST",
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()[:300]


# ------------------------------------------------------------------ wrk


@dataclass
class Run:
    """One wrk run against one server."""

    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    errors: dict[str, int]
    #: server CPU (master + workers) per request
    cpu_ms_per_request: float
    #: CPU seconds each worker used during the run (all on one: the kernel gave it every connection)
    worker_cpu_s: list[float] = field(default_factory=list)
    #: runs made until the connections were spread over the workers (see ``balanced``)
    attempts: int = 1
    #: the clients' connections held by each worker, seen early in the run (None: not known)
    worker_connections: list[int] | None = None

    @property
    def balanced(self) -> bool:
        """The connections were spread evenly over the workers (2 and 2, not 3 and 1); where that
        cannot be seen, every worker did a fair part of the work (>= 1/4 of the busiest one's CPU)."""
        if self.worker_connections:
            return _even(self.worker_connections)
        return len(self.worker_cpu_s) < 2 or min(self.worker_cpu_s) >= 0.25 * max(self.worker_cpu_s)

    @property
    def failed(self) -> int:
        return sum(self.errors.values())


def _wrk_once(url: str, body: Path, *, mode: str, connections: int, seconds: int, threads: int,
              tokens_file: Path | None, server: Server | None, probe: bool) -> Run | None:
    """One wrk run; None when ``probe`` found the connections spread unevenly early on (wrk is stopped)."""
    nonce = str(random.randrange(1000))  # a new one per run: varied bodies never repeat between runs
    cmd = ["wrk", "-t", str(min(threads, connections)), "-c", str(connections), "-d", f"{seconds}s",
           "--timeout", "10s", "-s", str(LUA), url, "--", str(body), mode,
           str(tokens_file) if tokens_file else "-", str(min(threads, connections)), nonce]
    pids = server.workers() if server else []
    workers_before = [cpu_seconds(pid) for pid in pids]
    cpu_before = server.cpu() if server else 0.0
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    spread = _spread(server, connections) if server is not None and len(pids) > 1 else None
    if probe and len(pids) > 1:
        if spread is None:  # cannot see the connections: judge by the CPU the workers used
            time.sleep(min(1.0, seconds * 0.4))
            early = [cpu_seconds(pid) - before for pid, before in zip(pids, workers_before)]
            uneven = min(early) < 0.25 * max(early)
        else:
            uneven = not _even(spread)
        if uneven:
            proc.kill()  # our own child, by its handle
            proc.communicate()
            return None
    try:
        stdout, stderr = proc.communicate(timeout=seconds + 60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise BenchError(f"wrk did not finish within {seconds + 60} s") from None
    cpu_after = server.cpu() if server else 0.0
    worker_cpu = [round(cpu_seconds(pid) - before, 2) for pid, before in zip(pids, workers_before)]
    line = next((ln for ln in stdout.splitlines() if ln.startswith("BENCH_RESULT ")), None)
    if proc.returncode != 0 or line is None:
        raise BenchError(f"wrk failed ({proc.returncode}): {stderr.strip()[-500:]} {stdout[-500:]}")
    data = json.loads(line.split(" ", 1)[1])
    secs = data["duration_us"] / 1e6
    lat = data["latency_us"]
    n = data["requests"]
    return Run(n, round(secs, 2), round(n / secs, 1), lat["p50"] / 1000, lat["p90"] / 1000, lat["p99"] / 1000,
               lat["max"] / 1000, data["errors"], round((cpu_after - cpu_before) * 1000 / max(n, 1), 3), worker_cpu,
               worker_connections=spread)


def _even(spread: list[int]) -> bool:
    """Connections spread as evenly as the kernel's accepts allow: 2 + 2 of 4, 7 + 9 or 8 + 8 of 16."""
    return max(spread) - min(spread) <= max(1, sum(spread) // 8)


def _spread(server: Server, connections: int, wait: float = 1.0) -> list[int] | None:
    """The connections per worker once all ``connections`` are accepted (what is seen after ``wait``)."""
    deadline = time.monotonic() + wait
    while True:
        counts = connections_per_worker(server)
        if counts is None or sum(counts) >= connections or time.monotonic() > deadline:
            return counts
        time.sleep(0.02)


def wrk(url: str, body: Path, *, mode: str, connections: int, seconds: int, threads: int,
        tokens: Callable[[int], Path | None] | None = None, server: Server | None = None) -> Run:
    """A wrk run whose connections are spread over the server's workers.

    wrk opens its connections at once and gunicorn's workers race to accept them. A worker that
    wins every race gets them all, and the run measures one core instead of the server; one that
    wins three of four queues three clients on one GIL while the other worker idles between
    requests: about the same throughput, but a longer tail. Which happens is the kernel's
    lottery, drawn anew for every run, for floor and service alike. So once the connections are
    accepted, each worker's share is read from /proc (its socket fds against the established
    connections to the port), and a run whose spread is uneven (``_even``) is stopped and started again, at most
    ``BALANCE_ATTEMPTS`` times; the last one is kept and counted as unbalanced. Where /proc cannot
    tell, the workers' CPU after a second decides (an idle worker: uneven). ``tokens(seconds)``
    gives a fresh token file per try.
    """
    run: Run | None = None
    for attempt in range(1, BALANCE_ATTEMPTS + 1):
        last = attempt == BALANCE_ATTEMPTS
        run = _wrk_once(url, body, mode=mode, connections=connections, seconds=seconds, threads=threads,
                        tokens_file=tokens(seconds) if tokens else None, server=server,
                        probe=server is not None and not last)
        if run is not None:
            run.attempts = attempt
            return run
        time.sleep(0.2)
    raise AssertionError("unreachable")  # the last attempt never probes


# ------------------------------------------------------------------ JWT


class TokenMint:
    """A local test issuer: an ES384 key, its pinned JWK Set for the service, tokens signed ahead."""

    def __init__(self) -> None:
        from cryptography.hazmat.primitives.asymmetric import ec

        self.kid = "bench-" + uuid.uuid4().hex[:8]
        self.key = ec.generate_private_key(ec.SECP384R1())

    def trusted_issuers(self) -> str:
        from jwt.algorithms import ECAlgorithm

        jwk = ECAlgorithm.to_jwk(self.key.public_key(), as_dict=True)
        jwk.update({"kid": self.kid, "use": "sig", "alg": "ES384"})
        return json.dumps([{"iss": JWT_ISSUER, "jwks": {"keys": [jwk]}, "algorithms": ["ES384"]}])

    def write(self, path: Path, aud: str, count: int) -> Path:
        """``count`` unique tokens (distinct jti) for ``aud``, one per line."""
        import jwt

        now = int(time.time())
        with open(path, "w", encoding="ascii") as f:
            for _ in range(count):
                claims = {"iss": JWT_ISSUER, "aud": aud, "iat": now, "exp": now + 900, "jti": uuid.uuid4().hex}
                f.write(jwt.encode(claims, self.key, algorithm="ES384", headers={"kid": self.kid, "typ": "JWT"}))
                f.write("\n")
        return path


# ------------------------------------------------------------------ measuring


def _errors(runs: list[Run]) -> dict[str, int]:
    out: dict[str, int] = {}
    for run in runs:
        for kind, count in run.errors.items():
            if count:
                out[kind] = out.get(kind, 0) + count
    return out


@dataclass
class Comparison:
    """Floor and service on one workload: every round, and the medians."""

    workload: Workload
    floor_runs: list[Run] = field(default_factory=list)
    service_runs: list[Run] = field(default_factory=list)
    cards: list[str] = field(default_factory=list)

    @staticmethod
    def _median(runs: list[Run], attr: str) -> float:
        return round(statistics.median(getattr(r, attr) for r in runs), 3)

    def figures(self) -> dict[str, Any]:
        w, f, s = self.workload, self.floor_runs, self.service_runs
        out: dict[str, Any] = {}
        for side, runs in (("floor", f), ("service", s)):
            for attr in ("p50_ms", "p99_ms", "rps", "cpu_ms_per_request"):
                out[f"{side}_{attr}"] = self._median(runs, attr)
        out["p99_ratio"] = round(out["service_p99_ms"] / max(out["floor_p99_ms"], 1e-9), 2)
        out["rps_ratio"] = round(out["service_rps"] / max(out["floor_rps"], 1e-9), 2)
        out["cpu_ratio"] = round(out["service_cpu_ms_per_request"] / max(out["floor_cpu_ms_per_request"], 1e-9), 2)
        out["p99_ratio_rounds"] = [round(b.p99_ms / max(a.p99_ms, 1e-9), 2) for a, b in zip(f, s)]
        out["rps_ratio_rounds"] = [round(b.rps / max(a.rps, 1e-9), 2) for a, b in zip(f, s)]
        out["service_errors"] = _errors(s)
        out["floor_errors"] = _errors(f)
        out["remade_runs"] = sum(r.attempts - 1 for r in f + s)
        out["unbalanced_runs"] = sum(not r.balanced for r in f + s)
        verdicts: dict[str, bool] = {}
        if w.rps_ratio_min is not None:
            verdicts[f"rps>={w.rps_ratio_min:g}x"] = out["rps_ratio"] >= w.rps_ratio_min
        if w.p99_ratio_max is not None:
            verdicts[f"p99<={w.p99_ratio_max:g}x"] = out["p99_ratio"] <= w.p99_ratio_max
        if w.p99_bound_ms is not None:
            verdicts[f"p99<{w.p99_bound_ms:g}ms"] = out["service_p99_ms"] < w.p99_bound_ms
        if w.issue == "22":
            verdicts["no errors"] = not out["service_errors"]
        out["verdicts"] = verdicts
        return out


def _mode(workload: Workload) -> str:
    return "vary" if workload.distinct else "fixed"


def measure(workload: Workload, body: Path, floor: Server, service: Server, args: argparse.Namespace,
            tokens: dict[str, Any] | None = None) -> Comparison:
    """Rounds of floor and service back to back on the same bodies, alternating which goes first."""
    comp = Comparison(workload)
    for rnd in range(args.rounds):
        order = (("floor", floor), ("service", service))
        for side, server in (order if rnd % 2 == 0 else order[::-1]):
            common = dict(mode=_mode(workload), connections=workload.connections, threads=args.wrk_threads,
                          server=server, tokens=tokens[side] if tokens else None)
            url = server.base + workload.path
            wrk(url, body, seconds=args.warmup, **common)  # warms every worker; not counted
            run = wrk(url, body, seconds=args.duration, **common)
            server.alive()
            (comp.floor_runs if side == "floor" else comp.service_runs).append(run)
    return comp


def pss_mib(pid: int) -> float | None:
    """Proportional set size: shared pages split between the processes that map them (sums to the total)."""
    for line in (_read_proc(f"/proc/{pid}/smaps_rollup") or "").splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) / 1024
    return None


def k8s_memory_limit_mib(path: Path = K8S_DEPLOYMENT) -> float | None:
    """The container's memory limit in deploy/k8s (``resources.limits.memory``), in MiB."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return None
    match = re.search(r"^(\s*)limits:\s*\n(?:\1\s+.*\n)*?\1\s+memory:\s*\"?(\d+(?:\.\d+)?)(Mi|Gi|M|G)\"?", text, re.MULTILINE)
    if match is None:
        return None
    value, unit = float(match.group(2)), match.group(3)
    return value * {"Mi": 1, "Gi": 1024, "M": 1e6 / 2**20, "G": 1e9 / 2**20}[unit]


def memory_of(server: Server) -> dict[str, Any]:
    """RSS of the master and of each worker, their sum (what a container limit counts at most) and PSS."""
    workers = server.rss()
    master = rss_mib(server.proc.pid) or 0.0
    pss = [pss_mib(pid) for pid in [server.proc.pid, *workers]]
    return {"workers_mib": {str(pid): round(v, 1) for pid, v in workers.items()}, "master_mib": round(master, 1),
            "total_rss_mib": round(master + sum(workers.values()), 1),
            "total_pss_mib": round(sum(p for p in pss if p is not None), 1) if any(p is not None for p in pss) else None}


def sample_memory(server: Server, mix_file: Path, seconds: int, threads: int, connections: int = 16,
                  every: float = 1.0) -> dict[str, Any]:
    """RSS of each worker of a freshly started ``server`` while a mix of distinct records runs.

    Every request carries a new record, so every cache keyed by content fills as fast as it can:
    memory must rise, then level off at the caches' bounds.
    """
    samples: list[tuple[float, dict[int, float]]] = []
    stop = threading.Event()
    start = time.monotonic()

    def sampler() -> None:
        while not stop.is_set():
            samples.append((round(time.monotonic() - start, 1), server.rss()))
            stop.wait(every)

    thread = threading.Thread(target=sampler, daemon=True)
    thread.start()
    try:
        run = wrk(server.base + "/", mix_file, mode="mix", connections=connections, seconds=seconds,
                  threads=threads, server=server)
    finally:
        stop.set()
        thread.join()
    samples.append((round(time.monotonic() - start, 1), server.rss()))
    per_worker: dict[str, Any] = {}
    for pid in sorted({p for _, rss in samples for p in rss}):
        series = [(t, rss[pid]) for t, rss in samples if pid in rss]
        values = [v for _, v in series]
        quarter = {q: values[min(len(values) - 1, round(q * (len(values) - 1)))] for q in (0.25, 0.5, 0.75)}
        half = quarter[0.5]
        per_worker[str(pid)] = {
            "start_mib": round(values[0], 1), "q1_mib": round(quarter[0.25], 1), "half_mib": round(half, 1),
            "q3_mib": round(quarter[0.75], 1), "end_mib": round(values[-1], 1), "max_mib": round(max(values), 1),
            "second_half_growth_mib": round(values[-1] - half, 1),
            "bounded": values[-1] - half <= max(0.05 * half, 8.0),
            "series": [(t, round(v, 1)) for t, v in series],
        }
    busy = run.worker_cpu_s
    return {"seconds": seconds, "requests": run.requests, "rps": run.rps, "errors": _errors([run]),
            "worker_cpu_s": busy, "balanced": run.balanced,
            "both_busy": len(busy) >= 2 and min(busy) >= 0.25 * max(busy),
            "workers": per_worker, "end": memory_of(server)}


# ------------------------------------------------------------------ report


def machine() -> dict[str, Any]:
    model = ""
    for line in (_read_proc("/proc/cpuinfo") or "").splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    wrk_version = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.split("\n")[0]
    wrk_version = wrk_version.split(" Copyright")[0].strip()
    return {"cpu": model, "cpus": os.cpu_count(), "kernel": platform.release(),
            "python": platform.python_version(), "wrk": wrk_version, "loadavg_start": os.getloadavg()[0]}


def _ok(flag: bool) -> str:
    return "PASS" if flag else "FAIL"


SECTIONS = (
    ("distinct records: every call another patient (issue 22 targets)", lambda w: w.issue == "22"),
    ("the same body on every call (issue 9 targets)", lambda w: not w.distinct and w.issue == "9"),
    ("reported only", lambda w: w.issue is None),
)


def print_table(comparisons: list[Comparison], out: Any = sys.stdout) -> None:
    head = (f"{'workload':18} {'conns':>5} | {'floor p50':>9} {'p99':>7} {'rps':>7} | {'service p50':>11} {'p99':>7} "
            f"{'rps':>7} | {'p99 x':>5} {'rps x':>5} {'cpu x':>5} | targets")
    for title, belongs in SECTIONS:
        rows = [c for c in comparisons if belongs(c.workload)]
        if not rows:
            continue
        print(title, file=out)
        print(head, file=out)
        print("-" * len(head), file=out)
        for c in rows:
            f = c.figures()
            verdicts = ", ".join(f"{name} {_ok(ok)}" for name, ok in f["verdicts"].items()) or "-"
            if f["service_errors"]:
                verdicts += f" (errors: {f['service_errors']})"
            print(f"{c.workload.name:18} {c.workload.connections:5} | {f['floor_p50_ms']:9.2f} {f['floor_p99_ms']:7.2f} "
                  f"{f['floor_rps']:7.0f} | {f['service_p50_ms']:11.2f} {f['service_p99_ms']:7.2f} "
                  f"{f['service_rps']:7.0f} | {f['p99_ratio']:5.2f} {f['rps_ratio']:5.2f} {f['cpu_ratio']:5.2f} | "
                  f"{verdicts}", file=out)
        print(file=out)
    print("(p50/p99 in ms, medians over rounds; 'x' = service / floor; cpu = server CPU ms per request)", file=out)
    remade = sum(c.figures()["remade_runs"] for c in comparisons)
    unbalanced = sum(c.figures()["unbalanced_runs"] for c in comparisons)
    if remade or unbalanced:
        print(f"({remade} run(s) stopped at the start and made again because the workers had accepted uneven "
              f"shares of the connections; {unbalanced} still so after {BALANCE_ATTEMPTS} tries, kept)", file=out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--short", action="store_true", help="CI mode: 1 round, 2 s runs, 10 s mixed run")
    parser.add_argument("--duration", type=int, default=None, help="seconds per measured run (default 8; short 2)")
    parser.add_argument("--rounds", type=int, default=None, help="floor/service rounds per workload (default 3; short 1)")
    parser.add_argument("--warmup", type=int, default=None, help="seconds of unmeasured warm-up per run (default 2; short 1)")
    parser.add_argument("--memory-seconds", type=int, default=None, help="length of the mixed run (default 60; short 10)")
    parser.add_argument("--workload", action="append", default=None,
                        help="only these workloads (repeatable; 'jwt' and 'mixed' are workloads too)")
    parser.add_argument("--no-jwt", action="store_true", help="skip the run with JWT verification on")
    parser.add_argument("--workers", type=int, default=None, help="WEB_CONCURRENCY (default: the packaged default)")
    parser.add_argument("--threads", type=int, default=None, help="GUNICORN_THREADS (default: the packaged default)")
    parser.add_argument("--wrk-threads", type=int, default=1, help="wrk threads (1 leaves the CPUs to the servers)")
    parser.add_argument("--json", type=Path, default=None, help="write every figure to this file")
    parser.add_argument("--keep", action="store_true", help="keep the tmp dir (logs, workloads, databases)")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args(argv)
    args.duration = args.duration or (2 if args.short else 8)
    args.rounds = args.rounds or (1 if args.short else 3)
    args.warmup = args.warmup or (1 if args.short else 2)
    args.memory_seconds = args.memory_seconds or (10 if args.short else 60)

    if shutil.which("wrk") is None:
        print("wrk is not installed (Debian: apt-get install -y wrk); the benchmark needs it", file=sys.stderr)
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="ivig-bench-"))
    servers: dict[str, Server] = {}
    try:
        return _run(args, tmp, servers)
    except BenchError as exc:
        print(f"\nBENCHMARK FAILED: {exc}", file=sys.stderr)
        return 3
    finally:
        for server in servers.values():
            server.stop()
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def _wanted(args: argparse.Namespace, name: str) -> bool:
    return not args.workload or name in args.workload


def _check_cards(selected: list[Workload], servers: dict[str, Server]) -> dict[str, list[str]]:
    """One request per workload to both servers: both answer 200, and a varied body gets the cards
    the record itself gets (the variation keeps the clinical content)."""
    cards: dict[str, list[str]] = {}
    for w in selected:
        for side in ("floor", "service"):
            status, answer = post(servers[side].base + w.path, w.sample())
            if status != 200:
                raise BenchError(f"{w.name}: {side} answered {status}: {answer!r}")
            if side == "service":
                cards[w.name] = [c.get("source", {}).get("topic", {}).get("code") for c in answer["cards"]]
        if w.distinct:
            status, answer = post(servers["service"].base + w.path, w.plain)
            expected = [c.get("source", {}).get("topic", {}).get("code") for c in answer["cards"]]
            if status != 200 or cards[w.name] != expected:
                raise BenchError(f"{w.name}: a varied body got cards {cards[w.name]}, the record itself {expected}")
    return cards


def _run(args: argparse.Namespace, tmp: Path, servers: dict[str, Server]) -> int:
    info = machine()
    out_dir = tmp / "workloads"
    workloads = write_workloads(out_dir)
    selected = [w for w in workloads.values() if _wanted(args, w.name)]
    workers = args.workers or _default("WEB_CONCURRENCY")
    threads = args.threads or _default("GUNICORN_THREADS")
    limit = k8s_memory_limit_mib()

    print("ivig-cds benchmark: the service against its floor, on distinct records and on the same body")
    print(f"machine: {info['cpu']}, {info['cpus']} CPUs, Linux {info['kernel']}, Python {info['python']}, "
          f"{info['wrk']}; load average at start {info['loadavg_start']:.2f}")
    print(f"tmp dir: {tmp} (workloads, logs; removed at the end unless --keep)")
    servers["floor"] = start_server("floor", tmp, FLOOR_APP, args.workers, args.threads)
    servers["service"] = start_server("service", tmp, None, args.workers, args.threads)
    print(f"service: {sys.executable} -m gunicorn -c {PACKAGED_CONFIG} on {servers['service'].base} "
          f"(gthread, WEB_CONCURRENCY={workers}, GUNICORN_THREADS={threads}); profile development (no JWT), "
          f"data dir and SQLite database in {tmp / 'service-data'}")
    print(f"floor:   the same command with {FLOOR_APP} (bare Flask, orjson parse, answers {{\"cards\": []}}) "
          f"on {servers['floor'].base}")
    print(f"load:    wrk, keep-alive, {args.wrk_threads} thread(s), {args.duration} s per run after {args.warmup} s "
          f"warm-up, {args.rounds} round(s) of floor and service back to back (alternating order); medians")
    print()
    for w in selected:
        kind = "distinct" if w.distinct else "same body"
        print(f"  {w.name:18} {kind:9} {w.title:48} {w.resources:5} resources ({w.relevant:3} read by the rules), "
              f"{len(w.body) / 1024:6.1f} KiB, {w.connections} connections")

    cards = _check_cards(selected, servers)
    print()
    for name, topics in cards.items():
        print(f"  {name:18} service cards: {', '.join(t or '?' for t in topics) or '(none)'}")
    print()

    comparisons: list[Comparison] = []
    memory_after_large: dict[str, Any] | None = None
    log_problems: list[str] = []
    for w in selected:
        t0 = time.monotonic()
        service = servers["service"]
        if w.service_env:
            service = servers[w.name] = start_server(w.name, tmp, None, args.workers, args.threads, dict(w.service_env))
        comp = measure(w, body_file(out_dir, w), servers["floor"], service, args)
        comp.cards = cards[w.name]
        comparisons.append(comp)
        f = comp.figures()
        print(f"  measured {w.name:18} in {time.monotonic() - t0:5.1f} s: rps x {f['rps_ratio']:.2f} "
              f"(rounds {f['rps_ratio_rounds']}), p99 {f['service_p99_ms']:.1f} ms, p99 x {f['p99_ratio']:.2f}",
              flush=True)
        if w.name == "distinct-large":
            memory_after_large = {"service": memory_of(service), "floor": memory_of(servers["floor"])}
        if w.service_env:
            log_problems += retire(servers, w.name)

    if not args.no_jwt and "distinct-typical" in workloads and _wanted(args, "jwt"):
        comparisons.append(measure_jwt(workloads["distinct-typical"], body_file(out_dir, workloads["distinct-typical"]),
                                       servers, comparisons, args, tmp))

    memory: dict[str, Any] | None = None
    if _wanted(args, "mixed"):
        shares = ", ".join(f"{name} {weight}" for name, weight in MIX)
        print(f"  mixed run: a freshly started service, distinct records ({shares} in 10) for "
              f"{args.memory_seconds} s, sampling worker RSS ...", flush=True)
        servers["service-memory"] = start_server("service-memory", tmp, None, args.workers, args.threads)
        memory = sample_memory(servers["service-memory"], out_dir / "mix.txt", args.memory_seconds, args.wrk_threads)
        log_problems += retire(servers, "service-memory")

    for name in list(servers):
        log_problems += retire(servers, name)

    print()
    print(f"load average at end {os.getloadavg()[0]:.2f}")
    print()
    print_table(comparisons)
    print()
    memory_verdicts: dict[str, bool] = {}
    limit_text = f"{limit:.0f} MiB" if limit else "unknown"
    print(f"memory (the container limit in {K8S_DEPLOYMENT.relative_to(ROOT)}: {limit_text}; master and "
          f"{workers} workers, RSS summed, so shared pages count twice)")
    if memory_after_large:
        for side in ("service", "floor"):
            m = memory_after_large[side]
            print(f"  RSS per worker after the distinct large workload, {side}: "
                  f"{', '.join(f'{v:.1f}' for v in m['workers_mib'].values())} MiB (with the master "
                  f"{m['total_rss_mib']:.1f} MiB)")
        if limit:
            memory_verdicts["after distinct-large within limit"] = memory_after_large["service"]["total_rss_mib"] <= limit
    if memory:
        print(f"  RSS per worker of a fresh service over {memory['seconds']} s of the mixed run ({memory['requests']} "
              f"requests, every one a new record; worker CPU {memory['worker_cpu_s']} s), MiB at start, 1/4, 1/2, "
              f"3/4, end:")
        for pid, m in memory["workers"].items():
            print(f"    worker {pid}: start {m['start_mib']:.1f}, {m['q1_mib']:.1f}, half-way {m['half_mib']:.1f}, "
                  f"{m['q3_mib']:.1f}, end {m['end_mib']:.1f} (max {m['max_mib']:.1f}); second-half growth "
                  f"{m['second_half_growth_mib']:+.1f} MiB -> "
                  f"{'levels off' if m['bounded'] else 'STILL GROWING' + (' (short run)' if args.short else '')}")
        end = memory["end"]
        pss = f", {end['total_pss_mib']:.1f} MiB PSS" if end["total_pss_mib"] is not None else ""
        print(f"  master + workers at the end: {end['total_rss_mib']:.1f} MiB RSS{pss}")
        if limit:
            memory_verdicts["after the mixed run within limit"] = end["total_rss_mib"] <= limit
        memory_verdicts["both workers busy in the mixed run"] = memory["both_busy"]
        memory_verdicts["no errors in the mixed run"] = not memory["errors"]
    for name, ok in memory_verdicts.items():
        print(f"  {name}: {_ok(ok)}")
    if log_problems:
        print("server logs: " + "; ".join(log_problems))
    memory_verdicts["server logs without timeouts, tracebacks or errors"] = not log_problems

    missed = [f"{c.workload.name}:{k}" for c in comparisons if c.workload.issue == "22"
              for k, ok in c.figures()["verdicts"].items() if not ok]
    missed += [name for name, ok in memory_verdicts.items() if not ok]
    same_body_missed = [f"{c.workload.name}:{k}" for c in comparisons if c.workload.issue == "9"
                        for k, ok in c.figures()["verdicts"].items() if not ok]
    print()
    if same_body_missed:
        print("same-body targets (issue 9): missed " + ", ".join(same_body_missed))
    elif any(c.workload.issue == "9" for c in comparisons):
        print("same-body targets (issue 9): all met")
    print("targets: " + ("all met" if not missed else "missed " + ", ".join(missed)))

    if args.json:
        args.json.write_text(json.dumps({
            "machine": info | {"loadavg_end": os.getloadavg()[0]},
            "settings": {"workers": workers, "threads": threads, "duration": args.duration, "rounds": args.rounds,
                         "warmup": args.warmup, "wrk_threads": args.wrk_threads},
            "workloads": {c.workload.name: {
                "title": c.workload.title, "distinct": c.workload.distinct, "issue": c.workload.issue,
                "connections": c.workload.connections, "resources": c.workload.resources,
                "relevant": c.workload.relevant, "cards": c.cards, **c.figures(),
                "floor_runs": [asdict(r) for r in c.floor_runs],
                "service_runs": [asdict(r) for r in c.service_runs]} for c in comparisons},
            "memory_limit_mib": limit,
            "memory_after_large": memory_after_large,
            "memory_run": memory,
            "memory_verdicts": memory_verdicts,
            "targets_missed": missed,
            "same_body_targets_missed": same_body_missed,
        }, indent=2))
        print(f"figures written to {args.json}")
    return 1 if args.strict and missed else 0


def measure_jwt(typical: Workload, body: Path, servers: dict[str, Server], done: list[Comparison],
                args: argparse.Namespace, tmp: Path) -> Comparison:
    """Distinct typical calls with JWT verification on (ES384, pinned key, jti replay store in SQLite)."""
    mint = TokenMint()
    server = start_server("service-jwt", tmp, None, args.workers, args.threads, {
        "IVIG_CDS_SECURITY_REQUIRE_TOKEN": "true",
        "IVIG_CDS_SECURITY_TRUSTED_ISSUERS": mint.trusted_issuers(),
        "IVIG_CDS_SECURITY_REPLAY_STORE": "database",
    })
    servers["service-jwt"] = server
    aud = server.base + typical.path
    status, answer = post(aud, typical.sample())
    if status != 401:
        raise BenchError(f"jwt: a call without a token was answered {status}, not 401")
    status, answer = post(aud, typical.sample(), {"Authorization": "Bearer " + _one(mint, tmp, aud)})
    if status != 200:
        raise BenchError(f"jwt: a call with a valid token was answered {status}: {answer!r}")
    measured = next((c for c in done if c.workload.name == typical.name), None)
    expected_rps = max(r.rps for r in measured.service_runs) if measured else 1000.0
    per_second = int(expected_rps * 1.5) + 200
    # the floor ignores tokens: one small set, replayed, keeps its requests the same size
    floor_tokens = mint.write(tmp / "tokens-floor.txt", servers["floor"].base + typical.path, 1000)
    made = iter(range(10**6))

    def service_tokens(seconds: int) -> Path:
        """Tokens for one wrk run: more than the service can verify in that time, each used once."""
        return mint.write(tmp / f"tokens-service-{next(made)}.txt", aud, per_second * seconds)

    print(f"  jwt: signing up to {per_second} tokens per second of load (ES384, unique jti) ...", flush=True)
    wl = Workload("jwt", "distinct typical with JWT verification (ES384, jti in SQLite)", typical.service_id,
                  typical.body, typical.resources, typical.relevant, typical.connections, distinct=True)
    comp = measure(wl, body, servers["floor"], server, args,
                   tokens={"floor": lambda seconds: floor_tokens, "service": service_tokens})
    retire(servers, "service-jwt")
    f = comp.figures()
    print(f"  measured {'jwt':18}: rps x {f['rps_ratio']:.2f}, p99 {f['service_p99_ms']:.1f} ms", flush=True)
    return comp


def retire(servers: dict[str, Server], name: str) -> list[str]:
    """Stop a server; what its log says went wrong (a worker timeout, a traceback, an error line)."""
    server = servers[name]
    server.alive()
    log = server.tail(10**8)
    problems = [f"{name}: {what}" for what, mark in (("worker timeout", "WORKER TIMEOUT"), ("traceback", "Traceback"),
                                                     ("error line", '"level":"error"')) if mark in log]
    if problems:
        print(f"{name} log (see {server.log_path}):\n{server.tail(2000)}", file=sys.stderr)
    servers.pop(name).stop()
    return problems


def _one(mint: TokenMint, tmp: Path, aud: str) -> str:
    return mint.write(tmp / "token-check.txt", aud, 1).read_text().strip()


if __name__ == "__main__":
    sys.exit(main())
