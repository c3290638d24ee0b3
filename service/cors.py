"""CORS for browser clients such as the CDS Hooks sandbox: preflight answered, headers on every reply."""

from __future__ import annotations

from flask import Flask, request

ALLOW_METHODS = "GET, POST, OPTIONS"
ALLOW_HEADERS = "Authorization, Content-Type, X-Request-ID"


def init_app(app: Flask, allow_origins: list[str]) -> None:
    allow_any = "*" in allow_origins

    def _origin_allowed(origin: str | None) -> str | None:
        if allow_any:
            return "*"
        return origin if origin and origin in allow_origins else None

    @app.before_request
    def _preflight():
        # from the WSGI environ: one context lookup, and no headers view for every call
        environ = request.environ
        if environ.get("REQUEST_METHOD") == "OPTIONS" and environ.get("HTTP_ACCESS_CONTROL_REQUEST_METHOD"):
            response = app.make_default_options_response()
            response.status_code = 204
            return response
        return None

    @app.after_request
    def _cors_headers(response):
        origin = request.environ.get("HTTP_ORIGIN")
        if origin is None:  # not a browser's cross-origin call (an EHR's server): CORS does not apply
            return response
        allowed = _origin_allowed(origin)
        if allowed and request.headers.get("Access-Control-Request-Private-Network") == "true":
            # Private Network Access: a public https page (the CDS Hooks sandbox) calling a
            # service on localhost or the intranet asks first; the service is meant to be called.
            response.headers["Access-Control-Allow-Private-Network"] = "true"
        if allowed:
            response.headers["Access-Control-Allow-Origin"] = allowed
            response.headers["Access-Control-Allow-Methods"] = ALLOW_METHODS
            response.headers["Access-Control-Allow-Headers"] = ALLOW_HEADERS
            response.headers["Access-Control-Expose-Headers"] = "X-Request-ID, WWW-Authenticate"
            response.headers["Access-Control-Max-Age"] = "600"
            if allowed != "*":
                response.headers.add("Vary", "Origin")
        return response
