"""What a newcomer's first commands print: warnings when what runs is not what the command
suggests, one-line errors for bad settings (never a traceback), a quiet first start, and
``evaluate`` saying what an order-select request lacks. Real processes where a person runs one.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

import fhir_fixtures
from service.cli import main
from service.settings import load_settings
from tests.deploy_support import VENV_BIN, clean_env, run_server
from tests.servers import free_port

IVIG_CDS = str(VENV_BIN / "ivig-cds")
FIXTURES = Path(fhir_fixtures.__file__).parent


def _production_config(tmp_path: Path) -> Path:
    """A complete production configuration that needs no network: the sandbox's keys, pinned."""
    config = tmp_path / "production.toml"
    config.write_text(
        'profile = "production"\n'
        f'database_url = "sqlite:///{tmp_path / "prod.sqlite3"}"\n'
        "[security]\n"
        'trusted_issuers = [{iss = "https://sandbox.cds-hooks.org", jwks_file = "package:sandbox-jwks.json"}]\n'
        'fhir_server_allowlist = ["https://fhir.example.org/*"]\n'
        'public_base_url = "https://cds.example.org"\n', encoding="utf-8")
    return config


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


# ------------------------------------------------------------------ warnings of serve


@pytest.mark.slow
def test_serve_production_without_a_production_configuration_warns_on_one_line(tmp_path):
    port = free_port()
    env = clean_env({"IVIG_CDS_DATA_DIR": str(tmp_path / "data"), "WEB_CONCURRENCY": "1"})
    with run_server([IVIG_CDS, "serve", "--production", "--port", str(port)], env, tmp_path / "run", port,
                    tmp_path / "serve.log") as server:
        assert server.stop() == 0
    lines = server.json_lines()  # gunicorn's output is JSON lines: the warning is one of them
    warnings = [line for line in lines if line["level"] == "warning"]
    assert len(warnings) == 1, warnings
    message = warnings[0]["message"]
    assert "development profile" in message and "no tokens" in message and "sample patients" in message
    assert "IVIG_CDS_PROFILE=production" in message


@pytest.mark.slow
def test_production_profile_on_the_development_server_warns_it_is_not_for_production(tmp_path):
    port = free_port()
    env = clean_env({"IVIG_CDS_DATA_DIR": str(tmp_path / "data")})
    cmd = [IVIG_CDS, "serve", "--config", str(_production_config(tmp_path)), "--port", str(port)]
    with run_server(cmd, env, tmp_path / "run", port, tmp_path / "serve.log") as server:
        server.stop()  # Flask's development server ends on SIGTERM without a clean exit status
    warnings = [line for line in _lines(server.log()) if line.startswith("Warning:")]
    assert len(warnings) == 1, server.log()
    assert "not for production" in warnings[0] and "ivig-cds serve --production" in warnings[0]


def test_a_matching_command_and_profile_warn_nothing():
    from service.cli import serve_warning

    development = load_settings(environ={})
    assert serve_warning(development, production=False) is None
    sandbox = load_settings(environ={}, overrides={"profile": "sandbox"})
    assert serve_warning(sandbox, production=True) is None


def test_production_refusal_names_the_variables_and_shows_the_issuer_format(tmp_path):
    result = CliRunner().invoke(main, ["serve", "--profile", "production"],
                                env={"IVIG_CDS_DATA_DIR": str(tmp_path), "IVIG_CDS_CONFIG": None})
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.exception
    lines = _lines(result.output)
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    line = lines[0]
    for var in ("IVIG_CDS_SECURITY_TRUSTED_ISSUERS", "IVIG_CDS_SECURITY_FHIR_SERVER_ALLOWLIST", "IVIG_CDS_DATABASE_URL",
                "IVIG_CDS_SECURITY_PUBLIC_BASE_URL"):
        assert var in line
    # the format shown is one the loader accepts: copied as it is, it configures the production profile
    example = re.search(r"IVIG_CDS_SECURITY_TRUSTED_ISSUERS \(e\.g\. '(\[.*?\])'\)", line).group(1)
    assert json.loads(example)[0]["iss"]
    settings = load_settings(environ={
        "IVIG_CDS_PROFILE": "production", "IVIG_CDS_SECURITY_TRUSTED_ISSUERS": example,
        "IVIG_CDS_SECURITY_FHIR_SERVER_ALLOWLIST": "https://fhir.example.org/*",
        "IVIG_CDS_DATABASE_URL": "postgresql://ivig@db.example.org/ivig",
        "IVIG_CDS_SECURITY_PUBLIC_BASE_URL": "https://cds.example.org"})
    assert settings.security.trusted_issuers[0].jwks_url


