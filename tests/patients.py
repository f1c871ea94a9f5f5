"""Build one patient's FHIR Bundle from plain facts: answers, coded conditions, medications, labs."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import yaml

from tests.conftest import ROOT

BASE = "https://ehr.example.org/fhir"
QUESTIONNAIRE = "https://twitch-cds.example.org/fhir/Questionnaire/twitching-assessment"
OPTIONS = "https://twitch-cds.example.org/fhir/CodeSystem/twitching-assessment-options"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
SNOMED = "http://snomed.info/sct"
ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
LOINC = "http://loinc.org"

# Every core red-flag question answered "no": the starting point of most scenarios.
ALL_NO = {
    "weakness": False,
    "weakness-progressive": False,
    "atrophy": False,
    "numbness-tingling": False,
    "radiating-pain": False,
    "coordination": False,
    "speech": False,
    "swallowing": False,
    "breathing": False,
    "bladder-bowel": False,
    "saddle-numbness": False,
    "spreading": False,
    "worsening": False,
}


def _items() -> dict[str, tuple[str, str]]:
    """linkId -> (group, type) from the questionnaire reference (the one contract)."""
    raw = yaml.safe_load((ROOT / "rules/reference/questionnaire.yaml").read_text(encoding="utf-8"))
    return {i["linkId"]: (g["linkId"], i["type"]) for g in raw["groups"] for i in g["items"]}


ITEMS = _items()


def _answer(kind: str, value: Any) -> list[dict[str, Any]]:
    values = value if isinstance(value, (list, tuple)) else [value]
    if kind == "boolean":
        return [{"valueBoolean": bool(v)} for v in values]
    if kind == "integer":
        return [{"valueInteger": int(v)} for v in values]
    if kind == "decimal":
        return [{"valueDecimal": v} for v in values]
    if kind == "choice":
        return [{"valueCoding": {"system": OPTIONS, "code": str(v)}} for v in values]
    return [{"valueString": str(v)} for v in values]


def response(pid: str, answers: Mapping[str, Any], version: str = "1.1.0") -> dict[str, Any]:
    """A completed QuestionnaireResponse with the answers grouped as the Questionnaire groups them."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for link_id, value in answers.items():
        group, kind = ITEMS[link_id]
        groups.setdefault(group, []).append({"linkId": link_id, "answer": _answer(kind, value)})
    return {
        "resourceType": "QuestionnaireResponse",
        "id": f"qr-{pid}",
        "questionnaire": f"{QUESTIONNAIRE}|{version}",
        "status": "completed",
        "subject": {"reference": f"Patient/{pid}"},
        "authored": "2026-11-20",
        "item": [{"linkId": g, "item": items} for g, items in groups.items()],
    }


def condition(pid: str, n: int, system: str, code: str, display: str) -> dict[str, Any]:
    """An active, confirmed problem-list Condition."""
    return {
        "resourceType": "Condition",
        "id": f"cond-{pid}-{n}",
        "clinicalStatus": {
            "coding": [
                {"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}
            ]
        },
        "verificationStatus": {
            "coding": [
                {"system": "http://terminology.hl7.org/CodeSystem/condition-ver-status", "code": "confirmed"}
            ]
        },
        "code": {"coding": [{"system": system, "code": code, "display": display}], "text": display},
        "subject": {"reference": f"Patient/{pid}"},
        "recordedDate": "2025-03-01",
    }


def medication(
    pid: str, n: int, text: str, rxnorm: str | None = None, statement: bool = False
) -> dict[str, Any]:
    """An active MedicationRequest (or MedicationStatement) naming the drug by text, and by code if given."""
    concept: dict[str, Any] = {"text": text}
    if rxnorm:
        concept["coding"] = [{"system": RXNORM, "code": rxnorm, "display": text}]
    if statement:
        return {
            "resourceType": "MedicationStatement",
            "id": f"ms-{pid}-{n}",
            "status": "active",
            "medicationCodeableConcept": concept,
            "subject": {"reference": f"Patient/{pid}"},
            "effectiveDateTime": "2026-09-01",
        }
    return {
        "resourceType": "MedicationRequest",
        "id": f"mr-{pid}-{n}",
        "status": "active",
        "intent": "order",
        "medicationCodeableConcept": concept,
        "subject": {"reference": f"Patient/{pid}"},
        "authoredOn": "2026-09-01",
    }


def lab(pid: str, n: int, loinc: str, value: float, unit: str, low: float, high: float) -> dict[str, Any]:
    """A final lab result with its own reference range, dated inside every look-back."""
    return {
        "resourceType": "Observation",
        "id": f"obs-{pid}-{n}",
        "status": "final",
        "category": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                        "code": "laboratory",
                    }
                ]
            }
        ],
        "code": {"coding": [{"system": LOINC, "code": loinc}]},
        "subject": {"reference": f"Patient/{pid}"},
        "effectiveDateTime": "2026-11-15",
        "valueQuantity": {"value": value, "unit": unit, "system": "http://unitsofmeasure.org", "code": unit},
        "referenceRange": [
            {
                "low": {"value": low, "unit": unit, "system": "http://unitsofmeasure.org", "code": unit},
                "high": {"value": high, "unit": unit, "system": "http://unitsofmeasure.org", "code": unit},
            }
        ],
    }


def bundle(
    pid: str,
    birth: str,
    gender: str,
    answers: Mapping[str, Any] | None = None,
    extra: Sequence[dict[str, Any]] = (),
    version: str = "1.1.0",
) -> dict[str, Any]:
    """A collection Bundle: the Patient, the answers (if any) and the extra resources."""
    resources: list[dict[str, Any]] = [
        {"resourceType": "Patient", "id": pid, "birthDate": birth, "gender": gender}
    ]
    if answers is not None:
        resources.append(response(pid, answers, version))
    resources.extend(extra)
    return {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [{"fullUrl": f"{BASE}/{r['resourceType']}/{r['id']}", "resource": r} for r in resources],
    }
