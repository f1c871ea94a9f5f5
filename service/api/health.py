"""GET /healthz: the process is up and its rule set loaded (it would not have started otherwise)."""

from __future__ import annotations

from flask import Blueprint, Response

from service.api.common import evaluator
from service.web import json_response

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz() -> Response:
    """Alive, with the number of rules loaded."""
    return json_response({"status": "ok", "rules": len(evaluator().ruleset.rules)})
