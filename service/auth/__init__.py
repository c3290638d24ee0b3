"""CDS client authentication (CDS Hooks 2.0.1 "Trusting CDS Clients").

- tokens.py: verifying the bearer JWT of a hook or feedback call (``Authenticator``).
- keys.py: the trusted issuers' public keys: pinned sets, JWK Set URLs, allowlisted ``jku``.
- replay.py: where seen ``jti`` values are kept (database, Redis or memory).
- sandbox-jwks.json: the public CDS Hooks sandbox's keys, pinned (``package:sandbox-jwks.json``).

A service package: imports storage/db.py (the replay table), base modules and hooks/, never a
view or the app state.
"""
