"""A hook call from parsed JSON to cards: the one path live calls and the start-up warm-up take."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date
from typing import Any

from service.cdshooks.envelope import HookRequest, parse_hook_request
from service.cdshooks.prefetch import PrefetchContent, read_prefetch
from service.cdshooks.services import CdsService
from service.evaluation import Evaluator, Outcome
from service.security.limits import check_json_depth


@dataclass(frozen=True)
class HookPipeline:
    """Envelope, prefetch, (optional) fallback fetch, intake, rules: built once per worker."""

    evaluator: Evaluator
    services: Mapping[str, CdsService]  # by id, patient-view first

    def parse(self, body: Any, service: CdsService | None = None) -> HookRequest:
        """Validate the envelope for `service` (default: the first); 400 with every problem's path."""
        service = service or next(iter(self.services.values()))
        # The envelope is walked whole; prefetch resources are walked one by one as they are
        # validated (service/fhir/intake.Validator), so a 1 MB searchset is not walked twice.
        check_json_depth(body, self.evaluator.validator.max_depth, without="prefetch")
        # A hook sent to the wrong service's URL is told where its service is.
        elsewhere = {s.hook: f"/cds-services/{s.id}" for s in self.services.values() if s is not service}
        return parse_hook_request(body, (service.hook,), elsewhere)

    def answer(
        self,
        hook_request: HookRequest,
        today: date,
        complete: Callable[[PrefetchContent], None] | None = None,
    ) -> Outcome:
        """Read prefetch, let `complete` fetch what it lacks, and evaluate the rules."""
        content = read_prefetch(hook_request.prefetch)
        if complete is not None:
            complete(content)
        # The hot path checks only the newest usable result per analyte (older ones cannot change
        # a card), and in each resource only the fields the rules read (service/fhir/lean.py);
        # /evaluate still validates everything with fhir.resources: its callers want every problem.
        intake = self.evaluator.intake(content.resources, latest_labs_only=True, lean=True)
        patient_ref = f"Patient/{hook_request.patient_id}"
        return self.evaluator.run(
            intake,
            {patient_ref},
            patient_ref,
            today,
            drafts=hook_request.draft_orders,
            notes=content.notes,
        )
