"""The hook path's lean intake: the same cards as full fhir.resources validation, and read fields checked."""

from __future__ import annotations

import copy
import re
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any

import pydantic
import pytest
from fhir.resources.R4B.observation import Observation as ObservationModel
from fhir.resources.R4B.patient import Patient as PatientModel
from flask import Flask
from flask.testing import FlaskClient

from service.cdshooks.prefetch import read_prefetch
from service.fhir import lean
from service.fhir.intake import STATUS_VALUES, Located, Validator
from tests.conftest import EXAMPLE_DAY, EXAMPLES, bundle_to_hook_request, card_rules, load_json, shared, topic

HOOK = "/cds-services/twitching-red-flags"
EXAMPLE_FILES = sorted(EXAMPLES.rglob("*.json"))
POTASSIUM = EXAMPLES / "lab-low-potassium" / "fires-low-potassium-blood.json"
OBS_STATUSES = STATUS_VALUES["Observation"]


def _without_uuids(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_uuids(v) for k, v in value.items() if k != "uuid"}
    if isinstance(value, list):
        return [_without_uuids(v) for v in value]
    return value


def _hook_paths(bundle: dict[str, Any], call: dict[str, Any]) -> dict[str, str]:
    """Each resource's /evaluate path (Bundle.entry[i].resource) -> its path in the hook's prefetch."""
    where: dict[int, str] = {}
    for key, value in call["prefetch"].items():
        if isinstance(value, dict) and value.get("resourceType") == "Bundle":
            for j, entry in enumerate(value.get("entry") or ()):
                where[id(entry["resource"])] = f"prefetch.{key}.entry[{j}].resource"
        elif isinstance(value, dict):
            where[id(value)] = f"prefetch.{key}"
    return {
        f"Bundle.entry[{i}].resource": where[id(e["resource"])]
        for i, e in enumerate(bundle["entry"])
        if id(e["resource"]) in where
    }


def _comparable(cards: list[dict[str, Any]], paths: dict[str, str]) -> Any:
    """Cards without uuids, paths as the hook names them, data-card lines in a fixed order."""
    out = []
    for card in _without_uuids(cards):
        detail = card["detail"]
        for before, after in paths.items():
            detail = detail.replace(f"`{before}`", f"`{after}`").replace(f"`{before}.", f"`{after}.")
        if card["source"]["topic"]["code"] == "dataquality":
            # Problems are listed in request order, and the two requests order resources differently.
            head, _, lines = detail.partition("\n\n")
            detail = head + "\n\n" + "\n".join(sorted(lines.split("\n")))
        out.append({**card, "detail": detail})
    return out


def _both_ways(client: FlaskClient, bundle: dict[str, Any]) -> tuple[Any, Any]:
    """Cards from /evaluate (every resource a fhir.resources model) and from the hook (lean)."""
    call = bundle_to_hook_request(bundle)
    full = client.post("/evaluate", json=bundle)
    assert full.status_code == 200, full.get_data(as_text=True)
    hook = client.post(HOOK, json=call)
    assert hook.status_code == 200, hook.get_data(as_text=True)
    return (
        _comparable(full.get_json()["cards"], _hook_paths(bundle, call)),
        _comparable(hook.get_json()["cards"], {}),
    )


@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=lambda p: str(p.relative_to(EXAMPLES)))
def test_example_gives_the_same_cards_lean_and_full(client: FlaskClient, path: Path) -> None:
    """Every example: the hook's lean intake answers exactly what full validation answers."""
    full, hook = _both_ways(client, load_json(path))
    assert hook == full


def _synthea(name: str, assessment: str | None) -> dict[str, Any]:
    """A Synthea record with every subject pointed at its Patient (as an EHR's prefetch is)."""
    (path,) = [p for p in shared("fhir", "synthea").glob("*.json") if p.name.startswith(name)]
    bundle = copy.deepcopy(load_json(path))
    resources = [e["resource"] for e in bundle["entry"]]
    if assessment is not None:
        response = next(
            r
            for r in (e["resource"] for e in load_json(EXAMPLES / assessment)["entry"])
            if r["resourceType"] == "QuestionnaireResponse"
        )
        resources.append(copy.deepcopy(response))
        bundle["entry"].append({"resource": resources[-1]})
    patient = next(r for r in resources if r["resourceType"] == "Patient")
    for resource in resources:
        if "subject" in resource:
            resource["subject"] = {"reference": f"Patient/{patient['id']}"}
    return dict(bundle)


