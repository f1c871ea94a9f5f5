"""Fallback fetch from fhirServer, against loopback test doubles that misbehave on cue.

FakeFhirServer is a test double, not a FHIR server: it answers reads and searches for one patient
from an example Bundle and can be told to fail, stall, drip, redirect, page or send junk, which a
real server cannot be made to do on demand (tests/test_fhir_server_e2e.py runs a real one).
Canary listens on 127.0.0.2, a second loopback address: anything that must be blocked points
there, and the tests check that it was never contacted.
"""

from __future__ import annotations

import copy
import gzip
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import orjson
import pytest
from flask import Flask
from flask.testing import FlaskClient

from service.app import create_app
from service.cdshooks.fetch import FetchConfigError, FetchSettings
from service.config import load_config
from tests.conftest import (
    EXAMPLE_DAY,
    EXAMPLES,
    bundle_to_hook_request,
    card_rules,
    load_json,
    server_only,
    topic,
)
from tests.conftest import card_signature as signature

HOOK = "/cds-services/twitching-red-flags"
TOKEN = "tok-7f3a9c2e-never-elsewhere"
PATIENT = "mnd-weakness"  # the patient of motor-neuron-red-flags/fires-weakness.json
Responder = Callable[["FakeHandler", str, dict[str, str]], None]


@dataclass
class Recorded:
    """One request the double received."""

    path: str
    query: dict[str, str]
    headers: dict[str, str]


class _Server(ThreadingHTTPServer):
    """A listen queue deep enough for the fetcher's parallel connects.

    With http.server's default of 5, a burst of connects while the accept loop waits for the GIL
    overflows it; the kernel drops the SYN and the client retries it after 1 s, so a test timing a
    fault saw a 1 s stall that no real server of this kind shows.
    """

    request_queue_size = 128


@dataclass
class FakeFhirServer:
    """Test double of an EHR's FHIR server on 127.0.0.1 (see the module docstring)."""

    resources: list[dict[str, Any]]
    responders: dict[str, Responder] = field(default_factory=dict)  # by resource type
    received: list[Recorded] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    delay: float = 0.0  # added before every answer

    def __post_init__(self) -> None:
        handler = type("BoundHandler", (FakeHandler,), {"fake": self})
        self.httpd = _Server(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.httpd.block_on_close = False
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    @property
    def origin(self) -> str:
        """http://127.0.0.1:<port>"""
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    @property
    def base(self) -> str:
        """The FHIR base URL of the double."""
        return f"{self.origin}/fhir"

    def close(self) -> None:
        """Stop serving and release stalled handlers."""
        self.stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()

    def of_type(self, resource_type: str) -> list[Recorded]:
        """Requests for one resource type."""
        return [r for r in self.received if r.path.split("/")[2] == resource_type]


class FakeHandler(BaseHTTPRequestHandler):
    """Routes /fhir/<Type>[/<id>] to a responder or to the default, faithful answer."""

    fake: FakeFhirServer
    protocol_version = "HTTP/1.1"  # keep-alive, as the pooled client expects
    disable_nagle_algorithm = True  # headers and body go out at once, as from a real server

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""

    def do_GET(self) -> None:
        """Record, wait if told to, then answer."""
        parts = urlsplit(self.path)
        query = dict(parse_qsl(parts.query))
        self.fake.received.append(Recorded(parts.path, query, dict(self.headers.items())))
        if self.fake.delay:
            self.fake.stop.wait(self.fake.delay)
        segments = parts.path.split("/")
        resource_type = segments[2] if len(segments) > 2 else ""
        responder = self.fake.responders.get(resource_type)
        if responder is not None:
            responder(self, parts.path, query)
        else:
            self.answer(parts.path, query)

    def send(
        self, status: int, body: bytes, content_type: str = "application/fhir+json", **headers: str
    ) -> None:
        """A complete response with Content-Length."""
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers.items():
            self.send_header(name.replace("_", "-"), value)
        self.end_headers()
        self.wfile.write(body)

    def send_json(self, status: int, body: Any, **headers: str) -> None:
        """A FHIR JSON response."""
        self.send(status, orjson.dumps(body), **headers)

    def answer(self, path: str, query: dict[str, str], entries: list[dict[str, Any]] | None = None) -> None:
        """What a well-behaved server answers: the read, or a searchset of this type for the patient."""
        segments = path.split("/")
        if len(segments) == 4:
            found = [
                r
                for r in self.fake.resources
                if r["resourceType"] == segments[2] and r.get("id") == segments[3]
            ]
            if found:
                self.send_json(200, found[0])
            else:
                self.send_json(404, outcome("not-found"))
            return
        patient = query.get("patient", "").removeprefix("Patient/")
        matches = [
            r
            for r in self.fake.resources
            if r["resourceType"] == segments[2]
            and r.get("subject", {}).get("reference") == f"Patient/{patient}"
        ]
        bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset", "total": len(matches)}
        bundle["link"] = [{"relation": "self", "url": f"{self.fake.origin}{self.path}"}]
        rows = [{"resource": r, "search": {"mode": "match"}} for r in matches] + (entries or [])
        if rows:
            bundle["entry"] = rows
        self.send_json(200, bundle)


def outcome(code: str) -> dict[str, Any]:
    """A small OperationOutcome whose text names the patient (it must never be echoed)."""
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": code, "diagnostics": f"Patient/{PATIENT} is locked"}],
    }


