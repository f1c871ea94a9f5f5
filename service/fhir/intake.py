"""Select the resources the rules read (by type and code, before any model work) and validate them."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import pydantic
from fhir.resources.R4B.condition import Condition
from fhir.resources.R4B.observation import Observation
from fhir.resources.R4B.patient import Patient
from fhir.resources.R4B.questionnaireresponse import QuestionnaireResponse
from fhir.resources.R4B.servicerequest import ServiceRequest

from service.engine.reference import LOINC, ReferenceData
from service.errors import Issue
from service.fhir.dates import fhir_date

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
        self.analyte_of = {loinc: analyte.id for loinc, analyte in reference.analyte_by_loinc().items()}

    def _codes(self, concept: Any) -> Iterator[tuple[str, str]]:
        if isinstance(concept, dict):
            for coding in concept.get("coding") or ():
                if isinstance(coding, dict):
                    yield (str(coding.get("system")), str(coding.get("code")))

    def lab_group(self, resource: dict[str, Any]) -> tuple[str, str] | None:
        """(analyte id, subject) of an Observation the rules read only as a lab result, else None."""
        # The extractor judges an Observation by its first LOINC coding (with system and code set);
        # anything also carrying a finding code, or a sleep duration, is read differently: None.
        if resource.get("resourceType") != "Observation":
            return None
        codes = list(self._codes(resource.get("code")))
        loinc = next((c for system, c in codes if system == LOINC and c not in ("", "None")), None)
        analyte = self.analyte_of.get(loinc) if loinc is not None else None
        if analyte is None:
            return None
        if any(
            key in self.finding_codes for key in (*codes, *self._codes(resource.get("valueCodeableConcept")))
        ):
            return None
        subject = resource.get("subject")
        return analyte, str(subject.get("reference") if isinstance(subject, dict) else subject)

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


def _effective_date(raw: dict[str, Any]) -> date | None:
    """The day a raw Observation counts from, as the extractor reads it from the model; None if unclear."""
    period = raw.get("effectivePeriod")
    period_end = (period.get("end") or period.get("start")) if isinstance(period, dict) else None
    return fhir_date(
        raw.get("effectiveDateTime") or raw.get("effectiveInstant") or period_end or raw.get("issued")
    )


def take_in(
    resources: Iterable[Located], selector: Selector, usable_lab: Callable[[Any], bool] | None = None
) -> Intake:
    """Validate the resources the rules read; everything invalid is reported with its path.

    With `usable_lab`, lab results are validated newest first, per analyte code and subject, until
    one is valid and usable: the rules read only the latest, so older ones are never modelled.
    """
    intake = Intake()
    results: dict[int, tuple[Located, Any, list[Issue]]] = {}
    labs: dict[tuple[str, str], list[tuple[date | None, int, Located]]] = {}
    for index, located in enumerate(resources):
        if not selector.wanted(located.resource):
            continue
        group = selector.lab_group(located.resource) if usable_lab is not None else None
        if group is not None:
            labs.setdefault(group, []).append((_effective_date(located.resource), index, located))
        else:
            results[index] = (located, *validate(located))
    for candidates in labs.values():
        # Newest first, and among one day the earliest in the request (the extractor's tie-break).
        candidates.sort(key=lambda c: (-(c[0] or date.min).toordinal(), c[1]))
        chosen = False
        for when, index, located in candidates:
            # Past the chosen one only results of unclear date are read: the extractor may rank them.
            if chosen and when is not None:
                continue
            model, problems = validate(located)
            results[index] = (located, model, problems)
            chosen = chosen or (model is not None and usable_lab is not None and usable_lab(model))
    for index in sorted(results):  # request order, as every check downstream expects
        located, model, problems = results[index]
        intake.problems.extend(problems)
        if located.resource["resourceType"] == "Patient":
            intake.patient_problems.extend(problems)
        if model is not None:
            intake.bucket(located.resource["resourceType"]).append((model, located.path))
    return intake
