"""POST /cds-services/{id}: the hook call."""

from __future__ import annotations

import logging
import time
from typing import cast

from flask import Blueprint, Response, current_app, g

from service.api.common import evaluator, require_service, today
from service.cdshooks.fetch import FhirFetcher, complete_prefetch
from service.cdshooks.pipeline import HookPipeline
from service.cdshooks.prefetch import PrefetchContent
from service.metrics import HOOK_SECONDS, count_cards
from service.web import json_response, read_json_body

bp = Blueprint("hooks", __name__)
log = logging.getLogger("twitch_cds.hooks")


@bp.post("/cds-services/<service_id>")
def call(service_id: str) -> Response:
    """Validate the envelope, read prefetch, fetch what it lacks (412 when out of reach), answer cards."""
    service = require_service(service_id)
    started = time.perf_counter()
    pipeline = cast(HookPipeline, current_app.extensions["hook_pipeline"])
    # Nesting is checked by the pipeline on the parts it reads, not on the whole body.
    hook_request = pipeline.parse(read_json_body(check_depth=False), service)
    g.hook_request = hook_request  # for the audit trail (service/store), written after the answer
    fetcher = cast(FhirFetcher, current_app.extensions["fhir_fetcher"])

    def complete(content: PrefetchContent) -> None:
        complete_prefetch(content, hook_request, fetcher, started + fetcher.settings.budget)

    outcome = pipeline.answer(hook_request, today(), complete)
    g.hook_outcome = outcome  # the audit keeps its card and suggestion uuids and fired rules
    elapsed = time.perf_counter() - started
    HOOK_SECONDS.labels(hook_request.hook).observe(elapsed)
    count_cards(outcome.cards, evaluator().rule_by_topic)
    # Logged without patient data: the hook instance, the rules that fired, the time taken.
    log.info(
        "hook=%s instance=%s fired=%s ms=%.1f",
        hook_request.hook,
        hook_request.hook_instance,
        ",".join(outcome.fired) or "-",
        elapsed * 1000,
    )
    return json_response({"cards": outcome.cards})
