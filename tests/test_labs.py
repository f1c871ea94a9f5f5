"""Lab results: every code and unit spelling in the reference data, units by UCUM, both directions.

Table-driven over the reference tables themselves, so a code or spelling added there is tested
here; the property test checks that a value judged in any accepted unit gets the judgement of its
canonical conversion.
"""

from __future__ import annotations

import json
import math
import shutil
from datetime import date
from pathlib import Path
from typing import Any

import pytest
import yaml
from fhir.resources.R4B.observation import Observation
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from service.app import create_app
from service.engine.reference import LOINC, load_reference
from service.engine.ruleset import RuleSetError, load_ruleset
from service.facts.labs import LabReader, Unusable
from service.facts.model import LabResult
from tests.conftest import ROOT, bundle_to_hook_request

REFERENCE = load_reference(ROOT / "rules" / "reference")
READER = LabReader(REFERENCE)
TODAY = date(2026, 11, 22)
UCUM = "http://unitsofmeasure.org"


def observation(system: str, code: str, value: float | None, unit: str | None, **extra: Any) -> Any:
    """A final Observation of one coded result, validated by the R4B model."""
    raw: dict[str, Any] = {
        "resourceType": "Observation",
        "id": "lab-1",
        "status": "final",
        "code": {"coding": [{"system": system, "code": code}]},
        "effectiveDateTime": "2026-11-20",
        **extra,
    }
    if value is not None:
        raw["valueQuantity"] = {"value": value, **({"unit": unit} if unit else {})}
    return Observation.model_validate(raw)


def _typical(analyte_id: str) -> float:
    analyte = REFERENCE.analytes[analyte_id]
    bounds = analyte.default_range(None)
    if bounds is None or (bounds.low is None and bounds.high is None):
        return 1.0
    if bounds.low is not None and bounds.high is not None:
        return (bounds.low + bounds.high) / 2
    return (bounds.low or bounds.high or 1.0) * 1.2


ALL_CODES = [(a.id, c) for a in REFERENCE.analytes.values() for c in a.codes]
OTHER_CODES = [(a.id, c) for a in REFERENCE.analytes.values() for c in a.other_specimen]


@pytest.mark.parametrize(("analyte", "lab_code"), ALL_CODES, ids=[f"{a}-{c.code}" for a, c in ALL_CODES])
def test_every_code_is_read_as_its_analyte(analyte: str, lab_code: Any) -> None:
    """Each code in lab-codes.yaml: read as its analyte, the card names the code that was read."""
    unit = REFERENCE.analytes[analyte].unit
    result = READER.read(
        observation(lab_code.system, lab_code.code, _typical(analyte), unit), "o", None, TODAY
    )
    assert isinstance(result, LabResult), result
    assert result.analyte == analyte
    assert result.code.endswith(lab_code.code)
    assert result.value == pytest.approx(_typical(analyte))


def test_every_other_specimen_code_is_refused_visibly() -> None:
    """Urine, fluid, timed and non-quantitative codes: recognised, never used, always listed."""
    assert len(OTHER_CODES) > 500
    for analyte, lab_code in OTHER_CODES:
        obs = observation(lab_code.system, lab_code.code, 1.0, "mmol/L")
        assert READER.read(obs, "o", None, TODAY) is None
        refused = READER.lookalike(obs, "Observation")
        assert isinstance(refused, Unusable), lab_code.code
        assert refused.analyte == analyte
        assert "specimen the rules do not read" in refused.issue.diagnostics


def test_a_later_known_coding_is_read() -> None:
    """Only the second coding is known: it is the one read."""
    obs = Observation.model_validate(
        {
            "resourceType": "Observation",
            "status": "final",
            "code": {
                "coding": [
                    {"system": "http://lab.example.org", "code": "K"},
                    {"system": LOINC, "code": "2823-3"},
                ]
            },
            "valueQuantity": {"value": 3.0, "unit": "mmol/L"},
        }
    )
    result = READER.read(obs, "o", None, TODAY)
    assert isinstance(result, LabResult)
    assert result.status == "low"
    assert result.code == "LOINC 2823-3"


