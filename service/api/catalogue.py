"""GET /rules: the rule catalogue (id, version, logic, sources, suggestions)."""

from __future__ import annotations

from flask import Blueprint, Response

from service.api.common import evaluator
from service.engine.catalogue import catalogue
from service.web import json_response

bp = Blueprint("catalogue", __name__)


@bp.get("/rules")
def rules() -> Response:
    """The catalogue of every rule in force."""
    return json_response(catalogue(evaluator().ruleset))
