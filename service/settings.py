"""Typed, frozen settings from defaults, profile, a TOML file and ``IVIG_CDS_*`` variables.

Precedence (later wins): built-in defaults < profile defaults < TOML file < environment.
Every value remembers where it came from (``Settings.origins``) so that ``ivig-cds explain``
can tell a committee whether a threshold is the guideline default or a local change.

Environment names: ``IVIG_CDS_<FIELD>`` for top-level fields and for the clinical thresholds
(``IVIG_CDS_IGM_LOW_MG_DL``), ``IVIG_CDS_<SECTION>_<FIELD>`` for the other sections
(``IVIG_CDS_PREFETCH_DEADLINE_SECONDS``). Lists accept JSON or comma-separated text; objects JSON.
An unknown ``IVIG_CDS_*`` variable or TOML key is an error: a mistyped threshold must never be
silently ignored.
"""

from __future__ import annotations

import difflib
import json
import os
import tomllib
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal, Mapping
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator

from hooks.config import GuidelineConfig

ENV_PREFIX = "IVIG_CDS_"
#: Variables that steer loading itself rather than naming a setting.
META_ENV = {"IVIG_CDS_CONFIG"}
#: The names ``log_level`` accepts (Python's logging levels), in any case.
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
#: What the production profile cannot start without, by environment variable, with an example of each.
PRODUCTION_NEEDS = {
    "security.trusted_issuers": ("IVIG_CDS_SECURITY_TRUSTED_ISSUERS",
                                 '\'[{"iss": "https://ehr.example.org", '
                                 '"jwks_url": "https://ehr.example.org/.well-known/jwks.json"}]\''),
    "security.fhir_server_allowlist": ("IVIG_CDS_SECURITY_FHIR_SERVER_ALLOWLIST", "https://fhir.example.org/*"),
    "database_url": ("IVIG_CDS_DATABASE_URL", "postgresql://ivig@db.example.org/ivig"),
    "security.public_base_url": ("IVIG_CDS_SECURITY_PUBLIC_BASE_URL (or IVIG_CDS_SECURITY_BEHIND_PROXY=true)",
                                 "https://cds.example.org"),
}

SANDBOX_ISS = "https://sandbox.cds-hooks.org"
SANDBOX_JKU = "https://sandbox.cds-hooks.org/.well-known/jwks.json"
#: The sandbox profile's one trusted issuer, the public CDS Hooks sandbox: ES384, its JWK Set
#: pinned from the package (service/auth/sandbox-jwks.json), so no key is ever fetched.
SANDBOX_ISSUER: dict[str, Any] = {
    "iss": SANDBOX_ISS,
    "jwks_file": "package:sandbox-jwks.json",
    "jku_allowlist": [SANDBOX_JKU],
    "algorithms": ["ES384"],
}


class ConfigError(Exception):
    """The configuration cannot be used; the message is one line that names the problem."""


class Profile(StrEnum):
    development = "development"
    sandbox = "sandbox"
    production = "production"


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class TrustedIssuer(_Section):
    """A CDS client (EHR) whose JWTs we accept, and where its public keys come from."""

    iss: str = Field(description="The client's issuer, exactly as in the JWT `iss` claim")
    jwks_url: str | None = Field(None, description="URL of the issuer's JWK Set, fetched and cached")
    jwks: dict[str, Any] | None = Field(None, description="A pinned JWK Set (no network)")
    jwks_file: str | None = Field(
        None, description="Path of a pinned JWK Set file; 'package:NAME' reads one shipped with ivig-cds")
    jku_allowlist: list[str] = Field(
        default_factory=list, description="JWKS URLs a token's `jku` header may name for this issuer")
    algorithms: list[str] = Field(
        default_factory=lambda: ["ES384", "RS384"], description="Signature algorithms accepted for this issuer")


