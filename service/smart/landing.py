"""``GET /``: what this service is, for the person who opens its address in a browser first.

It names the discovery URL an EHR (or the CDS Hooks sandbox) is given, the services behind it,
the sample patients' trend pages and the operational endpoints. Everything on it is read from
the running app (services, profile, ruleset), so it says what this instance does. The page has
the SMART page's headers: no script at all, the service's own stylesheet only.
"""

from __future__ import annotations

from flask import Blueprint, Flask, Response, render_template

from service.protocol.cds import base_url
from service.smart.views import ASSETS, _page_headers, scenarios
from service.state import state

bp = Blueprint("landing", __name__, template_folder=str(ASSETS))

#: What each profile means for a caller, in one line.
PROFILE_NOTES = {
    "development": "no token needed; a request without data about a built-in sample patient is answered from "
                   "the sample records (dated relative to today)",
    "sandbox": "for the public CDS Hooks sandbox: every hook and feedback call needs the sandbox's signed JWT",
    "production": "every hook and feedback call needs a JWT from a trusted issuer",
}


@bp.get("/")
def index():
    st = state()
    base = base_url()
    html = render_template(
        "landing.html", base=base, discovery=f"{base}/cds-services", services=list(st.services.values()),
        profile=st.settings.profile.value, profile_note=PROFILE_NOTES.get(st.settings.profile.value, ""),
        ruleset=st.ruleset_version, samples=[s for s in scenarios() if s["sample"]],
        require_token=st.settings.security.require_token)
    return _page_headers(Response(html, mimetype="text/html"))


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)
