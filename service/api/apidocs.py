"""GET /openapi.yaml (the contract as written) and GET /docs (a readable page generated from it)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import yaml
from flask import Blueprint, Response, current_app, render_template
from flask.blueprints import BlueprintSetupState

from service.api.ui import secure_headers
from service.config import PROJECT_ROOT
from service.errors import NotFound
from service.ui.apidocs import build_page, markdown_html

bp = Blueprint("apidocs", __name__, template_folder=str(Path(__file__).resolve().parent.parent / "ui"))
DEFAULT_SPEC = PROJECT_ROOT / "openapi.yaml"
log = logging.getLogger("twitch_cds.apidocs")
bp.after_request(secure_headers)
bp.add_app_template_filter(markdown_html, "api_markdown")


@bp.record_once
def _load_spec(state: BlueprintSetupState) -> None:
    # Read once per app; a missing or broken file only disables these two pages, not the service.
    path = Path(state.app.config.get("OPENAPI_PATH") or DEFAULT_SPEC)
    text: str | None = None
    spec: dict[str, Any] | None = None
    try:
        text = path.read_text(encoding="utf-8")
        loaded = yaml.safe_load(text)
        spec = loaded if isinstance(loaded, dict) else None
    except (OSError, yaml.YAMLError) as exc:
        log.warning("API description %s not served: %s", path, type(exc).__name__)
    state.app.extensions["openapi"] = (text, spec)


def _spec() -> tuple[str, dict[str, Any]]:
    text, spec = current_app.extensions["openapi"]
    if text is None or spec is None:
        raise NotFound.single("this installation has no openapi.yaml to serve", None)
    return text, spec


@bp.get("/openapi.yaml")
def openapi_yaml() -> Response:
    """The OpenAPI 3.1 description of this service, byte for byte as in the checkout."""
    text, _ = _spec()
    return Response(text, mimetype="application/yaml")


@bp.get("/docs")
def docs() -> Response:
    """The API description as a plain HTML page (no external assets)."""
    _, spec = _spec()
    html = render_template("templates/docs.html", page=build_page(spec))
    return Response(html, mimetype="text/html")