@pytest.mark.parametrize(
    "assessment",
    [None, "motor-neuron-red-flags/near-miss-no-weakness.json", "motor-neuron-red-flags/fires-weakness.json"],
    ids=["no-assessment", "benign", "red-flag"],
)
@pytest.mark.parametrize(
    "name",
    ["Angelic_Mueller", "Catina_Witting", "Chet_Hoeger", "Errol_Prohaska", "Hunter_Herman", "Noel_Reynolds"],
)
def test_synthea_record_gives_the_same_cards_lean_and_full(
    client: FlaskClient, name: str, assessment: str | None
) -> None:
    """Whole Synthea charts (hundreds of resources, every resource type read): the same cards."""
    full, hook = _both_ways(client, _synthea(name, assessment))
    assert hook == full


# -- read fields are checked, with their paths -----------------------------------------------------
def _potassium_call(change: Any) -> dict[str, Any]:
    call = bundle_to_hook_request(load_json(POTASSIUM))
    obs = call["prefetch"]["observations"]["entry"][0]["resource"]
    assert obs["id"] == "k-1"
    change(obs)
    return call


def _set(*keys: str, value: Any) -> Any:
    def change(resource: dict[str, Any]) -> None:
        target = resource
        for key in keys[:-1]:
            target = target[key]
        target[keys[-1]] = value

    return change


OBS = "prefetch.observations.entry[0].resource"
MALFORMED = [
    (
        "string-value",
        _set("valueQuantity", "value", value="3.1"),
        f"{OBS}.valueQuantity.value",
        "JSON number",
    ),
    ("bad-date", _set("effectiveDateTime", value="18/11/2026"), f"{OBS}.effectiveDateTime", "dateTime"),
    (
        "impossible-date",
        _set("effectiveDateTime", value="2026-02-30"),
        f"{OBS}.effectiveDateTime",
        "calendar",
    ),
    ("unknown-status", _set("status", value="done"), f"{OBS}.status", "'done' is not one of"),
    (
        "coding-not-array",
        _set("interpretation", value=[{"coding": {"code": "L"}}]),
        f"{OBS}.interpretation[0].coding",
        "JSON array",
    ),
    ("unit-not-string", _set("valueQuantity", "unit", value=3), f"{OBS}.valueQuantity.unit", "JSON string"),
    ("two-values", _set("valueString", value="low"), OBS, "value[x] takes one value"),
    ("id-syntax", _set("id", value="k 1"), f"{OBS}.id", "is not an id"),
]


@pytest.mark.parametrize(
    ("change", "where", "said"), [m[1:] for m in MALFORMED], ids=[m[0] for m in MALFORMED]
)
def test_a_malformed_read_field_is_on_the_data_card_with_its_path(
    client: FlaskClient, change: Any, where: str, said: str
) -> None:
    """The result is not used (no potassium card, reassurance withheld) and the data card says where."""
    cards = client.post(HOOK, json=_potassium_call(change)).get_json()["cards"]
    assert topic("lab-low-potassium") not in card_rules(cards)
    data = [c for c in cards if c["source"]["topic"]["code"] == "dataquality"]
    assert len(data) == 1
    shown = re.sub(r"\\(.)", r"\1", data[0]["detail"])  # as rendered: Markdown escapes removed
    assert where in shown
    assert said in shown


