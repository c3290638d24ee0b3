"""``ivig-cds evaluate``: run a hook offline on a file and print cards plus the decision trace."""

from __future__ import annotations

from datetime import date
from pathlib import Path

from service.settings import Settings


def evaluate_file(path: Path, *, hook: str | None, today: date | None, settings: Settings) -> str:
    raise ValueError("evaluate is not available yet")