class Canary:
    """A listener on 127.0.0.2 that must never be contacted: it counts every connection."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            self.sock.bind(("127.0.0.2", 0))
        except OSError as exc:
            self.sock.close()
            pytest.skip(f"127.0.0.2 is not a usable loopback address here: {exc}")
        self.sock.listen(8)
        self.sock.settimeout(0.05)
        self.contacts = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    @property
    def base(self) -> str:
        """A FHIR base URL on the canary."""
        return f"http://127.0.0.2:{self.sock.getsockname()[1]}/fhir"

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.contacts += 1
            conn.close()

    def close(self) -> None:
        """Stop listening."""
        self.stop.set()
        self.thread.join()
        self.sock.close()


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


@pytest.fixture
def canary() -> Iterator[Canary]:
    """The 127.0.0.2 listener; every test that uses it checks it stayed silent."""
    listener = Canary()
    yield listener
    listener.close()


def make_app(fake: FakeFhirServer | None, **config: Any) -> Flask:
    """The app with the double allow-listed (plain http on loopback: ENV=development)."""
    settings: dict[str, Any] = {"TESTING": True, "TODAY": EXAMPLE_DAY, "ENV": "development"}
    if fake is not None:
        settings["FHIR_SERVER_ALLOWLIST"] = [fake.base]
    settings.update(config)
    return create_app(settings)


@pytest.fixture
def fetching(fake: FakeFhirServer) -> FlaskClient:
    """A client of an app that may fetch from the double."""
    return make_app(fake).test_client()


def server_call(
    example: dict[str, Any], fhir_server: str, prefetch: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The hook call of an EHR that sends fhirServer and a token, and `prefetch` (none by default)."""
    return {**server_only(bundle_to_hook_request(example), fhir_server, TOKEN), "prefetch": prefetch or {}}


def assert_412_is_clean(body: str) -> None:
    """A 412 says why, but never carries the token, the patient id or a server's free text."""
    assert TOKEN not in body
    assert PATIENT not in body
    assert "locked" not in body


# -- the ordinary fallback -----------------------------------------------------------------------


def test_only_fhir_server_gives_the_prefetch_cards(
    fetching: FlaskClient, fake: FakeFhirServer, example: dict[str, Any], client: FlaskClient
) -> None:
    """No prefetch at all: every template is run against the server, and the cards are the same."""
    with_prefetch = client.post(HOOK, json=bundle_to_hook_request(example)).get_json()["cards"]
    response = fetching.post(HOOK, json=server_call(example, fake.base))
    assert response.status_code == 200, response.get_data(as_text=True)
    cards = response.get_json()["cards"]
    assert signature(cards) == signature(with_prefetch)
    assert card_rules(cards) == [topic("motor-neuron-red-flags")]
    paths = sorted(r.path for r in fake.received)
    assert paths == sorted(
        [
            f"/fhir/Patient/{PATIENT}",
            "/fhir/Observation",
            "/fhir/QuestionnaireResponse",
            "/fhir/Condition",
            "/fhir/ServiceRequest",
            "/fhir/MedicationRequest",
            "/fhir/MedicationStatement",
        ]
    )
    for request in fake.received:
        assert request.headers["Authorization"] == f"Bearer {TOKEN}"
        assert request.headers["Accept"] == "application/fhir+json"
    (observations,) = fake.of_type("Observation")
    assert observations.query["patient"] == f"Patient/{PATIENT}"
    assert "2823-3" in observations.query["code"].split(",")
    assert observations.query["_count"] == "100"


