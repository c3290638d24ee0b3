"""The one place where a failure becomes an HTTP answer.

Code anywhere in service/ raises a ``CdsError`` subclass; ``register_error_handlers`` turns it
into a JSON body ``{"error": <short code>, "message": <what is wrong>}``. Anything unexpected
is logged (without request data) and answered 500 with no detail. hooks/ never raises these:
the rules have no notion of HTTP.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from flask import Flask, jsonify
from werkzeug.exceptions import HTTPException

log = logging.getLogger("ivig_cds.errors")


class CdsError(Exception):
    """A request that cannot be answered with cards; ``status`` says why in HTTP terms."""

    status = 400
    code = "bad_request"

    def __init__(self, message: str, *, details: list[str] | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.message = message
        self.details = details or []
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        out: dict[str, Any] = {"error": self.code, "message": self.message}
        if self.details:
            out["details"] = self.details
        return out


class BadRequest(CdsError):
    status, code = 400, "bad_request"


class Unauthorized(CdsError):
    """Authentication failed. The message stays generic: the reason goes to the log only."""

    status, code = 401, "unauthorized"

    def __init__(self, message: str = "a valid bearer token is required", **kw):
        kw.setdefault("headers", {"WWW-Authenticate": 'Bearer realm="ivig-cds"'})
        super().__init__(message, **kw)


class Forbidden(CdsError):
    status, code = 403, "forbidden"


class NotFound(CdsError):
    status, code = 404, "not_found"


class PayloadTooLarge(CdsError):
    status, code = 413, "payload_too_large"


class UnsupportedMediaType(CdsError):
    status, code = 415, "unsupported_media_type"


class PreconditionFailed(CdsError):
    """Required prefetch data is missing and cannot be fetched (CDS Hooks 2.0.1: 412)."""

    status, code = 412, "precondition_failed"


class BadGateway(CdsError):
    """The EHR's FHIR server failed and the configured policy is to fail the call."""

    status, code = 502, "fhir_server_failed"


class TooManyRequests(CdsError):
    status, code = 429, "too_many_requests"


class ServiceUnavailable(CdsError):
    status, code = 503, "unavailable"


def error_response(exc: CdsError):
    resp = jsonify(exc.body())
    resp.status_code = exc.status
    for key, value in exc.headers.items():
        resp.headers[key] = value
    return resp


def register_error_handlers(app: Flask) -> None:
    """Map our errors, werkzeug's HTTP errors and anything unexpected to JSON answers."""

    @app.errorhandler(CdsError)
    def _cds_error(exc: CdsError):
        return error_response(exc)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException):
        status = exc.code or 500
        messages = {
            404: "no such endpoint",
            405: "method not allowed here",
            413: "request body too large",
            400: "malformed request",
        }
        resp = jsonify({"error": exc.name.lower().replace(" ", "_"), "message": messages.get(status, exc.name)})
        resp.status_code = status
        if status == 405 and getattr(exc, "valid_methods", None):
            resp.headers["Allow"] = ", ".join(exc.valid_methods)
        return resp

    @app.after_request
    def _json_redirect(response):
        # Werkzeug answers a URL it tidies (a doubled slash, a missing trailing one) with a redirect
        # whose body is HTML, and Flask passes routing redirects by the error handlers: the body is
        # made JSON here, like every other answer, and says where the endpoint is.
        if not 300 <= response.status_code < 400:
            return response  # every answer passes here: the status first, the headers only for a redirect
        location = response.headers.get("Location")
        if location and response.mimetype == "text/html":
            response.set_data(json.dumps({"error": "moved", "message": f"this endpoint is at {location}"}))
            response.mimetype = "application/json"
        return response

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):
        # No request data in this log line: it may carry patient identifiers.
        log.error("unhandled error %s", type(exc).__name__, exc_info=exc)
        resp = jsonify({"error": "internal_error", "message": "the service failed to process the request"})
        resp.status_code = 500
        return resp
