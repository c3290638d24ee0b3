"""Which FHIR servers the service may contact (SSRF protection).

A pattern is ``scheme://host[:port][/path-prefix]``; ``host`` may be ``*`` (any host) or
``*.example.org`` (that domain's subdomains), ``port`` may be ``*``. Without a port the
scheme's default port is meant. User info in a URL (``https://user@host``) is never allowed.
"""

from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatchcase
from urllib.parse import urlsplit

DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True)
class _Pattern:
    scheme: str
    host: str
    port: str  # "*" or digits
    path: str


def _parse_pattern(pattern: str) -> _Pattern | None:
    scheme, sep, rest = pattern.partition("://")
    if not sep or scheme not in DEFAULT_PORTS:
        return None
    hostport, _, path = rest.partition("/")
    if hostport.startswith("["):
        host, _, tail = hostport[1:].partition("]")
        port = tail[1:] if tail.startswith(":") else ""
    else:
        host, _, port = hostport.partition(":")
    port = port or str(DEFAULT_PORTS[scheme])
    return _Pattern(scheme, host.lower(), port, "/" + path if path else "")


def fhir_server_allowed(url: str, patterns: list[str]) -> bool:
    """Whether ``url`` matches one of ``patterns``."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return False
    if parts.scheme not in DEFAULT_PORTS or not parts.hostname or parts.username or parts.password:
        return False
    host = parts.hostname.lower()
    port = port or DEFAULT_PORTS[parts.scheme]
    for raw in patterns:
        pattern = _parse_pattern(raw)
        if pattern is None or pattern.scheme != parts.scheme:
            continue
        if pattern.host != "*" and not fnmatchcase(host, pattern.host):
            continue
        if pattern.port != "*" and pattern.port != str(port):
            continue
        if pattern.path and not (parts.path == pattern.path or parts.path.startswith(pattern.path.rstrip("/") + "/")):
            continue
        return True
    return False