def test_only_missing_keys_are_fetched(
    fetching: FlaskClient, fake: FakeFhirServer, example: dict[str, Any]
) -> None:
    """A null, an OperationOutcome and a dropped key are fetched; what was prefetched is not."""
    prefetch = bundle_to_hook_request(example)["prefetch"]
    prefetch["questionnaireResponses"] = None
    prefetch["observations"] = outcome("timeout")
    del prefetch["serviceRequests"]
    response = fetching.post(HOOK, json=server_call(example, fake.base, prefetch))
    assert response.status_code == 200
    assert card_rules(response.get_json()["cards"]) == [topic("motor-neuron-red-flags")]
    assert sorted(r.path for r in fake.received) == [
        "/fhir/Observation",
        "/fhir/QuestionnaireResponse",
        "/fhir/ServiceRequest",
    ]


def test_open_server_without_a_token(
    fetching: FlaskClient, fake: FakeFhirServer, example: dict[str, Any]
) -> None:
    """The sandbox sends fhirServer without fhirAuthorization for an open server: no Authorization."""
    call = server_call(example, fake.base)
    del call["fhirAuthorization"]
    response = fetching.post(HOOK, json=call)
    assert card_rules(response.get_json()["cards"]) == [topic("motor-neuron-red-flags")]
    assert len(fake.received) == 7
    assert all("Authorization" not in r.headers for r in fake.received)


def test_data_under_another_key_name_is_not_fetched_again(
    fetching: FlaskClient, fake: FakeFhirServer, example: dict[str, Any]
) -> None:
    """A health system's own key name (Epic): its searchset counts, so that type is not fetched."""
    prefetch = bundle_to_hook_request(example)["prefetch"]
    prefetch["twitchAnswers"] = prefetch.pop("questionnaireResponses")
    response = fetching.post(HOOK, json=server_call(example, fake.base, prefetch))
    assert card_rules(response.get_json()["cards"]) == [topic("motor-neuron-red-flags")]
    assert fake.received == []


def test_nothing_fetched_when_prefetch_is_complete(
    fetching: FlaskClient, fake: FakeFhirServer, example: dict[str, Any]
) -> None:
    """Full prefetch: fhirServer is never called."""
    response = fetching.post(
        HOOK, json=server_call(example, fake.base, bundle_to_hook_request(example)["prefetch"])
    )
    assert response.status_code == 200
    assert fake.received == []


def test_fetched_outcome_entries_reach_the_data_card(
    fetching: FlaskClient, fake: FakeFhirServer, example: dict[str, Any]
) -> None:
    """A searchset with an OperationOutcome entry: the warning is shown and reassurance withheld."""

    def with_warning(handler: FakeHandler, path: str, query: dict[str, str]) -> None:
        warning = {
            "resourceType": "OperationOutcome",
            "issue": [{"severity": "warning", "code": "incomplete"}],
        }
        handler.answer(path, query, [{"resource": warning, "search": {"mode": "outcome"}}])

    fake.responders["Observation"] = with_warning
    cards = fetching.post(HOOK, json=server_call(example, fake.base)).get_json()["cards"]
    assert card_rules(cards) == [topic("motor-neuron-red-flags"), "dataquality"]
    assert "fetched.observations.entry[0].resource" in cards[1]["detail"]


def test_fetches_run_in_parallel_within_the_budget(fake: FakeFhirServer, example: dict[str, Any]) -> None:
    """Seven reads and searches that each take 0.3 s finish together, well before 7 x 0.3 s."""
    fake.delay = 0.3
    client = make_app(fake).test_client()
    started = time.perf_counter()
    response = client.post(HOOK, json=server_call(example, fake.base))
    elapsed = time.perf_counter() - started
    assert response.status_code == 200
    assert len(fake.received) == 7
    assert elapsed < 1.2, elapsed  # one after another would take at least 2.1 s


# -- paging -----------------------------------------------------------------------------------------


def endless_pages(handler: FakeHandler, path: str, query: dict[str, str]) -> None:
    """Every page links to one more (relative link, as some servers write)."""
    page = int(query.get("page", "0"))
    bundle = {
        "resourceType": "Bundle",
        "type": "searchset",
        "link": [{"relation": "next", "url": f"Observation?patient={query['patient']}&page={page + 1}"}],
    }
    handler.send_json(200, bundle)


