"""Memory at the request limits: do two workers working on the largest legal calls stay inside the pod?

    .venv/bin/python bench/memory_limits.py            # ~2 min: 30 s of distinct records, then each shape
    .venv/bin/python bench/memory_limits.py --short    # ~1 min, for CI (tests/test_deploy_memory.py)
    .venv/bin/python bench/memory_limits.py --json out.json --check   # figures as JSON; exit 1 past the limit

What a call may cost is bounded by ``limits`` (service/settings.py): the body's bytes, its
resources, the size of one resource, and the bytes of bodies one worker works on at once. This
script starts the service under gunicorn with the packaged production settings and the
Deployment's process counts (deploy/k8s: ``WEB_CONCURRENCY`` workers x ``GUNICORN_THREADS``
threads), development profile (no JWT) and the default limits; fills the per-worker caches with
distinct typical records (every call another patient); then has as many clients as there are
request threads send, back to back, bodies built at the limits:

* ``many-small``: as many small IgG results (each one validated by the rules) as the body and
  resource limits allow;
* ``dense-resources``: IgG results each just under the size of one resource, thick with
  components (the most memory per byte: every element becomes a model);
* ``unread``: resources the rules do not read, filling the body (parsing only).

Memory is read from /proc: the resident set of the master and every worker, sampled every 50 ms
(their sum at the worst moment), and each one's high-water mark (VmHWM; their sum is an upper
bound of the pod's peak). The pod's limit is the Deployment's ``resources.limits.memory``.
Exit status 0 whatever the figures; with ``--check`` 1 when the upper bound reaches the limit;
3 when the server fails.
"""

from __future__ import annotations

import argparse
import itertools
import json
import re
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from datetime import date
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.run import BenchError, Server, start_server  # noqa: E402
from bench.workloads import PLACEHOLDER, as_template, typical_request  # noqa: E402

HOOK = "/cds-services/ivig-patient-view"
MIB = 1024 * 1024
K8S = ROOT / "deploy" / "k8s"


# ------------------------------------------------------------------ what the deployment allows

def _quantity_mib(text: str) -> float:
    """A Kubernetes memory quantity (768Mi, 1Gi, 800M) in MiB."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(Ki|Mi|Gi|K|M|G)?", text.strip())
    if not match:
        raise ValueError(f"not a memory quantity: {text!r}")
    value, unit = float(match.group(1)), match.group(2) or ""
    factor = {"": 1 / MIB, "Ki": 1 / 1024, "Mi": 1, "Gi": 1024, "K": 1e3 / MIB, "M": 1e6 / MIB, "G": 1e9 / MIB}[unit]
    return value * factor


def deployment_limits() -> dict[str, Any]:
    """The pod's memory limit and the process counts the ConfigMap gives it."""
    import yaml

    deployment = yaml.safe_load((K8S / "deployment.yaml").read_text(encoding="utf-8"))
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    config = yaml.safe_load((K8S / "configmap.yaml").read_text(encoding="utf-8"))["data"]
    return {"memory_limit_mib": _quantity_mib(container["resources"]["limits"]["memory"]),
            "workers": int(config["WEB_CONCURRENCY"]), "threads": int(config["GUNICORN_THREADS"])}


# ------------------------------------------------------------------ bodies at the limits

def _envelope(pid: str, resources: list[dict[str, Any]]) -> dict[str, Any]:
    return {"hook": "patient-view", "hookInstance": str(uuid.uuid4()),
            "context": {"userId": "Practitioner/bench", "patientId": pid},
            "prefetch": {"patient": {"resourceType": "Patient", "id": pid, "gender": "female", "birthDate": "1970-01-01"},
                         "immunoglobulins": {"resourceType": "Bundle", "type": "searchset",
                                             "entry": [{"resource": r} for r in resources]}}}


def _igg(pid: str, i: int, components: int = 0) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Observation", "id": f"igg-{i}", "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "2465-3"}]},
        "subject": {"reference": f"Patient/{pid}"},
        "effectiveDateTime": f"20{10 + i % 15:02d}-{1 + i % 12:02d}-{1 + i % 28:02d}",
        "valueQuantity": {"value": 300 + i % 500, "unit": "mg/dL", "system": "http://unitsofmeasure.org", "code": "mg/dL"}}
    if components:
        resource["component"] = [{"code": {"coding": [{"system": "http://loinc.org", "code": "2465-3"}]},
                                  "valueQuantity": {"value": j, "unit": "mg/dL"}} for j in range(components)]
    return resource


