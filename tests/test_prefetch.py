"""Every prefetch shape the spec and real EHRs send: searchset, empty, OperationOutcome, resource, null."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from flask.testing import FlaskClient

from tests.conftest import EXAMPLES, bundle_to_hook_request, card_rules, load_json, topic

HOOK = "/cds-services/twitching-red-flags"


@pytest.fixture
def weakness_call() -> dict[str, Any]:
    """A full patient-view call for the motor-neuron example (weakness answered yes)."""
    bundle = load_json(EXAMPLES / "motor-neuron-red-flags" / "fires-weakness.json")
    return bundle_to_hook_request(bundle)


def _cards(client: FlaskClient, call: dict[str, Any]) -> list[dict[str, Any]]:
    response = client.post(HOOK, json=call)
    assert response.status_code == 200, response.get_data(as_text=True)
    return list(response.get_json()["cards"])


def test_full_searchsets(client: FlaskClient, weakness_call: dict[str, Any]) -> None:
    """The ordinary case: the motor-neuron card fires."""
    assert card_rules(_cards(client, weakness_call)) == [topic("motor-neuron-red-flags")]


def test_empty_searchsets_mean_no_data(client: FlaskClient, weakness_call: dict[str, Any]) -> None:
    """Empty searchsets are valid: nothing to say, so {"cards": []}."""
    empty = {"resourceType": "Bundle", "type": "searchset", "total": 0}
    for key in ("observations", "questionnaireResponses", "conditions", "serviceRequests"):
        weakness_call["prefetch"][key] = empty
    assert client.post(HOOK, json=weakness_call).get_json() == {"cards": []}


def test_operation_outcome_entries_are_reported(client: FlaskClient, weakness_call: dict[str, Any]) -> None:
    """An OperationOutcome inside a searchset (Epic does this) is shown, and blocks reassurance."""
    weakness_call["prefetch"]["observations"]["entry"] = [
        {
            "resource": {
                "resourceType": "OperationOutcome",
                "issue": [{"severity": "warning", "code": "incomplete", "diagnostics": "Lab feed down"}],
            },
            "search": {"mode": "outcome"},
        }
    ]
    cards = _cards(client, weakness_call)
    assert card_rules(cards) == [topic("motor-neuron-red-flags"), "dataquality"]
    assert "Lab feed down" in cards[1]["detail"]
    assert "prefetch.observations.entry[0].resource" in cards[1]["detail"]


def test_null_means_no_data(client: FlaskClient, weakness_call: dict[str, Any]) -> None:
    """CDS Hooks 2.0: null is the EHR saying it has no data for the key (no fhirServer to re-read)."""
    weakness_call["prefetch"]["questionnaireResponses"] = None
    weakness_call["prefetch"]["observations"] = None
    assert client.post(HOOK, json=weakness_call).get_json() == {"cards": []}


def test_null_patient_is_412(client: FlaskClient, weakness_call: dict[str, Any]) -> None:
    """Without the Patient nothing can be evaluated: a null patient key is a 412 naming it."""
    weakness_call["prefetch"]["patient"] = None
    response = client.post(HOOK, json=weakness_call)
    assert response.status_code == 412
    (issue,) = response.get_json()["issue"]
    assert issue["expression"] == ["prefetch.patient"]
    assert "null" in issue["diagnostics"]


def test_missing_required_key_is_412(client: FlaskClient, weakness_call: dict[str, Any]) -> None:
    """The sandbox drops keys it could not fill: 412 names the missing key."""
    del weakness_call["prefetch"]["observations"]
    response = client.post(HOOK, json=weakness_call)
    assert response.status_code == 412
    assert response.get_json()["issue"][0]["expression"] == ["prefetch.observations"]


def test_operation_outcome_as_value_is_412(client: FlaskClient, weakness_call: dict[str, Any]) -> None:
    """A prefetch answered by an OperationOutcome means the EHR's query failed: 412 says why."""
    weakness_call["prefetch"]["patient"] = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "forbidden", "diagnostics": "Access denied"}],
    }
    response = client.post(HOOK, json=weakness_call)
    assert response.status_code == 412
    diagnostics = response.get_json()["issue"][0]["diagnostics"]
    assert "error/forbidden" in diagnostics
    assert "Access denied" not in diagnostics  # the EHR's free text may quote the patient


