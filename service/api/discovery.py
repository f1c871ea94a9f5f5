"""GET /cds-services: the CDS Hooks discovery document."""

from __future__ import annotations

from flask import Blueprint, Response, current_app

from service.api.common import evaluator
from service.cdshooks.prefetch import prefetch_templates
from service.web import json_response

bp = Blueprint("discovery", __name__)
SERVICE_HOOKS = ("patient-view", "order-select", "order-sign")
DESCRIPTION = (
    "Red flags for leg and thigh muscle twitching (fasciculations): reads the patient's"
    " twitching-assessment QuestionnaireResponses, coded findings and electrolyte, thyroid,"
    " vitamin and kidney results, and suggests work-up or referral (neurology, EMG, MRI,"
    " blood tests) with the evidence and sources behind each card."
)


@bp.get("/cds-services")
def services() -> Response:
    """One service per supported hook, with prefetch templates for exactly what the rules read."""
    templates = prefetch_templates(evaluator().ruleset.reference)
    service_id = current_app.config["SERVICE_ID"]
    return json_response(
        {
            "services": [
                {
                    "hook": hook,
                    "id": service_id,
                    "title": "Twitching red flags",
                    "description": DESCRIPTION,
                    "prefetch": templates,
                    "usageRequirements": (
                        "Send prefetch (patient, observations and questionnaireResponses at least), or"
                        " fhirServer with fhirAuthorization on a server this service allow-lists: it"
                        " then fetches what prefetch lacks (412 when neither). order-select and"
                        " order-sign need context.draftOrders. Responses to the twitching-assessment"
                        " Questionnaire are published at /fhir/Questionnaire/twitching-assessment."
                    ),
                }
                for hook in SERVICE_HOOKS
            ]
        }
    )
