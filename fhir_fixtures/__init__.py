"""FHIR R4 scenario data, one folder per clinical situation, shipped inside the package.

Each scenario folder holds ``bundle.json`` (one patient's record as of ``REFERENCE_TODAY``),
``draft-orders.json`` when orders are signed, ``expected.json`` (the topics each hook must
answer with) and ready-to-send ``request-<hook>.json`` bodies. The folders are generated from
``fhir_fixtures/scenarios.py`` (``python -m fhir_fixtures.scenarios``).
"""

from __future__ import annotations

import json
from datetime import date
from functools import lru_cache
from importlib import resources
from typing import Any

REFERENCE_TODAY = date(2026, 11, 24)
SAMPLE_TRANSACTION = "sample-patients.transaction.json"


def _root():
    return resources.files(__name__)


@lru_cache(maxsize=None)
def scenario_names() -> tuple[str, ...]:
    return tuple(sorted(p.name for p in _root().iterdir() if p.is_dir() and p.joinpath("expected.json").is_file()))


@lru_cache(maxsize=512)
def _read(name: str, filename: str) -> str | None:
    path = _root().joinpath(name).joinpath(filename)
    return path.read_text(encoding="utf-8") if path.is_file() else None


def load_json(name: str, filename: str) -> Any | None:
    """A file of a scenario folder (a fresh copy), or None when the scenario has no such file."""
    text = _read(name, filename)
    return None if text is None else json.loads(text)


def load_scenario(name: str, today: date | None = None) -> dict[str, Any]:
    """A scenario's record, draft orders and expectations; dates moved so ``today`` is its day."""
    from fhir_fixtures.builder import shift_dates

    if name not in scenario_names():
        raise KeyError(f"no scenario named {name!r}")
    days = (today - REFERENCE_TODAY).days if today else 0
    out = {"name": name, "expected": load_json(name, "expected.json")}
    for key, filename in (("bundle", "bundle.json"), ("draftOrders", "draft-orders.json")):
        value = load_json(name, filename)
        if value is not None:
            out[key] = shift_dates(value, days)
    return out


def sample_transaction(today: date | None = None) -> dict[str, Any]:
    """The sample patients as one FHIR transaction Bundle (PUT by id), dates moved to ``today``."""
    from fhir_fixtures.builder import shift_dates

    bundle = json.loads(_root().joinpath(SAMPLE_TRANSACTION).read_text(encoding="utf-8"))
    return shift_dates(bundle, (today - REFERENCE_TODAY).days if today else 0)