def test_page_cap_ends_on_a_warning(fake: FakeFhirServer, example: dict[str, Any]) -> None:
    """Paging stops at FHIR_FETCH_MAX_PAGES; the data card says data may be missing."""
    fake.responders["Observation"] = endless_pages
    client = make_app(fake, FHIR_FETCH_MAX_PAGES=3).test_client()
    response = client.post(HOOK, json=server_call(example, fake.base))
    assert response.status_code == 200
    assert [r.query.get("page") for r in fake.of_type("Observation")] == [None, "1", "2"]
    cards = response.get_json()["cards"]
    assert card_rules(cards) == [topic("motor-neuron-red-flags"), "dataquality"]
    assert "FHIR\\_FETCH\\_MAX\\_PAGES (3)" in cards[-1]["detail"]  # Markdown-escaped
    assert "`fetched.observations`" in cards[-1]["detail"]


def test_pages_are_merged(fake: FakeFhirServer, example: dict[str, Any]) -> None:
    """The answer's entries spread over pages are all read (the response is on page 2)."""

    def two_pages(handler: FakeHandler, path: str, query: dict[str, str]) -> None:
        if "page" not in query:
            next_link = f"{fake.base}/QuestionnaireResponse?patient={query['patient']}&page=2"
            handler.send_json(
                200,
                {
                    "resourceType": "Bundle",
                    "type": "searchset",
                    "link": [{"relation": "next", "url": next_link}],
                },
            )
        else:
            handler.answer(path, query)

    fake.responders["QuestionnaireResponse"] = two_pages
    response = make_app(fake).test_client().post(HOOK, json=server_call(example, fake.base))
    assert card_rules(response.get_json()["cards"]) == [topic("motor-neuron-red-flags")]
    assert len(fake.of_type("QuestionnaireResponse")) == 2


def test_next_link_to_another_origin_is_not_followed(
    fetching: FlaskClient, fake: FakeFhirServer, canary: Canary, example: dict[str, Any]
) -> None:
    """A next link to 127.0.0.2: not followed, the token stays home, and the card says so."""

    def next_elsewhere(handler: FakeHandler, path: str, query: dict[str, str]) -> None:
        link = {"relation": "next", "url": f"{canary.base}/Observation?page=2"}
        handler.send_json(200, {"resourceType": "Bundle", "type": "searchset", "link": [link]})

    fake.responders["Observation"] = next_elsewhere
    cards = fetching.post(HOOK, json=server_call(example, fake.base)).get_json()["cards"]
    assert card_rules(cards) == [topic("motor-neuron-red-flags"), "dataquality"]
    assert "outside fhirServer, not followed" in cards[-1]["detail"]
    assert canary.contacts == 0


# -- what is refused before any request -------------------------------------------------------------


def test_fetching_is_disabled_by_default(
    fake: FakeFhirServer, example: dict[str, Any], client: FlaskClient
) -> None:
    """The default allow-list is empty: 412 says so, and the server is never called."""
    response = client.post(HOOK, json=server_call(example, fake.base))
    assert response.status_code == 412
    body = response.get_data(as_text=True)
    assert "FHIR_SERVER_ALLOWLIST is empty" in body
    assert [i["expression"] for i in response.get_json()["issue"]] == [
        ["prefetch.patient"],
        ["prefetch.observations"],
        ["prefetch.questionnaireResponses"],
    ]
    assert fake.received == []
    assert_412_is_clean(body)


def test_no_fhir_server_is_412(fetching: FlaskClient, example: dict[str, Any]) -> None:
    """Prefetch lacks a required key and the request names no fhirServer (a null is taken as no data)."""
    call = bundle_to_hook_request(example)
    del call["prefetch"]["observations"]
    response = fetching.post(HOOK, json=call)
    assert response.status_code == 412
    (issue,) = response.get_json()["issue"]
    assert issue["expression"] == ["prefetch.observations"]
    assert "not sent" in issue["diagnostics"]
    assert "names no fhirServer" in issue["diagnostics"]
    call["prefetch"]["observations"] = None
    assert fetching.post(HOOK, json=call).status_code == 200


