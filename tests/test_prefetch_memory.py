"""Memory stays within the byte allowance when a FHIR server sends far more than it should.

``ivig-cds serve`` runs as a real process with ``prefetch.max_bytes_per_call`` = 4 MiB; a stub FHIR
server answers every search with a 30 MB searchset, then with endless chunked streams. The test
reads the service process's peak resident set (``VmHWM`` in /proc/<pid>/status, reset through
/proc/<pid>/clear_refs after a warm-up on well-behaved answers) and requires the growth to stay
within twice the allowance plus a fixed margin for the call itself. Reading each answer whole
(what a client without a per-call allowance does) costs hundreds of MiB here.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import requests

from tests.fhir_stub import Behaviour, FhirStub
from tests.servers import cli_server

MiB = 1024 * 1024
CAP = 4 * MiB
#: what one call costs beyond the bytes it reads (threads, the answer, the cards)
MARGIN = 24 * MiB
DEADLINE = 5.0

pytestmark = pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc")


def _status(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def _reset_peak(pid: int) -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM := VmRSS (Linux >= 4.0)


def _call(base: str, fhir: str, patient: str) -> requests.Response:
    body = {"hook": "patient-view", "hookInstance": "0c6f8a52-52c9-4a43-9a5f-3f3e7f4f1b7a",
            "fhirServer": fhir, "context": {"userId": "Practitioner/p", "patientId": patient}}
    with requests.Session() as s:
        s.trust_env = False
        return s.post(f"{base}/cds-services/ivig-patient-view", json=body, timeout=DEADLINE + 10)


def test_peak_memory_stays_within_the_allowance_against_oversized_and_endless_answers(tmp_path):
    env = {"IVIG_CDS_DATA_DIR": str(tmp_path), "IVIG_CDS_SAMPLE_PATIENTS": "false",
           "IVIG_CDS_PREFETCH_MAX_BYTES_PER_CALL": str(CAP),
           "IVIG_CDS_PREFETCH_DEADLINE_SECONDS": str(DEADLINE), "IVIG_CDS_PREFETCH_QUERY_TIMEOUT_SECONDS": "4"}
    with FhirStub() as fine, FhirStub() as hostile, cli_server(["serve"], env=env, cwd=str(tmp_path)) as (base, proc):
        fine.default = Behaviour(kind="pages", pages=3, entries_per_page=20)
        fine.routes["Patient"] = Behaviour()
        for _ in range(3):  # warm up: imports, caches, connection pools, the allocator's arenas
            assert _call(base, fine.base, "p-fine").status_code == 200
        hostile.routes["Patient"] = Behaviour()
        _reset_peak(proc.pid)
        baseline = _status(proc.pid, "VmRSS")
        for fault in (Behaviour(kind="huge", size=30 * MiB), Behaviour(kind="endless")):
            hostile.default = fault
            start = time.monotonic()
            resp = _call(base, hostile.base, "p-hostile")
            assert resp.status_code in (200, 412), resp.text[:300]
            assert time.monotonic() - start < DEADLINE + 2
        growth = _status(proc.pid, "VmHWM") - baseline
        assert growth <= 2 * CAP + MARGIN, f"peak RSS grew by {growth / MiB:.1f} MiB (allowance {CAP / MiB:.0f} MiB)"
        assert os.path.exists(f"/proc/{proc.pid}")  # the service survived
