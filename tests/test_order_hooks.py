"""order-select and order-sign: a service each, and cards that take the draft orders into account."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from flask.testing import FlaskClient

from tests.conftest import (
    EXAMPLES,
    HOOK_URLS,
    bundle_to_hook_request,
    card_rules,
    discovery_templates,
    hook_url,
    load_json,
    topic,
)

EMG = ("http://www.ama-assn.org/go/cpt", "95886")
NEUROLOGY = ("http://snomed.info/sct", "308474002")


def draft(rid: str, system: str, code: str, resource_type: str = "ServiceRequest") -> dict[str, Any]:
    """A draft order as the EHR puts it in context.draftOrders."""
    resource: dict[str, Any] = {
        "resourceType": resource_type,
        "id": rid,
        "status": "draft",
        "intent": "order",
        "subject": {"reference": "Patient/mnd-weakness"},
    }
    if resource_type == "MedicationRequest":
        resource["medicationCodeableConcept"] = {"coding": [{"system": system, "code": code}]}
    else:
        resource["code"] = {"coding": [{"system": system, "code": code}]}
    return resource


def order_call(hook: str, *drafts: dict[str, Any]) -> dict[str, Any]:
    """The motor-neuron example (weakness: yes) as an order hook call with these draft orders."""
    call = bundle_to_hook_request(load_json(EXAMPLES / "motor-neuron-red-flags" / "fires-weakness.json"))
    call["hook"] = hook
    call["context"]["draftOrders"] = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [{"resource": d} for d in drafts],
    }
    if hook == "order-select":
        call["context"]["selections"] = [f"{d['resourceType']}/{d['id']}" for d in drafts]
    return call


def suggested(card: dict[str, Any]) -> list[tuple[str, str]]:
    """The (system, code) of every order a card suggests."""
    return [
        (coding["system"], coding["code"])
        for s in card.get("suggestions", [])
        for a in s["actions"]
        for coding in a["resource"]["code"]["coding"]
    ]


def test_discovery_lists_a_service_per_hook(client: FlaskClient) -> None:
    """Three ids, one hook each; every service asks for all the data the rules read (medications too)."""
    services = client.get("/cds-services").get_json()["services"]
    assert {s["hook"]: s["id"] for s in services} == {
        "patient-view": "twitching-red-flags",
        "order-select": "twitching-red-flags-order-select",
        "order-sign": "twitching-red-flags-order-sign",
    }
    for service in services:
        # Every hook runs the whole rule set, so each needs every key (see service/cdshooks/services.py).
        assert service["prefetch"] == discovery_templates()
        assert {"medicationRequests", "medicationStatements"} <= set(service["prefetch"])
    assert len({s["title"] for s in services}) == 3
    assert len({s["description"] for s in services}) == 3
    order_usage = [s["usageRequirements"] for s in services if s["hook"] != "patient-view"]
    assert all("context.draftOrders" in u for u in order_usage)


@pytest.mark.parametrize("hook", ["order-select", "order-sign"])
def test_without_drafts_the_cards_match_patient_view(client: FlaskClient, hook: str) -> None:
    """An unrelated draft (a medication) changes nothing: same card, same two suggestions."""
    call = order_call(
        hook, draft("med-1", "http://www.nlm.nih.gov/research/umls/rxnorm", "197361", "MedicationRequest")
    )
    response = client.post(hook_url(hook), json=call)
    assert response.status_code == 200, response.get_data(as_text=True)
    (card,) = response.get_json()["cards"]
    assert card["source"]["topic"]["code"] == topic("motor-neuron-red-flags")
    assert card["indicator"] == "critical"
    assert suggested(card) == [NEUROLOGY, EMG]


@pytest.mark.parametrize("hook", ["order-select", "order-sign"])
def test_a_drafted_order_is_not_suggested_again(client: FlaskClient, hook: str) -> None:
    """EMG already drafted: only the referral is suggested, and the detail says why."""
    response = client.post(hook_url(hook), json=order_call(hook, draft("emg-1", *EMG)))
    (card,) = response.get_json()["cards"]
    assert card["indicator"] == "critical"
    assert suggested(card) == [NEUROLOGY]
    assert (
        "EMG with nerve conduction studies: already ordered (ServiceRequest/emg-1 (draft order), draft)"
        in (card["detail"])
    )


def test_an_equivalent_code_counts_as_the_same_order(client: FlaskClient) -> None:
    """A draft coded with another code of the same order (SNOMED EMG) also counts."""
    response = client.post(
        HOOK_URLS["order-sign"],
        json=order_call("order-sign", draft("emg-2", "http://snomed.info/sct", "306276006")),
    )
    (card,) = response.get_json()["cards"]
    assert suggested(card) == [NEUROLOGY]


def test_everything_drafted_leaves_the_card_without_suggestions(client: FlaskClient) -> None:
    """Both orders drafted: the red flag is still shown, with nothing left to suggest."""
    call = order_call("order-sign", draft("emg-1", *EMG), draft("ref-1", *NEUROLOGY))
    (card,) = client.post(HOOK_URLS["order-sign"], json=call).get_json()["cards"]
    assert card["indicator"] == "critical"
    assert "suggestions" not in card
    assert "selectionBehavior" not in card


@pytest.mark.parametrize("hook", ["order-select", "order-sign"])
def test_order_hooks_need_draft_orders(client: FlaskClient, hook: str) -> None:
    """Without context.draftOrders the envelope is refused (400), with the path."""
    call = order_call(hook)
    del call["context"]["draftOrders"]
    response = client.post(hook_url(hook), json=call)
    assert response.status_code == 400
    assert ["context.draftOrders"] in [i.get("expression") for i in response.get_json()["issue"]]


@pytest.mark.parametrize("hook", list(HOOK_URLS))
def test_unknown_hook_is_still_refused(client: FlaskClient, hook: str) -> None:
    """A hook no service answers: 400 on `hook`, naming the one hook this service answers."""
    call = order_call("order-sign")
    call["hook"] = "encounter-start"
    response = client.post(HOOK_URLS[hook], json=call)
    assert response.status_code == 400
    (issue,) = response.get_json()["issue"]
    assert issue["expression"] == ["hook"]
    assert issue["diagnostics"] == f"this service answers {hook}, not 'encounter-start'"


@pytest.mark.parametrize(("sent", "service"), list(itertools.permutations(HOOK_URLS, 2)))
def test_a_hook_sent_to_another_hooks_service_is_refused(
    client: FlaskClient, sent: str, service: str
) -> None:
    """Each service answers its own hook only; another is 400 on `hook` saying where to send it."""
    call = order_call(sent, draft("emg-1", *EMG))
    response = client.post(HOOK_URLS[service], json=call)
    assert response.status_code == 400, response.get_data(as_text=True)
    (issue,) = response.get_json()["issue"]
    assert issue["expression"] == ["hook"]
    assert issue["diagnostics"] == (
        f"this service answers {service}, not {sent!r}; send {sent} to {HOOK_URLS[sent]}"
    )


def test_active_order_on_the_chart_and_a_draft_both_count(client: FlaskClient) -> None:
    """An active ServiceRequest in prefetch and a draft in context: neither order is suggested."""
    call = order_call("order-select", draft("emg-1", *EMG))
    active = draft("ref-active", *NEUROLOGY)
    active["status"] = "active"
    call["prefetch"]["serviceRequests"] = {
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": [{"resource": active}],
    }
    (card,) = client.post(HOOK_URLS["order-select"], json=call).get_json()["cards"]
    assert card_rules([card]) == [topic("motor-neuron-red-flags")]
    assert "suggestions" not in card
    assert "ServiceRequest/ref-active, active" in card["detail"]


@pytest.mark.parametrize(
    ("change", "path"),
    [
        (lambda d: d.update(code="EMG"), "context.draftOrders.entry[0].resource.code"),
        (lambda d: d.update(code={"coding": "EMG"}), "context.draftOrders.entry[0].resource.code"),
        (
            lambda d: d["code"]["coding"].append({"code": 7}),
            "context.draftOrders.entry[0].resource.code.coding[1]",
        ),
        (lambda d: d.update(status=12), "context.draftOrders.entry[0].resource.status"),
        (lambda d: d.pop("resourceType"), "context.draftOrders.entry[0].resource.resourceType"),
    ],
)
def test_a_malformed_draft_order_is_a_400_with_its_path(client: FlaskClient, change: Any, path: str) -> None:
    """A draft's code, status or type of the wrong JSON type: 400 naming it (was a 500 for a string code)."""
    order = draft("sr-1", *NEUROLOGY)
    change(order)
    response = client.post(hook_url("order-sign"), json=order_call("order-sign", order))
    assert response.status_code == 400, response.get_data(as_text=True)
    assert [path] in [i.get("expression") for i in response.get_json()["issue"]]
