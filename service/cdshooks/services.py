"""The CDS services this deployment offers: one per hook, each at its own id (CDS Hooks 2.0)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from service.cdshooks.prefetch import KEY_TYPES

DESCRIPTION = (
    "Red flags for leg and thigh muscle twitching (fasciculations): reads the patient's"
    " twitching-assessment QuestionnaireResponses, coded findings and electrolyte, thyroid,"
    " vitamin and kidney results, and suggests work-up or referral (neurology, EMG, MRI,"
    " blood tests) with the evidence and sources behind each card."
)
ORDER_NOTE = (
    " Orders in context.draftOrders count as already ordered: a card suggests only what is still"
    " missing, and says which draft covers the rest."
)
DATA_NOTE = (
    "Send prefetch (patient, observations and questionnaireResponses at least), or fhirServer with"
    " fhirAuthorization on a server this service allow-lists: it then fetches what prefetch lacks"
    " (412 when neither). Responses to the twitching-assessment Questionnaire are published at"
    " /fhir/Questionnaire/twitching-assessment."
)


@dataclass(frozen=True)
class HookService:
    """What one hook's service declares; its id is the deployment's SERVICE_ID plus `suffix`."""

    hook: str
    suffix: str
    title: str
    description: str
    usage: str
    # Every hook evaluates the whole rule set (a red flag must show whichever hook opens the
    # chart), so each reads every key today; a hook that needed less would list fewer here.
    prefetch_keys: tuple[str, ...] = tuple(KEY_TYPES)


HOOK_SERVICES: tuple[HookService, ...] = (
    HookService("patient-view", "", "Twitching red flags", DESCRIPTION, DATA_NOTE),
    HookService(
        "order-select",
        "-order-select",
        "Twitching red flags while ordering",
        "On order-select: " + DESCRIPTION + ORDER_NOTE,
        DATA_NOTE + " Needs context.draftOrders (a Bundle) and context.selections.",
    ),
    HookService(
        "order-sign",
        "-order-sign",
        "Twitching red flags at order signing",
        "On order-sign: " + DESCRIPTION + ORDER_NOTE,
        DATA_NOTE + " Needs context.draftOrders (a Bundle).",
    ),
)
SERVICE_HOOKS = tuple(s.hook for s in HOOK_SERVICES)


@dataclass(frozen=True)
class CdsService:
    """One service as discovery lists it and the hook route checks it."""

    id: str
    hook: str
    title: str
    description: str
    usage: str
    prefetch: Mapping[str, str]

    def discovery_entry(self) -> dict[str, Any]:
        """The service's entry in GET /cds-services."""
        return {
            "hook": self.hook,
            "id": self.id,
            "title": self.title,
            "description": self.description,
            "prefetch": dict(self.prefetch),
            "usageRequirements": self.usage,
        }


SMART_NOTE = (
    " Its unanswered-questions and likely-benign cards link a SMART app ({url}) that records the"
    " twitching assessment in the EHR."
)


def build_services(
    base_id: str, templates: Mapping[str, str], smart_launch: str | None = None
) -> dict[str, CdsService]:
    """Each hook's service keyed by its id, patient-view first under `base_id` itself."""
    services = {}
    for spec in HOOK_SERVICES:
        service_id = base_id + spec.suffix
        prefetch = {key: templates[key] for key in spec.prefetch_keys}
        description = spec.description
        if smart_launch and spec.hook == "patient-view":
            description += SMART_NOTE.format(url=smart_launch)  # only when an app is registered
        services[service_id] = CdsService(
            service_id, spec.hook, spec.title, description, spec.usage, prefetch
        )
    return services