def test_optional_keys_may_be_null_or_absent(client: FlaskClient, weakness_call: dict[str, Any]) -> None:
    """Conditions and ServiceRequests are optional: null or absent still evaluates."""
    weakness_call["prefetch"]["conditions"] = None
    del weakness_call["prefetch"]["serviceRequests"]
    assert card_rules(_cards(client, weakness_call)) == [topic("motor-neuron-red-flags")]


def test_single_resource_values(client: FlaskClient, weakness_call: dict[str, Any]) -> None:
    """A prefetch value may be a single resource instead of a searchset."""
    response_resource = weakness_call["prefetch"]["questionnaireResponses"]["entry"][0]["resource"]
    weakness_call["prefetch"]["questionnaireResponses"] = response_resource
    assert card_rules(_cards(client, weakness_call)) == [topic("motor-neuron-red-flags")]


def test_health_system_key_names(client: FlaskClient, weakness_call: dict[str, Any]) -> None:
    """Epic's prefetch keys are the health system's: data is found by resource type."""
    prefetch = weakness_call["prefetch"]
    # The labs searchset is empty: its self link says what was searched for.
    prefetch["observations"]["link"] = [
        {"relation": "self", "url": "https://ehr.example.org/fhir/Observation?patient=mnd-weakness"}
    ]
    weakness_call["prefetch"] = {
        "pt": prefetch["patient"],
        "labs": prefetch["observations"],
        "forms": prefetch["questionnaireResponses"],
    }
    assert card_rules(_cards(client, weakness_call)) == [topic("motor-neuron-red-flags")]
    del weakness_call["prefetch"]["labs"]["link"]
    assert client.post(HOOK, json=weakness_call).status_code == 412


def test_invalid_resource_is_reported_and_the_rest_evaluated(
    client: FlaskClient, weakness_call: dict[str, Any]
) -> None:
    """A lab that fails FHIR validation appears on the data card with its path; the rest still runs."""
    bad_lab = {
        "resourceType": "Observation",
        "id": "bad",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "6298-4"}]},
        "subject": {"reference": "Patient/mnd-weakness"},
        "valueQuantity": {"value": "low", "unit": "mmol/L"},
    }
    weakness_call["prefetch"]["observations"] = {
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": [{"resource": bad_lab}],
    }
    cards = _cards(client, weakness_call)
    assert card_rules(cards) == [topic("motor-neuron-red-flags"), "dataquality"]
    assert "prefetch.observations.entry[0].resource.valueQuantity.value" in cards[1]["detail"]


def test_answer_with_the_wrong_json_type_is_reported(
    client: FlaskClient, weakness_call: dict[str, Any]
) -> None:
    """valueBoolean "yes" is not FHIR JSON: reported with its path, never read as true or false."""
    call = copy.deepcopy(weakness_call)
    response_resource = call["prefetch"]["questionnaireResponses"]["entry"][0]["resource"]
    neuro = next(i for i in response_resource["item"] if i["linkId"] == "neuro")
    weakness = next(i for i in neuro["item"] if i["linkId"] == "weakness")
    weakness["answer"] = [{"valueBoolean": "yes"}]
    cards = _cards(client, call)
    assert card_rules(cards)[-1] == "dataquality"
    assert topic("motor-neuron-red-flags") not in card_rules(cards)
    assert "valueBoolean" in cards[-1]["detail"]


def test_other_patients_data_is_not_used(client: FlaskClient, weakness_call: dict[str, Any]) -> None:
    """A response about another patient never informs this patient's cards."""
    entry = weakness_call["prefetch"]["questionnaireResponses"]["entry"][0]["resource"]
    entry["subject"] = {"reference": "Patient/someone-else"}
    cards = _cards(client, weakness_call)
    assert card_rules(cards) == ["dataquality"]
    assert "someone-else" in cards[0]["detail"]


def test_patient_that_is_not_the_context_patient_is_400(
    client: FlaskClient, weakness_call: dict[str, Any]
) -> None:
    """A prefetched Patient with another id than context.patientId is refused."""
    weakness_call["context"]["patientId"] = "another"
    response = client.post(HOOK, json=weakness_call)
    assert response.status_code == 400
    assert response.get_json()["issue"][0]["expression"] == ["prefetch.patient.id"]