ELECTROLYTE_SPELLINGS = ("mmol/L", "mmol/l", "MMOL/L", "mEq/L", "meq/L", "MEQ/L", "meq/l")
EGFR_SPELLINGS = (
    "mL/min/{1.73_m2}",
    "mL/min/1.73 m2",
    "mL/min/1.73m2",
    "ML/MIN/1.73M2",
    "mL/min/1.73 m^2",
    "mL/min",
)
# (analyte, spelling a feed sends, factor to the canonical unit): arithmetic from molar mass and charge.
SPELLINGS = [
    *[(a, s, 1.0) for a in ("potassium", "sodium") for s in ELECTROLYTE_SPELLINGS],
    *[(a, s, 1.0) for a in ("calcium", "calcium-adjusted") for s in ("mg/dL", "mg/dl", "MG/DL")],
    *[(a, s, 4.008) for a in ("calcium", "calcium-adjusted") for s in ("mmol/L", "mmol/l", "MMOL/L")],
    *[(a, s, 2.004) for a in ("calcium", "calcium-adjusted") for s in ("mEq/L", "MEQ/L")],
    ("calcium-ionised", "mmol/L", 1.0),
    ("calcium-ionised", "mg/dL", 1 / 4.008),
    *[("magnesium", s, 1.0) for s in ("mg/dL", "mg/dl", "MG/DL")],
    *[("magnesium", s, 2.4305) for s in ("mmol/L", "mmol/l")],
    *[("magnesium", s, 1.21525) for s in ("mEq/L", "MEQ/L")],
    *[("glucose", s, 1.0) for s in ("mg/dL", "mg/dl", "MG/DL")],
    *[("glucose", s, 18.0156) for s in ("mmol/L", "mmol/l", "MMOL/L")],
    ("creatinine", "mg/dL", 1.0),
    *[("creatinine", s, 0.011312) for s in ("umol/L", "umol/l", "µmol/L", "μmol/L", "µmol/l", "UMOL/L")],
    *[("egfr", s, 1.0) for s in EGFR_SPELLINGS],
    *[("tsh", s, 1.0) for s in ("m[IU]/L", "mIU/L", "miu/l", "u[IU]/mL", "uIU/mL", "µIU/mL", "mU/L")],
    ("free-t4", "ng/dL", 1.0),
    *[("free-t4", s, 0.077687) for s in ("pmol/L", "pmol/l")],
    *[("vitamin-b12", s, 1.0) for s in ("pg/mL", "ng/L", "pg/ml")],
    *[("vitamin-b12", s, 1.35537) for s in ("pmol/L", "pmol/l")],
    *[("vitamin-d", s, 1.0) for s in ("ng/mL", "ug/L", "µg/L", "ng/ml")],
    *[("vitamin-d", s, 0.40064) for s in ("nmol/L", "nmol/l")],
    *[("ferritin", s, 1.0) for s in ("ng/mL", "ug/L", "µg/L", "ng/ml", "UG/L")],
    *[("creatine-kinase", s, 1.0) for s in ("U/L", "u/l", "IU/L", "[IU]/L")],
    ("albumin", "g/L", 1.0),
    ("albumin", "g/dL", 10.0),
    ("transferrin-saturation", "%", 1.0),
]  # fmt: skip


@pytest.mark.parametrize(("analyte", "spelling", "expected"), SPELLINGS)
def test_every_accepted_spelling_converts(analyte: str, spelling: str, expected: float) -> None:
    """Case, micro signs, spaces, mIU and mEq as feeds write them convert by UCUM."""
    factor = REFERENCE.analytes[analyte].to_canonical(spelling)
    assert factor == pytest.approx(expected, rel=1e-4), spelling


@pytest.mark.parametrize(
    ("analyte", "spelling"),
    [
        ("potassium", "mg"),
        ("potassium", "mmol per litre"),
        ("tsh", "U/L"),
        ("creatinine", "mmol"),
        ("egfr", "mL"),
    ],
)
def test_spellings_that_do_not_convert_are_refused(analyte: str, spelling: str) -> None:
    """A unit of another dimension, or no UCUM at all, is not guessed at."""
    assert REFERENCE.analytes[analyte].to_canonical(spelling) is None


