"""Duplicate keys in a JSON object (FHIR JSON forbids them): 400 naming each one's path, on every body."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest
from flask.testing import FlaskClient

from service.errors import BadRequest
from service.web import parse_json
from tests.conftest import EXAMPLES, HOOK_URLS, bundle_to_hook_request, load_json

WEAKNESS = EXAMPLES / "motor-neuron-red-flags" / "fires-weakness.json"
MESSAGE = "the key appears more than once in its object (JSON forbids it)"


def _issues(response: Any) -> list[dict[str, Any]]:
    assert response.status_code == 400, response.get_data(as_text=True)[:500]
    assert response.mimetype == "application/fhir+json"
    body = response.get_json()
    assert body["resourceType"] == "OperationOutcome"
    return list(body["issue"])


def _with_duplicate(text: str, anchor: str, extra: str) -> bytes:
    """The JSON text with `extra` (a member repeating a key) inserted right after the first `anchor`."""
    assert anchor in text
    return text.replace(anchor, anchor + extra, 1).encode()


@pytest.mark.parametrize("hook", list(HOOK_URLS))
def test_a_duplicate_in_a_hook_call_is_400_with_its_path(client: FlaskClient, hook: str) -> None:
    """Twice `hook` in the envelope, twice `gender` in the prefetched Patient: both named."""
    call = bundle_to_hook_request(load_json(WEAKNESS))
    call["hook"] = hook
    call["context"]["draftOrders"] = {"resourceType": "Bundle", "type": "collection", "entry": []}
    text = json.dumps(call).replace('"hookInstance"', f'"hook": "{hook}", "hookInstance"', 1)
    data = _with_duplicate(text, '"prefetch": {"patient": {', '"gender": "other", ')
    issues = _issues(client.post(HOOK_URLS[hook], data=data, content_type="application/json"))
    assert [(i["expression"], i["diagnostics"]) for i in issues] == [
        (["hook"], f"hook: {MESSAGE}"),
        (["prefetch.patient.gender"], f"prefetch.patient.gender: {MESSAGE}"),
    ]


def test_a_duplicate_in_an_evaluate_bundle_is_400(client: FlaskClient) -> None:
    """/evaluate: the path starts at the Bundle, FHIRPath style, as its other problems do."""
    bundle = load_json(WEAKNESS)
    first_id = bundle["entry"][0]["resource"]["id"]
    data = _with_duplicate(json.dumps(bundle), f'"id": "{first_id}"', ', "id": "other"')
    issues = _issues(client.post("/evaluate", data=data, content_type="application/fhir+json"))
    assert [i["expression"] for i in issues] == [["Bundle.entry[0].resource.id"]]


def test_a_duplicate_in_feedback_is_400(client: FlaskClient) -> None:
    """Feedback: `outcome` twice in one entry (which one did the clinician choose?)."""
    data = (
        b'{"feedback": [{"card": "9368d37b-283f-44a0-93ea-547cebab93ed", "outcome": "accepted",'
        b' "outcome": "overridden", "outcomeTimestamp": "2026-11-22T10:05:31Z"}]}'
    )
    for url in HOOK_URLS.values():
        issues = _issues(client.post(url + "/feedback", data=data, content_type="application/json"))
        assert [i["expression"] for i in issues] == [["feedback[0].outcome"]]


@pytest.mark.parametrize(
    ("text", "path"),
    [
        (b'{"a": 1, "\\u0061": 2}', "a"),  # the same key, escaped: still one key twice
        (b'{"x": "\\u003a", "a": {"b": 1, "b": 2}}', "a.b"),  # an escaped colon next to a duplicate
        (b'{"a": 1, "a": 2, "a": 3}', "a"),  # three times: reported once
        (b'{"a" : [ {"k":1} , {"k" :2 ,\n "k": 3} ] }', "a[1].k"),
        (b"[" * 300 + b'{"a": 1, "a": 2}' + b"]" * 300, "[0]" * 300 + ".a"),  # past orjson.dumps's depth
    ],
)
def test_parse_json_names_each_duplicate(text: bytes, path: str) -> None:
    """Escapes, odd whitespace, repeats and deep nesting do not hide a duplicate."""
    with pytest.raises(BadRequest) as raised:
        parse_json(text)
    expected = path if len(path) <= 500 else f"{path[:500]}… ({len(path)} characters)"
    assert [i.expression for i in raised.value.issues] == [expected]


@pytest.mark.parametrize(
    "text",
    [
        b'{"a": "b\\": \\"c\\":", "c": {"d": "::"}}',  # colons and quotes inside strings
        b'{"x": "\\u003a", "y": "\\u003A"}',  # escaped colons, no duplicate: slow path, accepted
        b'{"a": 1, "A": 2, "a ": 3}',  # different keys
        b'[{"k": 1}, {"k": 2}]',  # the same key in two objects
    ],
)
def test_no_duplicate_no_refusal(text: bytes) -> None:
    """Bodies without a duplicate parse as orjson parses them."""
    assert parse_json(text) == json.loads(text)


def _reference_duplicates(text: str) -> bool:
    """Whether the text has a duplicate key, by the stdlib keeping every pair."""
    found = False

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        nonlocal found
        found = found or len({k for k, _ in items}) != len(items)
        return dict(items)

    json.loads(text, object_pairs_hook=pairs)
    return found


def _random_json(rng: random.Random, depth: int = 0) -> str:
    """A random JSON text with spaces, escapes (colons, quotes, letters) and sometimes a repeated key."""
    keys = ["a", "b", "\\u0061", "c:d", 'q\\"', "\\u003a", "x"]
    space = rng.choice(["", " ", "\n ", "\t"])
    if depth > 3 or rng.random() < 0.3:
        return rng.choice(["1", "true", "null", '"s:t"', '"\\u003a"', '"\\\\"', '"\\":"'])
    if rng.random() < 0.4:
        return "[" + ",".join(_random_json(rng, depth + 1) for _ in range(rng.randint(0, 3))) + "]"
    members = rng.sample(keys, rng.randint(0, 4))
    if members and rng.random() < 0.3:
        members.append(rng.choice(members))  # a repeated key
    body = ",".join(f'{space}"{k}"{space}:{space}{_random_json(rng, depth + 1)}' for k in members)
    return "{" + body + space + "}"


def test_refusal_matches_a_reference_on_random_texts() -> None:
    """2,000 random texts: refused exactly when the stdlib, keeping every pair, sees a duplicate."""
    rng = random.Random(13)
    refused = 0
    for _ in range(2000):
        text = _random_json(rng)
        expected = _reference_duplicates(text)
        try:
            parse_json(text.encode())
            got = False
        except BadRequest:
            got = True
        assert got == expected, text
        refused += got
    assert 200 < refused < 1800  # both outcomes well exercised
