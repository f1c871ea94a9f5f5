"""The field the service is measured against, served by bench/run.py with the same gunicorn config.

Both are bare Flask apps with one route, no guard, no metrics, no audit and no log line, built on
the service's own rule set and cards so that the answers are the same. In the production
configuration each also authenticates the caller as bench/floor.py does (RS384 JWT, Redis replay
and rate), so the field pays what the service pays for it:

- `create_floor_app()`: the domain work only. The body is read and parsed, the envelope checked,
  and the service's hook pipeline (prefetch, selection, validation of what the rules read, facts,
  rules, cards) answers. Its ratio to the baseline is what the service could reach without its
  per-call edge (authentication, metrics, audit, logging).
- `create_naive_app()`: the naive design. Every prefetched resource of a type the rules read is
  validated whole with its `fhir.resources` R4B model, as /evaluate does (no selection by code, no
  memo, every lab result, not only the newest); an invalid one goes on the data card. Then the
  same rules and cards run on the models.
"""

from __future__ import annotations

from datetime import date
from typing import Any

import orjson
from flask import Flask, Response, request

from bench.floor import caller_check
from service.app import create_app
from service.cdshooks.pipeline import HookPipeline
from service.cdshooks.prefetch import read_prefetch
from service.evaluation import Evaluator
from service.fhir.intake import MODELS, take_in, validate


def _service_parts() -> tuple[HookPipeline, Evaluator]:
    app = create_app({"WARM_UP": 0})
    return app.extensions["hook_pipeline"], app.extensions["evaluator"]


def _answer(cards: list[dict[str, Any]]) -> Response:
    return Response(orjson.dumps({"cards": cards}), mimetype="application/json")


def _bare() -> Flask:
    """Flask with the readiness route bench/run.py waits for."""
    bare = Flask(__name__)
    bare.add_url_rule("/readyz", "readyz", lambda: {"status": "ready"})
    return bare


def create_floor_app() -> Flask:
    """The service's domain work on bare Flask: parse, pipeline, cards; nothing else."""
    pipeline, _ = _service_parts()
    check = caller_check()
    bare = _bare()

    @bare.post("/cds-services/<service_id>")
    def hook(service_id: str) -> Response:
        if check is not None:
            check()
        hook_request = pipeline.parse(orjson.loads(request.get_data()), pipeline.services.get(service_id))
        return _answer(pipeline.answer(hook_request, date.today()).cards)

    return bare


class _Everything:
    """A selector that takes every resource of a type the rules know: the naive design drops nothing."""

    def select(self, resource: dict[str, Any]) -> tuple[bool, None]:
        """Every resource the extractor has a bucket for."""
        return resource.get("resourceType") in MODELS, None


def create_naive_app() -> Flask:
    """fhir.resources on every prefetched resource, then the same rules and cards."""
    pipeline, evaluator = _service_parts()
    check = caller_check()
    bare = _bare()

    @bare.post("/cds-services/<service_id>")
    def hook(service_id: str) -> Response:
        if check is not None:
            check()
        hook_request = pipeline.parse(orjson.loads(request.get_data()), pipeline.services.get(service_id))
        content = read_prefetch(hook_request.prefetch)
        # Every resource validated whole, each time (no memo): the full R4B validation /evaluate uses.
        intake = take_in(content.resources, _Everything(), None, validate)  # type: ignore[arg-type]
        patient_ref = f"Patient/{hook_request.patient_id}"
        outcome = evaluator.run(intake, {patient_ref}, patient_ref, date.today(), notes=content.notes)
        return _answer(outcome.cards)

    return bare
