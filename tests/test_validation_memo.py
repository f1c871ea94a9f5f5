"""The validation memo: byte-identical resources reuse their model, and answers never change."""

from __future__ import annotations

import copy
from typing import Any

from flask import Flask

from service.app import create_app
from service.fhir.intake import Located, ValidatedModels, Validator
from tests.conftest import EXAMPLE_DAY, EXAMPLES, bundle_to_hook_request, load_json

SERVICE = "/cds-services/twitching-red-flags"
POTASSIUM: dict[str, Any] = {
    "resourceType": "Observation",
    "id": "k",
    "status": "final",
    "code": {"coding": [{"system": "http://loinc.org", "code": "2823-3"}]},
    "subject": {"reference": "Patient/p"},
    "effectiveDateTime": "2026-11-01",
    "valueQuantity": {
        "value": 3.1,
        "unit": "mmol/L",
        "system": "http://unitsofmeasure.org",
        "code": "mmol/L",
    },
}


def test_identical_json_reuses_the_model() -> None:
    """The second validation of the same JSON returns the first model without validating again."""
    validator = Validator(max_depth=64, memo_entries=8)
    first, problems = validator(Located(copy.deepcopy(POTASSIUM), "a"))
    assert first is not None
    assert problems == []
    again, problems = validator(Located(copy.deepcopy(POTASSIUM), "b"))
    assert again is first
    assert problems == []
    assert validator.memo is not None
    assert (validator.memo.hits, validator.memo.misses) == (1, 1)


def test_any_change_is_validated_afresh() -> None:
    """One changed value, or the same members in another order, is a different key."""
    validator = Validator(max_depth=64, memo_entries=8)
    first, _ = validator(Located(copy.deepcopy(POTASSIUM), "a"))
    changed = copy.deepcopy(POTASSIUM)
    changed["valueQuantity"]["value"] = 6.2
    second, _ = validator(Located(changed, "a"))
    assert second is not None
    assert second is not first
    assert str(second.valueQuantity.value) == "6.2"
    reordered = dict(reversed(list(POTASSIUM.items())))
    third, _ = validator(Located(reordered, "a"))
    assert third is not first
    assert third is not second


def test_invalid_resources_are_never_kept() -> None:
    """Problems name each request's own path, so an invalid resource is checked every time."""
    validator = Validator(max_depth=64, memo_entries=8)
    broken = {**POTASSIUM, "status": "done"}
    for path in ("prefetch.observations.entry[0].resource", "prefetch.observations.entry[7].resource"):
        model, problems = validator(Located(copy.deepcopy(broken), path))
        assert model is None
        assert [p.expression for p in problems] == [f"{path}.status"]
    assert validator.memo is not None
    assert len(validator.memo) == 0


def test_the_least_recently_used_goes_first() -> None:
    """Past the bound, the entry unused longest is dropped."""
    memo = ValidatedModels(max_entries=2)
    memo.put(b"a", "A")
    memo.put(b"b", "B")
    assert memo.get(b"a") == "A"  # now b is the least recently used
    memo.put(b"c", "C")
    assert memo.get(b"b") is None
    assert (memo.get(b"a"), memo.get(b"c")) == ("A", "C")


def test_the_memo_is_bounded_by_bytes_too() -> None:
    """Past the byte budget the oldest go; a resource over 1/64 of it is never kept."""
    memo = ValidatedModels(max_entries=100, max_bytes=6400)
    memo.put(b"x" * 101, "too big")
    assert len(memo) == 0
    for i in range(100):
        memo.put(bytes([i]) * 100, i)
    assert memo.bytes <= 6400
    assert len(memo) == 64
    assert memo.get(bytes([0]) * 100) is None
    assert memo.get(bytes([99]) * 100) == 99


def test_a_huge_valid_resource_is_validated_but_not_kept() -> None:
    """A 4 MB Patient (thousands of identifiers) must not stay in memory after its call."""
    patient = {
        "resourceType": "Patient",
        "id": "p",
        "identifier": [{"system": "urn:oid:1.2.3", "value": f"{i:08d}"} for i in range(60_000)],
    }
    validator = Validator(max_depth=64, memo_entries=8)
    model, problems = validator(Located(patient, "prefetch.patient"))
    assert model is not None
    assert problems == []
    assert validator.memo is not None
    assert len(validator.memo) == 0


