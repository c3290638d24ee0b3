"""CDS client authentication (CDS Hooks 2.0.1 'Trusting CDS Clients').

Filled in by the security issue (#7): JWT verification against trusted issuers. Until then
``Authenticator.verify`` enforces only the profile's ``require_token`` switch.
"""

from __future__ import annotations

from dataclasses import dataclass

from flask import Request

from service.errors import Unauthorized
from service.settings import Settings


@dataclass(frozen=True)
class ClientIdentity:
    """Who called: the verified issuer and tenant (None when no token was required or sent)."""

    issuer: str | None = None
    tenant: str | None = None


class Authenticator:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def verify(self, request: Request, *, discovery: bool = False) -> ClientIdentity:
        security = self.settings.security
        if discovery and not security.protect_discovery:
            return ClientIdentity()
        if not security.require_token:
            return ClientIdentity()
        raise Unauthorized()

    def close(self) -> None:
        return None