JUDGED = sorted(a.id for a in REFERENCE.analytes.values() if a.judged and a.default_range(None) and a.ranges)
SPELLINGS_BY_ANALYTE = {a: [s for b, s, _ in SPELLINGS if b == a] for a in JUDGED}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_a_value_in_any_unit_is_judged_as_its_canonical_conversion(data: st.DataObject) -> None:
    """Property: the status and grades of a value sent in any accepted unit are those of its conversion."""
    analyte_id = data.draw(st.sampled_from(JUDGED))
    analyte = REFERENCE.analytes[analyte_id]
    spelling = data.draw(st.sampled_from(SPELLINGS_BY_ANALYTE[analyte_id]))
    sex = data.draw(st.sampled_from(["male", "female", None]))
    bounds = analyte.default_range(sex)
    assert bounds is not None
    top = (bounds.high or bounds.low or 1.0) * 30
    canonical = data.draw(st.floats(min_value=top / 10000, max_value=top, allow_nan=False))
    edges = [b for b in (bounds.low, bounds.high) if b is not None] + [g.value for g in analyte.grades]
    edges += [g.value * (bounds.high or 0) for g in analyte.grades if g.op == "above_uln_times"]
    assume(all(not math.isclose(canonical, e, rel_tol=1e-6) for e in edges))
    factor = analyte.to_canonical(spelling)
    assert factor is not None
    code = analyte.codes[0]
    as_sent = READER.read(observation(code.system, code.code, canonical / factor, spelling), "o", sex, TODAY)
    as_canonical = READER.read(observation(code.system, code.code, canonical, analyte.unit), "o", sex, TODAY)
    assert isinstance(as_sent, LabResult)
    assert isinstance(as_canonical, LabResult)
    assert (as_sent.status, as_sent.grades) == (as_canonical.status, as_canonical.grades)


def test_the_lab_flag_counts_when_the_unit_cannot_be_converted() -> None:
    """No conversion, but the laboratory said LL: the result is low and critically so, with a note."""
    flag = {
        "coding": [
            {"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation", "code": "LL"}
        ]
    }
    result = READER.read(
        observation(LOINC, "2823-3", 2.0, "mmol per litre", interpretation=[flag]), "o", None, TODAY
    )
    assert isinstance(result, LabResult)
    assert (result.status, result.grades, result.value) == ("low", ("severe-low",), None)
    assert result.note is not None
    assert "judged by the laboratory's own flag" in result.note.diagnostics


def test_the_record_range_in_its_own_unit_counts_when_the_unit_cannot_be_converted() -> None:
    """No conversion, no flag: a range written in the same unit string still judges the value."""
    rr = [{"low": {"value": 3.5, "unit": "mmol per litre"}, "high": {"value": 5.0, "unit": "mmol per litre"}}]
    result = READER.read(
        observation(LOINC, "2823-3", 5.9, "mmol per litre", referenceRange=rr), "o", None, TODAY
    )
    assert isinstance(result, LabResult)
    assert result.status == "high"


def test_range_is_shown_in_the_unit_the_lab_sent() -> None:
    """A magnesium in mmol/L is shown against the range converted to mmol/L, with the mg/dL value."""
    result = READER.read(observation(LOINC, "2601-3", 0.55, "mmol/L"), "o", None, TODAY)
    assert isinstance(result, LabResult)
    assert result.range_text.startswith("0.617–0.987 mmol/L")
    assert result.converted == "1.34 mg/dL"


INTERP = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"


def _flag(code: str) -> list[dict[str, Any]]:
    return [{"coding": [{"system": INTERP, "code": code}]}]


def _read(code: str, value: float, unit: str, sex: str | None = None, **extra: Any) -> LabResult:
    result = READER.read(observation(LOINC, code, value, unit, **extra), "o", sex, TODAY)
    assert isinstance(result, LabResult), result
    return result


