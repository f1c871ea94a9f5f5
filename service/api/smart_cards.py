"""POST /smart/cards: the SMART app's patient-view cards, read from the EHR with the user's own token.

After saving, the app must show the cards on the updated record. It cannot call the hook itself
once caller authentication is on (ISSUERS): the hook wants a CDS client's JWT, which a browser
does not have. Here the app's SMART access token is the proof of access instead: the service
reads the record from the launch's FHIR server with it (the fallback fetch, its budget, size,
paging and redirect rules), so it reads only what the EHR lets that token read, for that patient.
The token is used for those reads and dropped: never logged, never stored (docs/smart-app.md).
"""

from __future__ import annotations

import logging
import time
from typing import cast

from flask import Blueprint, Response, current_app, g, request

from service.api.common import evaluator, today
from service.cdshooks.fetch import FhirFetcher, complete_prefetch
from service.cdshooks.pipeline import HookPipeline
from service.cdshooks.prefetch import KEY_TYPES, PrefetchContent
from service.cdshooks.smart import SmartSettings, parse_cards_request
from service.errors import Forbidden, Issue, MissingData, NotFound, ServiceError
from service.metrics import count_cards
from service.web import json_response, read_json_body

bp = Blueprint("smart_cards", __name__)
log = logging.getLogger("twitch_cds.smart")
# Three short strings: 16 kB holds the longest token accepted (MAX_TOKEN_CHARS) with room to spare.
MAX_BODY_BYTES = 16 * 1024
NOT_CONFIGURED = "This service has no SMART app configured (SMART_CLIENT_ID is empty)."


def _token_refusal(missing: MissingData) -> ServiceError:
    """The FHIR server's 401 or 403 said as such, naming the token; any other failure stays a 412."""
    codes = {issue.code for issue in missing.issues}
    if "login" in codes:
        return Forbidden(
            [
                Issue(
                    "The EHR's FHIR server did not accept the access token (HTTP 401): it may have"
                    " expired. Nothing was read; open the app again from the EHR.",
                    "access_token",
                    code="login",
                )
            ]
        )
    if "forbidden" in codes:
        types = [
            KEY_TYPES.get((i.expression or "").removeprefix("prefetch."), "record")
            for i in missing.issues
            if i.code == "forbidden"
        ]
        return Forbidden.single(
            f"The EHR's FHIR server refused this access token the patient's {', '.join(types)} (HTTP 403):"
            " the token is for another patient or lacks a scope, so no cards can be made for this patient.",
            "access_token",
        )
    # Timeouts, server errors, a patient the server does not have: where it failed is fhirServer.
    return MissingData([Issue(i.diagnostics, "fhirServer", i.severity, i.code) for i in missing.issues])


@bp.post("/smart/cards")
def cards() -> Response:
    """Read the patient's record from fhirServer with the app's token and answer the patient-view cards."""
    settings = cast(SmartSettings | None, current_app.extensions.get("smart"))
    if settings is None:
        raise NotFound.single(NOT_CONFIGURED, None)
    request.max_content_length = MAX_BODY_BYTES  # 413 past it, before the body is read
    ask = parse_cards_request(read_json_body())
    refusal = settings.issuer_refusal(ask.fhir_server)
    if refusal is not None:
        raise Forbidden.single(f"No cards from that EHR: {refusal}.", "fhirServer")
    started = time.perf_counter()
    hook_request = ask.hook_request()
    g.hook_request = hook_request  # the audit keeps its hookInstance and the patient's hash
    g.audit_service_id = current_app.config["SERVICE_ID"]  # the patient-view service's cards
    fetcher = cast(FhirFetcher, current_app.extensions["smart_fetcher"])
    pipeline = cast(HookPipeline, current_app.extensions["hook_pipeline"])

    def complete(content: PrefetchContent) -> None:
        try:
            complete_prefetch(content, hook_request, fetcher, started + fetcher.settings.budget)
        except MissingData as missing:
            raise _token_refusal(missing) from None

    outcome = pipeline.answer(hook_request, today(), complete)
    g.hook_outcome = outcome
    count_cards(outcome.cards, evaluator().rule_by_topic)
    # Like the hook's line: no patient data, no token; the FHIR server only as its origin.
    log.info(
        "smart cards instance=%s fired=%s ms=%.1f",
        hook_request.hook_instance,
        ",".join(outcome.fired) or "-",
        (time.perf_counter() - started) * 1000,
    )
    return json_response({"cards": outcome.cards})
