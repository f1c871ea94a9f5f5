"""GET /cds-services: the discovery document, field by field against CDS Hooks 2.0.1."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs

from flask.testing import FlaskClient

from service.app import create_app
from service.engine.ruleset import load_ruleset
from tests.conftest import ROOT


def _no_empty_values(value: Any, path: str = "$") -> list[str]:
    """Every null, "", [] or {} in a JSON document (the spec forbids them)."""
    if value is None or value in ("", [], {}):
        return [path]
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in _no_empty_values(v, f"{path}.{k}")]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in _no_empty_values(v, f"{path}[{i}]")]
    return []


def test_discovery_lists_the_services(client: FlaskClient) -> None:
    """A service each on patient-view, order-select and order-sign, every required field, nothing empty."""
    response = client.get("/cds-services")
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert _no_empty_values(body) == []
    services = body["services"]
    assert [(s["hook"], s["id"]) for s in services] == [
        ("patient-view", "twitching-red-flags"),
        ("order-select", "twitching-red-flags-order-select"),
        ("order-sign", "twitching-red-flags-order-sign"),
    ]
    for service in services:
        for field in ("title", "description"):
            assert isinstance(service[field], str)
        assert set(service) <= {"hook", "id", "title", "description", "prefetch", "usageRequirements"}


def test_prefetch_asks_for_exactly_what_the_rules_read(client: FlaskClient) -> None:
    """Patient, every recognised lab code, the responses, the coded findings and active orders."""
    prefetch = client.get("/cds-services").get_json()["services"][0]["prefetch"]
    assert prefetch["patient"] == "Patient/{{context.patientId}}"
    reference = load_ruleset(ROOT / "rules").reference
    query = parse_qs(prefetch["observations"].split("?", 1)[1])
    assert query["patient"] == ["{{context.patientId}}"]
    codes = set(query["code"][0].split(","))
    # Lab codes go without their system (LOINC and SNOMED CT codes cannot collide) to keep the
    # URL near 3 KB; the rules check the system of what comes back.
    for analyte in reference.analytes.values():
        for code in analyte.codes:
            assert code.code in codes, f"{analyte.id} {code.code} not prefetched"
    assert "6298-4" in codes  # the Blood variant Synthea records use
    assert "1000651000000109" in codes  # UK SNOMED CT serum potassium
    assert len(prefetch["observations"]) < 4500
    assert prefetch["questionnaireResponses"].startswith(
        "QuestionnaireResponse?patient={{context.patientId}}"
    )
    finding_codes = set(parse_qs(prefetch["conditions"].split("?", 1)[1])["code"][0].split(","))
    assert "http://snomed.info/sct|26544005" in finding_codes
    assert "http://hl7.org/fhir/sid/icd-10-cm|G25.81" in finding_codes
    assert prefetch["serviceRequests"].startswith("ServiceRequest?patient={{context.patientId}}")
    for template in prefetch.values():
        assert "{{context.patientId}}" in template


def test_service_ids_follow_the_setting() -> None:
    """A deployment's SERVICE_ID names patient-view as before; the order hooks get it plus a suffix."""
    app = create_app({"TESTING": True, "SERVICE_ID": "local-twitch"})
    client = app.test_client()
    services = client.get("/cds-services").get_json()["services"]
    assert [s["id"] for s in services] == [
        "local-twitch",
        "local-twitch-order-select",
        "local-twitch-order-sign",
    ]
    response = client.post("/cds-services/twitching-red-flags", json={})
    assert response.status_code == 404
    assert response.get_json()["issue"][0]["code"] == "not-found"