def test_missing_optional_data_is_quiet_when_it_cannot_be_fetched(
    client: FlaskClient, example: dict[str, Any]
) -> None:
    """Only the required keys sent and no fetching: the cards, without a data card, as before."""
    call = bundle_to_hook_request(example)
    del call["prefetch"]["conditions"], call["prefetch"]["serviceRequests"]
    assert card_rules(client.post(HOOK, json=call).get_json()["cards"]) == [topic("motor-neuron-red-flags")]


@pytest.mark.parametrize(
    ("make_url", "why"),
    [
        (lambda fake, canary: canary.base, "is not on this service's FHIR_SERVER_ALLOWLIST"),
        # A string-prefix check would pass this: user info makes 127.0.0.2 the real host.
        (lambda fake, canary: f"{fake.origin}@{canary.base.removeprefix('http://')}", "user info"),
        (lambda fake, canary: f"{fake.base}x", "is not on this service's FHIR_SERVER_ALLOWLIST"),
        (lambda fake, canary: f"{fake.base}/../admin", ". or .. segments"),
    ],
    ids=["other-host", "user-info", "sibling-path", "dot-segments"],
)
def test_servers_off_the_allow_list_are_never_contacted(
    fetching: FlaskClient,
    fake: FakeFhirServer,
    canary: Canary,
    example: dict[str, Any],
    make_url: Callable[[FakeFhirServer, Canary], str],
    why: str,
) -> None:
    """Only an allow-listed base, compared by origin and path segment, is fetched from."""
    response = fetching.post(HOOK, json=server_call(example, make_url(fake, canary)))
    assert response.status_code == 412
    body = response.get_data(as_text=True)
    assert why in body
    assert_412_is_clean(body)
    assert fake.received == []
    assert canary.contacts == 0


# -- how each failure of the server is reported -----------------------------------------------------


def always(
    status: int, body: bytes = b"", content_type: str = "application/fhir+json", **headers: str
) -> Responder:
    """A responder that always answers the same."""

    def respond(handler: FakeHandler, path: str, query: dict[str, str]) -> None:
        handler.send(status, body, content_type, **headers)

    return respond


@pytest.mark.parametrize(
    ("responder", "why", "code"),
    [
        (always(401, orjson.dumps(outcome("login"))), "refused the access token", "login"),
        (always(403, orjson.dumps(outcome("forbidden"))), "HTTP 403", "forbidden"),
        (always(404, orjson.dumps(outcome("not-found"))), "HTTP 404", "not-found"),
        (
            always(500, b"<html>Internal error</html>", "text/html"),
            "failed on the Observation search (HTTP 500)",
            "transient",
        ),
        (always(503, b"", Retry_After="1"), "HTTP 503", "transient"),
        (always(429, b""), "rate limiting", "throttled"),
        (always(200, b"<html>login page</html>", "text/html"), "with text/html, not FHIR JSON", "structure"),
        (
            always(200, b'{"resourceType": "Bundle", "entry": [', "application/fhir+json"),
            "malformed JSON",
            "structure",
        ),
        (always(200, b"[1, 2]"), "is not a FHIR resource", "structure"),
        (
            always(200, orjson.dumps({"resourceType": "Bundle", "type": "batch-response"})),
            "other than a searchset",
            "structure",
        ),
        (
            always(200, orjson.dumps(outcome("processing"))),
            "with an OperationOutcome (processing)",
            "processing",
        ),
    ],
    ids=[
        "401",
        "403",
        "404",
        "500-html",
        "503",
        "429",
        "html-200",
        "truncated",
        "array",
        "batch",
        "outcome-200",
    ],
)
def test_observation_search_failures_are_412(
    fetching: FlaskClient,
    fake: FakeFhirServer,
    example: dict[str, Any],
    responder: Responder,
    why: str,
    code: str,
) -> None:
    """Each failure of a required search is a 412 naming the data, the cause and its issue code."""
    fake.responders["Observation"] = responder
    response = fetching.post(HOOK, json=server_call(example, fake.base))
    assert response.status_code == 412, response.get_data(as_text=True)
    assert response.mimetype == "application/fhir+json"
    (issue,) = response.get_json()["issue"]
    assert issue["expression"] == ["prefetch.observations"]
    assert issue["code"] == code
    assert why in issue["diagnostics"], issue["diagnostics"]
    assert_412_is_clean(response.get_data(as_text=True))


