"""CORS for browser clients such as the CDS Hooks sandbox: preflight answered, headers on every reply.

Which origins are allowed is ``security.cors_origins``: exact origins, or ``*`` for any. The
development and sandbox profiles allow any (the sandbox is a web page, so the clinician's
browser is the caller); production allows none unless the deployment lists them, and refuses
``*`` (service/settings.py). An EHR calls from its server, without an ``Origin``: CORS does not
apply to it. Private Network Access (a public page calling a service on the intranet or
localhost) is granted only to an allowed origin.
"""

from __future__ import annotations

from flask import Flask, request

ALLOW_METHODS = "GET, POST, OPTIONS"
ALLOW_HEADERS = "Authorization, Content-Type, X-Request-ID"


def init_app(app: Flask, allow_origins: list[str]) -> None:
    allow_any = "*" in allow_origins
    exact = frozenset(allow_origins)

    @app.before_request
    def _preflight():
        # from the WSGI environ: one context lookup (an attribute read through the proxy costs
        # several), and no headers view for every call
        environ = request._get_current_object().environ
        if environ.get("REQUEST_METHOD") == "OPTIONS" and environ.get("HTTP_ACCESS_CONTROL_REQUEST_METHOD"):
            response = app.make_default_options_response()
            response.status_code = 204
            return response
        return None

    @app.after_request
    def _cors_headers(response):
        environ = request._get_current_object().environ
        origin = environ.get("HTTP_ORIGIN")
        if origin is None:  # not a browser's cross-origin call (an EHR's server): CORS does not apply
            return response
        if not allow_any:
            response.headers.add("Vary", "Origin")  # the answer differs by origin: caches must know
            if origin not in exact:
                return response
        if environ.get("HTTP_ACCESS_CONTROL_REQUEST_PRIVATE_NETWORK") == "true":
            # Private Network Access: a public https page (the CDS Hooks sandbox) calling a
            # service on localhost or the intranet asks first; an allowed origin may.
            response.headers["Access-Control-Allow-Private-Network"] = "true"
        response.headers["Access-Control-Allow-Origin"] = "*" if allow_any else origin
        response.headers["Access-Control-Allow-Methods"] = ALLOW_METHODS
        response.headers["Access-Control-Allow-Headers"] = ALLOW_HEADERS
        response.headers["Access-Control-Expose-Headers"] = "X-Request-ID, WWW-Authenticate"
        response.headers["Access-Control-Max-Age"] = "600"
        return response
