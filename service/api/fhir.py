"""GET /fhir/Questionnaire/{id}: the published twitching-assessment Questionnaire."""

from __future__ import annotations

from flask import Blueprint, Response, current_app

from service.errors import NotFound, echo
from service.web import FHIR_JSON, json_response

bp = Blueprint("fhir", __name__, url_prefix="/fhir")


@bp.get("/Questionnaire/<questionnaire_id>")
def questionnaire(questionnaire_id: str) -> Response:
    """The Questionnaire the service reads responses against."""
    resource = current_app.extensions["questionnaire"]
    if questionnaire_id != resource["id"]:
        raise NotFound.single(f"no Questionnaire {echo(questionnaire_id)}", None)
    return json_response(resource, mimetype=FHIR_JSON)
