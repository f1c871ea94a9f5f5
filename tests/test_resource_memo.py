"""The extractor's per-object memo: a re-sent result is read once, and never judged for the wrong call.

The validation memo hands back the same object for byte-identical JSON; what the extractor read
from it is kept under (path, sex, day). Each test sends the same result again under a changed key
and compares with a worker that remembers nothing: the answers must be the same, and must differ
between the two calls (else the test could not fail).
"""

from __future__ import annotations

import copy
from datetime import date
from typing import Any

import orjson
from flask import Flask

from service.app import create_app
from service.facts.memo import MAX_KEYS_PER_OBJECT, ResourceMemo
from service.fhir.intake import ValidatedModels
from tests.conftest import EXAMPLE_DAY, EXAMPLES, bundle_to_hook_request, load_json

SERVICE = "/cds-services/twitching-red-flags"
PATIENT = {"resourceType": "Patient", "id": "m", "birthDate": "1980-01-01", "gender": "male"}


def _obs(
    rid: str, loinc: str, value: float, unit: str, day: str = "2026-11-01", **extra: Any
) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": rid,
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": loinc}]},
        "subject": {"reference": "Patient/m"},
        "effectiveDateTime": day,
        "valueQuantity": {"value": value, "unit": unit, "system": "http://unitsofmeasure.org", "code": unit},
        **extra,
    }


LOW_POTASSIUM = _obs("k", "2823-3", 3.1, "mmol/L")
# Creatinine 100 µmol/L: within the male range sent, above the female one.
CREATININE = _obs(
    "cr",
    "2160-0",
    100,
    "umol/L",
    referenceRange=[
        {
            "low": {"value": 60, "unit": "umol/L"},
            "high": {"value": 110, "unit": "umol/L"},
            "appliesTo": [{"coding": [{"system": "http://snomed.info/sct", "code": "248153007"}]}],
        },
        {
            "low": {"value": 45, "unit": "umol/L"},
            "high": {"value": 90, "unit": "umol/L"},
            "appliesTo": [{"coding": [{"system": "http://snomed.info/sct", "code": "248152002"}]}],
        },
    ],
)
# Potassium in a unit that does not convert: not used, and on the data card with its path.
UNREADABLE = _obs("k-odd", "2823-3", 3.1, "mg", day="2026-11-10")


def _answers() -> dict[str, Any]:
    """A completed twitching assessment (without one the service offers no cards)."""
    bundle = load_json(EXAMPLES / "lab-low-potassium" / "fires-low-potassium-blood.json")
    response = next(
        e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "QuestionnaireResponse"
    )
    return {**response, "subject": {"reference": "Patient/m"}}


ANSWERS = _answers()


def _call(*resources: dict[str, Any], patient: dict[str, Any] = PATIENT) -> dict[str, Any]:
    entries = [{"resource": copy.deepcopy(r)} for r in (patient, ANSWERS, *resources)]
    return bundle_to_hook_request({"resourceType": "Bundle", "type": "collection", "entry": entries})


def _app(memo: bool) -> Flask:
    return create_app({"TESTING": True, "TODAY": EXAMPLE_DAY, "VALIDATION_MEMO_ENTRIES": 4096 if memo else 0})


def _answer(app: Flask, call: dict[str, Any], day: date | None = None) -> dict[str, Any]:
    if day is not None:
        app.extensions["today"] = lambda: day
    response = app.test_client().post(SERVICE, json=call)
    assert response.status_code == 200, response.get_json()
    cards = response.get_json()["cards"]
    return {"cards": [{k: v for k, v in c.items() if k not in ("uuid", "suggestions")} for c in cards]}


def _text(answer: dict[str, Any]) -> str:
    return " ".join(f"{c['summary']} {c.get('detail', '')}" for c in answer["cards"])


def test_a_resent_result_is_read_once_and_answered_alike() -> None:
    """The second call reads the potassium from the memo; both answers equal a memo-less worker's."""
    remembering, plain = _app(True), _app(False)
    call = _call(LOW_POTASSIUM)
    first, second = _answer(remembering, call), _answer(remembering, call)
    memo = remembering.extensions["evaluator"].extractor.memo
    assert memo.hits == 2  # the second call: the potassium and the answers
    assert first == second == _answer(plain, call)
    assert "3.1 mmol/L" in _text(first)


def test_a_later_day_judges_staleness_afresh() -> None:
    """The same remembered result on a day past its look-back is shown stale, as a fresh read says."""
    remembering, plain = _app(True), _app(False)
    call = _call(LOW_POTASSIUM)
    now, later = date(2026, 11, 22), date(2027, 6, 1)
    current = _answer(remembering, call, now)
    stale = _answer(remembering, call, later)
    assert current == _answer(plain, call, now)
    assert stale == _answer(plain, call, later)
    assert "stale" in _text(stale)
    assert "stale" not in _text(current)


