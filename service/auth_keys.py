"""Trusted-issuer definitions shipped with the package (no network needed to trust them)."""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

SANDBOX_ISS = "https://sandbox.cds-hooks.org"
SANDBOX_JKU = "https://sandbox.cds-hooks.org/.well-known/jwks.json"

#: The public CDS Hooks sandbox: ES384, its JWKS pinned from the package.
SANDBOX_ISSUER: dict[str, Any] = {
    "iss": SANDBOX_ISS,
    "jwks_file": "package:sandbox-jwks.json",
    "jku_allowlist": [SANDBOX_JKU],
    "algorithms": ["ES384"],
}


def packaged_jwks(name: str) -> dict[str, Any]:
    """A JWK Set file from service/data/, read from the installed package."""
    return json.loads(resources.files("service.data").joinpath(name).read_text(encoding="utf-8"))
