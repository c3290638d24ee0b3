"""``GET /analytics/overrides``: the feedback report as JSON, protected like the CDS endpoints.

Same numbers as ``ivig-cds report --format json``. ``?since=YYYY-MM-DD`` limits the period.
"""

from __future__ import annotations

from datetime import date

from flask import Blueprint, Flask, request
from sqlalchemy.exc import SQLAlchemyError

from service.errors import BadRequest, ServiceUnavailable
from service.protocol.cds import json_response
from service.state import state

bp = Blueprint("analytics", __name__)


@bp.get("/analytics/overrides")
def overrides():
    st = state()
    st.authenticator.verify(request)
    since_text = request.args.get("since")
    try:
        since = date.fromisoformat(since_text) if since_text else None
    except ValueError:
        raise BadRequest(f"since: {since_text!r} is not a date in YYYY-MM-DD form") from None
    try:
        report = st.store.report(since)
    except SQLAlchemyError:
        raise ServiceUnavailable("the feedback database is not available") from None
    return json_response(report)


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)
