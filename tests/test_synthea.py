"""The six Synthea records: whole transaction Bundles, with and without a twitching assessment."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient

from tests.conftest import EXAMPLES, card_rules, load_json, shared, topic

RECORDS = {
    "Angelic_Mueller": [topic("lab-abnormal-kidney-function")],  # creatinine 3.2 mg/dL (2020)
    "Catina_Witting": [topic("under-16")],  # died in 1959 aged 11: age stops at death
    "Chet_Hoeger": [topic("likely-benign")],
    "Errol_Prohaska": [topic("likely-benign")],
    "Hunter_Herman": [topic("lab-abnormal-glucose")],  # glucose above the fasting range (2020)
    "Noel_Reynolds": [topic("under-16")],  # the child among them
}


def _record(name: str) -> dict[str, Any]:
    folder = shared("fhir", "synthea")
    (path,) = [p for p in folder.glob("*.json") if p.name.startswith(name)]
    return dict(load_json(path))


def _patient_entry(bundle: dict[str, Any]) -> dict[str, Any]:
    return next(e for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient")


def _with_assessment(bundle: dict[str, Any], example: Path) -> dict[str, Any]:
    """Add the QuestionnaireResponse of a fhir_examples file, pointed at this record's patient."""
    bundle = copy.deepcopy(bundle)
    response = next(
        e["resource"]
        for e in load_json(example)["entry"]
        if e["resource"]["resourceType"] == "QuestionnaireResponse"
    )
    response["subject"] = {"reference": _patient_entry(bundle)["fullUrl"]}
    bundle["entry"].append(
        {
            "fullUrl": "urn:uuid:6f2d8a4e-1b7c-4c1e-9a53-2f0b7f1d9c11",
            "resource": response,
            "request": {"method": "POST", "url": "QuestionnaireResponse"},
        }
    )
    return bundle


def _post(client: FlaskClient, bundle: dict[str, Any]) -> list[dict[str, Any]]:
    response = client.post("/evaluate", json=bundle)
    assert response.status_code == 200, response.get_data(as_text=True)
    return list(response.get_json()["cards"])


@pytest.mark.parametrize("name", sorted(RECORDS))
def test_record_without_assessment_has_no_cards(client: FlaskClient, name: str) -> None:
    """No twitching reported: the service has nothing to say about an ordinary chart."""
    assert _post(client, _record(name)) == []


@pytest.mark.parametrize("name", sorted(RECORDS))
def test_record_with_benign_assessment(client: FlaskClient, name: str) -> None:
    """A short, red-flag-free assessment: reassurance, unless the record itself says otherwise."""
    example = EXAMPLES / "motor-neuron-red-flags" / "near-miss-no-weakness.json"
    cards = _post(client, _with_assessment(_record(name), example))
    assert card_rules(cards) == RECORDS[name]


@pytest.mark.parametrize("name", sorted(RECORDS))
def test_record_with_red_flag_assessment(client: FlaskClient, name: str) -> None:
    """Weakness answered yes: the critical card for every adult; the children get the population card."""
    example = EXAMPLES / "motor-neuron-red-flags" / "fires-weakness.json"
    rules = card_rules(_post(client, _with_assessment(_record(name), example)))
    if RECORDS[name] == [topic("under-16")]:
        assert rules == [topic("under-16")]
    else:
        assert rules[0] == topic("motor-neuron-red-flags")
        assert topic("likely-benign") not in rules


@pytest.mark.parametrize(
    ("name", "loinc", "value", "rule"),
    [
        ("Hunter_Herman", "6298-4", 2.9, "lab-low-potassium"),
        ("Angelic_Mueller", "6298-4", 3.0, "lab-low-potassium"),
        ("Angelic_Mueller", "2947-0", 128.0, "lab-low-sodium"),
        ("Angelic_Mueller", "49765-1", 8.0, "lab-low-calcium"),  # below 7.6 mg/dL is critical
    ],
)
def test_edited_blood_lab_fires_its_card(
    client: FlaskClient, name: str, loinc: str, value: float, rule: str
) -> None:
    """A Synthea result (Blood LOINC variant) edited out of range fires its lab card, value shown."""
    bundle = _with_assessment(
        _record(name), EXAMPLES / "motor-neuron-red-flags" / "near-miss-no-weakness.json"
    )
    labs = [
        e["resource"]
        for e in bundle["entry"]
        if e["resource"]["resourceType"] == "Observation"
        and any(c["code"] == loinc for c in e["resource"]["code"]["coding"])
    ]
    latest = max(labs, key=lambda r: r["effectiveDateTime"])
    latest["valueQuantity"]["value"] = value
    cards = _post(client, bundle)
    card = next(c for c in cards if c["source"]["topic"]["code"] == topic(rule))
    assert card["indicator"] == "info"  # 2020 results are stale on the examples' day
    assert f"{value:g} {latest['valueQuantity']['unit']}" in card["detail"]
    assert latest["effectiveDateTime"][:10] in card["detail"]
    assert "stale" in card["detail"]
    latest["effectiveDateTime"] = "2026-11-10T09:00:00+00:00"  # the same value, now current
    card = next(c for c in _post(client, bundle) if c["source"]["topic"]["code"] == topic(rule))
    assert card["indicator"] == "warning"
    assert "stale" not in card["detail"]