class SecuritySettings(_Section):
    require_token: bool = Field(False, description="Demand a valid CDS client JWT on hook and feedback calls")
    protect_discovery: bool = Field(False, description="Demand a JWT on discovery as well")
    trusted_issuers: list[TrustedIssuer] = Field(default_factory=list, description="Allowlist of CDS clients")
    clock_skew_seconds: int = Field(60, ge=0, description="Leeway for exp/iat/nbf")
    max_token_lifetime_seconds: int = Field(3600, gt=0, description="Longest exp - iat accepted")
    behind_proxy: bool = Field(
        False, description="Trust X-Forwarded-Proto/Host when rebuilding the audience URL (only behind a proxy "
                           "that sets them and is the only way in)")
    public_base_url: str | None = Field(
        None, description="The service's external base URL (https://host[:port][/path]); the JWT audience is "
                          "built from it — production needs it or behind_proxy")
    jwks_cache_seconds: int = Field(3600, gt=0, description="How long a fetched JWK Set is cached")
    jwks_refetch_interval_seconds: int = Field(
        60, ge=0, description="Least time between refetches of a JWK Set on an unknown kid")
    jwks_fetch_timeout_seconds: float = Field(2.0, gt=0, description="Timeout of a JWK Set fetch")
    replay_store: Literal["database", "redis", "memory"] = Field(
        "database", description="Where seen `jti`s are kept (shared across workers; 'memory' only for one process)")
    redis_url: str | None = Field(None, description="Redis URL when replay_store = redis")
    fhir_server_allowlist: list[str] = Field(
        default_factory=list,
        description="fhirServer URL patterns the service may contact: scheme://host[:port][/path], "
        "host may be '*' or '*.example.org', port may be '*'")
    cors_origins: list[str] = Field(
        default_factory=list,
        description="Browser origins allowed by CORS, exact (scheme://host[:port]); '*' allows any (not in production)")

    @field_validator("public_base_url")
    @classmethod
    def _absolute_base_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment \
                or parts.username or parts.password:
            raise ValueError("must be an absolute http(s) URL without user, query or fragment, "
                             "e.g. https://cds.hospital.example")
        return value

    @field_validator("cors_origins")
    @classmethod
    def _exact_origins(cls, value: list[str]) -> list[str]:
        for origin in value:
            if origin == "*":
                continue
            parts = urlsplit(origin)
            if parts.scheme not in ("http", "https") or not parts.hostname or origin != f"{parts.scheme}://{parts.netloc}" \
                    or "@" in parts.netloc or "*" in parts.netloc:
                raise ValueError(f"{origin!r} is not an origin: scheme://host[:port], no path or trailing slash")
        return value


class LimitSettings(_Section):
    max_body_bytes: int = Field(
        4 * 1024 * 1024, gt=0, description="Largest request body, in bytes (413 above); at most worker_body_bytes")
    max_json_depth: int = Field(100, gt=1, description="Deepest JSON nesting accepted (400 above)")
    max_resources: int = Field(
        10000, gt=0, description="Most FHIR resources in one request (413 above; the published prefetch asks "
                                 "for ~1 500 at most)")
    request_timeout_seconds: float = Field(10.0, gt=0, description="Worker timeout for one request (gunicorn)")
    worker_body_bytes: int = Field(
        5 * 1024 * 1024, gt=0,
        description="Request bodies one worker works on at once, in bytes (each takes ~30-50x its size in memory "
                    "while it is read); a call past it waits up to 3 s, then 503. A body alone always fits")
    max_resource_bytes: int = Field(
        64 * 1024, gt=0, description="Largest single FHIR resource read, serialised, in bytes; a larger one is "
                                     "skipped and named in the cards")
    resource_cache_entries: int = Field(
        0, ge=0, description="Validated FHIR resources kept per worker for records sent again (a few KB each; "
                             "0 = off: on distinct records keeping them costs more than it saves)")
    resource_cache_bytes: int = Field(
        2 * 1024 * 1024, ge=0, description="Bound of those resources per worker, in bytes of their JSON (0 = off)")
    answer_cache_entries: int = Field(
        1024, ge=0, description="Answers kept per worker for a request sent again, re-issued with the new call's "
                                "card uuids (a few KB each; 0 = off)")


    @model_validator(mode="after")
    def _one_body_fits_a_worker(self) -> "LimitSettings":
        if self.max_body_bytes > self.worker_body_bytes:
            raise ValueError(f"max_body_bytes ({self.max_body_bytes}) must not exceed worker_body_bytes "
                             f"({self.worker_body_bytes}): a call of the largest size must fit in a worker's budget")
        return self