def _fill(make, limits: Any, max_count: int) -> bytes:
    """The largest body of ``make(pid, i)`` resources within the body limit and ``max_count``."""
    pid = "bench-" + uuid.uuid4().hex[:12]
    one = len(json.dumps(make(pid, 0)))
    count = max(1, min(max_count, (limits.max_body_bytes - 2048) // (one + 16)))
    while True:
        body = json.dumps(_envelope(pid, [make(pid, i) for i in range(count)])).encode()
        if len(body) <= limits.max_body_bytes or count == 1:
            return body
        count = int(count * 0.97)


def shapes(limits: Any) -> dict[str, Any]:
    """name -> a function making a new body of that shape (another patient every time)."""
    per_component = len(json.dumps(_igg("p", 0, components=2))) - len(json.dumps(_igg("p", 0, components=1)))
    components = max(1, (limits.max_resource_bytes - 1024) // per_component)

    def unread(pid: str, i: int) -> dict[str, Any]:
        return {"resourceType": "Basic", "id": f"b{i}", "subject": {"reference": f"Patient/{pid}"},
                "code": {"text": "note"}, "extension": [{"url": "urn:x", "valueString": "n" * 200}]}

    room = limits.max_resources - 3  # the Patient and the Bundle count too
    return {
        "many-small": lambda: _fill(_igg, limits, room),
        "dense-resources": lambda: _fill(lambda pid, i: _igg(pid, i, components), limits, room),
        "unread": lambda: _fill(unread, limits, room),
    }


# ------------------------------------------------------------------ measuring

def _status_kib(pid: int) -> dict[str, int]:
    out: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    out[line.split(":")[0]] = int(line.split()[1])
    except OSError:
        pass
    return out


class Sampler:
    """The resident sets of the master and its workers, summed, every 50 ms."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.peak_mib = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def pids(self) -> list[int]:
        return [self.server.proc.pid, *self.server.workers()]

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            total = sum(_status_kib(pid).get("VmRSS", 0) for pid in self.pids()) / 1024
            self.peak_mib = max(self.peak_mib, total)

    def __enter__(self) -> "Sampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()

    def high_water(self) -> dict[int, float]:
        return {pid: _status_kib(pid).get("VmHWM", 0) / 1024 for pid in self.pids()}


def _post(url: str, body: bytes) -> int:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as resp:
            resp.read()
            return resp.status
    except urllib.error.HTTPError as err:
        err.read()
        return err.code
    except OSError:
        return 0


def drive(url: str, make_body, clients: int, seconds: float, per_client: int | None = None) -> dict[str, Any]:
    """``clients`` threads posting new bodies back to back for ``seconds`` (or ``per_client`` each)."""
    statuses: Counter[int] = Counter()
    durations: list[float] = []
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def client() -> None:
        sent = 0
        while time.monotonic() < deadline and (per_client is None or sent < per_client):
            body = make_body()
            began = time.monotonic()
            status = _post(url, body)
            with lock:
                statuses[status] += 1
                durations.append(time.monotonic() - began)
            sent += 1

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    durations.sort()
    return {"statuses": dict(statuses), "calls": len(durations),
            "median_s": round(durations[len(durations) // 2], 2) if durations else None,
            "max_s": round(durations[-1], 2) if durations else None}


_TOKENS = itertools.count(100_000_000_000)


def _distinct_token() -> bytes:
    """12 digits, another on every call, as the wrk script puts them: the template's placeholder stands
    in ids and in numbers (measured values), so it must be digits."""
    return f"{next(_TOKENS):012d}".encode()


def _one_shape(name: str, make, args: argparse.Namespace, limits: Any, pod: dict[str, Any], tmp: Path) -> dict[str, Any]:
    """A fresh server: distinct typical records to fill its caches, then ``make``'s bodies."""
    typical = as_template(typical_request(date.today()))
    server = start_server(name, tmp, None, pod["workers"], pod["threads"])
    try:
        clients = pod["workers"] * pod["threads"]
        with Sampler(server) as sampler:
            fill = drive(server.base + "/cds-services/ivig-order-sign",
                         lambda: typical.replace(PLACEHOLDER.encode(), _distinct_token()), clients, args.fill_seconds)
            server.alive()
        filled = {"calls": fill["calls"], "statuses": fill["statuses"], "peak_sum_mib": round(sampler.peak_mib, 1)}
        if make is None:
            figures: dict[str, Any] = {}
        else:
            with Sampler(server) as sampler:
                figures = drive(server.base + HOOK, make, clients, args.shape_seconds, per_client=args.per_client)
                server.alive()
            figures.update(body_bytes=len(make()), peak_sum_mib=round(sampler.peak_mib, 1))
        high = sampler.high_water()
        return {"filled": filled, **figures, "high_water_mib": {str(pid): round(mib, 1) for pid, mib in high.items()},
                "high_water_sum_mib": round(sum(high.values()), 1)}
    finally:
        server.stop()


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Every shape on a server of its own (what one leaves behind would blur the next one's figure)."""
    from service.settings import load_settings

    limits = load_settings(environ={}).limits
    pod = deployment_limits()
    out: dict[str, Any] = {"limits": limits.model_dump(), "pod": pod, "shapes": {}}
    with tempfile.TemporaryDirectory(prefix="ivig-cds-memory-") as tmp:
        for name, make in {"distinct typical records only": None, **shapes(limits)}.items():
            out["shapes"][name] = _one_shape(name.split()[0], make, args, limits, pod, Path(tmp))
    out["high_water_sum_mib"] = max(s["high_water_sum_mib"] for s in out["shapes"].values())
    return out


def print_report(out: dict[str, Any]) -> None:
    limits, pod = out["limits"], out["pod"]
    limit = pod["memory_limit_mib"]
    print(f"limits: body {limits['max_body_bytes'] / MIB:.1f} MiB, {limits['max_resources']} resources, "
          f"one resource {limits['max_resource_bytes'] // 1024} KiB, {limits['worker_body_bytes'] / MIB:.1f} MiB "
          f"of bodies per worker at once; pod: {pod['workers']} workers x {pod['threads']} threads, "
          f"memory limit {limit:.0f} MiB")
    print(f"{'shape (after distinct typical records)':<40} {'body':>9} {'calls':>6} {'statuses':<24} {'median s':>8} "
          f"{'max s':>6} {'filled':>8} {'peak':>8} {'high-water sum':>15}")
    for name, s in out["shapes"].items():
        body = f"{s['body_bytes'] / MIB:.2f} MiB" if "body_bytes" in s else "-"
        print(f"{name:<40} {body:>9} {s.get('calls', s['filled']['calls']):>6} "
              f"{json.dumps(s.get('statuses', s['filled']['statuses'])):<24} {s.get('median_s', '-')!s:>8} "
              f"{s.get('max_s', '-')!s:>6} {s['filled']['peak_sum_mib']:>8.1f} {s.get('peak_sum_mib', 0):>8.1f} "
              f"{s['high_water_sum_mib']:>8.1f} MiB ({100 * s['high_water_sum_mib'] / limit:.0f} %)")
    print(f"worst: {out['high_water_sum_mib']:.1f} MiB of the {limit:.0f} MiB limit (sum of the master's and the "
          f"workers' VmHWM; MiB, RSS summed every 50 ms for 'filled' and 'peak')")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--short", action="store_true", help="shorter phases, for CI")
    parser.add_argument("--json", type=Path, help="write the figures here as JSON too")
    parser.add_argument("--check", action="store_true", help="exit 1 when the high-water sum reaches the pod's limit")
    args = parser.parse_args(argv)
    args.fill_seconds, args.shape_seconds, args.per_client = (10.0, 20.0, 2) if args.short else (30.0, 40.0, 4)
    try:
        out = run(args)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    print_report(out)
    if args.json:
        args.json.write_text(json.dumps(out, indent=2), encoding="utf-8")
    if args.check and out["high_water_sum_mib"] >= out["pod"]["memory_limit_mib"]:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