def test_the_same_malformed_fields_are_refused_by_full_validation(client: FlaskClient) -> None:
    """/evaluate (fhir.resources) refuses the same resources: the lean path is no more lenient there."""
    for name, change, _, _ in MALFORMED:
        if name == "string-value":
            continue  # fhir.resources accepts a decimal sent as a JSON string; FHIR JSON does not
        bundle = load_json(POTASSIUM)
        change(next(e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Observation"))
        assert client.post("/evaluate", json=bundle).status_code == 422, name


def test_an_unread_field_is_not_checked_on_the_hook_path(client: FlaskClient) -> None:
    """A malformed field the rules never read does not cost the result (full validation refuses it)."""
    cards = client.post(HOOK, json=_potassium_call(_set("method", value=5))).get_json()["cards"]
    assert card_rules(cards)[0] == topic("lab-low-potassium")
    assert "dataquality" not in card_rules(cards)
    bundle = load_json(POTASSIUM)
    bundle["entry"][2]["resource"]["method"] = 5
    assert client.post("/evaluate", json=bundle).status_code == 422


def test_a_malformed_patient_field_is_422_with_its_path(client: FlaskClient) -> None:
    """The Patient's read fields are checked too: without a usable Patient nothing is evaluated."""
    call = bundle_to_hook_request(load_json(POTASSIUM))
    call["prefetch"]["patient"]["deceasedDateTime"] = "2026-11-31"
    response = client.post(HOOK, json=call)
    assert response.status_code == 422
    assert response.get_json()["issue"][0]["expression"] == ["prefetch.patient.deceasedDateTime"]


# -- the light objects are what the models are, for what is read -------------------------------------
DATE_TIMES = [
    "2024",
    "2024-05",
    "2024-05-01",
    "2024-05-01T10:00:00Z",
    "2024-05-01T10:00:00+05:30",
    "2024-05-01T23:59:59.123-14:00",
    "2024-05-01T10:00:00.1234567Z",
    "2016-12-31T23:59:60Z",
    "2024-05-01T10:00:00",
    "2024-13",
    "2024-02-30",
    "2024-02-29",
    "2023-02-29T10:00:00Z",
    "0000",
    "2024-5-1",
    "",
]


@pytest.mark.parametrize("value", DATE_TIMES)
def test_date_times_read_as_the_models_read_them(value: str) -> None:
    """effectiveDateTime and issued: the same value and type as fhir.resources, or both refuse."""
    base = {"resourceType": "Observation", "status": "final", "code": {"text": "x"}}
    for field in ("effectiveDateTime", "issued"):
        try:
            expected: Any = getattr(
                ObservationModel.model_validate({**base, field: value}, strict=True), field
            )
        except pydantic.ValidationError:
            expected = "refused"
        got, problems = lean.read({**base, field: value}, "r", OBS_STATUSES)
        assert (getattr(got, field) if got is not None else "refused") == expected, (field, problems)
        if got is not None:
            assert type(getattr(got, field)) is type(expected)


@pytest.mark.parametrize("value", ["1968", "1968-03", "1968-03-14", "1968-02-30", "1968-03-14T00:00:00Z"])
def test_birth_dates_read_as_the_models_read_them(value: str) -> None:
    """Patient.birthDate: the same value and type, or both refuse."""
    try:
        expected: Any = PatientModel.model_validate({"resourceType": "Patient", "birthDate": value}).birthDate
    except pydantic.ValidationError:
        expected = "refused"
    got, _ = lean.read({"resourceType": "Patient", "birthDate": value}, "p", None)
    assert (got.birthDate if got is not None else "refused") == expected


@pytest.mark.parametrize("value", [3.1, 3, 0.1 + 0.2, 1e-7, 1e300, -0.0, 10**30])
def test_decimals_read_as_the_models_read_them(value: float) -> None:
    """valueQuantity.value: the same Decimal fhir.resources makes."""
    raw = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"text": "x"},
        "valueQuantity": {"value": value},
    }
    expected = ObservationModel.model_validate(raw, strict=True).valueQuantity.value  # type: ignore[union-attr]
    got, _ = lean.read(raw, "r", OBS_STATUSES)
    assert got is not None
    assert isinstance(got.valueQuantity.value, Decimal)
    assert str(got.valueQuantity.value) == str(expected)


def test_nothing_undeclared_can_be_read_and_nothing_changed() -> None:
    """A field the rules do not read is not there to read; a light object cannot be modified."""
    raw = load_json(POTASSIUM)["entry"][2]["resource"]
    obs, problems = lean.read(raw, "r", OBS_STATUSES)
    assert problems == []
    assert obs is not None
    assert obs.get_resource_type() == "Observation"
    assert obs.effectiveDateTime == date(2026, 11, 18)
    assert obs.valueQuantity.value == Decimal("3.1")
    assert obs.code.coding[0].system == "http://loinc.org"
    with pytest.raises(AttributeError):
        _ = obs.category  # sent, but not read by any rule: never checked, so never readable
    with pytest.raises(AttributeError):
        _ = obs.code.coding[0].userSelected
    with pytest.raises(AttributeError):
        obs.status = "amended"


def test_the_memo_keeps_light_objects_apart_from_models() -> None:
    """The same JSON through the hook's check and full validation: each gets its own kind back."""
    raw = load_json(POTASSIUM)["entry"][2]["resource"]
    validator = Validator(max_depth=64, memo_entries=8)
    light, _ = validator.lean(Located(copy.deepcopy(raw), "a"))
    model, _ = validator(Located(copy.deepcopy(raw), "a"))
    assert isinstance(light, lean.Observation)
    assert isinstance(model, ObservationModel)
    assert validator.lean(Located(copy.deepcopy(raw), "b"))[0] is light
    assert validator(Located(copy.deepcopy(raw), "b"))[0] is model