class PrefetchSettings(_Section):
    query_timeout_seconds: float = Field(2.0, gt=0, description="Timeout of one FHIR query (connect and read)")
    deadline_seconds: float = Field(3.0, gt=0, description="Overall deadline for completing prefetch")
    max_resources_per_query: int = Field(2000, gt=0, description="Cap on resources read by following paging")
    max_pages: int = Field(20, gt=0, description="Cap on pages followed per query")
    max_bytes_per_call: int = Field(
        16 * 1024 * 1024, ge=64 * 1024,
        description="Bytes read from the FHIR server for one call, all pages and queries together; beyond it "
                    "paging stops and the cards say the record may be incomplete")
    failure_mode: Literal["continue", "omit", "fail"] = Field(
        "continue",
        description="A failed FHIR query: continue (say so in cards), omit the key silently, or fail the call")
    pool_connections: int = Field(8, gt=0, description="HTTP connection pool size per FHIR server")
    max_parallel_queries: int = Field(
        16, gt=0, description="Queries run at once per call (at least the number of prefetch keys, so one round suffices)")


class FeedbackSettings(_Section):
    retention_days: int | None = Field(None, gt=0, description="Delete cards and feedback older than this")
    issued_queue_size: int = Field(10000, gt=0, description="Bound of the queue of issued-card records")
    issued_flush_seconds: float = Field(0.5, gt=0, description="How often issued-card records are written")
    patient_hash_key: str | None = Field(
        None, description="Secret for the keyed hash of patient ids in records (random per start when unset)")


class MetricsSettings(_Section):
    port: int | None = Field(
        None, ge=1, le=65535,
        description="Port of a listener of its own for GET /metrics (all workers summed; under `serve --production` "
                    "the gunicorn master serves it, so scrapes never take a request thread): the production "
                    "profile's place for metrics")
    host: str | None = Field(None, description="Address the metrics port binds (default: the service's host)")
    token: SecretStr | None = Field(
        None,
        description="Bearer token every scrape must send (Authorization: Bearer ...), 16 characters or more; with "
                    "it, the production profile also serves /metrics on the service's port")

    @field_validator("token")
    @classmethod
    def _long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < 16:
            raise ValueError("must be at least 16 characters (a random string, e.g. from `openssl rand -hex 32`)")
        return value


class SmartSettings(_Section):
    client_id: str = Field("ivig-cds", description="SMART client id registered with the EHR")
    scope: str = Field(
        "launch openid fhirUser patient/Patient.read patient/Observation.read patient/Condition.read "
        "patient/Encounter.read patient/Immunization.read patient/MedicationRequest.read "
        "patient/MedicationAdministration.read patient/Procedure.read",
        description="Scopes requested at SMART launch")
    redirect_url: str | None = Field(None, description="Redirect URL registered for the app (default: /smart/app)")


