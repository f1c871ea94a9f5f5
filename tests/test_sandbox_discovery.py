"""Discovery driven the way the CDS Hooks sandbox (github.com/cds-hooks/sandbox) drives it, over HTTP.

The sandbox keeps the services of a discovery document in an object keyed by
`${discoveryUrl}/${service.id}` (src/reducers/cds-services-reducers.js, DISCOVER_CDS_SERVICES_SUCCESS),
picks the services to call for the current hook by filtering that object on `hook`
(src/reducers/helpers/services-filter.js, getServicesByHook), POSTs the hook call to the key, and
sends feedback to `${serviceUrl}/feedback` (src/components/CardList/card-list.jsx). Two hooks under
one id therefore collapse into one entry, and the other hooks are never called (issue 13).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import requests

from service.cdshooks.bundles import hook_request_for_bundle
from service.cdshooks.envelope import SUPPORTED_HOOKS
from tests.conftest import EXAMPLES, load_json
from tests.live import LiveServer, live_app, serve

WEAKNESS = EXAMPLES / "motor-neuron-red-flags" / "fires-weakness.json"
ORIGIN = "https://sandbox.cds-hooks.org"  # the page's origin: the sandbox calls from a browser


@pytest.fixture(scope="module")
def live() -> Iterator[LiveServer]:
    """The service on 127.0.0.1, as the sandbox would reach it."""
    with serve(live_app()) as server:
        yield server


def configured_services(discovery_url: str) -> dict[str, dict[str, Any]]:
    """The discovery document kept as the sandbox keeps it: by service URL, enabled."""
    response = requests.get(discovery_url, headers={"Origin": ORIGIN}, timeout=10)
    assert response.status_code == 200
    assert response.headers["Access-Control-Allow-Origin"] in ("*", ORIGIN)
    services = response.json()["services"]
    configured = {f"{discovery_url}/{s['id']}": {**s, "enabled": True} for s in services}
    # Nothing may be lost by keying on the id: one entry per listed service.
    assert len(configured) == len(services)
    return configured


def services_for(hook: str, configured: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The services the sandbox calls when `hook` fires."""
    return {url: s for url, s in configured.items() if s["hook"] == hook and s["enabled"]}


def hook_call(service: dict[str, Any]) -> dict[str, Any]:
    """The example patient's call for this service, prefetch filled from its own templates."""
    call = hook_request_for_bundle(load_json(WEAKNESS), service["hook"], service["prefetch"])
    # A drafted medication is unrelated to the red flags: the order hooks still show the card.
    if service["hook"] != "patient-view":
        call["context"]["draftOrders"]["entry"] = [
            {
                "resource": {
                    "resourceType": "MedicationRequest",
                    "id": "draft-med",
                    "status": "draft",
                    "intent": "order",
                    "subject": {"reference": f"Patient/{call['context']['patientId']}"},
                    "medicationCodeableConcept": {
                        "coding": [
                            {"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "197361"}
                        ]
                    },
                }
            }
        ]
        if service["hook"] == "order-select":
            call["context"]["selections"] = ["MedicationRequest/draft-med"]
    return call


def post(url: str, body: dict[str, Any]) -> requests.Response:
    """POST JSON from the sandbox's origin."""
    return requests.post(url, json=body, headers={"Origin": ORIGIN}, timeout=30)


def test_every_hook_survives_keying_by_id(live: LiveServer) -> None:
    """patient-view, order-select and order-sign each keep exactly one service after keying by id."""
    configured = configured_services(f"{live.url}/cds-services")
    assert {hook: len(services_for(hook, configured)) for hook in SUPPORTED_HOOKS} == dict.fromkeys(
        SUPPORTED_HOOKS, 1
    )


@pytest.mark.parametrize("hook", SUPPORTED_HOOKS)
def test_each_hook_is_called_at_its_key_and_answers_cards(live: LiveServer, hook: str) -> None:
    """The sandbox's call for each hook: 200 with the red-flag card; its feedback is stored."""
    configured = configured_services(f"{live.url}/cds-services")
    ((url, service),) = services_for(hook, configured).items()
    response = post(url, hook_call(service))
    assert response.status_code == 200, response.text
    assert response.headers["Access-Control-Allow-Origin"] in ("*", ORIGIN)
    cards = response.json()["cards"]
    assert [c["indicator"] for c in cards] == ["critical"]
    card = cards[0]
    feedback = {
        "feedback": [
            {
                "card": card["uuid"],
                "outcome": "accepted",
                "acceptedSuggestions": [{"id": card["suggestions"][0]["uuid"]}],
                "outcomeTimestamp": "2026-11-22T10:05:31Z",
            }
        ]
    }
    answer = post(f"{url}/feedback", feedback)
    assert answer.status_code == 200, answer.text
    # The card is known under the service that issued it.
    assert answer.json() == {"stored": 1, "duplicates": 0, "unknownCards": 0}


@pytest.mark.parametrize("hook", SUPPORTED_HOOKS)
def test_another_hook_at_a_services_key_is_400(live: LiveServer, hook: str) -> None:
    """Each key answers its own hook only: another hook's call there is a 400 OperationOutcome on `hook`."""
    configured = configured_services(f"{live.url}/cds-services")
    ((url, _),) = services_for(hook, configured).items()
    for other in (h for h in SUPPORTED_HOOKS if h != hook):
        ((_, other_service),) = services_for(other, configured).items()
        response = post(url, hook_call(other_service))
        assert response.status_code == 400, response.text
        assert response.headers["Content-Type"] == "application/fhir+json"
        body = response.json()
        assert body["resourceType"] == "OperationOutcome"
        assert [i["expression"] for i in body["issue"]] == [["hook"]]