def test_the_other_sex_is_judged_against_its_own_range() -> None:
    """The same creatinine is in range for a man and high for a woman, memo or not."""
    remembering, plain = _app(True), _app(False)
    woman = {**PATIENT, "gender": "female"}
    as_man = _answer(remembering, _call(CREATININE))
    as_woman = _answer(remembering, _call(CREATININE, patient=woman))
    assert as_man == _answer(plain, _call(CREATININE))
    assert as_woman == _answer(plain, _call(CREATININE, patient=woman))
    assert as_man != as_woman
    assert "range 45–90 umol/L, record's range" in _text(as_woman)  # the female range sent
    assert "kidney" not in _text(as_man).lower()  # in the man's own range: no kidney card


def test_the_same_result_elsewhere_in_the_request_names_its_own_path() -> None:
    """An unreadable result moved one entry down is reported at its new path, not the remembered one."""
    remembering, plain = _app(True), _app(False)
    before = _call(UNREADABLE)
    after = _call(CREATININE, UNREADABLE)
    first = _answer(remembering, before)
    moved = _answer(remembering, after)
    assert first == _answer(plain, before)
    assert moved == _answer(plain, after)
    assert "unit 'mg'" in _text(first)
    assert any("observations.entry[0].resource.valueQuantity" in line for line in _paths(first))
    assert any("observations.entry[1].resource.valueQuantity" in line for line in _paths(moved))


def _paths(answer: dict[str, Any]) -> set[str]:
    return {line for c in answer["cards"] for line in c.get("detail", "").splitlines() if "entry[" in line}


def test_reads_live_and_go_with_the_validation_memos_entry() -> None:
    """Kept only for an object the validation memo keeps, and dropped when it drops the object."""
    models = ValidatedModels(max_entries=1)
    memo = ResourceMemo(models.derived)
    calls: list[str] = []

    def read(name: str) -> str:
        calls.append(name)
        return name.upper()

    kept, other = ["kept"], ["other"]
    models.put(b"kept", kept)
    assert memo.read(kept, "kind", 1, read, "kept") == "KEPT"
    assert memo.read(kept, "kind", 1, read, "kept") == "KEPT"  # remembered
    assert memo.read(["kept"], "kind", 1, read, "kept") == "KEPT"  # equal, not the object kept
    assert memo.read(kept, "kind", 2, read, "kept") == "KEPT"  # another key: read again
    assert calls == ["kept", "kept", "kept"]
    models.put(b"other", other)  # the bound of one entry drops `kept`, and its reads with it
    assert models.derived(kept) is None
    assert memo.read(kept, "kind", 1, read, "kept") == "KEPT"
    assert calls == ["kept"] * 4
    models.clear()
    assert models.derived(other) is None


def test_an_object_read_under_many_keys_starts_over() -> None:
    """One object read at many paths or on many days keeps at most MAX_KEYS_PER_OBJECT reads."""
    models = ValidatedModels(max_entries=8)
    memo = ResourceMemo(models.derived)
    kept = ["kept"]
    models.put(b"kept", kept)
    for key in range(MAX_KEYS_PER_OBJECT * 3):
        memo.read(kept, "kind", key, str, key)
    room = models.derived(kept)
    assert room is not None
    assert 0 < len(room) <= MAX_KEYS_PER_OBJECT


def test_nothing_is_kept_without_the_validation_memo() -> None:
    """VALIDATION_MEMO_ENTRIES=0: no model is kept, so no read is either."""
    app = _app(False)
    call = _call(LOW_POTASSIUM)
    _answer(app, call)
    _answer(app, call)
    memo = app.extensions["evaluator"].extractor.memo
    assert (memo.hits, memo.misses) == (0, 0)


def test_a_resource_too_large_to_keep_is_read_afresh() -> None:
    """A resource over the validation memo's per-resource limit is not kept, nor what is read from it."""
    settings = {"VALIDATION_MEMO_ENTRIES": 64, "VALIDATION_MEMO_BYTES": 64 * 8000}  # 8,000 bytes at most
    app = create_app({"TESTING": True, "TODAY": EXAMPLE_DAY, **settings})
    assert len(orjson.dumps(ANSWERS)) < 8000
    padded = {**LOW_POTASSIUM, "note": [{"text": "x" * 9000}]}
    call = _call(padded)
    first, second = _answer(app, call), _answer(app, call)
    assert first == second
    memo = app.extensions["evaluator"].extractor.memo
    assert memo.hits == 1  # the QuestionnaireResponse only: the padded potassium was read twice