class Settings(BaseModel):
    """Everything the running service needs; built once at start-up, then read-only."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    profile: Profile = Field(Profile.development, description="development | sandbox | production")
    data_dir: str = Field("~/.local/share/ivig-cds", description="Where the SQLite database and caches live")
    database_url: str | None = Field(None, description="SQLAlchemy URL; default SQLite file in data_dir")
    host: str = Field("127.0.0.1", description="Address `serve` binds")
    port: int = Field(8080, ge=0, le=65535, description="Port `serve` binds")
    log_level: str = Field("INFO", description="Logging level")
    sample_patients: bool = Field(
        True, description="Answer for the built-in sample patients when a request brings no data (development)")
    guideline: GuidelineConfig = Field(default_factory=GuidelineConfig)
    security: SecuritySettings = Field(default_factory=SecuritySettings)
    limits: LimitSettings = Field(default_factory=LimitSettings)
    prefetch: PrefetchSettings = Field(default_factory=PrefetchSettings)
    feedback: FeedbackSettings = Field(default_factory=FeedbackSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    smart: SmartSettings = Field(default_factory=SmartSettings)
    #: dotted field name -> "default" | "profile:<name>" | "config:<path>" | "env:<VAR>" | "override"
    origins: dict[str, str] = Field(default_factory=dict, exclude=True)

    @field_validator("log_level")
    @classmethod
    def _known_log_level(cls, value: str) -> str:
        level = str(value).strip().upper()
        if level not in LOG_LEVELS:
            raise ValueError(f"{value!r} is not a logging level ({', '.join(LOG_LEVELS)})")
        return level

    @field_validator("database_url")
    @classmethod
    def _database_url_parses(cls, value: str | None) -> str | None:
        if value is None:
            return None
        from sqlalchemy.engine import make_url  # noqa: PLC0415 - only when a URL is configured
        from sqlalchemy.exc import ArgumentError  # noqa: PLC0415

        try:
            make_url(value)
        except (ArgumentError, ValueError):
            # the value itself is not repeated: a database URL may carry a password
            raise ValueError("not a database URL (postgresql://user@host/db or sqlite:////path/to/file.db)") from None
        return value

    @model_validator(mode="after")
    def _production_is_complete(self) -> "Settings":
        if self.profile is Profile.production:
            missing = []
            if not self.security.trusted_issuers:
                missing.append("security.trusted_issuers")
            if not self.security.fhir_server_allowlist:
                missing.append("security.fhir_server_allowlist")
            if not self.database_url:
                missing.append("database_url")
            if not self.security.public_base_url and not self.security.behind_proxy:
                # else the expected JWT audience would be built from the caller's own Host header
                missing.append("security.public_base_url")
            if missing:
                needs = "; ".join(f"{PRODUCTION_NEEDS[m][0]} (e.g. {PRODUCTION_NEEDS[m][1]})" for m in missing)
                raise ValueError(f"production profile needs {needs} — or {', '.join(missing)} in the --config file")
        return self

    @model_validator(mode="after")
    def _metrics_port_is_its_own(self) -> "Settings":
        if self.metrics.port is not None and self.metrics.port == self.port:
            raise ValueError(f"metrics.port ({self.metrics.port}) must differ from port, which serves the hooks")
        return self

    @model_validator(mode="after")
    def _production_cors_is_exact(self) -> "Settings":
        if self.profile is Profile.production and "*" in self.security.cors_origins:
            raise ValueError("production profile does not allow security.cors_origins = '*': list the exact origins "
                             "of the browser apps that call the service")
        return self

    @property
    def data_path(self) -> Path:
        return Path(os.path.expanduser(self.data_dir))

    @property
    def effective_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_path / 'ivig-cds.sqlite3'}"


#: Sections whose fields are addressed without the section name in the environment.
FLAT_SECTIONS = {"guideline"}
SECTIONS: dict[str, type[BaseModel]] = {
    "guideline": GuidelineConfig,
    "security": SecuritySettings,
    "limits": LimitSettings,
    "prefetch": PrefetchSettings,
    "feedback": FeedbackSettings,
    "metrics": MetricsSettings,
    "smart": SmartSettings,
}


def env_name(dotted: str) -> str:
    """The environment variable for a dotted setting name."""
    parts = dotted.split(".")
    if len(parts) == 2 and parts[0] in FLAT_SECTIONS:
        parts = parts[1:]
    return ENV_PREFIX + "_".join(parts).upper()


def _leaf_names() -> dict[str, str]:
    """dotted name -> env var for every setting."""
    names: dict[str, str] = {}
    for name in Settings.model_fields:
        if name == "origins":
            continue
        if name in SECTIONS:
            for sub in SECTIONS[name].model_fields:
                names[f"{name}.{sub}"] = env_name(f"{name}.{sub}")
        else:
            names[name] = env_name(name)
    return names


LEAF_ENV = _leaf_names()
ENV_LEAF = {v: k for k, v in LEAF_ENV.items()}


def _profile_defaults(profile: Profile) -> dict[str, Any]:
    """Dotted defaults a profile brings; explain reports them as 'profile:<name>'."""
    loopback = ["http://localhost:*", "http://127.0.0.1:*", "http://[::1]:*"]
    if profile is Profile.development:
        return {"security.fhir_server_allowlist": ["https://*", *loopback], "security.cors_origins": ["*"]}
    if profile is Profile.sandbox:
        return {
            "security.require_token": True,
            "security.trusted_issuers": [SANDBOX_ISSUER],
            "security.fhir_server_allowlist": ["https://*", *loopback],
            "security.cors_origins": ["*"],  # the sandbox is a web page: the browser calls the service
            "sample_patients": False,
        }
    return {"security.require_token": True, "security.protect_discovery": False, "sample_patients": False}


def _coerce_env(dotted: str, raw: str) -> Any:
    """Environment text -> a value pydantic can validate (JSON for lists/objects, commas for lists)."""
    section, _, leaf = dotted.partition(".")
    model = SECTIONS.get(section) if leaf else Settings
    field = model.model_fields[leaf or section]
    annotation = str(field.annotation)
    text = raw.strip()
    if "list" in annotation or "dict" in annotation:
        if text.startswith("[") or text.startswith("{"):
            try:
                return json.loads(text)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"{env_name(dotted)} is not valid JSON: {exc.msg}") from None
        if "list" in annotation:
            return [item.strip() for item in text.split(",") if item.strip()]
    if text.lower() in ("", "none", "null") and "None" in annotation:
        return None
    return text


def _flatten(data: Mapping[str, Any], where: str) -> dict[str, Any]:
    """A TOML document -> dotted names, refusing unknown keys."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if key in SECTIONS:
            if not isinstance(value, Mapping):
                raise ConfigError(f"{where}: [{key}] must be a table")
            for sub, subvalue in value.items():
                dotted = f"{key}.{sub}"
                if dotted not in LEAF_ENV:
                    raise ConfigError(f"{where}: unknown setting {dotted}{_suggest(dotted, LEAF_ENV)}")
                flat[dotted] = subvalue
        elif key in LEAF_ENV:
            flat[key] = value
        else:
            raise ConfigError(f"{where}: unknown setting {key}{_suggest(key, LEAF_ENV)}")
    return flat


