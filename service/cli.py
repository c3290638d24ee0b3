"""The ``ivig-cds`` command: serve, evaluate, report, load-fixtures, explain, retention.

Every command loads settings the same way as the service; an invalid configuration or a bad
option exits non-zero with one line naming the problem (click's UsageError / ClickException).
"""

from __future__ import annotations

import sys
from datetime import date
from pathlib import Path

import click

from service.settings import ConfigError, Profile, Settings, load_settings

PROFILES = click.Choice(["development", "sandbox", "production"])


def _settings(config: str | None, **overrides) -> Settings:
    try:
        return load_settings(config, overrides={k: v for k, v in overrides.items() if v is not None})
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


def serve_warning(settings: Settings, production: bool) -> str | None:
    """One line when what is about to run is not what the command suggests, else None."""
    if production and settings.profile is Profile.development:
        return ("--production runs the development profile under gunicorn: no tokens are checked and the built-in "
                "sample patients answer; for production set IVIG_CDS_PROFILE=production (or --profile production) "
                "with its configuration")
    if not production and settings.profile is Profile.production:
        return ("the production profile on Flask's development server, which is not for production: "
                "use `ivig-cds serve --production` (gunicorn)")
    return None


def _first_line(exc: BaseException) -> str:
    """The driver's own words (SQLAlchemy's text after them is a link to its docs), never the URL."""
    original = getattr(exc, "orig", None) or exc
    text = str(original).strip().splitlines()
    return f"{type(original).__name__}: {text[0]}" if text else type(original).__name__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="ivig-cds")
def main() -> None:
    """ivig-cds — IVIG stewardship CDS Hooks service (guideline: treatment of IgM deficiency)."""


@main.command()
@click.option("--host", default=None, help="Address to bind (default 127.0.0.1).")
@click.option("--port", type=click.IntRange(0, 65535), default=None, help="Port to bind (default 8080).")
@click.option("--config", "config", type=click.Path(dir_okay=False), default=None,
              help="TOML configuration file (also IVIG_CDS_CONFIG).")
@click.option("--profile", type=PROFILES, default=None, help="development (default), sandbox or production.")
@click.option("--production", is_flag=True, help="Run under gunicorn with deploy/gunicorn.conf.py settings.")
def serve(host: str | None, port: int | None, config: str | None, profile: str | None, production: bool) -> None:
    """Start the CDS service."""
    settings = _settings(config, host=host, port=port, profile=profile)
    warning = serve_warning(settings, production)
    if production:
        from service.ops.production import run_gunicorn

        sys.exit(run_gunicorn(settings, config, warning))
    if warning:
        click.echo(f"Warning: {warning}", err=True)

    from sqlalchemy.exc import SQLAlchemyError

    from service.app import create_app, register_shutdown, stop_on_sigterm
    from service.ops.logging import configure_logging

    configure_logging(settings.log_level)
    try:
        settings.data_path.mkdir(parents=True, exist_ok=True)
        app = create_app(settings)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    except OSError as exc:
        raise click.ClickException(f"cannot use the data directory {settings.data_path} "
                                   f"(IVIG_CDS_DATA_DIR): {exc.strerror or exc}") from None
    except SQLAlchemyError as exc:
        raise click.ClickException(f"cannot open the database (IVIG_CDS_DATABASE_URL): {_first_line(exc)}") from None
    register_shutdown(app)
    stop_on_sigterm()
    from service.ops.metrics import serve_metrics_port

    try:
        serve_metrics_port(settings)  # a listener of its own when metrics.port is set
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(
        f"ivig-cds {settings.profile.value} profile on http://{settings.host}:{settings.port} "
        f"(discovery: http://{settings.host}:{settings.port}/cds-services)",
        err=True,
    )
    app.run(host=settings.host, port=settings.port, threaded=True, use_reloader=False)


@main.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--hook", type=click.Choice(["patient-view", "order-sign", "order-select"]), default=None,
              help="Hook to evaluate (default: the request's hook, else patient-view).")
