"""``ivig-cds load-fixtures``: the sample patients into an R4 FHIR server, dated to today.

One POST of the transaction Bundle (``fhir_fixtures/sample-patients.transaction.json``, every
entry a PUT by id, so loading twice updates rather than duplicates) to the server's base URL.
Every failure is one line that says what to do; the token is sent only as a bearer header to
the URL given and never printed.
"""

from __future__ import annotations

from collections import Counter
from datetime import date, datetime, timezone
from typing import Any
from urllib.parse import urlsplit

import click
import orjson
import requests

import fhir_fixtures

FHIR_JSON = "application/fhir+json"
#: (connect, read): a public test server may take a while to process 200+ resources.
TIMEOUT = (10.0, 120.0)
MAX_DIAGNOSTICS = 200


class LoadFixturesError(click.ClickException):
    """A failed load; click prints it as one line and exits 1."""


def _check_url(fhir_server: str) -> str:
    try:
        parts = urlsplit(fhir_server.strip())
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise LoadFixturesError(f"--fhir-server must be an http(s) URL of a FHIR R4 base, got {fhir_server!r}")
    if parts.username or parts.password:
        raise LoadFixturesError("--fhir-server must not carry credentials in the URL; use --token")
    if parts.query or parts.fragment:
        raise LoadFixturesError("--fhir-server must be the FHIR base URL, without query or fragment")
    return fhir_server.strip().rstrip("/")


def _outcome_text(body: Any) -> str:
    """The first diagnostics of an OperationOutcome, shortened to one line."""
    if not isinstance(body, dict) or body.get("resourceType") != "OperationOutcome":
        return ""
    for issue in body.get("issue") or []:
        if not isinstance(issue, dict):
            continue
        text = issue.get("diagnostics") or (issue.get("details") or {}).get("text") or issue.get("code")
        if text:
            text = " ".join(str(text).split())
            return text[:MAX_DIAGNOSTICS] + ("…" if len(text) > MAX_DIAGNOSTICS else "")
    return ""


def _first_entry_problem(entries: list[Any]) -> str:
    for e in entries:
        response = e.get("response") if isinstance(e, dict) else None
        if isinstance(response, dict) and not str(response.get("status", "")).startswith("2"):
            return _outcome_text(response.get("outcome")) or str(response.get("status"))
    return ""


def _patients(bundle: dict[str, Any]) -> list[str]:
    return [e["resource"]["id"] for e in bundle.get("entry", []) if e.get("resource", {}).get("resourceType") == "Patient"]


def run_load_fixtures(fhir_server: str, token: str | None = None, today: date | None = None) -> str:
    """POST the sample patients as a transaction; return a one-line summary or raise LoadFixturesError."""
    base = _check_url(fhir_server)
    as_of = today or datetime.now(timezone.utc).date()
    bundle = fhir_fixtures.sample_transaction(as_of)
    headers = {"Content-Type": FHIR_JSON, "Accept": FHIR_JSON}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    session = requests.Session()
    session.trust_env = False  # the URL given is the only place this goes: no proxy or .netrc
    try:
        resp = session.post(base, data=orjson.dumps(bundle), headers=headers, timeout=TIMEOUT, allow_redirects=False)
    except requests.Timeout:
        raise LoadFixturesError(f"{base} did not answer within {TIMEOUT[1]:g} s") from None
    except requests.ConnectionError:
        raise LoadFixturesError(f"cannot connect to {base}: is the FHIR server running and the URL right?") from None
    except requests.RequestException as exc:
        raise LoadFixturesError(f"request to {base} failed: {type(exc).__name__}") from None
    finally:
        session.close()
    try:
        body = resp.json()
    except ValueError:
        body = None
    if resp.status_code in (401, 403):
        hint = "pass a valid --token" if token else "it needs authorization: pass --token"
        raise LoadFixturesError(f"{base} refused the transaction (HTTP {resp.status_code}): {hint}")
    if 300 <= resp.status_code < 400:
        raise LoadFixturesError(f"{base} answered with a redirect (HTTP {resp.status_code}) to "
                                f"{resp.headers.get('Location', '?')}: use the FHIR base URL it points to")
    if resp.status_code >= 400:
        detail = _outcome_text(body)
        hint = " (is this the FHIR base URL of an R4 server?)" if resp.status_code in (404, 405) else ""
        raise LoadFixturesError(f"{base} rejected the transaction: HTTP {resp.status_code}"
                                + (f": {detail}" if detail else "") + hint)
    if not isinstance(body, dict) or body.get("resourceType") != "Bundle":
        raise LoadFixturesError(f"{base} answered HTTP {resp.status_code} but not with a FHIR Bundle: "
                                "is this the base URL of a FHIR R4 server?")
    entries = body.get("entry") or []
    sent = len(bundle["entry"])
    statuses = Counter(str((e.get("response") or {}).get("status", "")).split(" ")[0] for e in entries
                       if isinstance(e, dict))
    failed = sum(n for code, n in statuses.items() if not code.startswith("2"))
    if not entries:
        raise LoadFixturesError(f"{base} answered HTTP {resp.status_code} without a transaction-response: "
                                "nothing can be said about what it stored")
    if failed or len(entries) != sent:
        raise LoadFixturesError(f"{base} did not store every resource: {failed or sent - len(entries)} of {sent} "
                                f"failed (statuses {dict(statuses)})" + (f": {_first_entry_problem(entries)}" if failed else ""))
    created = statuses.get("201", 0)
    patients = _patients(bundle)
    return (f"loaded {len(patients)} sample patients ({sent} resources: {created} created, {sent - created} updated) "
            f"into {base}, dated to {as_of.isoformat()}: {', '.join(patients)}")
