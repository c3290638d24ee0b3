"""``GET /metrics`` on the service's own port, and the observation of every request of the app.

On the service's port a scrape is answered only where that is safe: with ``metrics.token`` set,
to a scrape that carries it; without a token, in every profile but production (its place for
metrics is the metrics port, service/ops/metrics.py). The figures themselves and their
exposition are service/ops/metrics.py's.
"""

from __future__ import annotations

from flask import Blueprint, Flask, Response, request

from service.errors import NotFound, TooManyRequests, Unauthorized
from service.ops.metrics import REALM, observe_requests, render, token_matches
from service.settings import Profile
from service.state import state

bp = Blueprint("metrics", __name__)

_ELSEWHERE = ("the production profile serves metrics on the metrics port (metrics.port), or here to scrapes "
              "that carry the bearer token of metrics.token")


@bp.get("/metrics")
def metrics_view() -> Response:
    """Prometheus text format (or OpenMetrics when the scraper asks for it).

    On the service's own port: with ``metrics.token`` set, only for a scrape that carries it; in
    the production profile without a token, not at all (the metrics port serves them).
    """
    settings = state().settings
    token = settings.metrics.token
    if token is not None:
        if not token_matches(request.environ.get("HTTP_AUTHORIZATION"), token):
            raise Unauthorized("a valid bearer token is required for metrics", headers={"WWW-Authenticate": REALM})
    elif settings.profile is Profile.production:
        raise NotFound(_ELSEWHERE)
    rendered = render(request.environ.get("HTTP_ACCEPT", ""))
    if rendered is None:
        raise TooManyRequests("another scrape is being answered; retry in a moment", headers={"Retry-After": "1"})
    body, content_type = rendered
    return Response(body, status=200, headers={"Content-Type": content_type, "Cache-Control": "no-store"})


def init_app(app: Flask) -> None:
    """Observe every request of ``app`` (creating the process's metrics once), and serve ``/metrics``."""
    observe_requests(app)
    app.register_blueprint(bp)
