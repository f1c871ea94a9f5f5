"""The fallback fetch makes a GET once more after a connection error, within its budget.

The server is tests/test_fhir_fallback.py's FakeFhirServer (a test double: a real HTTP server on
127.0.0.1 that answers one patient's reads and searches) told to drop connections: it reads the
request and closes the connection without answering, as a server restarting or a load balancer
recycling a keep-alive connection does.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from service.metrics import FETCH_RETRIES
from tests.conftest import EXAMPLES, card_rules, load_json, topic
from tests.test_fhir_fallback import HOOK, FakeFhirServer, FakeHandler, make_app, server_call

TYPES = ("Patient", "Observation", "QuestionnaireResponse", "Condition", "ServiceRequest")


@pytest.fixture
def example() -> dict[str, Any]:
    """The motor-neuron example (weakness: yes) as one patient's resources."""
    return dict(load_json(EXAMPLES / "motor-neuron-red-flags" / "fires-weakness.json"))


@pytest.fixture
def fake(example: dict[str, Any]) -> Iterator[FakeFhirServer]:
    """The double, serving the example's patient."""
    server = FakeFhirServer([e["resource"] for e in example["entry"]])
    yield server
    server.close()


def dropping(times: int) -> Any:
    """A responder that drops the first `times` requests of its resource type, then answers."""
    seen = {"count": 0}

    def respond(handler: FakeHandler, path: str, query: dict[str, str]) -> None:
        seen["count"] += 1
        if seen["count"] <= times:
            handler.close_connection = True  # nothing written: the client sees the connection drop
            return
        handler.answer(path, query)

    return respond


def test_a_dropped_connection_is_retried_once(fake: FakeFhirServer, example: dict[str, Any]) -> None:
    """Every first GET dropped: each is made once more, and the cards are the ordinary ones."""
    for kind in TYPES:
        fake.responders[kind] = dropping(1)
    before = FETCH_RETRIES._value.get()
    response = make_app(fake).test_client().post(HOOK, json=server_call(example, fake.base))
    assert response.status_code == 200, response.get_data(as_text=True)
    assert card_rules(response.get_json()["cards"]) == [topic("motor-neuron-red-flags")]
    assert {kind: len(fake.of_type(kind)) for kind in TYPES} == dict.fromkeys(TYPES, 2)
    assert FETCH_RETRIES._value.get() - before == len(TYPES)


def test_only_one_retry_and_within_the_budget(fake: FakeFhirServer, example: dict[str, Any]) -> None:
    """A server that drops every connection: two tries per GET, then 412 (transient), at once."""
    for kind in TYPES:
        fake.responders[kind] = dropping(100)
    client = make_app(fake, FHIR_FETCH_BUDGET_SECONDS=2.0).test_client()
    started = time.perf_counter()
    response = client.post(HOOK, json=server_call(example, fake.base))
    took = time.perf_counter() - started
    assert response.status_code == 412
    issues = response.get_json()["issue"]
    assert {i["code"] for i in issues} == {"transient"}
    assert all("could not connect to the FHIR server" in i["diagnostics"] for i in issues)
    assert {kind: len(fake.of_type(kind)) for kind in TYPES} == dict.fromkeys(TYPES, 2)
    assert took < 1.0, f"took {took:.2f} s"
