"""POST /cds-services/{id}/feedback (CDS Hooks 2.0 feedback) and GET /feedback/summary (governance)."""

from __future__ import annotations

import logging

from flask import Blueprint, Response, g

from service.api.common import require_service
from service.cdshooks.feedback import parse_feedback
from service.errors import ServiceUnavailable
from service.security import current_caller
from service.store import stores
from service.store.db import DatabaseError
from service.web import json_response, read_json_body

bp = Blueprint("feedback", __name__)
log = logging.getLogger("twitch_cds.feedback")


@bp.post("/cds-services/<service_id>/feedback")
def receive(service_id: str) -> Response:
    """Store each entry once (a resent batch is acknowledged, not doubled); unknown cards are flagged."""
    require_service(service_id)
    entries = parse_feedback(read_json_body())
    caller = current_caller()
    found = stores()
    # This worker's cards not yet out of the spool would count as unknown: write them first (at
    # once when the database is down: then the save below fails within its budget too).
    found.spool.flush(found.db.timeout)
    try:
        result = found.feedback.save(
            service_id,
            entries,
            caller.issuer if caller else None,
            caller.tenant if caller else None,
            g.get("request_id", ""),
        )
    except DatabaseError as exc:
        # 503, not 500: the client may resend the same batch later (it is idempotent).
        raise ServiceUnavailable.single("feedback could not be stored right now; send it again") from exc
    # Counts only: card ids and comments stay in the database.
    log.info(
        "feedback entries=%d stored=%d duplicates=%d unknown_cards=%d",
        len(entries),
        result.stored,
        result.duplicates,
        result.unknown_cards,
    )
    return json_response(
        {"stored": result.stored, "duplicates": result.duplicates, "unknownCards": result.unknown_cards}
    )


@bp.get("/feedback/summary")
def summary() -> Response:
    """Per rule and version: cards shown, accepted, overridden, and the override reasons given."""
    found = stores()
    found.spool.flush(found.db.timeout)  # this worker's cards shown so far count
    try:
        return json_response(found.feedback.summary())
    except DatabaseError as exc:
        raise ServiceUnavailable.single("the feedback store is unavailable; retry later") from exc
