"""Odd values anywhere in a body: a clear 400/422, or ignored where nothing reads it; never a 500.

The depth limit is checked where the service reads (the envelope, each resource as it is
validated), so parts nobody reads are not walked. These tests put a value nested far deeper than
the limit (990 levels, just under orjson's own 1,024) at every value position of real requests,
one position at a time, to prove nothing else on the way (selection, prefetch notes, error
messages, /evaluate's Bundle checks) stringifies or recurses into an unchecked value.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from flask import Flask

from service.app import create_app
from tests.conftest import EXAMPLE_DAY, EXAMPLES, bundle_to_hook_request, load_json

SERVICE = "/cds-services/twitching-red-flags"
MARK = "__deep__"
# Far past the limit (just under orjson's own 1,024 levels); and a shallow value of the wrong type.
VALUES = {"deep": b"[" * 990 + b'"x"' + b"]" * 990, "object": b'{"x": [1]}'}
# A red-flag example with labs, answers and an order already placed; and one with a Condition.
SOURCES = ["persistent-twitching/fires-bmp-already-ordered.json", "lab-low-potassium", "family-history"]


def _positions(value: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """The path of every value in a JSON document (containers and scalars alike)."""
    if path:
        yield path
    if isinstance(value, dict):
        for key, child in value.items():
            yield from _positions(child, (*path, key))
    elif isinstance(value, list):
        for i, child in enumerate(value):
            yield from _positions(child, (*path, i))


def _with_value(document: Any, path: tuple[Any, ...], value: bytes) -> bytes:
    patched = copy.deepcopy(document)
    node = patched
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = MARK
    return orjson.dumps(patched).replace(f'"{MARK}"'.encode(), value)


def _bundle(source: str) -> dict[str, Any]:
    path = EXAMPLES / source
    if path.is_dir():
        path = sorted(path.glob("fires-*.json"))[0]
    return dict(load_json(path))


def _hook_call(source: str) -> dict[str, Any]:
    call = bundle_to_hook_request(_bundle(source))
    # Shapes read without validation: an OperationOutcome entry, a self link, a draft order.
    observations = call["prefetch"]["observations"]
    observations["link"] = [{"relation": "self", "url": "https://ehr.example.org/fhir/Observation"}]
    observations.setdefault("entry", []).append(
        {
            "resource": {
                "resourceType": "OperationOutcome",
                "issue": [{"severity": "warning", "code": "incomplete", "diagnostics": "partial"}],
            }
        }
    )
    return call


@pytest.fixture(scope="module")
def service() -> Flask:
    """One app for every position (a fresh app per post would dominate the run time)."""
    return create_app({"TESTING": True, "TODAY": EXAMPLE_DAY, "RATE_LIMIT_PER_MINUTE": 10**9})


def _statuses(app: Flask, url: str, document: Any, value: bytes) -> dict[int, list[str]]:
    client = app.test_client()
    seen: dict[int, list[str]] = {}
    for path in _positions(document):
        response = client.post(url, data=_with_value(document, path, value), content_type="application/json")
        seen.setdefault(response.status_code, []).append("/".join(map(str, path)))
    return seen


@pytest.mark.parametrize("kind", VALUES)
@pytest.mark.parametrize("source", SOURCES)
def test_hook_call_never_fails_on_odd_values(service: Flask, source: str, kind: str) -> None:
    """Every position of a patient-view call: 400, 412, 422 (an unusable Patient) or an answer; no 500."""
    seen = _statuses(service, SERVICE, _hook_call(source), VALUES[kind])
    assert 500 not in seen, f"500 with a {kind} value at {seen[500][:5]}"
    assert set(seen) <= {200, 400, 412, 422}, {k: v[:3] for k, v in seen.items()}
    assert seen.get(400), "an odd value in the envelope or a resource the rules read is refused"


@pytest.mark.parametrize("kind", VALUES)
@pytest.mark.parametrize("source", SOURCES)
def test_evaluate_never_fails_on_odd_values(service: Flask, source: str, kind: str) -> None:
    """Every position of an /evaluate Bundle: 400, 422 or an answer, never a 500."""
    seen = _statuses(service, "/evaluate", _bundle(source), VALUES[kind])
    assert 500 not in seen, f"500 with a {kind} value at {seen[500][:5]}"
    assert set(seen) <= {200, 400, 422}, {k: v[:3] for k, v in seen.items()}