def test_invalid_patient_is_422_with_paths(client: FlaskClient, weakness_call: dict[str, Any]) -> None:
    """Without a valid Patient nothing can be evaluated: 422 lists the Patient's problems."""
    weakness_call["prefetch"]["patient"]["birthDate"] = "14 March 1968"
    response = client.post(HOOK, json=weakness_call)
    assert response.status_code == 422
    assert response.get_json()["issue"][0]["expression"] == ["prefetch.patient.birthDate"]


def test_patient_without_id_in_a_bundle(client: FlaskClient) -> None:
    """/evaluate: a Patient with no id is matched through its fullUrl, as its resources are."""
    bundle = load_json(EXAMPLES / "motor-neuron-red-flags" / "fires-weakness.json")
    patient_entry = bundle["entry"][0]
    del patient_entry["resource"]["id"]
    patient_entry["fullUrl"] = "urn:uuid:0b9c1c52-3d5e-4c4f-9a0e-6a1f5f0f2b11"
    for entry in bundle["entry"][1:]:
        entry["resource"]["subject"] = {"reference": patient_entry["fullUrl"]}
    response = client.post("/evaluate", json=bundle)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert card_rules(response.get_json()["cards"]) == [topic("motor-neuron-red-flags")]


def test_a_paged_prefetch_search_without_fhir_server_is_said_and_withholds_reassurance(
    client: FlaskClient,
) -> None:
    """A searchset with a next link is one page of many: the data card says so; no reassurance."""
    bundle = load_json(EXAMPLES / "lab-low-potassium" / "near-miss-at-lower-limit.json")
    call = bundle_to_hook_request(bundle)
    call["prefetch"]["observations"]["link"] = [
        {"relation": "self", "url": "https://ehr.example.org/fhir/Observation?patient=p&_count=1"},
        {"relation": "next", "url": "https://ehr.example.org/fhir/Observation?patient=p&_page=2"},
    ]
    cards = client.post("/cds-services/twitching-red-flags", json=call).get_json()["cards"]
    assert card_rules(cards) == ["dataquality"]
    assert "prefetch.observations" in cards[0]["detail"]
    assert "first page of a longer search" in cards[0]["detail"]


def test_a_paged_search_under_a_key_the_service_did_not_ask_for_is_said(client: FlaskClient) -> None:
    """An EHR's own prefetch key with a next link cannot be re-read: the data card says so."""
    bundle = load_json(EXAMPLES / "lab-low-potassium" / "near-miss-at-lower-limit.json")
    call = bundle_to_hook_request(bundle)
    extra = call["prefetch"].pop("observations")
    extra["link"] = [
        {"relation": "self", "url": "https://ehr.example.org/fhir/Observation?patient=p&_count=1"},
        {"relation": "next", "url": "https://ehr.example.org/fhir/Observation?patient=p&_page=2"},
    ]
    call["prefetch"]["labResults"] = extra
    cards = client.post("/cds-services/twitching-red-flags", json=call).get_json()["cards"]
    assert card_rules(cards) == ["dataquality"]
    assert "prefetch.labResults" in cards[0]["detail"]
    assert "did not ask for that key" in cards[0]["detail"]


@pytest.mark.parametrize(
    "code", [{"coding": {"system": "http://loinc.org", "code": "2823-3"}}, "2823-3", None], ids=str
)
def test_an_observation_whose_code_is_malformed_is_reported_not_dropped(
    client: FlaskClient, code: Any
) -> None:
    """A code that is not a CodeableConcept (or none): on the data card; /evaluate is a 422 with the path."""
    from tests.patients import ALL_NO, bundle

    obs: dict[str, Any] = {
        "resourceType": "Observation",
        "id": "o1",
        "status": "final",
        "subject": {"reference": "Patient/p"},
        "effectiveDateTime": "2026-11-15",
        "valueQuantity": {"value": 7.0, "unit": "mmol/L"},
    }
    if code is not None:
        obs["code"] = code
    data = bundle("p", "1980-01-01", "male", {**ALL_NO, "duration-days": 5, "body-areas": ["thigh"]}, [obs])
    cards = client.post("/cds-services/twitching-red-flags", json=bundle_to_hook_request(data)).get_json()[
        "cards"
    ]
    assert card_rules(cards) == ["dataquality"]
    assert ".code" in cards[0]["detail"]
    answer = client.post("/evaluate", json=data)
    assert answer.status_code == 422
    assert any("resource.code" in i["expression"][0] for i in answer.get_json()["issue"])
