"""The card viewer: GET / and its files under /ui/, and the fhir_examples/ it offers (read-only)."""

from __future__ import annotations

from pathlib import Path
from typing import cast

from flask import Blueprint, Response, current_app, send_file
from flask.blueprints import BlueprintSetupState

from service.errors import NotFound, echo
from service.ui.examples import DEFAULT_EXAMPLES_DIR, ExampleIndex
from service.web import FHIR_JSON, json_response

bp = Blueprint("ui", __name__)
STATIC_DIR = Path(__file__).resolve().parent.parent / "ui" / "static"
MEDIA_TYPES = {
    ".html": "text/html",  # werkzeug adds "; charset=utf-8" to text types
    ".css": "text/css",
    ".js": "text/javascript",
    ".svg": "image/svg+xml",
}
# The files that may be served, fixed when the module loads: a URL names a key, never a path.
# An installation without them (package data not installed) still serves the API.
ASSETS = {
    p.name: MEDIA_TYPES[p.suffix]
    for p in (sorted(STATIC_DIR.iterdir()) if STATIC_DIR.is_dir() else [])
    if p.is_file() and p.suffix in MEDIA_TYPES and p.name != "index.html"
}
# No inline script or style anywhere in the viewer, so the policy can forbid both.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self';"
    " form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)


@bp.record_once
def _index_examples(state: BlueprintSetupState) -> None:
    # Read once per app: the folder is part of the checkout, not something that changes at run time.
    folder = Path(state.app.config.get("EXAMPLES_DIR") or DEFAULT_EXAMPLES_DIR)
    state.app.extensions["examples"] = ExampleIndex(folder)


def _examples() -> ExampleIndex:
    return cast(ExampleIndex, current_app.extensions["examples"])


def secure_headers(response: Response) -> Response:
    """Add the viewer's Content-Security-Policy and the usual hardening headers."""
    response.headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "no-referrer")
    return response


bp.after_request(secure_headers)


def _file(path: Path, mimetype: str) -> Response:
    # no-cache: the browser revalidates with the ETag, so an upgraded service never serves stale JS.
    response = send_file(path, mimetype=mimetype, conditional=True, etag=True, max_age=0)
    response.headers["Cache-Control"] = "no-cache"
    return response


@bp.get("/")
def index() -> Response:
    """The card viewer page."""
    page = STATIC_DIR / "index.html"
    if not page.is_file():
        raise NotFound.single("this installation has no card viewer (service/ui/static is missing)", None)
    return _file(page, MEDIA_TYPES[".html"])


@bp.get("/ui/<asset>")
def asset(asset: str) -> Response:
    """A stylesheet, script or icon of the viewer (only the files shipped in service/ui/static)."""
    mimetype = ASSETS.get(asset)
    if mimetype is None:
        raise NotFound.single(f"no viewer file {echo(asset)}", None)
    return _file(STATIC_DIR / asset, mimetype)


@bp.get("/examples")
def examples() -> Response:
    """Every example Bundle in fhir_examples/: rule, kind, description, expected cards and URL."""
    return json_response({"examples": [e.to_json() for e in _examples().examples]})


@bp.get("/examples/<rule>/<name>.json")
def example(rule: str, name: str) -> Response:
    """One example Bundle, exactly as stored."""
    found = _examples().find(rule, name)
    if found is None:
        raise NotFound.single(f"no example {echo(f'{rule}/{name}.json')}; see GET /examples", None)
    return _file(found.path, FHIR_JSON)
