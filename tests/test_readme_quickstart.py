"""The README's quick start stays true: its requests, sent to a real server whose clock reads
today, in a year and in three years, answer with the card topics the README promises.

Why the clock moves: the quick start must not go stale. Its requests name built-in sample patients
(dated relative to the service's today) and carry no dated data of their own.
"""

from __future__ import annotations

import json
import re
import shlex
from datetime import datetime, timedelta, timezone

import pytest
import requests
from click.testing import CliRunner

import service.protocol.cds
from service.app import create_app
from service.cli import main
from service.storage.feedback import MemoryFeedbackStore
from tests.conftest import ROOT, make_settings
from tests.servers import live_app

README = (ROOT / "README.md").read_text(encoding="utf-8")


def _quick_start_commands() -> list[tuple[str, list[str]]]:
    """(the topic its comment promises, or "", the command's words up to a pipe) per command of the block."""
    block = README.split("## Quick start", 1)[1].split("```sh\n", 1)[1].split("```", 1)[0]
    commands, promise, pending = [], "", ""
    for line in block.splitlines():
        if not pending and line.lstrip().startswith("#"):
            found = re.search(r'-> "([a-z-]+)"', line)
            promise = found.group(1) if found else promise
            continue
        pending += line + "\n"
        if line.rstrip().endswith("\\"):
            continue
        try:
            words = shlex.split(pending.replace("\\\n", " "), comments=True)
        except ValueError:  # a quote still open: the command goes on on the next line
            continue
        if words:
            commands.append((promise, words[:words.index("|")] if "|" in words else words))
        pending, promise = "", ""
    return commands


def test_the_quick_start_lists_the_requests_it_promises():
    commands = _quick_start_commands()
    curls = [w for _, w in commands if w[0] == "curl"]
    assert len(curls) == 3 and any(w[0] == "ivig-cds" for _, w in commands)
    assert [p for p, w in commands if w[0] == "curl" and "-d" in w] == ["ivig-not-indicated", "hyper-igm-pattern"]


@pytest.mark.parametrize("days_ahead", [0, 365, 3 * 365 + 17])
def test_quick_start_requests_answer_as_promised_on_any_day(tmp_path, monkeypatch, days_ahead):
    run_date = datetime.now(timezone.utc).date() + timedelta(days=days_ahead)
    monkeypatch.setattr(service.protocol.cds, "today", lambda: run_date)
    app = create_app(make_settings(tmp_path), store=MemoryFeedbackStore())
    try:
        with live_app(app) as base:
            for promise, words in _quick_start_commands():
                if words[0] != "curl":
                    continue
                url = next(w for w in words if w.startswith("http://127.0.0.1:8080")).replace(
                    "http://127.0.0.1:8080", base)
                if "-d" not in words:
                    assert len(requests.get(url, timeout=10).json()["services"]) == 3
                    continue
                body = json.loads(words[words.index("-d") + 1])
                r = requests.post(url, json=body, timeout=30)
                assert r.status_code == 200, r.text
                assert [c["source"]["topic"]["code"] for c in r.json()["cards"]] == [promise], (run_date, url)
    finally:
        app.extensions["ivig_cds"].close()


def test_quick_start_evaluate_line_answers_as_promised(monkeypatch):
    promise, words = next((p, w) for p, w in _quick_start_commands() if w[0] == "ivig-cds")
    assert words[1] == "evaluate" and "--today" in words
    monkeypatch.chdir(ROOT)
    result = CliRunner().invoke(main, words[1:], env={"IVIG_CDS_CONFIG": None})
    assert result.exit_code == 0, result.output
    assert [c["source"]["topic"]["code"] for c in json.loads(result.output)["cards"]] == [promise]
