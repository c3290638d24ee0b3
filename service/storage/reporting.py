"""``ivig-cds report`` and ``ivig-cds retention``: the override picture for stewards, and cleanup.

The numbers come from ``SqlFeedbackStore.report`` (the same dict ``GET /analytics/overrides``
answers with); this module only renders them as a table, JSON or CSV. Clinicians' free-text
comments are never printed: they may name a patient. Only how many feedback items had one.
"""

from __future__ import annotations

import csv
import io
from datetime import date, datetime, timedelta, timezone
from typing import Any

import click
import orjson
from sqlalchemy.exc import SQLAlchemyError

from service.settings import Settings

FORMATS = ("table", "json", "csv")
CSV_COLUMNS = ("service", "topic", "measure", "rank", "code", "system", "display", "count", "of")


def _open(settings: Settings):
    from service.storage.sql_store import open_store

    try:
        return open_store(settings)
    except SQLAlchemyError as exc:  # the URL is fine but the database is not there
        raise click.ClickException(f"cannot open the feedback database: {type(exc).__name__}") from None


def run_report(settings: Settings, since: date | None, fmt: str) -> str:
    """The report as text in ``fmt`` (table, json or csv)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}")
    store = _open(settings)
    try:
        data = store.report(since)
    except SQLAlchemyError as exc:
        raise click.ClickException(f"cannot read the feedback database: {type(exc).__name__}") from None
    finally:
        store.close()
    if fmt == "json":
        return orjson.dumps(data, option=orjson.OPT_INDENT_2).decode()
    if fmt == "csv":
        return render_csv(data)
    return render_table(data)


def run_retention(settings: Settings, days: int) -> str:
    """Delete cards issued and feedback received more than ``days`` days ago."""
    if days < 1:
        raise click.ClickException("the retention period must be at least one day")
    cutoff = datetime.now(timezone.utc) - timedelta(days=days)
    store = _open(settings)
    try:
        cards, items = store.purge(cutoff)
    except SQLAlchemyError as exc:
        raise click.ClickException(f"cannot delete from the feedback database: {type(exc).__name__}") from None
    finally:
        store.close()
    return (f"deleted {cards} issued-card record(s) and {items} feedback item(s) older than {days} day(s) "
            f"(before {cutoff.isoformat(timespec='seconds')})")


def _topic_name(row: dict[str, Any]) -> str:
    return row["topic"] if row["topic"] is not None else "(unknown card)"


def _pct(rate: float | None) -> str:
    return "-" if rate is None else f"{rate * 100:.0f}%"


def render_table(data: dict[str, Any]) -> str:
    """Fixed-width text for a terminal: one line per service and topic, reasons and suggestions under it."""
    since = data["since"][:10] if data["since"] else "the beginning"
    lines = [f"IVIG CDS feedback since {since} (generated {data['generatedAt']})", ""]
    rows = data["topics"]
    if not rows:
        lines.append("No cards issued and no feedback received in this period.")
        return "\n".join(lines)
    header = ("service", "topic", "shown", "feedback", "accepted", "overridden", "accept%", "override%")
    table = [header] + [
        (r["service"], _topic_name(r), str(r["cardsShown"]), str(r["feedback"]), str(r["accepted"]),
         str(r["overridden"]), _pct(r["acceptanceRate"]), _pct(r["overrideRate"]))
        for r in rows
    ]
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]

    def fmt(cells) -> str:
        return "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    lines.append(fmt(header))
    lines.append("  ".join("-" * w for w in widths))
    for cells, r in zip(table[1:], rows):
        lines.append(fmt(cells))
        for reason in r["overrideReasons"]:
            code = reason["code"] or ""
            label = reason["display"] or code
            shown = f"{label} [{code}]" if code and label != code else label
            lines.append(f"    override reason #{reason['rank']}: {shown} — {reason['count']}")
        for s in r["suggestions"]:
            lines.append(f"    suggestion \"{s['label']}\": accepted {s['accepted']} of {s['offered']} offered "
                         f"({_pct(s['acceptanceRate'])})")
    if data.get("rulesetVersions"):
        lines += ["", "By ruleset version (the logic that produced the cards):"]
        for v in data["rulesetVersions"]:
            lines.append(f"    {v['rulesetVersion']}: {v['cardsShown']} shown, {v['accepted']} accepted, "
                         f"{v['overridden']} overridden ({_pct(v['overrideRate'])} overridden)")
    t = data["totals"]
    lines += ["", f"Total: {t['cardsShown']} card(s) shown, {t['feedback']} feedback item(s): "
                  f"{t['accepted']} accepted, {t['overridden']} overridden; "
                  f"{t['unknownCardFeedback']} about cards this service has no record of."]
    return "\n".join(lines)


def render_csv(data: dict[str, Any]) -> str:
    """Long ("tidy") CSV: one measure per line, easy to pivot in a spreadsheet."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for r in data["topics"]:
        base = (r["service"], r["topic"] or "")
        for measure in ("cardsShown", "feedback", "accepted", "overridden"):
            writer.writerow((*base, _snake(measure), "", "", "", "", r[measure], ""))
        for reason in r["overrideReasons"]:
            writer.writerow((*base, "override_reason", reason["rank"], reason["code"] or "", reason["system"] or "",
                             reason["display"] or "", reason["count"], r["overridden"]))
        for s in r["suggestions"]:
            writer.writerow((*base, "suggestion_accepted", "", "", "", s["label"], s["accepted"], s["offered"]))
    for v in data.get("rulesetVersions", []):
        for measure in ("cardsShown", "accepted", "overridden"):
            writer.writerow(("", "", f"ruleset_{_snake(measure)}", "", v["rulesetVersion"], "", "", v[measure], ""))
    return out.getvalue().rstrip("\n")


def _snake(name: str) -> str:
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in name)
