"""Coded measurements (measurements.yaml): a sleep-duration Observation answers the sleep question.

One that cannot be used (a unit not listed, a status that is not final, no value) is on the data
card with its path, unless the fact is known from another source; a retracted one is ignored.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
from flask.testing import FlaskClient

from tests.conftest import EXAMPLES, bundle_to_hook_request, load_json

SERVICE = "/cds-services/twitching-red-flags"
EXAMPLE = EXAMPLES / "lifestyle-triggers" / "fires-sleep-observation.json"


def _cards(client: FlaskClient, change: dict[str, Any], answer_sleep: bool = False) -> list[dict[str, Any]]:
    bundle = copy.deepcopy(load_json(EXAMPLE))
    for entry in bundle["entry"]:
        resource = entry["resource"]
        if resource["resourceType"] == "Observation":
            resource.update(change)
        if resource["resourceType"] == "QuestionnaireResponse" and answer_sleep:
            resource["item"].append({"linkId": "sleep-hours", "answer": [{"valueDecimal": 8}]})
    response = client.post(SERVICE, json=bundle_to_hook_request(bundle))
    assert response.status_code == 200, response.get_json()
    cards: list[dict[str, Any]] = response.get_json()["cards"]
    return cards


def _data_card(cards: list[dict[str, Any]]) -> str | None:
    return next((c["detail"] for c in cards if c["source"]["topic"]["code"] == "dataquality"), None)


@pytest.mark.parametrize(
    ("change", "where", "why"),
    [
        ({"valueQuantity": {"value": 330, "unit": "minutes"}}, "valueQuantity.unit", "unit 'minutes'"),
        ({"status": "preliminary"}, "status", "status 'preliminary' is not a final result"),
        ({"valueQuantity": {"unit": "h"}}, "valueQuantity", "no numeric value"),
    ],
)
def test_a_measurement_not_read_is_on_the_data_card(
    client: FlaskClient, change: dict[str, Any], where: str, why: str
) -> None:
    """Named with its path and reason; the sleep trigger does not fire and nothing reassures."""
    cards = _cards(client, change)
    detail = _data_card(cards)
    assert detail is not None
    assert f"observations.entry[0].resource.{where}`" in detail
    assert why in detail
    topics = [c["source"]["topic"]["code"] for c in cards]
    assert not any("lifestyle" in t or "benign" in t for t in topics), topics


def test_a_measurement_not_read_is_silent_when_the_answer_gives_the_fact(client: FlaskClient) -> None:
    """The form answers sleep: the unreadable Observation changes nothing, so no data card."""
    cards = _cards(client, {"valueQuantity": {"value": 330, "unit": "minutes"}}, answer_sleep=True)
    assert _data_card(cards) is None


def test_a_retracted_measurement_is_ignored(client: FlaskClient) -> None:
    """entered-in-error is not a result at all: neither read nor reported."""
    cards = _cards(client, {"status": "entered-in-error"})
    assert _data_card(cards) is None
    assert not any("Sleep duration" in c["detail"] for c in cards)
