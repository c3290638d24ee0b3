"""The image's entry command, run the way the image would run it, without a Docker engine.

What ``docker build`` would do is replayed offline: the build context is what .dockerignore lets
through, a wheel is built from that context alone, and installed (as the Dockerfile does, with
``pip --python``) into a fresh venv. Then the Dockerfile's own ENTRYPOINT + CMD, parsed from the
file, runs from an empty directory with the image's ENV and the configuration a deployment adds,
and its HEALTHCHECK command is run against it.

Substitutions, and why: the listening port (8080 may be taken here), the container paths of the
data and metrics directories (not writable outside a container), and the dependencies, which
come from the test venv's site-packages (no index may be contacted) while the project itself
comes only from the wheel.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import requests

from tests.deploy_support import (ROOT, build_context_files, clean_env, dockerfile_env, dockerfile_instructions,
                                  hook_request, run_server)
from tests.servers import free_port

pytestmark = pytest.mark.slow

SANDBOX_PINNED = ('[{"iss": "https://sandbox.cds-hooks.org", "jwks_file": "package:sandbox-jwks.json", '
                  '"algorithms": ["ES384"]}]')


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, **kw)
    assert done.returncode == 0, f"{' '.join(cmd)}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def image_venv(tmp_path_factory) -> Path:
    """A fresh venv holding the wheel built from the Docker build context, and nothing of the repo."""
    tmp = tmp_path_factory.mktemp("image")
    context = tmp / "context"
    files = build_context_files(ROOT, ROOT / ".dockerignore")
    assert "pyproject.toml" in files and not any(f.startswith(("tests/", ".git/", ".venv/")) for f in files)
    for rel in files:
        target = context / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, target)

    pip_env = clean_env({"PIP_CONFIG_FILE": os.devnull, "PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"})
    wheels = tmp / "wheels"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
          "--wheel-dir", str(wheels), str(context)], env=pip_env, cwd=tmp)
    (wheel,) = wheels.glob("ivig_cds-*.whl")

    venv = tmp / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], env=pip_env)
    python = venv / "bin" / "python"
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", str(wheel)],
         env=pip_env, cwd=tmp)
    # dependencies from the test venv, after the fresh venv's own site-packages (which wins)
    site = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                     env=pip_env, cwd=tmp).stdout.strip())
    (site / "zz_test_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n", encoding="utf-8")
    return venv


def _container_env(tmp: Path, venv: Path) -> dict[str, str]:
    instructions = dockerfile_instructions(ROOT / "Dockerfile")
    image_env = dockerfile_env(instructions, max(i.stage for i in instructions))
    env = clean_env()
    for key, value in image_env.items():
        env[key] = value.replace("$PATH", env.get("PATH", "")).replace("/opt/ivig-cds", str(venv))
    # container paths that are volumes / tmpfs there, directories of the test here
    env["IVIG_CDS_DATA_DIR"] = str(tmp / "var-lib-ivig-cds")
    env["PROMETHEUS_MULTIPROC_DIR"] = str(tmp / "run-prometheus")
    assert env["IVIG_CDS_METRICS_PORT"] == "9464"  # the image's; 9464 may be taken here
    env["IVIG_CDS_METRICS_PORT"] = str(free_port())
    env["HOME"] = str(tmp / "home-that-must-stay-unwritten")
    # what a deployment adds (compose.yaml / the Kubernetes Secret)
    env.update({
        "IVIG_CDS_DATABASE_URL": f"sqlite:///{tmp / 'db' / 'ivig-cds.sqlite3'}",
        "IVIG_CDS_SECURITY_TRUSTED_ISSUERS": SANDBOX_PINNED,
        "IVIG_CDS_SECURITY_FHIR_SERVER_ALLOWLIST": "https://*",
        "IVIG_CDS_SECURITY_PUBLIC_BASE_URL": "https://cds.hospital.example",
        "IVIG_CDS_FEEDBACK_PATIENT_HASH_KEY": "image-test-key",
    })
    return env


def _entry_command(port: int) -> list[str]:
    instructions = dockerfile_instructions(ROOT / "Dockerfile")
    final = max(i.stage for i in instructions)
    entry = [i for i in instructions if i.stage == final and i.keyword == "ENTRYPOINT"][-1].exec_form()
    cmd = [i for i in instructions if i.stage == final and i.keyword == "CMD"][-1].exec_form()
    full = entry + cmd
    assert full.count("--port") == 1
    full[full.index("--port") + 1] = str(port)
    return full


def _healthcheck(env: dict[str, str], port: int, cwd: Path) -> subprocess.CompletedProcess:
    instructions = dockerfile_instructions(ROOT / "Dockerfile")
    (health,) = [i for i in instructions if i.keyword == "HEALTHCHECK"]
    argv = health.exec_form()
    argv = [a.replace("127.0.0.1:8080", f"127.0.0.1:{port}") for a in argv]
    assert argv != health.exec_form(), "the healthcheck must ask port 8080 on loopback"
    argv[0] = shutil.which(argv[0], path=env["PATH"])
    timeout = int(health.flags.get("timeout", "30s").rstrip("s"))
    return subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout + 5)


def test_image_entry_command_serves_from_a_plain_venv(image_venv, tmp_path):
    env = _container_env(tmp_path, image_venv)
    empty = tmp_path / "empty"
    empty.mkdir()

    # the project comes from the wheel, not from this repository
    where = subprocess.run([str(image_venv / "bin" / "python"), "-c",
                            "import service, hooks, fhir_fixtures\n"
                            "for m in (service, hooks, fhir_fixtures): print(*m.__path__)"],
                           env=env, cwd=empty, capture_output=True, text=True, timeout=60)
    assert where.returncode == 0, where.stderr
    assert all(Path(p).is_relative_to(image_venv) for p in where.stdout.split()), where.stdout

    port = free_port()
    cmd = _entry_command(port)
    resolved = shutil.which(cmd[0], path=env["PATH"])
    assert resolved and Path(resolved).parent == image_venv / "bin"
    with run_server([resolved, *cmd[1:]], env, empty, port, tmp_path / "image.log") as server:
        base = server.base
        assert requests.get(f"{base}/healthz", timeout=5).json() == {"status": "ok"}
        ready = requests.get(f"{base}/readyz", timeout=10)
        assert ready.status_code == 200, ready.text
        assert ready.json()["checks"].get("jwks") == "ok"
        discovery = requests.get(f"{base}/cds-services", timeout=10)
        assert discovery.status_code == 200
        assert {s["hook"] for s in discovery.json()["services"]} >= {"patient-view", "order-sign"}
        # the image's profile is production: a hook call needs a token
        assert requests.post(f"{base}/cds-services/ivig-patient-view", json=hook_request(), timeout=10).status_code == 401
        # metrics on the metrics port only: the hooks' port has none to give in production
        assert requests.get(f"{base}/metrics", timeout=10).status_code == 404
        scrape = requests.get(f"http://127.0.0.1:{env['IVIG_CDS_METRICS_PORT']}/metrics", timeout=10)
        assert "ivig_cds_http_requests_total" in scrape.text

        health = _healthcheck(env, port, empty)
        assert health.returncode == 0, health.stderr
        assert server.stop() == 0
    # the healthcheck fails when nothing answers
    assert _healthcheck(env, port, empty).returncode != 0
    assert not Path(env["HOME"]).exists(), "something wrote to $HOME, which is not writable in the container"
    assert not list(empty.iterdir()), "the server wrote into its working directory"
