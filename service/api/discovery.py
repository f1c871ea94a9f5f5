"""GET /cds-services: the CDS Hooks discovery document."""

from __future__ import annotations

from flask import Blueprint, Response

from service.api.common import cds_services
from service.web import json_response

bp = Blueprint("discovery", __name__)


@bp.get("/cds-services")
def services() -> Response:
    """One service per supported hook, each at its own id with the prefetch templates it needs."""
    # One hook per id: CDS clients (the CDS Hooks sandbox among them) keep services keyed by id,
    # so two hooks under one id would leave all but one of them never called.
    return json_response({"services": [s.discovery_entry() for s in cds_services().values()]})