@pytest.mark.parametrize(
    ("value", "extra", "status", "grades"),
    [
        (7.0, {"interpretation": _flag("N")}, "high", ("severe-high",)),  # the threshold beats an N flag
        (
            7.0,
            {"referenceRange": [{"low": {"value": 3.5}, "high": {"value": 7.5}}]},
            "high",
            ("severe-high",),
        ),
        (2.0, {"interpretation": _flag("H")}, "low", ("severe-low",)),  # and a contradicting H flag
        (6.0, {"interpretation": _flag("AA")}, "high", ("severe-high",)),  # AA takes the value's side
        (3.0, {"interpretation": _flag("AA")}, "low", ("severe-low",)),
        (4.4, {"interpretation": _flag("AA")}, "abnormal", ()),  # no side: abnormal, with a note
        (6.0, {"interpretation": _flag("HH")}, "high", ("severe-high",)),
        (6.0, {"interpretation": _flag("N")}, "normal", ()),  # below every grade the lab's N stands
    ],
)
def test_severe_thresholds_and_critical_flags_set_the_direction(
    value: float, extra: dict[str, Any], status: str, grades: tuple[str, ...]
) -> None:
    """Potassium: past a guideline threshold the value decides; a critical flag reaches the severe grade."""
    result = _read("2823-3", value, "mmol/L", **extra)
    assert (result.status, result.grades) == (status, grades)
    if status == "abnormal":
        assert result.note is not None
        assert "no range shows which way" in result.note.diagnostics


def test_a_range_bound_without_a_unit_is_in_the_value_unit() -> None:
    """Calcium 2.9 mmol/L against 2.2–2.6 without units: high (not read as 2.2 mg/dL = 0.55 mmol/L)."""
    rr = [{"low": {"value": 2.2}, "high": {"value": 2.6}}]
    result = _read("2000-8", 2.9, "mmol/L", referenceRange=rr)
    assert result.status == "high"
    assert result.range_text.startswith("2.2–2.6 mmol/L, record's range")


@pytest.mark.parametrize(
    ("code", "comparator", "value", "unit", "status", "grades"),
    [
        ("3016-3", "<", 0.01, "mIU/L", "low", ()),  # below the lower limit: low for certain
        ("2157-6", ">", 2000, "U/L", "high", ("marked-high",)),  # above 5x the upper limit
        ("19123-9", "<", 2.0, "mg/dL", "unknown", ()),  # inside the range: could be low or normal
        ("2157-6", ">", 0.5, "U/L", "unknown", ()),
        ("2823-3", "<", 2.0, "mmol/L", "low", ("severe-low",)),
        ("2823-3", ">", 2.0, "mmol/L", "unknown", ()),  # ">2.0" never reaches the low grade
    ],
)
def test_a_value_given_as_a_bound_is_judged_only_where_the_range_decides(
    code: str, comparator: str, value: float, unit: str, status: str, grades: tuple[str, ...]
) -> None:
    """valueQuantity.comparator: "<0.01" is below the range; "<2.0" inside it is not judged, and says so."""
    result = READER.read(
        observation(
            LOINC, code, None, None, valueQuantity={"value": value, "unit": unit, "comparator": comparator}
        ),
        "o",
        None,
        TODAY,
    )
    assert isinstance(result, LabResult)
    assert (result.status, result.grades) == (status, grades)
    assert result.shown_value.startswith(comparator)
    if status == "unknown":
        assert result.note is not None
        assert "is a bound" in result.note.diagnostics


SEXED = [
    {
        "low": {"value": 2.0},
        "high": {"value": 3.0},
        "appliesTo": [{"coding": [{"system": "http://snomed.info/sct", "code": "248152002"}]}],
    },
    {
        "low": {"value": 3.5},
        "high": {"value": 5.0},
        "appliesTo": [{"coding": [{"system": "http://snomed.info/sct", "code": "248153007"}]}],
    },
    {"low": {"value": 1.0}, "high": {"value": 9.0}, "appliesTo": [{"text": "non-black/african-american"}]},
]


@pytest.mark.parametrize(("sex", "status"), [("male", "low"), ("female", "normal"), (None, "low")])
def test_a_range_for_one_sex_applies_to_that_sex_only(sex: str | None, status: str) -> None:
    """referenceRange.appliesTo Male/Female (SNOMED CT, FHIR's value set); other populations are skipped."""
    result = _read("2823-3", 3.0, "mmol/L", sex=sex, referenceRange=SEXED)
    assert result.status == status
    if sex is None:
        assert "record's range" not in result.range_text  # no sexed range is the patient's: the default