# ------------------------------------------------------------------ bad settings: one line


@pytest.mark.parametrize("variable, value, names", [
    ("IVIG_CDS_LOG_LEVEL", "chatty", "log_level"),
    ("IVIG_CDS_DATABASE_URL", "not a database", "database_url"),
    ("IVIG_CDS_DATABASE_URL", "postgresql://ivig@127.0.0.1:1/ivig", "IVIG_CDS_DATABASE_URL"),
    ("IVIG_CDS_IGM_LOW_MG_DL", "-3", "guideline.igm_low_mg_dl"),
    ("IVIG_CDS_PREFETCH_FAILURE_MODE", "sometimes", "prefetch.failure_mode"),
    ("IVIG_CDS_DATA_DIR", "{file}/below-a-file", "IVIG_CDS_DATA_DIR"),
])
def test_an_invalid_setting_is_one_line_never_a_traceback(tmp_path, variable, value, names):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    env = clean_env({"IVIG_CDS_DATA_DIR": str(tmp_path / "data"), variable: value.format(file=blocker)})
    done = subprocess.run([IVIG_CDS, "serve", "--port", str(free_port())], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    output = done.stdout + done.stderr
    assert done.returncode != 0 and "Traceback" not in output, output
    errors = [line for line in _lines(output) if not line.startswith("{")]  # JSON lines are the log's
    assert len(errors) == 1 and errors[0].startswith("Error: ") and names in errors[0], output
    if "DATABASE_URL" in variable:
        assert "ivig@" not in errors[0], "a database URL may carry credentials: never echoed"


def test_log_level_is_accepted_in_any_case():
    assert load_settings(environ={"IVIG_CDS_LOG_LEVEL": "debug"}).log_level == "DEBUG"


# ------------------------------------------------------------------ a quiet first start


@pytest.mark.slow
def test_the_first_serve_prints_a_few_lines_not_the_migrations(tmp_path):
    port = free_port()
    env = clean_env({"IVIG_CDS_DATA_DIR": str(tmp_path / "fresh")})
    with run_server([IVIG_CDS, "serve", "--port", str(port)], env, tmp_path / "run", port,
                    tmp_path / "serve.log") as server:
        startup = _lines(server.log())
        server.stop()
    assert (tmp_path / "fresh" / "ivig-cds.sqlite3").exists(), "the database was created"
    assert not [line for line in startup if "alembic" in line], startup
    assert any(f"http://127.0.0.1:{port}/cds-services" in line for line in startup)
    assert not [line for line in startup if line.startswith("Warning:")]
    assert len(startup) <= 5, startup


# ------------------------------------------------------------------ evaluate


def test_evaluate_order_select_on_a_request_without_selections_says_so():
    request = str(FIXTURES / "sample-isolated-igm" / "request-order-sign.json")
    result = CliRunner().invoke(main, ["evaluate", request, "--hook", "order-select", "--today", "2026-11-24"],
                                env={"IVIG_CDS_CONFIG": None})
    assert result.exit_code != 0
    lines = _lines(result.output)
    assert len(lines) == 1 and "selections" in lines[0] and "--hook order-sign" in lines[0], result.output
    assert "no orders among the drafts" not in result.output


def test_evaluate_order_select_with_selections_checks_them(tmp_path):
    request = fhir_fixtures.load_json("sample-isolated-igm", "request-order-sign.json")
    request["hook"] = "order-select"
    request["context"]["selections"] = [f"MedicationRequest/{e['resource']['id']}"
                                        for e in request["context"]["draftOrders"]["entry"]]
    path = tmp_path / "order-select.json"
    path.write_text(json.dumps(request))
    result = CliRunner().invoke(main, ["evaluate", str(path), "--today", "2026-11-24"], env={"IVIG_CDS_CONFIG": None})
    assert result.exit_code == 0, result.output
    assert [c["source"]["topic"]["code"] for c in json.loads(result.output)["cards"]] == ["ivig-not-indicated"]
