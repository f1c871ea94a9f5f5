"""The published Questionnaire, and reading responses by linkId at any depth."""

from __future__ import annotations

import json
from typing import Any

from fhir.resources.R4B.questionnaire import Questionnaire
from flask.testing import FlaskClient

from service.app import create_app
from tests.conftest import ROOT, card_rules, shared, topic

CONTRACT_LINK_IDS = {
    "duration-days", "body-areas", "sides", "spreading", "worsening", "at-rest", "weakness",
    "weakness-progressive", "atrophy", "numbness-tingling", "radiating-pain", "coordination",
    "speech", "swallowing", "breathing", "bladder-bowel", "saddle-numbness", "fatigue", "cramps",
    "family-history", "new-medication", "new-medication-name", "urge-to-move", "worse-evening",
    "relieved-by-movement", "caffeine-mg", "sleep-hours", "fluid-litres", "stress",
    "recent-exertion",
}  # fmt: skip
# Version 1.1.0 adds what NICE NG42 lists for motor neuron disease, and new sexual dysfunction
# (NICE NG127 cauda equina); the 1.0.0 contract's linkIds are all kept.
ADDED_1_1_0 = {
    "stiffness", "falls", "hand-clumsiness", "cognitive-change", "morning-headache",
    "daytime-sleepiness", "sexual-dysfunction",
}  # fmt: skip


def _items(items: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        out[item["linkId"]] = item
        out.update(_items(item.get("item", [])))
    return out


def test_questionnaire_is_valid_fhir_with_stable_identity(client: FlaskClient) -> None:
    """Valid R4, canonical url and version, served as application/fhir+json."""
    response = client.get("/fhir/Questionnaire/twitching-assessment")
    assert response.status_code == 200
    assert response.mimetype == "application/fhir+json"
    body = response.get_json()
    Questionnaire.model_validate(body, strict=True)
    assert body["url"].endswith("/Questionnaire/twitching-assessment")
    assert body["version"] == "1.1.0"
    assert body["status"] == "active"


def test_questionnaire_matches_the_contract(client: FlaskClient) -> None:
    """The contract's linkIds (kept) and 1.1.0's additions, with their types and answer options."""
    body = client.get("/fhir/Questionnaire/twitching-assessment").get_json()
    items = {k: v for k, v in _items(body["item"]).items() if v["type"] != "group"}
    assert set(items) == CONTRACT_LINK_IDS | ADDED_1_1_0
    assert items["duration-days"]["type"] == "integer"
    assert items["caffeine-mg"]["type"] == "decimal"
    assert items["body-areas"]["repeats"] is True
    codes = [o["valueCoding"]["code"] for o in items["body-areas"]["answerOption"]]
    assert codes == ["thigh", "calf", "foot", "arm", "hand", "face", "eyelid", "tongue", "trunk"]
    assert items["weakness"]["code"][0]["code"] == "26544005"
    assert all(i["text"] for i in items.values())
    contract = shared("clinical", "questionnaire.md").read_text(encoding="utf-8")
    for link_id in CONTRACT_LINK_IDS:
        assert f"`{link_id}`" in contract


def test_unknown_questionnaire_is_404(client: FlaskClient) -> None:
    """Only the one Questionnaire is published."""
    assert client.get("/fhir/Questionnaire/other").status_code == 404


def _bundle(items: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [
            {"resource": {"resourceType": "Patient", "id": "p", "birthDate": "1980-05-05"}},
            {
                "resource": {
                    "resourceType": "QuestionnaireResponse",
                    "id": "qr",
                    "status": "completed",
                    "subject": {"reference": "Patient/p"},
                    "authored": "2026-11-20",
                    "item": items,
                }
            },
        ],
    }


def test_answers_are_found_at_any_depth(client: FlaskClient) -> None:
    """Flat, grouped, or nested under another answer: the linkId is what counts."""
    weakness = {"linkId": "weakness", "answer": [{"valueBoolean": True}]}
    shapes = [
        [weakness],
        [{"linkId": "neuro", "item": [weakness]}],
        [
            {
                "linkId": "a",
                "item": [{"linkId": "b", "answer": [{"valueBoolean": True, "item": [weakness]}]}],
            }
        ],
    ]
    for items in shapes:
        cards = client.post("/evaluate", json=_bundle(items)).get_json()["cards"]
        assert card_rules(cards)[0] == topic("motor-neuron-red-flags"), items


def test_unanswered_is_unknown_not_no(client: FlaskClient) -> None:
    """Only duration answered: no reassurance, and the card lists what to ask."""
    items = [{"linkId": "duration-days", "answer": [{"valueInteger": 3}]}]
    cards = client.post("/evaluate", json=_bundle(items)).get_json()["cards"]
    assert card_rules(cards) == [topic("unanswered-red-flag-questions")]
    assert "Muscle weakness: **not answered**" in cards[0]["detail"]


def test_answer_outside_the_options_is_reported(client: FlaskClient) -> None:
    """A choice answer the contract does not know is reported with its path, not guessed at."""
    items = [{"linkId": "sides", "answer": [{"valueCoding": {"code": "middle"}}]}]
    cards = client.post("/evaluate", json=_bundle(items)).get_json()["cards"]
    assert card_rules(cards)[-1] == "dataquality"
    assert "Bundle.entry[1].resource.item[0].answer" in cards[-1]["detail"]


def test_answers_to_version_1_0_0_are_still_read(client: FlaskClient) -> None:
    """A response naming questionnaire version 1.0.0 is read; items it lacks stay unknown."""
    from tests.patients import ALL_NO, bundle

    answers = {**ALL_NO, "duration-days": 5, "body-areas": ["thigh"], "weakness": True}
    data = bundle("v100", "1980-01-01", "female", answers, version="1.0.0")
    cards = client.post("/evaluate", json=data).get_json()["cards"]
    assert card_rules(cards) == [topic("motor-neuron-red-flags")]
    assert "Muscle weakness: **yes**" in cards[0]["detail"]
    none_said = {**ALL_NO, "duration-days": 5, "body-areas": ["thigh"]}
    old = client.post("/evaluate", json=bundle("v100b", "1980-01-01", "male", none_said, version="1.0.0"))
    # The 1.1.0 items are unanswered, so unknown: they neither raise a card nor block reassurance.
    assert card_rules(old.get_json()["cards"]) == [topic("likely-benign")]


def test_a_response_to_another_deployments_canonical_is_listed_not_dropped() -> None:
    """With CANONICAL_BASE set, a response naming the default canonical is on the data card, never silent."""
    app = create_app(
        {"TESTING": True, "TODAY": "2026-11-22", "CANONICAL_BASE": "https://cds.hospital.example/fhir"}
    )
    example = ROOT / "fhir_examples" / "likely-benign" / "fires-exactly-14-days.json"
    cards = app.test_client().post("/evaluate", json=json.loads(example.read_text())).get_json()["cards"]
    assert card_rules(cards) == ["dataquality"]
    assert "not this deployment's questionnaire" in cards[0]["detail"]
    assert "https://cds.hospital.example/fhir/Questionnaire/twitching-assessment" in cards[0]["detail"]
