"""Offline checks of the deployment files: Kubernetes (kustomize), compose, Dockerfile, .dockerignore.

No cluster and no Docker engine are needed, and nothing is downloaded: kubectl (for
``kubectl kustomize``), hadolint, the Kubernetes JSON schemas and the compose-spec schema all
ship inside packages of the ``test`` extra. Beyond schema validity, the tests check what the
schemas cannot: that the pieces agree with each other and with the code (selectors and labels,
probe paths, ports, the environment the pods get loads as valid Settings, the thresholds in the
ConfigMap are the guideline's).

Each validator is also shown a broken file, so that a validator that silently checks nothing
fails here instead of passing everything.
"""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from hooks.config import GuidelineConfig
from service.ops.production import GUNICORN_ENV
from service.settings import ENV_LEAF, ENV_PREFIX, Profile, load_settings
from tests.deploy_support import ROOT, VENV_BIN, DockerIgnore, dockerfile_env, dockerfile_instructions

DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
DOCKERFILE = ROOT / "Dockerfile"
#: Oldest Kubernetes minor version the manifests must validate against, and the newest bundled.
K8S_VERSIONS = ("1.29.0", "latest")
EXPECTED_CMD = ["ivig-cds", "serve", "--production", "--host", "0.0.0.0", "--port", "8080"]


def _tool(name: str) -> str:
    """A validator binary from the test extra (the venv's bin), else from PATH; fail if absent."""
    candidate = VENV_BIN / name
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if not found:
        pytest.fail(f"{name} is not installed: pip install -e '.[test]' provides it")
    return found


# ------------------------------------------------------------------ Kubernetes