def test_unknown_patient_is_412(fetching: FlaskClient, fake: FakeFhirServer, example: dict[str, Any]) -> None:
    """The server has no such Patient (404 on the read)."""
    fake.resources = [r for r in fake.resources if r["resourceType"] != "Patient"]
    response = fetching.post(HOOK, json=server_call(example, fake.base))
    assert response.status_code == 412
    (issue,) = response.get_json()["issue"]
    assert issue["expression"] == ["prefetch.patient"]
    assert "Patient read (HTTP 404)" in issue["diagnostics"]


def test_another_patient_from_the_read_is_412(
    fetching: FlaskClient, fake: FakeFhirServer, example: dict[str, Any]
) -> None:
    """A read answered with a different Patient is not used."""

    def other(handler: FakeHandler, path: str, query: dict[str, str]) -> None:
        handler.send_json(200, {"resourceType": "Patient", "id": "someone-else"})

    fake.responders["Patient"] = other
    response = fetching.post(HOOK, json=server_call(example, fake.base))
    assert response.status_code == 412
    assert "another resource" in response.get_json()["issue"][0]["diagnostics"]
    assert "someone-else" not in response.get_data(as_text=True)


def test_optional_search_failure_is_a_warning(
    fetching: FlaskClient, fake: FakeFhirServer, example: dict[str, Any]
) -> None:
    """ServiceRequests are optional: their failure is said on the data card, not a 412."""
    fake.responders["ServiceRequest"] = always(502)
    response = fetching.post(HOOK, json=server_call(example, fake.base))
    assert response.status_code == 200
    cards = response.get_json()["cards"]
    assert card_rules(cards) == [topic("motor-neuron-red-flags"), "dataquality"]
    assert "ServiceRequest could not be fetched from fhirServer" in cards[-1]["detail"]
    assert "HTTP 502" in cards[-1]["detail"]


