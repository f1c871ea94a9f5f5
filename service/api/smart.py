"""The SMART app that records the twitching assessment: its launch page, its app page, its client library.

Everything OAuth happens in the browser with the SMART project's own client (fhirclient, vendored in
service/ui/static/vendor/). The service sees the access token only in POST /smart/cards
(service/api/smart_cards.py), which reads the record with it and never logs or keeps it.
"""

from __future__ import annotations

from pathlib import Path
from typing import cast

import orjson
from flask import Blueprint, Response, current_app, render_template, request

from service.api.ui import STATIC_DIR
from service.cdshooks.prefetch import prefetch_templates
from service.cdshooks.smart import SmartSettings
from service.errors import BadRequest, Forbidden, NotFound, ServiceError
from service.fhir.questionnaire import questionnaire_url

bp = Blueprint("smart", __name__, template_folder=str(Path(__file__).resolve().parent.parent / "ui"))
VENDOR_DIR = STATIC_DIR / "vendor"
# The vendored files that may be served: a URL names a key, never a path.
VENDOR_FILES = {"fhir-client.pure.min.js": "text/javascript"}
# The launch URL carries exactly these; fhirclient would also obey clientId, patientId or
# fhirServiceUrl in the page's URL (a fake launch that skips authorization), so any other is refused.
LAUNCH_PARAMS = frozenset({"iss", "launch"})
NOT_CONFIGURED = "This service has no SMART app configured (SMART_CLIENT_ID is empty)."


def _settings() -> SmartSettings | None:
    return cast(SmartSettings | None, current_app.extensions.get("smart"))


def content_security_policy(settings: SmartSettings | None) -> str:
    """The card viewer's strict policy, except that the page may call the allowed FHIR servers."""
    connect = " ".join(["'self'", *(settings.connect_sources() if settings else ())])
    return (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self';"
        f" connect-src {connect}; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
    )


@bp.after_request
def _secure_headers(response: Response) -> Response:
    response.headers.setdefault("Content-Security-Policy", content_security_policy(_settings()))
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    # The redirect URI carries the authorization code: no page may pass it on as a Referer.
    response.headers.setdefault("Referrer-Policy", "no-referrer")
    response.headers["Cache-Control"] = "no-store"
    return response


def _page(template: str, status: int = 200, **values: str) -> Response:
    html = render_template(f"templates/smart/{template}", **values)
    return Response(html, status=status, mimetype="text/html")


def _refused(error: ServiceError, hint: str) -> Response:
    # A browser (the clinician, sent by the EHR) gets a page that says why; any other client gets
    # the OperationOutcome every other endpoint answers with.
    best = request.accept_mimetypes.best_match(["application/fhir+json", "application/json", "text/html"])
    if best != "text/html":
        raise error
    return _page("refused.html", error.status, title="launch refused", why=str(error), hint=hint)


def _not_configured() -> Response:
    return _refused(
        NotFound.single(NOT_CONFIGURED), "Ask the service's operator to register the app (docs/smart-app.md)."
    )


@bp.get("/smart/launch")
def launch() -> Response:
    """EHR launch: check `iss` against SMART_ALLOWED_ISSUERS, then hand over to fhirclient's authorize."""
    settings = _settings()
    if settings is None:
        return _not_configured()
    unexpected = sorted(set(request.args) - LAUNCH_PARAMS)
    if unexpected:
        return _refused(
            BadRequest.single(
                f"The launch URL carries parameters this app does not take: {', '.join(unexpected)}.",
                unexpected[0],
            ),
            "An EHR launch sends only iss and launch.",
        )
    iss, launch_id = request.args.get("iss", ""), request.args.get("launch", "")
    if not iss or not launch_id:
        return _refused(
            BadRequest.single(
                "The launch URL must carry both iss (the EHR's FHIR server) and launch (the launch context).",
                "iss" if not iss else "launch",
            ),
            "Open the app from the EHR (the card's link), not by typing its address.",
        )
    refusal = settings.issuer_refusal(iss)
    if refusal is not None:
        return _refused(
            Forbidden.single(f"This app may not be launched from that EHR: {refusal}.", "iss"),
            "Nothing was read or written. The service's operator can add the EHR's FHIR base URL to"
            " SMART_ALLOWED_ISSUERS.",
        )
    return _page(
        "launch.html",
        title="connecting",
        client_id=settings.client_id,
        scope=settings.scopes,
        redirect_uri=settings.redirect_uri,
        iss=iss,
        launch=launch_id,
    )


@bp.get("/smart/app")
def app_page() -> Response:
    """The redirect URI: fhirclient completes authorization here, then the form is shown."""
    settings = _settings()
    if settings is None:
        return _not_configured()
    reference = current_app.extensions["evaluator"].ruleset.reference
    published = questionnaire_url(current_app.config["CANONICAL_BASE"], reference.questionnaire)
    # The queries the form's pre-fill runs, on the page itself: discovery wants a CDS client's JWT
    # once ISSUERS is configured, and the browser has none.
    templates = orjson.dumps(prefetch_templates(reference)).decode()
    return _page("app.html", title="twitching assessment", questionnaire_url=published, prefetch=templates)


@bp.get("/smart/vendor/<name>")
def vendor(name: str) -> Response:
    """The vendored SMART client library (service/ui/static/vendor/VENDORED.md)."""
    mimetype = VENDOR_FILES.get(name)
    if mimetype is None:
        raise NotFound.single(f"no vendored file {name!r}", None)
    return Response((VENDOR_DIR / name).read_bytes(), mimetype=mimetype)
