"""Settings: defaults, TOML, environment (which wins), origins, and one-line refusals."""

from __future__ import annotations

import pytest

from service.settings import ConfigError, LEAF_ENV, Profile, env_name, load_settings


def test_defaults_are_the_guideline_and_development():
    s = load_settings(environ={})
    assert s.profile is Profile.development
    assert s.guideline.igm_low_mg_dl == 40 and s.guideline.igg_deficient_mg_dl == 500
    assert s.origins["guideline.igm_low_mg_dl"] == "default"
    assert s.effective_database_url.startswith("sqlite:///") and s.effective_database_url.endswith("ivig-cds.sqlite3")


def test_environment_wins_over_the_file_and_origins_say_so(tmp_path):
    cfg = tmp_path / "site.toml"
    cfg.write_text("[guideline]\nigm_low_mg_dl = 35\ntrough_target_mg_dl = 700\n")
    s = load_settings(cfg, environ={"IVIG_CDS_IGM_LOW_MG_DL": "30"})
    assert s.guideline.igm_low_mg_dl == 30 and s.guideline.trough_target_mg_dl == 700
    assert s.origins["guideline.igm_low_mg_dl"] == "env:IVIG_CDS_IGM_LOW_MG_DL"
    assert s.origins["guideline.trough_target_mg_dl"] == f"config:{cfg}"


def test_config_file_from_environment(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('data_dir = "/tmp/x"\n[prefetch]\ndeadline_seconds = 2.5\n')
    s = load_settings(environ={"IVIG_CDS_CONFIG": str(cfg)})
    assert s.data_dir == "/tmp/x" and s.prefetch.deadline_seconds == 2.5


@pytest.mark.parametrize(("environ", "fragment"), [
    ({"IVIG_CDS_IGM_LOW_MGDL": "30"}, "unknown environment variable IVIG_CDS_IGM_LOW_MGDL (did you mean IVIG_CDS_IGM_LOW_MG_DL?)"),
    ({"IVIG_CDS_IGM_LOW_MG_DL": "low"}, "invalid setting guideline.igm_low_mg_dl (from env:IVIG_CDS_IGM_LOW_MG_DL)"),
    ({"IVIG_CDS_DOSE_MIN_G_PER_KG": "0.8"}, "dose_min_g_per_kg (0.8) must not exceed dose_max_g_per_kg"),
    ({"IVIG_CDS_PROFILE": "staging"}, "unknown profile 'staging'"),
    ({"IVIG_CDS_PROFILE": "production"},
     'production profile needs IVIG_CDS_SECURITY_TRUSTED_ISSUERS (e.g. \'[{"iss": "https://'),
    ({"IVIG_CDS_PROFILE": "production", "IVIG_CDS_DATABASE_URL": "postgresql://db/ivig",
      "IVIG_CDS_SECURITY_FHIR_SERVER_ALLOWLIST": "https://fhir.example.org/*",
      "IVIG_CDS_SECURITY_TRUSTED_ISSUERS": '[{"iss": "https://ehr.example.org", "jwks_file": "/etc/jwks.json"}]'},
     "production profile needs IVIG_CDS_SECURITY_PUBLIC_BASE_URL (or IVIG_CDS_SECURITY_BEHIND_PROXY=true) "
     "(e.g. https://cds.example.org) — or security.public_base_url in the --config file"),
    ({"IVIG_CDS_SECURITY_PUBLIC_BASE_URL": "cds.example.org"},
     "invalid setting security.public_base_url (from env:IVIG_CDS_SECURITY_PUBLIC_BASE_URL): must be an absolute"),
])
def test_invalid_configuration_is_one_line_naming_the_problem(environ, fragment):
    with pytest.raises(ConfigError) as err:
        load_settings(environ=environ)
    assert fragment in str(err.value) and "\n" not in str(err.value)


def test_unknown_toml_key_is_refused(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text("[guideline]\nigm_low = 30\n")
    with pytest.raises(ConfigError, match="unknown setting guideline.igm_low"):
        load_settings(cfg, environ={})
    bad = tmp_path / "bad.toml"
    bad.write_text("[guideline\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(bad, environ={})
    with pytest.raises(ConfigError, match="config file not found"):
        load_settings(tmp_path / "missing.toml", environ={})


def test_every_threshold_has_a_flat_environment_name():
    assert env_name("guideline.igm_low_mg_dl") == "IVIG_CDS_IGM_LOW_MG_DL"
    assert env_name("prefetch.deadline_seconds") == "IVIG_CDS_PREFETCH_DEADLINE_SECONDS"
    assert LEAF_ENV["database_url"] == "IVIG_CDS_DATABASE_URL" and LEAF_ENV["data_dir"] == "IVIG_CDS_DATA_DIR"
    assert len(set(LEAF_ENV.values())) == len(LEAF_ENV)


def test_lists_from_environment():
    s = load_settings(environ={"IVIG_CDS_SECURITY_FHIR_SERVER_ALLOWLIST": "https://fhir.example.org/*, http://127.0.0.1:*"})
    assert s.security.fhir_server_allowlist == ["https://fhir.example.org/*", "http://127.0.0.1:*"]


def test_sandbox_profile_trusts_exactly_the_sandbox():
    s = load_settings(environ={"IVIG_CDS_PROFILE": "sandbox"})
    assert s.security.require_token
    assert [i.iss for i in s.security.trusted_issuers] == ["https://sandbox.cds-hooks.org"]
    assert s.origins["security.require_token"] == "profile:sandbox"
