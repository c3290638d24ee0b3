"""Two workers at the request limits stay inside the Deployment's memory limit.

bench/memory_limits.py (its --short run) starts the service under gunicorn with the packaged
settings, the Deployment's process counts and the default limits, fills the caches with distinct
records, then sends the largest legal bodies of three shapes from as many clients as there are
request threads, and sums the master's and the workers' high-water marks from /proc. The
figures are printed; the test holds them to the limit in deploy/k8s/deployment.yaml.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.deploy_support import ROOT, clean_env

pytestmark = pytest.mark.slow


def test_the_largest_legal_calls_stay_inside_the_pods_memory_limit(tmp_path):
    out = tmp_path / "memory.json"
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "memory_limits.py"), "--short", "--check",
                           "--json", str(out)], capture_output=True, text=True, timeout=900, cwd=ROOT,
                          env=clean_env())
    print(done.stdout)
    figures = json.loads(out.read_text(encoding="utf-8")) if out.exists() else None
    assert figures is not None, done.stdout + done.stderr
    limit = figures["pod"]["memory_limit_mib"]
    for name, shape in figures["shapes"].items():
        assert shape["high_water_sum_mib"] < limit, (name, shape)
        statuses = {int(k): v for k, v in shape.get("statuses", shape["filled"]["statuses"]).items()}
        assert statuses.get(200), (name, statuses)  # legal calls at the limits are served...
        assert set(statuses) <= {200, 503}, (name, statuses)  # ...or told to retry, never 413 nor a failure
    assert done.returncode == 0, done.stdout + done.stderr