def test_a_therapeutic_range_is_not_the_normal_range() -> None:
    """referenceRange.type therapeutic: skipped, so the default range judges 5.6 mmol/L as high."""
    meaning = "http://terminology.hl7.org/CodeSystem/referencerange-meaning"
    rr = [
        {
            "low": {"value": 3},
            "high": {"value": 6},
            "type": {"coding": [{"system": meaning, "code": "therapeutic"}]},
        }
    ]
    assert _read("2823-3", 5.6, "mmol/L", referenceRange=rr).status == "high"
    rr[0]["type"] = {"coding": [{"system": meaning, "code": "normal"}]}
    assert _read("2823-3", 5.6, "mmol/L", referenceRange=rr).status == "normal"


def test_a_unit_coded_in_another_system_is_read_by_its_readable_unit() -> None:
    """valueQuantity.system SNOMED CT (258813002) is not UCUM: the readable unit "mmol/L" is parsed."""
    quantity = {"value": 6.9, "unit": "mmol/L", "system": "http://snomed.info/sct", "code": "258813002"}
    result = READER.read(observation(LOINC, "2823-3", None, None, valueQuantity=quantity), "o", None, TODAY)
    assert isinstance(result, LabResult)
    assert (result.status, result.grades) == ("high", ("severe-high",))


def test_an_analyte_alias_matches_in_any_case() -> None:
    """TSH in "mU/l" (the alias is "mU/L"): converted, not refused."""
    assert REFERENCE.analytes["tsh"].to_canonical("mU/l") == pytest.approx(1.0)
    assert _read("3016-3", 12, "MU/L").status == "high"


def test_ionised_magnesium_is_its_own_analyte() -> None:
    """2600-5 is ionised magnesium: never judged against total magnesium's range (0.5 is normal ionised)."""
    result = _read("2600-5", 0.5, "mmol/L")
    assert (result.analyte, result.status) == ("magnesium-ionised", "unknown")


def test_every_abnormal_direction_of_a_judged_result_is_named_by_a_rule(tmp_path: Path) -> None:
    """Drop high vitamin B12 from lab-abnormal-other: the rule set refuses to start, naming the gap."""
    rules = _rules_copy(tmp_path)

    def drop(data: dict[str, Any]) -> None:
        parts = data["when"]["all"][1]["any"]
        parts.remove({"lab": "vitamin-b12", "is": "high"})

    _edit_yaml(rules / "set" / "lab-abnormal-other.yaml", drop)
    with pytest.raises(RuleSetError, match="vitamin-b12 high"):
        load_ruleset(rules)


# -- reference data that is wrong refuses to start --------------------------------------------------


def _rules_copy(tmp_path: Path) -> Path:
    target = tmp_path / "rules"
    shutil.copytree(ROOT / "rules", target)
    return target


def _edit_yaml(path: Path, change: Any) -> None:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    change(data)
    path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), encoding="utf-8")


@pytest.mark.parametrize(
    ("file", "change", "message"),
    [
        (
            "lab-codes.yaml",
            lambda d: d["potassium"]["codes"][0].pop("source"),
            "needs a display and a source",
        ),
        (
            "lab-codes.yaml",
            lambda d: d["sodium"]["codes"].append(d["potassium"]["codes"][0]),
            "is claimed by",
        ),
        ("lab-codes.yaml", lambda d: d["potassium"]["codes"][0].update(source="a friend"), "names no URL"),
        ("lab-codes.yaml", lambda d: d.pop("ferritin"), "name different analytes"),
        ("labs.yaml", lambda d: d["potassium"].update(unit="millimoles"), "canonical unit"),
        ("labs.yaml", lambda d: d["potassium"]["grades"][0].update(source="nobody"), "unknown source"),
        ("labs.yaml", lambda d: d["tsh"]["unit_aliases"].update({"x": "kg"}), "unit alias"),
        ("labs.yaml", lambda d: d["potassium"].update(names=[]), "names"),
        ("labs.yaml", lambda d: d["potassium"]["grades"][0].update(unit="mg"), "does not convert"),
        ("derived.yaml", lambda d: d["adjusted-calcium"].update(albumin="albumen"), "not an analyte"),
        (
            "lab-flags.yaml",
            lambda d: d["interpretation"]["flags"]["LL"].update(direction="down"),
            "a direction",
        ),
        ("lab-flags.yaml", lambda d: d["interpretation"].pop("source"), "needs a source"),
        ("lab-flags.yaml", lambda d: d["applies_to_sex"]["codes"][0].update(sex="m"), "male or female"),
        ("lab-flags.yaml", lambda d: d["range_meanings"].update(judged_against=[]), "is empty"),
    ],
)
def test_flawed_lab_reference_data_refuses_to_start(
    tmp_path: Path, file: str, change: Any, message: str
) -> None:
    """Each mistake in the lab tables stops start-up with a message naming it."""
    rules = _rules_copy(tmp_path)
    _edit_yaml(rules / "reference" / file, change)
    with pytest.raises(RuleSetError, match=message):
        create_app({"TESTING": True, "RULES_DIR": str(rules)})