@pytest.fixture(scope="module")
def kustomization() -> dict[str, Any]:
    return yaml.safe_load((K8S / "kustomization.yaml").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def rendered() -> list[dict[str, Any]]:
    """``kubectl kustomize deploy/k8s``: what ``kubectl apply -k`` would send."""
    done = subprocess.run([_tool("kubectl"), "kustomize", str(K8S)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def _one(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def test_every_kustomize_resource_exists_and_is_rendered(kustomization, rendered):
    assert kustomization["kind"] == "Kustomization"
    files = kustomization["resources"]
    for name in files:
        assert (K8S / name).is_file(), f"kustomization lists missing file {name}"
    listed = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == set(files), "every manifest in deploy/k8s is listed in kustomization.yaml, and only those"
    source_docs = sum(len([d for d in yaml.safe_load_all((K8S / f).read_text()) if d]) for f in files)
    assert len(rendered) == source_docs
    kinds = {d["kind"] for d in rendered}
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "ConfigMap", "Secret",
            "NetworkPolicy"} <= kinds
    for doc in rendered:
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == kustomization["namespace"]


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_manifests_validate_against_kubernetes_schemas(rendered, version):
    import kubernetes_validate

    target = kubernetes_validate.latest_version() if version == "latest" else version
    for doc in rendered:
        kubernetes_validate.validate(doc, target, strict=True)


def test_schema_validation_rejects_a_broken_deployment(rendered):
    import kubernetes_validate

    broken = copy.deepcopy(_one(rendered, "Deployment"))
    container = broken["spec"]["template"]["spec"]["containers"][0]
    container["readinessProbe"]["httpGet"]["port"] = {"name": "http"}  # wrong type
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, kubernetes_validate.latest_version(), strict=True)
    typo = copy.deepcopy(_one(rendered, "Deployment"))
    typo["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}  # unknown field
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(typo, kubernetes_validate.latest_version(), strict=True)


def _container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def test_deployment_is_scaled_probed_limited_and_locked_down(rendered):
    dep = _one(rendered, "Deployment", "ivig-cds")
    spec, pod = dep["spec"], dep["spec"]["template"]["spec"]
    c = _container(dep)
    assert spec["replicas"] >= 2
    assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    # the command is the image's: only the arguments are given, and they are the Dockerfile's CMD
    assert "command" not in c
    assert ["ivig-cds", *c["args"]] == EXPECTED_CMD
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(c["resources"][kind])
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"http": 8080, "metrics": 9464}
    config = _one(rendered, "ConfigMap")["data"]
    assert int(config["IVIG_CDS_METRICS_PORT"]) == ports["metrics"]
    annotations = dep["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(ports["metrics"]) and annotations["prometheus.io/path"] == "/metrics"
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert c[probe]["httpGet"]["port"] in ("http", 8080)
    # non-root, read-only root filesystem, nothing extra
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert pod["automountServiceAccountToken"] is False
    # what the read-only root leaves writable: emptyDirs for /tmp, the data dir, the metrics dir
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: volumes[m["name"]] for m in c["volumeMounts"]}
    env = {e["name"]: e.get("value") for e in c.get("env", [])}
    for path in ("/tmp", env["PROMETHEUS_MULTIPROC_DIR"], env["IVIG_CDS_DATA_DIR"]):
        assert "emptyDir" in mounts[path], f"{path} must be a writable emptyDir"
    assert "secret" in mounts["/etc/ivig-cds/jwks"]
    # graceful shutdown fits: preStop pause + gunicorn's graceful timeout < the grace period
    config = _one(rendered, "ConfigMap")["data"]
    pre_stop = int(c["lifecycle"]["preStop"]["exec"]["command"][-1])
    assert pre_stop + int(config["GUNICORN_GRACEFUL_TIMEOUT"]) < pod["terminationGracePeriodSeconds"]


def test_deployment_matches_the_image(rendered):
    dep = _one(rendered, "Deployment", "ivig-cds")
    c = _container(dep)
    instructions = dockerfile_instructions(DOCKERFILE)
    final = max(i.stage for i in instructions)
    exposed = [i.args for i in instructions if i.keyword == "EXPOSE" and i.stage == final]
    assert exposed == [" ".join(str(p["containerPort"]) for p in c["ports"])]
    user = next(i.args for i in instructions if i.keyword == "USER" and i.stage == final)
    assert int(user.split(":")[0]) == dep["spec"]["template"]["spec"]["securityContext"]["runAsUser"]
    image_env = dockerfile_env(instructions, final)
    env = {e["name"]: e.get("value") for e in c.get("env", [])}
    assert env["PROMETHEUS_MULTIPROC_DIR"] == image_env["PROMETHEUS_MULTIPROC_DIR"]
    assert env["IVIG_CDS_DATA_DIR"] == image_env["IVIG_CDS_DATA_DIR"]
    assert c["image"].startswith("ivig-cds:")


def test_selectors_and_targets_agree(rendered):
    dep = _one(rendered, "Deployment", "ivig-cds")
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    selector = dep["spec"]["selector"]["matchLabels"]
    assert selector.items() <= pod_labels.items()
    for kind in ("Service", "PodDisruptionBudget", "NetworkPolicy"):
        doc = _one(rendered, kind)
        sel = doc["spec"]["selector"] if kind == "Service" else (
            doc["spec"]["selector"]["matchLabels"] if kind == "PodDisruptionBudget" else doc["spec"]["podSelector"]["matchLabels"])
        assert sel and sel.items() <= pod_labels.items(), kind
    svc = _one(rendered, "Service")
    assert svc["spec"]["ports"][0]["targetPort"] in ("http", 8080)
    hpa = _one(rendered, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "ivig-cds"}
    assert hpa["spec"]["minReplicas"] >= 2
    assert hpa["spec"]["maxReplicas"] > hpa["spec"]["minReplicas"]
    cpu = [m for m in hpa["spec"]["metrics"] if m["type"] == "Resource" and m["resource"]["name"] == "cpu"]
    assert cpu and cpu[0]["resource"]["target"]["type"] == "Utilization"
    pdb = _one(rendered, "PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] < hpa["spec"]["minReplicas"]
    # envFrom refers to the ConfigMap and Secret that exist; the JWKS volume to its Secret
    c = _container(dep)
    names = {(k, d["metadata"]["name"]) for d in rendered for k in [d["kind"]]}
    for source in c["envFrom"]:
        if "configMapRef" in source:
            assert ("ConfigMap", source["configMapRef"]["name"]) in names
        if "secretRef" in source:
            assert ("Secret", source["secretRef"]["name"]) in names
    for volume in dep["spec"]["template"]["spec"]["volumes"]:
        if "secret" in volume:
            assert ("Secret", volume["secret"]["secretName"]) in names


def _pod_environment(rendered: list[dict[str, Any]]) -> dict[str, str]:
    """The variables a pod gets: envFrom ConfigMap and Secret, then the container's env."""
    dep = _one(rendered, "Deployment", "ivig-cds")
    c = _container(dep)
    env: dict[str, str] = {}
    for source in c["envFrom"]:
        if "configMapRef" in source:
            env.update(_one(rendered, "ConfigMap", source["configMapRef"]["name"])["data"])
        if "secretRef" in source:
            env.update(_one(rendered, "Secret", source["secretRef"]["name"])["stringData"])
    env.update({e["name"]: e["value"] for e in c.get("env", [])})
    return env


def test_pod_environment_is_a_valid_production_configuration(rendered):
    env = _pod_environment(rendered)
    settings_env = {k: v for k, v in env.items() if k.startswith(ENV_PREFIX)}
    unknown = set(settings_env) - set(ENV_LEAF)
    assert not unknown, f"unknown settings variables would stop the start: {unknown}"
    others = set(env) - set(settings_env)
    assert others <= {v.name for v in GUNICORN_ENV}, f"variables nothing reads: {others - {v.name for v in GUNICORN_ENV}}"
    settings = load_settings(environ=settings_env)  # raises ConfigError when anything is wrong
    assert settings.profile is Profile.production
    assert settings.database_url and settings.database_url.startswith("postgresql")
    assert "connect_timeout=" in settings.database_url
    assert settings.feedback.patient_hash_key
    assert settings.security.public_base_url and settings.security.public_base_url.startswith("https://")
    issuer = settings.security.trusted_issuers[0]
    jwks_secret = _one(rendered, "Secret", "ivig-cds-jwks")
    mount = "/etc/ivig-cds/jwks"
    assert issuer.jwks_file and issuer.jwks_file.startswith(mount + "/")
    assert issuer.jwks_file.removeprefix(mount + "/") in jwks_secret["stringData"]


def test_configmap_thresholds_are_the_guideline_defaults(rendered):
    """A shipped ConfigMap must not silently pin an outdated number when a default changes."""
    data = _one(rendered, "ConfigMap")["data"]
    defaults = GuidelineConfig()
    thresholds = {k: v for k, v in data.items() if ENV_LEAF.get(k, "").startswith("guideline.")}
    assert len(thresholds) >= 5
    for var, raw in thresholds.items():
        field = ENV_LEAF[var].split(".", 1)[1]
        assert float(raw) == float(getattr(defaults, field)), f"{var}={raw} but the guideline default is {getattr(defaults, field)}"


def test_network_policy_allows_egress_only_to_dns_database_and_fhir(rendered):
    policy = _one(rendered, "NetworkPolicy")
    assert set(policy["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    ports = sorted({(p["port"], p["protocol"]) for rule in policy["spec"]["egress"] for p in rule["ports"]})
    assert ports == [(53, "TCP"), (53, "UDP"), (443, "TCP"), (5432, "TCP")]
    for rule in policy["spec"]["egress"]:
        assert rule.get("to"), "an egress rule without 'to' would allow every destination"
        for peer in rule["to"]:
            assert peer.get("ipBlock", {}).get("cidr") != "0.0.0.0/0"
    ingress = {p["port"]: rule.get("from") for rule in policy["spec"]["ingress"] for p in rule["ports"]}
    assert set(ingress) == {8080, 9464}
    # the metrics port only from the monitoring namespace, never from everywhere
    assert ingress[9464] and all("namespaceSelector" in peer for peer in ingress[9464])


def test_yaml_files_pass_yamllint():
    config = "{extends: default, rules: {line-length: {max: 160}, document-start: disable, truthy: {check-keys: false}}}"
    files = sorted(str(p) for p in DEPLOY.rglob("*.yaml"))
    assert len(files) >= 9
    done = subprocess.run([_tool("yamllint"), "-f", "parsable", "-s", "-d", config, *files],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def test_yamllint_catches_a_broken_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: 1\na: 2\nb:  [1,2\n", encoding="utf-8")
    done = subprocess.run([_tool("yamllint"), "-d", "default", str(bad)], capture_output=True, text=True, timeout=60)
    assert done.returncode != 0


# ------------------------------------------------------------------ compose


COMPOSE = DEPLOY / "compose.yaml"


def _check_compose(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([_tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(path)],
                          capture_output=True, text=True, timeout=120)


def test_compose_file_validates_against_the_compose_spec():
    done = _check_compose(COMPOSE)
    assert done.returncode == 0, done.stdout + done.stderr


def test_compose_validation_rejects_a_broken_file(tmp_path):
    doc = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    doc["services"]["ivig-cds"]["depends_on"] = {"postgres": {"condition": "whenever"}}
    doc["services"]["ivig-cds"]["healthcheck"] = {"interval": 5}
    bad = tmp_path / "compose.yaml"
    bad.write_text(yaml.safe_dump(doc), encoding="utf-8")
    assert _check_compose(bad).returncode != 0


_INTERPOLATION = re.compile(r"\$\{([A-Z0-9_]+)(?::?-([^}]*))?\}")


def _interpolate(value: str) -> str:
    """Compose's ${VAR:-default} with nothing set: the defaults (what `docker compose up` uses)."""
    return _INTERPOLATION.sub(lambda m: m.group(2) or "", value)


def test_compose_wires_service_database_and_optional_fhir_server():
    doc = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    services = doc["services"]
    app, db = services["ivig-cds"], services["postgres"]
    assert (COMPOSE.parent / app["build"]["context"] / app["build"]["dockerfile"]).resolve() == DOCKERFILE
    assert db["image"] == "postgres:16"
    assert "healthcheck" in db
    assert app["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert "fhir" in services["fhir"]["profiles"], "the FHIR server is optional (a profile)"
    assert "profiles" not in app and "profiles" not in db

    env = {k: _interpolate(str(v)) for k, v in app["environment"].items()}
    settings = load_settings(environ={k: v for k, v in env.items() if k.startswith(ENV_PREFIX)})
    assert settings.profile is Profile.production
    from sqlalchemy.engine import make_url

    url = make_url(settings.database_url)
    assert (url.host, url.port or 5432) == ("postgres", 5432)
    db_env = {k: _interpolate(str(v)) for k, v in db["environment"].items()}
    assert (url.username, url.password, url.database) == (db_env["POSTGRES_USER"], db_env["POSTGRES_PASSWORD"],
                                                          db_env["POSTGRES_DB"])
    assert settings.feedback.patient_hash_key
    assert any(p.startswith("http://fhir:8080") for p in settings.security.fhir_server_allowlist)
    assert settings.security.public_base_url == "http://localhost:8080"  # the published port
    assert set(env) - {k for k in env if k.startswith(ENV_PREFIX)} <= {v.name for v in GUNICORN_ENV}
    # the container runs read-only: the image's writable paths are tmpfs or volumes
    image_env = dockerfile_env(dockerfile_instructions(DOCKERFILE), 1)
    assert app["read_only"] is True
    assert {"/tmp", image_env["PROMETHEUS_MULTIPROC_DIR"]} <= set(app["tmpfs"])
    assert any(v.endswith(":" + image_env["IVIG_CDS_DATA_DIR"]) for v in app["volumes"])


# ------------------------------------------------------------------ Dockerfile


def _hadolint(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([_tool("hadolint"), "--no-color", str(path)], capture_output=True, text=True, timeout=120)


def test_dockerfile_passes_hadolint():
    done = _hadolint(DOCKERFILE)
    assert done.returncode == 0, done.stdout + done.stderr


def test_hadolint_catches_a_bad_dockerfile(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get install curl\nRUN cd /tmp && pip install flask\n", encoding="utf-8")
    done = _hadolint(bad)
    assert done.returncode != 0
    assert "DL3007" in done.stdout  # 'latest' tag


def test_dockerfile_is_multistage_slim_nonroot_with_healthcheck():
    instructions = dockerfile_instructions(DOCKERFILE)
    froms = [i for i in instructions if i.keyword == "FROM"]
    assert len(froms) >= 2, "multi-stage: a build stage and a runtime stage"
    assert froms[0].args.startswith("python:3.11-slim") and " AS " in froms[0].args.upper()
    assert froms[-1].args == "python:3.11-slim"
    final = froms[-1].stage
    runtime = [i for i in instructions if i.stage == final]
    # a wheel is built in the first stage; the final stage gets the installed venv only
    assert any(i.keyword == "RUN" and "pip wheel" in i.args for i in instructions if i.stage == 0)
    copies = [i.args for i in runtime if i.keyword == "COPY"]
    assert copies and all(c.startswith("--from=") for c in copies), "the runtime stage copies only from the build"
    for i in runtime:
        if i.keyword == "RUN":
            assert not re.search(r"\b(apt-get|apk|gcc|g\+\+|make|build-essential|pip)\b", i.args), i.args
    user = [i.args for i in runtime if i.keyword == "USER"]
    assert user and user[-1].split(":")[0].isdigit() and int(user[-1].split(":")[0]) != 0
    health = [i for i in runtime if i.keyword == "HEALTHCHECK"]
    assert len(health) == 1
    probe = health[0].exec_form()
    assert probe[0] == "python" and "urllib" in probe[-1] and "/healthz" in probe[-1]
    assert "curl" not in health[0].args and "wget" not in health[0].args
    entry = [i.exec_form() for i in runtime if i.keyword == "ENTRYPOINT"]
    cmd = [i.exec_form() for i in runtime if i.keyword == "CMD"]
    assert entry[-1] + cmd[-1] == EXPECTED_CMD
    env = dockerfile_env(instructions, final)
    assert set(k for k in env if k.startswith(ENV_PREFIX)) <= set(ENV_LEAF)
    assert env["IVIG_CDS_PROFILE"] == "production"
    volumes = [i.args for i in runtime if i.keyword == "VOLUME"]
    assert any(env["IVIG_CDS_DATA_DIR"] in v for v in volumes)


def test_dockerignore_sends_the_sources_and_nothing_else():
    import tomllib

    ignore = DockerIgnore(ROOT / ".dockerignore")
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    for pattern in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]:
        package = pattern.rstrip("*")
        assert (ROOT / package).is_dir()
        assert not ignore.excluded(f"{package}/__init__.py"), f"{package} is left out of the build context"
    for needed in ("pyproject.toml", pyproject["project"]["readme"], "service/auth/sandbox-jwks.json"):
        assert not ignore.excluded(needed), needed
    for unwanted in (".git/config", ".venv/bin/python", "tests/test_smoke.py", "service/__pycache__/app.cpython-311.pyc",
                     "deploy/k8s/secret.yaml", "data/ivig-cds.sqlite3", "Dockerfile"):
        assert ignore.excluded(unwanted), unwanted