def _suggest(name: str, known) -> str:
    close = difflib.get_close_matches(name, list(known), n=1)
    return f" (did you mean {close[0]}?)" if close else ""


def _nest(flat: Mapping[str, Any]) -> dict[str, Any]:
    nested: dict[str, Any] = {}
    for dotted, value in flat.items():
        section, _, leaf = dotted.partition(".")
        if leaf:
            nested.setdefault(section, {})[leaf] = value
        else:
            nested[section] = value
    return nested


def load_settings(
    config_file: str | os.PathLike | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Build Settings; raise ConfigError with a one-line message when anything is wrong.

    ``overrides`` (dotted names) come from the command line and win over everything.
    """
    env = dict(os.environ if environ is None else environ)
    config_file = config_file or env.get("IVIG_CDS_CONFIG") or None
    layers: list[tuple[str, dict[str, Any]]] = []

    file_values: dict[str, Any] = {}
    if config_file:
        path = Path(config_file)
        try:
            file_values = _flatten(tomllib.loads(path.read_text(encoding="utf-8")), str(path))
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from None

    env_values: dict[str, Any] = {}
    for var, raw in env.items():
        if not var.startswith(ENV_PREFIX) or var in META_ENV:
            continue
        if var not in ENV_LEAF:
            raise ConfigError(f"unknown environment variable {var}{_suggest(var, ENV_LEAF)}")
        env_values[ENV_LEAF[var]] = _coerce_env(ENV_LEAF[var], raw)

    profile_raw = (overrides or {}).get("profile") or env_values.get("profile") or file_values.get("profile") or "development"
    try:
        profile = Profile(str(profile_raw))
    except ValueError:
        raise ConfigError(f"unknown profile {profile_raw!r} (development, sandbox or production)") from None

    layers.append((f"profile:{profile.value}", _profile_defaults(profile)))
    if file_values:
        layers.append((f"config:{config_file}", file_values))
    layers.append(("env", env_values))
    layers.append(("override", dict(overrides or {})))

    merged: dict[str, Any] = {}
    origins: dict[str, str] = {name: "default" for name in LEAF_ENV}
    for origin, values in layers:
        for dotted, value in values.items():
            merged[dotted] = value
            origins[dotted] = f"env:{LEAF_ENV[dotted]}" if origin == "env" else origin
    merged["profile"] = profile.value
    try:
        settings = Settings.model_validate(_nest(merged))
    except ValidationError as exc:
        raise ConfigError(_one_line(exc, origins)) from None
    return settings.model_copy(update={"origins": origins})


def _one_line(exc: ValidationError, origins: Mapping[str, str]) -> str:
    """The first validation problem as one line, naming the setting and where its value came from."""
    err = exc.errors()[0]
    loc = ".".join(str(part) for part in err["loc"] if not isinstance(part, int))
    origin = origins.get(loc)
    where = f" (from {origin})" if origin and origin != "default" else ""
    msg = err["msg"].removeprefix("Value error, ")
    more = f" (+{len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
    if not loc:  # a check of the settings as a whole (the production profile's needs)
        return f"invalid configuration: {msg}{more}"
    return f"invalid setting {loc}{where}: {msg}{more}"