def test_a_rule_naming_an_unknown_grade_refuses_to_start(tmp_path: Path) -> None:
    """`is: severe-high` on an analyte without that grade is a rule-set error, not a silent false."""
    rules = _rules_copy(tmp_path)
    _edit_yaml(
        rules / "set" / "lab-low-vitamin-d.yaml", lambda d: d["when"]["all"][1].update({"is": "marked-high"})
    )
    with pytest.raises(RuleSetError, match="'is' must be one of"):
        load_ruleset(rules)


# -- a deployment's local lab codes -----------------------------------------------------------------

LOCAL = "http://lab.example.org/codes"


def _concept_map(target_code: str) -> dict[str, Any]:
    return {
        "resourceType": "ConceptMap",
        "url": "https://hospital.example.org/fhir/ConceptMap/local-labs",
        "status": "active",
        "group": [
            {
                "source": LOCAL,
                "target": LOINC,
                "element": [
                    {
                        "code": "KPOT",
                        "display": "Potassium, serum (local)",
                        "target": [{"code": target_code, "equivalence": "equivalent"}],
                    }
                ],
            }
        ],
    }


def _bundle_with_local_potassium(value: float) -> dict[str, Any]:
    example = json.loads(
        (ROOT / "fhir_examples/likely-benign/near-miss-unrecognised-potassium-code.json").read_text()
    )
    for entry in example["entry"]:
        resource = entry["resource"]
        if resource["resourceType"] == "Observation":
            resource["valueQuantity"]["value"] = value
    return dict(example)


def test_a_local_code_mapped_by_concept_map_is_read(tmp_path: Path) -> None:
    """LAB_CODE_MAP maps the lab's KPOT to LOINC 2823-3: the unrecognised potassium becomes a result."""
    path = tmp_path / "map.json"
    path.write_text(json.dumps(_concept_map("2823-3")))
    app = create_app({"TESTING": True, "TODAY": "2026-11-22", "LAB_CODE_MAP": str(path)})
    cards = app.test_client().post("/evaluate", json=_bundle_with_local_potassium(6.9)).get_json()["cards"]
    assert cards[0]["source"]["topic"]["code"] == "labhighpotassium"
    assert cards[0]["indicator"] == "critical"
    assert "KPOT" in cards[0]["detail"]
    hook = bundle_to_hook_request(_bundle_with_local_potassium(6.9))
    assert (
        app.test_client()
        .post("/cds-services/twitching-red-flags", json=hook)
        .get_json()["cards"][0]["indicator"]
        == "critical"
    )


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (json.dumps(_concept_map("9999-9")), "not a result code of any analyte"),
        (
            json.dumps({**_concept_map("2823-3"), "resourceType": "ValueSet"}),
            "not a valid FHIR R4 ConceptMap",
        ),
        ("{", "not a valid FHIR R4 ConceptMap"),
    ],
)
def test_a_flawed_concept_map_refuses_to_start(tmp_path: Path, content: str, message: str) -> None:
    """A map to an unknown code, or a file that is not a ConceptMap, stops start-up."""
    path = tmp_path / "map.json"
    path.write_text(content)
    with pytest.raises(RuleSetError, match=message):
        create_app({"TESTING": True, "LAB_CODE_MAP": str(path)})