def test_server_down_is_412_at_once(example: dict[str, Any]) -> None:
    """Nothing listens on the allow-listed port: 412 without waiting for the budget."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        base = f"http://127.0.0.1:{probe.getsockname()[1]}/fhir"
    client = create_app(
        {"TESTING": True, "TODAY": EXAMPLE_DAY, "ENV": "development", "FHIR_SERVER_ALLOWLIST": [base]}
    ).test_client()
    started = time.perf_counter()
    response = client.post(HOOK, json=server_call(example, base))
    assert time.perf_counter() - started < 1.0
    assert response.status_code == 412
    issues = response.get_json()["issue"]
    assert len(issues) == 3
    assert all("could not connect to the FHIR server" in i["diagnostics"] for i in issues)
    assert {i["code"] for i in issues} == {"transient"}


# -- the budget -------------------------------------------------------------------------------------


def stall(seconds: float) -> Responder:
    """Say nothing for `seconds`, then answer."""

    def respond(handler: FakeHandler, path: str, query: dict[str, str]) -> None:
        if not handler.fake.stop.wait(seconds):
            handler.answer(path, query)

    return respond


def drip(handler: FakeHandler, path: str, query: dict[str, str]) -> None:
    """Headers at once, then one byte of body every 50 ms (each read is quick, the whole is not)."""
    handler.send_response(200)
    handler.send_header("Content-Type", "application/fhir+json")
    handler.send_header("Connection", "close")
    handler.end_headers()
    try:
        while not handler.fake.stop.wait(0.05):
            handler.wfile.write(b" ")
            handler.wfile.flush()
    except OSError:
        return


@pytest.mark.parametrize("responder", [stall(5.0), drip], ids=["silent", "dripping"])
def test_slow_server_is_412_within_the_budget(
    fake: FakeFhirServer, example: dict[str, Any], responder: Responder
) -> None:
    """A stalled or dripping server: 412 (timeout) once the budget is spent, not later."""
    fake.responders["Observation"] = responder
    client = make_app(fake, FHIR_FETCH_BUDGET_SECONDS=0.5).test_client()
    started = time.perf_counter()
    response = client.post(HOOK, json=server_call(example, fake.base))
    elapsed = time.perf_counter() - started
    assert response.status_code == 412
    (issue,) = response.get_json()["issue"]
    assert issue["code"] == "timeout"
    assert "0.5 s budget" in issue["diagnostics"]
    assert 0.45 < elapsed < 1.0, elapsed  # the budget, plus room for a busy test machine


# -- sizes ------------------------------------------------------------------------------------------


def endless_body(handler: FakeHandler, path: str, query: dict[str, str]) -> None:
    """A body with no length that never ends (only a stop-and-close reader survives it)."""
    handler.send_response(200)
    handler.send_header("Content-Type", "application/fhir+json")
    handler.send_header("Connection", "close")
    handler.end_headers()
    try:
        handler.wfile.write(b'{"resourceType": "Bundle", "type": "searchset", "entry": [')
        while not handler.fake.stop.is_set():
            handler.wfile.write(b"{}," * 4096)
    except OSError:
        return


def pages_adding_up(handler: FakeHandler, path: str, query: dict[str, str]) -> None:
    """Pages of 60 kB each: every one under the cap, two of them over it."""
    page = int(query.get("page", "0"))
    link = [{"relation": "next", "url": f"Observation?patient={query['patient']}&page={page + 1}"}]
    body = orjson.dumps({"resourceType": "Bundle", "type": "searchset", "link": link})
    handler.send(200, body[:-1] + b" " * 60_000 + b"}")


BOMB = gzip.compress(
    b'{"resourceType": "Bundle", "type": "searchset", "entry": [' + b" " * 20_000_000 + b"]}"
)


@pytest.mark.parametrize(
    "responder",
    [
        always(200, b"{" + b" " * 200_000 + b"}"),  # declared too large by Content-Length
        endless_body,
        always(200, BOMB, Content_Encoding="gzip"),  # 20 kB on the wire, 20 MB decoded
        pages_adding_up,  # the cap covers all pages of a search together
    ],
    ids=["declared", "streamed", "gzip-bomb", "pages"],
)
def test_oversized_answers_are_cut_off(
    fake: FakeFhirServer, example: dict[str, Any], responder: Responder
) -> None:
    """Over FHIR_FETCH_MAX_BYTES: reading stops at the cap and the search fails."""
    fake.responders["Observation"] = responder
    client = make_app(fake, FHIR_FETCH_MAX_BYTES=100_000).test_client()
    started = time.perf_counter()
    response = client.post(HOOK, json=server_call(example, fake.base))
    assert time.perf_counter() - started < 1.0
    assert response.status_code == 412
    (issue,) = response.get_json()["issue"]
    assert issue["code"] == "too-costly"
    assert "larger than FHIR_FETCH_MAX_BYTES (100000 bytes)" in issue["diagnostics"]


# -- redirects, cookies, the token ------------------------------------------------------------------


def test_redirect_to_another_origin_is_not_followed(
    fetching: FlaskClient, fake: FakeFhirServer, canary: Canary, example: dict[str, Any]
) -> None:
    """A 302 to 127.0.0.2 is refused: the token is never sent there."""
    fake.responders["Patient"] = always(302, Location=f"{canary.base}/Patient/{PATIENT}")
    response = fetching.post(HOOK, json=server_call(example, fake.base))
    assert response.status_code == 412
    (issue,) = response.get_json()["issue"]
    assert "redirected the Patient read away from fhirServer" in issue["diagnostics"]
    assert canary.contacts == 0


def test_redirect_outside_the_base_path_is_not_followed(
    fetching: FlaskClient, fake: FakeFhirServer, example: dict[str, Any]
) -> None:
    """Same origin but off the FHIR base (e.g. a login page): not followed."""
    fake.responders["Patient"] = always(303, Location="/login?next=somewhere")
    response = fetching.post(HOOK, json=server_call(example, fake.base))
    assert response.status_code == 412
    assert len(fake.of_type("Patient")) == 1


def test_redirect_inside_the_base_is_followed(
    fetching: FlaskClient, fake: FakeFhirServer, example: dict[str, Any]
) -> None:
    """A 307 to another URL of the same base is followed, with the token."""

    def moved(handler: FakeHandler, path: str, query: dict[str, str]) -> None:
        if "moved" in query:
            handler.answer(path, query)
        else:
            handler.send(307, b"", Location=f"{handler.path}&moved=1")

    fake.responders["QuestionnaireResponse"] = moved
    response = fetching.post(HOOK, json=server_call(example, fake.base))
    assert card_rules(response.get_json()["cards"]) == [topic("motor-neuron-red-flags")]
    _, second = fake.of_type("QuestionnaireResponse")
    assert second.query["moved"] == "1"
    assert second.headers["Authorization"] == f"Bearer {TOKEN}"


def test_cookies_are_never_sent_back(fake: FakeFhirServer, example: dict[str, Any]) -> None:
    """A cookie set by the server is not stored: no later request, in this call or the next, carries it."""

    def set_cookie(handler: FakeHandler, path: str, query: dict[str, str]) -> None:
        handler.send(404, b"", Set_Cookie="session=abc; Path=/")

    fake.responders["Patient"] = set_cookie
    client = make_app(fake).test_client()
    client.post(HOOK, json=server_call(example, fake.base))
    client.post(HOOK, json=server_call(example, fake.base))
    assert all("Cookie" not in r.headers for r in fake.received)


def test_rejected_search_forms_are_retried_simpler(
    fetching: FlaskClient, fake: FakeFhirServer, example: dict[str, Any]
) -> None:
    """A search refused with 400 is tried with the bare id, then with the patient alone (no filter)."""
    lab = load_json(EXAMPLES / "lab-low-potassium" / "fires-low-potassium-full-panel.json")
    observations = copy.deepcopy(
        [e["resource"] for e in lab["entry"] if e["resource"]["resourceType"] == "Observation"]
    )
    for observation in observations:
        observation["subject"] = {"reference": f"Patient/{PATIENT}"}
    fake.resources.extend(observations)

    def picky(handler: FakeHandler, path: str, query: dict[str, str]) -> None:
        if "code" in query:
            handler.send_json(400, outcome("not-supported"))
        else:
            handler.answer(path, {"patient": f"Patient/{PATIENT}"})

    fake.responders["Observation"] = picky
    response = fetching.post(HOOK, json=server_call(example, fake.base))
    assert response.status_code == 200
    assert topic("lab-low-potassium") in card_rules(response.get_json()["cards"])
    tried = [(r.query["patient"], "code" in r.query) for r in fake.of_type("Observation")]
    assert tried == [(f"Patient/{PATIENT}", True), (PATIENT, True), (f"Patient/{PATIENT}", False)]


def test_token_and_patient_stay_out_of_logs(
    fake: FakeFhirServer, example: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    """The fetch log line names keys, counts and time; never the token, the patient or a search URL."""
    fake.responders["Observation"] = always(500)
    client = make_app(fake).test_client()
    with caplog.at_level(logging.DEBUG):
        client.post(HOOK, json=server_call(example, fake.base))
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "fetch server=http://127.0.0.1:" in text
    assert "observations:transient" in text
    assert TOKEN not in text
    assert PATIENT not in text


# -- settings ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"FHIR_SERVER_ALLOWLIST": '["http://127.0.0.1:9/fhir"]', "ENV": "production"}, "must use https"),
        ({"FHIR_SERVER_ALLOWLIST": "not json"}, "is not valid JSON"),
        ({"FHIR_SERVER_ALLOWLIST": '{"a": 1}'}, "must be a JSON list"),
        ({"FHIR_SERVER_ALLOWLIST": '["https://u:p@127.0.0.1/fhir"]'}, "user info"),
        ({"FHIR_SERVER_ALLOWLIST": '["https://127.0.0.1/fhir?x=1"]'}, "query"),
        ({"FHIR_FETCH_BUDGET_SECONDS": 0}, "must be above 0"),
        ({"FHIR_FETCH_MAX_PAGES": "many"}, "must be a number"),
    ],
)
def test_unsafe_settings_refuse_to_start(config: dict[str, Any], message: str) -> None:
    """A setting that would be unsafe or unusable stops the app from starting, with the reason."""
    with pytest.raises(FetchConfigError, match=message):
        create_app({"TESTING": True, "ENV": "development", **config})


def test_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """TWITCH_CDS_* variables: the allow-list as JSON, numbers as text."""
    monkeypatch.setenv("TWITCH_CDS_FHIR_SERVER_ALLOWLIST", '["https://127.0.0.1:8443/fhir/R4/"]')
    monkeypatch.setenv("TWITCH_CDS_FHIR_FETCH_BUDGET_SECONDS", "1.5")
    monkeypatch.setenv("TWITCH_CDS_FHIR_FETCH_MAX_PAGES", "4")
    settings = FetchSettings.from_config(load_config())
    (base,) = settings.allowlist
    assert (base.scheme, base.host, base.port, base.path) == ("https", "127.0.0.1", 8443, "/fhir/R4")
    assert (settings.budget, settings.max_pages) == (1.5, 4)
