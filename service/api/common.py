"""What every blueprint reads from the app: the evaluator, the clock, the CDS services."""

from __future__ import annotations

from datetime import date
from typing import cast

from flask import current_app

from service.cdshooks.services import CdsService
from service.errors import NotFound, echo
from service.evaluation import Evaluator


def evaluator() -> Evaluator:
    """The per-worker evaluator built by create_app."""
    return cast(Evaluator, current_app.extensions["evaluator"])


def today() -> date:
    """The evaluation date (configurable so tests and examples are reproducible)."""
    return cast(date, current_app.extensions["today"]())


def cds_services() -> dict[str, CdsService]:
    """This deployment's CDS services by id (one per hook), built by create_app."""
    return cast(dict[str, CdsService], current_app.extensions["cds_services"])


def require_service(service_id: str) -> CdsService:
    """The service the URL names; 404 unless it is one of this deployment's."""
    service = cds_services().get(service_id)
    if service is None:
        raise NotFound.single(f"no CDS service {echo(service_id)}; see GET /cds-services", None)
    return service
