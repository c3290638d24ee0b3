"""How long completing a whole prefetch takes, against the slowest single query it contains.

    .venv/bin/python bench/prefetch_bench.py [--runs 5] [--scale 1.0] [--parallel N] [--check]

A local stub FHIR server (tests/fhir_stub.py, 127.0.0.1 only) answers each resource type after
its own delay. The script times every prefetch query of the patient-view service alone, then
the service's fetch path (``PrefetchCompleter.complete`` with an empty prefetch, which runs
all queries concurrently), and prints both with their ratio. Goal: total <= 1.2 x the slowest
query. ``--check`` exits 1 when the median misses the goal.
"""

from __future__ import annotations

import argparse
import pathlib
import statistics
import sys
import tempfile
import time
from datetime import date

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import hooks  # noqa: E402
from service.prefetch.fhir_client import Budget, FhirClientPool  # noqa: E402
from service.protocol.models import parse_cds_request  # noqa: E402
from service.prefetch.completion import PrefetchCompleter, plan_query, render_template  # noqa: E402
from service.settings import load_settings  # noqa: E402
from tests.fhir_stub import Behaviour, FhirStub  # noqa: E402

#: seconds each resource type takes to answer (MedicationAdministration is the slowest)
DELAYS = {
    "Patient": 0.05,
    "Observation": 0.30,
    "Condition": 0.15,
    "Encounter": 0.20,
    "Immunization": 0.10,
    "MedicationRequest": 0.25,
    "MedicationAdministration": 0.40,
    "Procedure": 0.12,
}
GOAL = 1.2


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="timed runs of the whole fetch path")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every delay")
    parser.add_argument("--parallel", type=int, default=None, help="prefetch.max_parallel_queries (default: setting)")
    parser.add_argument("--check", action="store_true", help=f"exit 1 if total > {GOAL} x slowest")
    args = parser.parse_args(argv)

    service = hooks.SERVICES["ivig-patient-view"]
    context = {"userId": "Practitioner/bench", "patientId": "bench-patient"}
    with tempfile.TemporaryDirectory() as tmp, FhirStub() as stub:
        for rtype, delay in DELAYS.items():
            stub.routes[rtype] = Behaviour(delay=delay * args.scale)
        overrides = {"data_dir": tmp, "prefetch.deadline_seconds": 30.0, "prefetch.query_timeout_seconds": 20.0}
        if args.parallel:
            overrides["prefetch.max_parallel_queries"] = args.parallel
        settings = load_settings(environ={}, overrides=overrides)
        pf = settings.prefetch

        # each query alone, through the same client code
        pool = FhirClientPool(pool_size=pf.pool_connections)
        alone: dict[str, float] = {}
        with pool.lease(stub.base) as client:
            for key, template in service.prefetch.items():
                query = plan_query(key, render_template(template, context) or "")
                budget = Budget(time.monotonic() + 30, 20)
                start = time.monotonic()
                if query.search:
                    client.search(query.path, token="bench", budget=budget, max_resources=pf.max_resources_per_query,
                                  max_pages=1 if query.first_page_only else pf.max_pages)
                else:
                    client.read(query.path, token="bench", budget=budget, resource_type=query.resource_type)
                alone[key] = time.monotonic() - start
        pool.close()
        slowest_key = max(alone, key=alone.__getitem__)
        slowest = alone[slowest_key]

        body = {"hook": "patient-view", "hookInstance": "0e5f7a58-3f6b-4c1b-9d4e-5a6b7c8d9e0f",
                "fhirServer": stub.base, "context": context,
                "fhirAuthorization": {"access_token": "bench", "token_type": "Bearer", "scope": "x", "subject": "y"}}
        completer = PrefetchCompleter(settings)
        totals = []
        try:
            completer.complete(parse_cds_request(body, "patient-view"), service, date.today())  # warm the pool
            for _ in range(args.runs):
                start = time.monotonic()
                out = completer.complete(parse_cds_request(body, "patient-view"), service, date.today())
                totals.append(time.monotonic() - start)
                if out.unavailable:
                    print(f"unexpected failures: {out.unavailable}", file=sys.stderr)
                    return 2
        finally:
            completer.close()

    median = statistics.median(totals)
    ratio = median / slowest
    print(f"queries: {len(alone)} (max_parallel_queries={pf.max_parallel_queries})")
    for key, seconds in sorted(alone.items(), key=lambda kv: -kv[1]):
        print(f"  {key:<28} {seconds * 1000:7.1f} ms alone")
    print(f"sequential sum     {sum(alone.values()) * 1000:7.1f} ms")
    print(f"slowest query      {slowest * 1000:7.1f} ms ({slowest_key})")
    print(f"fetch path         {median * 1000:7.1f} ms median of {args.runs} "
          f"(min {min(totals) * 1000:.1f}, max {max(totals) * 1000:.1f})")
    verdict = "meets" if ratio <= GOAL else "MISSES"
    print(f"ratio              {ratio:7.2f} x slowest ({verdict} the goal <= {GOAL} x)")
    return 1 if args.check and ratio > GOAL else 0


if __name__ == "__main__":
    raise SystemExit(main())