def test_depth_is_checked_before_validation_and_off_the_memo() -> None:
    """A resource nesting past the limit is a problem at its path, found before any model work."""
    deep: Any = {"url": "http://example.org/x", "valueString": "x"}
    for _ in range(40):
        deep = {"url": "http://example.org/x", "extension": [deep]}
    resource = {**POTASSIUM, "extension": [deep]}
    validator = Validator(max_depth=20, memo_entries=8)
    model, problems = validator(Located(resource, "prefetch.observations.entry[2].resource"))
    assert model is None
    assert [p.expression for p in problems] == ["prefetch.observations.entry[2].resource"]
    assert "nests deeper than 20 levels" in problems[0].diagnostics
    assert validator.memo is not None
    assert len(validator.memo) == 0


def _nested(levels: int) -> dict[str, Any]:
    """An extension tree that puts POTASSIUM's deepest node exactly `levels` deep."""
    deep: Any = {"url": "http://example.org/x", "valueString": "x"}
    # POTASSIUM {1} > extension [2] > the outermost extension {3}: each wrap adds two levels.
    for _ in range((levels - 3) // 2):
        deep = {"url": "http://example.org/x", "extension": [deep]}
    return {**POTASSIUM, "extension": [deep]}


def test_the_hook_paths_depth_check_is_exact_at_the_limit() -> None:
    """The lean check skips the walk only when too few objects and arrays exist to nest that deep."""
    for memo in (0, 8):
        validator = Validator(max_depth=21, memo_entries=memo)
        at_limit, past = _nested(21), _nested(23)
        assert validator.lean(Located(at_limit, "p"))[0] is not None
        model, problems = validator.lean(Located(past, "p"))
        assert model is None
        assert "nests deeper than 21 levels" in problems[0].diagnostics
    # Many objects and arrays side by side, none deep: walked, and accepted.
    wide = {**POTASSIUM, "extension": [{"url": "http://example.org/x", "valueString": "x"}] * 200}
    assert Validator(max_depth=21, memo_entries=8).lean(Located(wide, "p"))[0] is not None


def test_a_deep_resource_in_a_hook_call_is_on_the_data_card() -> None:
    """The rest of the call is evaluated; the data card names the resource (and withholds reassurance)."""
    app = create_app({"TESTING": True, "TODAY": EXAMPLE_DAY, "MAX_JSON_DEPTH": 20})
    bundle = load_json(EXAMPLES / "lab-low-potassium" / "fires-low-potassium-blood.json")
    call = bundle_to_hook_request(bundle)
    deep: Any = {"url": "http://example.org/x", "valueString": "x"}
    for _ in range(30):
        deep = {"url": "http://example.org/x", "extension": [deep]}
    call["prefetch"]["observations"]["entry"][0]["resource"]["extension"] = [deep]
    response = app.test_client().post(SERVICE, json=call)
    assert response.status_code == 200
    cards = response.get_json()["cards"]
    data = [c for c in cards if c["source"]["topic"]["code"] == "dataquality"]
    assert len(data) == 1
    assert "nests deeper than 20 levels" in data[0]["detail"]


def _without_uuids(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_uuids(v) for k, v in value.items() if k != "uuid"}
    if isinstance(value, list):
        return [_without_uuids(v) for v in value]
    return value


def _answers(app: Flask, calls: list[dict[str, Any]]) -> list[Any]:
    client = app.test_client()
    answers = []
    for call in calls:
        response = client.post(SERVICE, json=call)
        answers.append((response.status_code, _without_uuids(response.get_json())))
    return answers


def test_answers_are_the_same_with_and_without_the_memo() -> None:
    """Every example, twice through one worker, answers exactly as a worker without the memo does.

    The second pass is served from remembered models: a rule or renderer that modified a model
    would change a later answer here.
    """
    calls = [bundle_to_hook_request(load_json(p)) for p in sorted(EXAMPLES.rglob("*.json"))]
    settings = {"TESTING": True, "TODAY": EXAMPLE_DAY}
    plain = _answers(create_app({**settings, "VALIDATION_MEMO_ENTRIES": 0}), calls)
    remembering = create_app({**settings, "VALIDATION_MEMO_ENTRIES": 4096})
    first, second = _answers(remembering, calls), _answers(remembering, calls)
    memo = remembering.extensions["evaluator"].validator.memo
    assert memo.hits > len(calls), "the second pass should have been served from the memo"
    reads = remembering.extensions["evaluator"].extractor.memo
    assert reads.hits > len(calls), "and what was read from those models, too"
    assert first == plain
    assert second == plain
