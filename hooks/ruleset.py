"""The ruleset version: which logic, with which thresholds, produced a card.

``RULES_VERSION`` changes by hand when a rule, a value set or card wording changes meaning; the
hash part changes by itself when any threshold differs from another deployment's.
"""

from __future__ import annotations

import hashlib
import json

from hooks.config import GuidelineConfig

RULES_VERSION = "1.0.1"


def config_fingerprint(config: GuidelineConfig) -> str:
    canonical = json.dumps(config.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:8]


def ruleset_version(config: GuidelineConfig) -> str:
    """Semantic version of the rules plus a short hash of the thresholds in force, e.g. 1.0.0+cfg.1a2b3c4d."""
    return f"{RULES_VERSION}+cfg.{config_fingerprint(config)}"