@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=lambda p: str(p.relative_to(EXAMPLES)))
def test_example_gives_the_same_cards_from_models_on_the_hook_path(app: Flask, path: Path) -> None:
    """The same prefetch through lean objects and through R4B models: identical cards and problems."""
    call = bundle_to_hook_request(load_json(path))
    evaluator = app.extensions["evaluator"]
    content = read_prefetch(call["prefetch"])
    patient_ref = f"Patient/{call['context']['patientId']}"
    answers = []
    for use_lean in (True, False):
        intake = evaluator.intake(content.resources, latest_labs_only=True, lean=use_lean)
        problems = [(p.diagnostics, p.expression) for p in intake.problems]
        outcome = evaluator.run(intake, {patient_ref}, patient_ref, date.fromisoformat(EXAMPLE_DAY))
        answers.append((problems, _without_uuids(outcome.cards), outcome.fired))
    assert answers[0] == answers[1]


@pytest.mark.parametrize("authored", ["2026", "2026-11", "2026-11-20", "2026-11-20T09:00:00+01:00"])
def test_a_partial_authored_date_is_read_on_both_paths(client: FlaskClient, authored: str) -> None:
    """FHIR allows "2026-11" as a dateTime: the models and the lean objects keep it as sent, never a 500."""
    bundle = load_json(EXAMPLES / "motor-neuron-red-flags" / "fires-weakness.json")
    response = next(
        e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "QuestionnaireResponse"
    )
    response["authored"] = authored
    full, hook = _both_ways(client, bundle)
    assert hook == full
    assert card_rules(hook)[0] == topic("motor-neuron-red-flags")


EDGES: list[tuple[str, dict[str, Any]]] = [
    ("null-choice-beside-a-value", {"valueString": None, "valueQuantity": {"value": 1}}),
    ("null-in-an-array", {"interpretation": [None]}),
    ("null-quantity-value", {"valueQuantity": {"value": None}}),
    (
        "component-null-value",
        {"component": [{"code": {"text": "x"}, "valueString": None, "valueBoolean": True}]},
    ),
    ("component-without-code", {"component": [{"valueQuantity": {"value": 1}}]}),
    ("two-effective", {"effectiveDateTime": "2026-01-01", "effectivePeriod": {"start": "2026-01-01"}}),
    ("no-status", {"status": None}),
    ("no-code", {"code": None}),
    ("empty-reference", {"subject": {"reference": ""}}),
    ("empty-id", {"id": ""}),
    ("empty-system", {"code": {"coding": [{"system": "", "code": "1"}]}}),
    ("blank-text", {"code": {"text": "  "}}),
    ("code-with-inner-space", {"code": {"coding": [{"code": "a b"}]}}),
    ("code-with-double-space", {"code": {"coding": [{"code": "a  b"}]}}),
    ("range-low-only", {"referenceRange": [{"low": {"value": 1}}]}),
    ("range-not-array", {"referenceRange": {"low": {"value": 1}}}),
    ("other-comparator", {"valueQuantity": {"value": 1, "comparator": "~"}}),
    ("period-bad-end", {"effectivePeriod": {"end": "2026-13-01"}}),
    ("empty-arrays", {"component": [], "interpretation": []}),
    ("integer-too-big", {"valueInteger": 2**31}),  # not read, and refused by the models only
]


@pytest.mark.parametrize("change", [e[1] for e in EDGES], ids=[e[0] for e in EDGES])
def test_the_lean_reader_refuses_what_the_models_refuse_in_read_fields(change: dict[str, Any]) -> None:
    """Edge cases of FHIR JSON in the fields read: the lean reader and the model agree."""
    raw = {"resourceType": "Observation", "status": "final", "code": {"text": "x"}, **change}
    try:
        ObservationModel.model_validate(raw, strict=True)
        model_accepts = True
    except pydantic.ValidationError:
        model_accepts = False
    got, problems = lean.read(raw, "r", OBS_STATUSES)
    unread = "valueInteger" in change
    assert (got is not None) == (model_accepts or unread), problems
    assert all(p.expression and p.expression.startswith("r") for p in problems)
