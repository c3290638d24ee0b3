"""The floor: what the web stack alone costs for a hook call, run under the service's gunicorn settings.

A bare Flask app whose hook endpoint reads the body, parses it as the service does (orjson) and
answers ``{"cards": []}``. The benchmark serves it with the same command and configuration as the
service (``gunicorn -c python:service.ops.gunicorn_conf bench.floor_app:app``), so the difference
between the two is the service's own work: validation, rules, cards, logging, metrics.
"""

from __future__ import annotations

import orjson
from flask import Flask, Response, request

app = Flask("ivig_cds_floor")
_EMPTY = orjson.dumps({"cards": []})


@app.post("/cds-services/<service_id>")
def invoke(service_id: str) -> Response:
    """Parse the body (the least any service must do) and answer with no cards."""
    body = orjson.loads(request.get_data())
    if not isinstance(body, dict):
        return Response(b'{"error": "not an object"}', status=400, mimetype="application/json")
    return Response(_EMPTY, mimetype="application/json")


@app.get("/healthz")
def healthz() -> Response:
    return Response(b'{"status": "ok"}', mimetype="application/json")
