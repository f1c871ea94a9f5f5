"""Every JSON example of the CDS Hooks 2.0.1 spec, sent to the service: 2xx or a precise 4xx, never 500."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from flask.testing import FlaskClient

from tests.conftest import SHARED, hook_url, load_json, shared

SPEC_EXAMPLES = sorted((SHARED / "cds-hooks" / "spec-2.0.1-examples").glob("*.json"))
HOOK = "/cds-services/twitching-red-flags"


@pytest.mark.parametrize("path", SPEC_EXAMPLES, ids=lambda p: p.name)
def test_every_example_gets_a_precise_answer(client: FlaskClient, path: Path) -> None:
    """Whatever the fragment, its hook's service answers 2xx or a 4xx OperationOutcome with issues."""
    data = path.read_bytes()
    sent = orjson.loads(data)
    # A request for a hook goes to that hook's service (each hook has its own id).
    url = hook_url(sent["hook"]) if isinstance(sent, dict) and isinstance(sent.get("hook"), str) else HOOK
    response = client.post(url, data=data, content_type="application/json")
    assert response.status_code < 500, response.get_data(as_text=True)
    if response.status_code >= 400:
        body = response.get_json()
        assert body["resourceType"] == "OperationOutcome"
        assert all(i["diagnostics"] for i in body["issue"])


def test_request_example_without_observations_is_412(client: FlaskClient) -> None:
    """ex_01 prefetches only the Patient: observations and responses are missing, so 412."""
    body = load_json(shared("cds-hooks", "spec-2.0.1-examples", "ex_01_request.json"))
    body["prefetch"]["patient"] = body["prefetch"].pop("patientToGreet")
    response = client.post(HOOK, json=body)
    assert response.status_code == 412
    assert {e for i in response.get_json()["issue"] for e in i["expression"]} == {
        "prefetch.observations",
        "prefetch.questionnaireResponses",
    }


def test_request_example_without_patient_id_is_400(client: FlaskClient) -> None:
    """ex_25 has no context.patientId: 400 with that path."""
    body = load_json(shared("cds-hooks", "spec-2.0.1-examples", "ex_25_request.json"))
    response = client.post(HOOK, json=body)
    assert response.status_code == 400
    assert response.get_json()["issue"][0]["expression"] == ["context.patientId"]


def test_request_example_with_empty_searchsets_answers_no_cards(client: FlaskClient) -> None:
    """ex_01 with its Patient and empty searchsets is a valid call with nothing to say."""
    body = load_json(shared("cds-hooks", "spec-2.0.1-examples", "ex_01_request.json"))
    empty = {"resourceType": "Bundle", "type": "searchset", "total": 0}
    body["prefetch"] = {
        "patient": body["prefetch"]["patientToGreet"],
        "observations": empty,
        "questionnaireResponses": empty,
    }
    response = client.post(HOOK, json=body)
    assert response.status_code == 200
    assert response.get_json() == {"cards": []}
