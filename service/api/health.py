"""Operations: GET /healthz (alive), GET /readyz (ready for traffic), GET /metrics (Prometheus)."""

from __future__ import annotations

import logging

from flask import Blueprint, Response

from service.api.common import evaluator
from service.errors import ServiceUnavailable
from service.metrics import metrics_response
from service.store import stores
from service.store.db import DatabaseError
from service.web import json_response

bp = Blueprint("health", __name__)
log = logging.getLogger("twitch_cds.health")


@bp.get("/healthz")
def healthz() -> Response:
    """Alive, with the number of rules loaded."""
    return json_response({"status": "ok", "rules": len(evaluator().ruleset.rules)})


@bp.get("/readyz")
def readyz() -> Response:
    """Ready: rules loaded and the database reachable; 503 OperationOutcome when it is not."""
    found = stores()
    pending = found.spool.stats().pending
    try:
        found.db.ping()  # within DB_TIMEOUT_SECONDS: a stalled database is a 503 in well under 1 s
    except DatabaseError as exc:
        # The driver's message names the host, not request data; it tells the operator what failed.
        log.warning("not ready: database unreachable (%s); %d audit records pending", exc, pending)
        raise ServiceUnavailable.single(
            f"the database is unreachable; not ready for traffic ({pending} audit records pending)"
        ) from exc
    return json_response(
        {
            "status": "ready",
            "rules": len(evaluator().ruleset.rules),
            "database": "ok",
            "auditPending": pending,
        }
    )


@bp.get("/metrics")
def metrics() -> Response:
    """Prometheus text exposition, summed over the gunicorn workers; no patient data in any label."""
    stores().spool.publish()  # this worker's backlog as of now; the others' as of their last second
    return metrics_response()
