"""Select the resources the rules read (by type and code, before any model work) and validate them."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pydantic
from fhir.resources.R4B.condition import Condition
from fhir.resources.R4B.observation import Observation
from fhir.resources.R4B.patient import Patient
from fhir.resources.R4B.questionnaireresponse import QuestionnaireResponse
from fhir.resources.R4B.servicerequest import ServiceRequest

from service.engine.reference import LOINC, ReferenceData
from service.errors import Issue

MODELS: dict[str, type[Any]] = {
    "Patient": Patient,
    "Observation": Observation,
    "QuestionnaireResponse": QuestionnaireResponse,
    "Condition": Condition,
    "ServiceRequest": ServiceRequest,
}

# Required codes whose value sets fhir.resources does not enforce (R4 value sets).
STATUS_VALUES: dict[str, frozenset[str]] = {
    "Observation": frozenset(
        [
            "registered",
            "preliminary",
            "final",
            "amended",
            "corrected",
            "cancelled",
            "entered-in-error",
            "unknown",
        ]
    ),
    "QuestionnaireResponse": frozenset(
        ["in-progress", "completed", "amended", "entered-in-error", "stopped"]
    ),
    "ServiceRequest": frozenset(
        ["draft", "active", "on-hold", "revoked", "completed", "entered-in-error", "unknown"]
    ),
}

SLEEP_DURATION_LOINC = "93832-4"


@dataclass(frozen=True)
class Located:
    """A raw resource and where it sits in the request (FHIRPath-style)."""

    resource: dict[str, Any]
    path: str


@dataclass
class Intake:
    """Validated resources the rules read, plus every problem found on the way."""

    patients: list[tuple[Patient, str]] = field(default_factory=list)
    observations: list[tuple[Observation, str]] = field(default_factory=list)
    responses: list[tuple[QuestionnaireResponse, str]] = field(default_factory=list)
    conditions: list[tuple[Condition, str]] = field(default_factory=list)
    service_requests: list[tuple[ServiceRequest, str]] = field(default_factory=list)
    problems: list[Issue] = field(default_factory=list)
    patient_problems: list[Issue] = field(default_factory=list)  # an unusable Patient: no evaluation

    def bucket(self, resource_type: str) -> list[tuple[Any, str]]:
        """The list a validated resource of this type goes into."""
        return {
            "Patient": self.patients,
            "Observation": self.observations,
            "QuestionnaireResponse": self.responses,
            "Condition": self.conditions,
            "ServiceRequest": self.service_requests,
        }[resource_type]  # type: ignore[return-value]


class Selector:
    """Decides from raw JSON alone whether the rules read a resource (cheap: no model built)."""

    def __init__(self, reference: ReferenceData) -> None:
        self.lab_codes = frozenset(reference.analyte_by_loinc()) | {SLEEP_DURATION_LOINC}
        self.finding_codes = frozenset(c.key() for codes in reference.findings.values() for c in codes)

    def _codes(self, concept: Any) -> Iterator[tuple[str, str]]:
        if isinstance(concept, dict):
            for coding in concept.get("coding") or ():
                if isinstance(coding, dict):
                    yield (str(coding.get("system")), str(coding.get("code")))

    def wanted(self, resource: dict[str, Any]) -> bool:
        """True for a resource the rules read."""
        kind = resource.get("resourceType")
        if kind in ("Patient", "QuestionnaireResponse", "ServiceRequest"):
            return True
        if kind == "Observation":
            for system, code in self._codes(resource.get("code")):
                if (system == LOINC and code in self.lab_codes) or ((system, code) in self.finding_codes):
                    return True
            return any(key in self.finding_codes for key in self._codes(resource.get("valueCodeableConcept")))
        if kind == "Condition":
            return any(key in self.finding_codes for key in self._codes(resource.get("code")))
        return False


def fhirpath(base: str, loc: Iterable[int | str]) -> str:
    """Turn a pydantic error location into a FHIRPath-style expression under `base`."""
    out = base
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part and not part.startswith(("function-", "union[", "json-or-python")):
            out += f".{part}"
    return out


def _answer_type_problems(items: Any, path: str) -> Iterator[Issue]:
    # fhir.resources coerces "yes" to true and "5" to 5; FHIR JSON does not, and a misread
    # answer changes a card, so answer value types are checked against the JSON types.
    expected: dict[str, type | tuple[type, ...]] = {
        "valueBoolean": bool,
        "valueInteger": int,
        "valueDecimal": (int, float),
    }
    for i, item in enumerate(items if isinstance(items, list) else ()):
        if not isinstance(item, dict):
            continue
        item_path = f"{path}.item[{i}]"
        for j, answer in enumerate(item.get("answer") or ()):
            if not isinstance(answer, dict):
                continue
            for key, kind in expected.items():
                if key not in answer:
                    continue
                value = answer[key]
                wrong_bool = isinstance(value, bool) and key != "valueBoolean"
                if wrong_bool or not isinstance(value, kind):
                    yield Issue(
                        f"{key} must be a JSON {'boolean' if key == 'valueBoolean' else 'number'},"
                        f" got {type(value).__name__}",
                        f"{item_path}.answer[{j}].{key}",
                    )
            yield from _answer_type_problems(answer.get("item"), f"{item_path}.answer[{j}]")
        yield from _answer_type_problems(item.get("item"), item_path)


def validate(located: Located) -> tuple[Any | None, list[Issue]]:
    """Validate one resource with its R4B model; return the model or the problems, with paths."""
    raw, path = located.resource, located.path
    kind = str(raw.get("resourceType"))
    problems: list[Issue] = []
    if kind == "QuestionnaireResponse":
        problems.extend(_answer_type_problems(raw.get("item"), path))
    allowed = STATUS_VALUES.get(kind)
    status = raw.get("status")
    if allowed and isinstance(status, str) and status not in allowed:
        problems.append(Issue(f"{kind}.status {status!r} is not one of {sorted(allowed)}", f"{path}.status"))
    try:
        model = MODELS[kind].model_validate(raw, strict=True)
    except pydantic.ValidationError as exc:
        for error in exc.errors(include_url=False):
            problems.append(Issue(f"{kind}: {error['msg']}", fhirpath(path, error["loc"])))
        return None, problems
    return (None if problems else model), problems


def take_in(resources: Iterable[Located], selector: Selector) -> Intake:
    """Validate the resources the rules read; everything invalid is reported with its path."""
    intake = Intake()
    for located in resources:
        if not selector.wanted(located.resource):
            continue
        model, problems = validate(located)
        intake.problems.extend(problems)
        if located.resource["resourceType"] == "Patient":
            intake.patient_problems.extend(problems)
        if model is not None:
            intake.bucket(located.resource["resourceType"]).append((model, located.path))
    return intake