@click.option("--today", "today_", default=None, help="Evaluate as of this date, YYYY-MM-DD (default: today).")
@click.option("--config", "config", type=click.Path(dir_okay=False), default=None, help="TOML configuration file.")
@click.option("--strict", is_flag=True, default=False,
              help="Also validate every resource of the file as FHIR R4 (fhir.resources) and report what fails "
                   "under fhir_validation; exit 1 when any resource fails.")
def evaluate(file: str, hook: str | None, today_: str | None, config: str | None, strict: bool) -> None:
    """Offline: print the cards and the decision trace for a FHIR Bundle or a CDS Hooks request."""
    from service.governance.evaluate import evaluate_file

    settings = _settings(config)
    try:
        as_of = date.fromisoformat(today_) if today_ else None
    except ValueError:
        raise click.BadParameter(f"{today_!r} is not a date in YYYY-MM-DD form", param_hint="--today") from None
    try:
        output, valid = evaluate_file(Path(file), hook=hook, today=as_of, settings=settings, strict=strict)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(output)
    if not valid:
        sys.exit(1)


@main.command()
@click.option("--since", default=None, help="Only cards and feedback from this date (YYYY-MM-DD).")
@click.option("--format", "fmt", type=click.Choice(["table", "json", "csv"]), default="table")
@click.option("--config", "config", type=click.Path(dir_okay=False), default=None, help="TOML configuration file.")
def report(since: str | None, fmt: str, config: str | None) -> None:
    """Feedback analytics per service and topic: cards shown, accepted, overridden, reasons."""
    from service.storage.reporting import run_report

    settings = _settings(config)
    try:
        since_date = date.fromisoformat(since) if since else None
    except ValueError:
        raise click.BadParameter(f"{since!r} is not a date in YYYY-MM-DD form", param_hint="--since") from None
    click.echo(run_report(settings, since_date, fmt))


@main.command()
@click.option("--older-than-days", type=click.IntRange(1), default=None,
              help="Delete records older than this (default: the retention_days setting).")
@click.option("--config", "config", type=click.Path(dir_okay=False), default=None, help="TOML configuration file.")
def retention(older_than_days: int | None, config: str | None) -> None:
    """Delete issued-card and feedback records older than the retention period."""
    from service.storage.reporting import run_retention

    settings = _settings(config)
    days = older_than_days or settings.feedback.retention_days
    if not days:
        raise click.ClickException("no retention period: pass --older-than-days or set IVIG_CDS_FEEDBACK_RETENTION_DAYS")
    click.echo(run_retention(settings, days))


@main.command("load-fixtures")
@click.option("--fhir-server", required=True, help="Base URL of an R4 FHIR server.")
@click.option("--token", default=None, help="Bearer token for the FHIR server, if it needs one.")
@click.option("--today", "today_", default=None, help="Shift sample dates as if today were this date.")
def load_fixtures(fhir_server: str, token: str | None, today_: str | None) -> None:
    """Load the built-in sample patients (a FHIR transaction Bundle) into an R4 server."""
    from service.governance.load_fixtures import run_load_fixtures

    try:
        as_of = date.fromisoformat(today_) if today_ else None
    except ValueError:
        raise click.BadParameter(f"{today_!r} is not a date in YYYY-MM-DD form", param_hint="--today") from None
    click.echo(run_load_fixtures(fhir_server, token=token, today=as_of))


@main.command()
@click.option("--format", "fmt", type=click.Choice(["markdown", "json"]), default="markdown")
@click.option("--config", "config", type=click.Path(dir_okay=False), default=None, help="TOML configuration file.")
def explain(fmt: str, config: str | None) -> None:
    """The rules, thresholds (value in force and origin) and value sets actually loaded."""
    from service.governance.explain import render_explain

    settings = _settings(config)
    click.echo(render_explain(settings, fmt))


if __name__ == "__main__":  # pragma: no cover
    main()
