"""What every blueprint reads from the app: the evaluator, the clock, the service id."""

from __future__ import annotations

from datetime import date
from typing import cast

from flask import current_app

from service.errors import NotFound
from service.evaluation import Evaluator


def evaluator() -> Evaluator:
    """The per-worker evaluator built by create_app."""
    return cast(Evaluator, current_app.extensions["evaluator"])


def today() -> date:
    """The evaluation date (configurable so tests and examples are reproducible)."""
    return cast(date, current_app.extensions["today"]())


def require_service(service_id: str) -> None:
    """404 unless the URL names this deployment's CDS service."""
    if service_id != current_app.config["SERVICE_ID"]:
        raise NotFound.single(f"no CDS service {service_id!r}; see GET /cds-services", None)
