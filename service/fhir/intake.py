"""Select the resources the rules read (by type and code, before any model work) and validate them."""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import date
from typing import Any, NamedTuple

import orjson
import pydantic
from fhir.resources.R4B.condition import Condition
from fhir.resources.R4B.medicationrequest import MedicationRequest
from fhir.resources.R4B.medicationstatement import MedicationStatement
from fhir.resources.R4B.observation import Observation
from fhir.resources.R4B.patient import Patient
from fhir.resources.R4B.questionnaireresponse import QuestionnaireResponse
from fhir.resources.R4B.servicerequest import ServiceRequest

from service.engine.reference import ReferenceData
from service.errors import Issue, echo
from service.fhir import lean
from service.fhir.dates import fhir_date
from service.fhir.raw import scalar_text
from service.security.limits import json_depth_exceeds

MODELS: dict[str, type[Any]] = {
    "Patient": Patient,
    "Observation": Observation,
    "QuestionnaireResponse": QuestionnaireResponse,
    "Condition": Condition,
    "ServiceRequest": ServiceRequest,
    "MedicationRequest": MedicationRequest,
    "MedicationStatement": MedicationStatement,
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
    "MedicationRequest": frozenset(
        ["active", "on-hold", "cancelled", "completed", "entered-in-error", "stopped", "draft", "unknown"]
    ),
    "MedicationStatement": frozenset(
        ["active", "completed", "entered-in-error", "intended", "stopped", "on-hold", "unknown", "not-taken"]
    ),
}


class Located(NamedTuple):
    """A raw resource and where it sits in the request (FHIRPath-style)."""

    # A tuple, not a frozen dataclass: one is built per prefetched resource, 1,000 on a big call.
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
    medications: list[tuple[MedicationRequest | MedicationStatement, str]] = field(default_factory=list)
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
            "MedicationRequest": self.medications,
            "MedicationStatement": self.medications,
        }[resource_type]  # type: ignore[return-value]


class Selector:
    """Decides from raw JSON alone whether the rules read a resource (cheap: no model built)."""

    def __init__(self, reference: ReferenceData) -> None:
        by_code = reference.analyte_by_code()
        self.analyte_of = {key: analyte.id for key, analyte in by_code.items()}
        self.measurement_codes = frozenset(m.code.key() for m in reference.measurements.values())
        self.lab_codes = (
            frozenset(by_code) | frozenset(reference.analyte_by_other_specimen()) | self.measurement_codes
        )
        self.finding_codes = frozenset(c.key() for codes in reference.findings.values() for c in codes)
        names = sorted({n for a in reference.analytes.values() for n in a.names}, key=len, reverse=True)
        # An Observation whose code is unknown but whose display or text names an analyte is read
        # too, so the data card can say why it was not used (never silently dropped).
        self._pattern = re.compile(r"\b(" + "|".join(re.escape(n) for n in names) + r")\b")
        # Displays repeat across records (every "Body Height"), so each distinct text is searched
        # once per worker (a plain dict: cheaper than lru_cache on this path; cleared when full).
        self._named: dict[str, bool] = {}

    @staticmethod
    def _codes(concept: Any) -> list[tuple[str, str]]:
        if not isinstance(concept, dict):
            return []
        codings = concept.get("coding") or ()
        return [
            (scalar_text(c.get("system")), scalar_text(c.get("code"))) for c in codings if isinstance(c, dict)
        ]

    def _lab_group(self, resource: dict[str, Any], codes: list[tuple[str, str]]) -> tuple[str, str] | None:
        """(analyte id, subject) of an Observation the rules read only as a lab result, else None."""
        # The extractor judges an Observation by its first coding that names an analyte (any
        # system); anything also carrying a finding code, or a sleep duration, is read differently.
        analyte = None
        for key in codes:
            analyte = self.analyte_of.get(key)
            if analyte is not None:
                break
        if analyte is None:
            return None
        findings = self.finding_codes
        for key in codes:
            if key in findings or key in self.measurement_codes:
                return None
        for key in self._codes(resource.get("valueCodeableConcept")):
            if key in findings:
                return None
        subject = resource.get("subject")
        return analyte, scalar_text(subject.get("reference") if isinstance(subject, dict) else subject)

    def _names_in(self, text: str) -> bool:
        named = self._named.get(text)
        if named is None:
            if len(self._named) >= 8192:
                self._named.clear()
            # Lower-cased first: a case-sensitive regex is several times faster than IGNORECASE.
            named = self._named[text] = self._pattern.search(text.lower()) is not None
        return named

    def _names_analyte(self, concept: Any) -> bool:
        if not isinstance(concept, dict):
            return False
        text = concept.get("text")
        if isinstance(text, str) and self._names_in(text):
            return True
        for coding in concept.get("coding") or ():
            display = coding.get("display") if isinstance(coding, dict) else None
            if isinstance(display, str) and self._names_in(display):
                return True
        return False

    def select(self, resource: dict[str, Any]) -> tuple[bool, tuple[str, str] | None]:
        """Whether the rules read a resource, and its lab group (see _lab_group): codes read once."""
        # Plain loops: this runs for every prefetched resource, a thousand on a big call.
        kind = resource.get("resourceType")
        if kind in (
            "Patient",
            "QuestionnaireResponse",
            "ServiceRequest",
            "MedicationRequest",
            "MedicationStatement",
        ):
            return True, None
        findings = self.finding_codes
        if kind == "Observation":
            code = resource.get("code")
            if not isinstance(code, dict) or not isinstance(code.get("coding", []), list):
                # A code that is not a CodeableConcept cannot be told apart from a result the rules
                # read: validation reports it with its path (never dropped unseen).
                return True, None
            codes = self._codes(code)
            labs = self.lab_codes
            for key in codes:
                if key in labs or key in findings:
                    return True, self._lab_group(resource, codes)
            for key in self._codes(resource.get("valueCodeableConcept")):
                if key in findings:
                    return True, self._lab_group(resource, codes)
            if self._names_analyte(code):
                return True, None
            # A panel carries its results in components: read when one names an analyte.
            for part in resource.get("component") or ():
                if isinstance(part, dict):
                    part_code = part.get("code")
                    if any(k in labs for k in self._codes(part_code)) or self._names_analyte(part_code):
                        return True, None
            return False, None
        if kind == "Condition":
            for key in self._codes(resource.get("code")):
                if key in findings:
                    return True, None
        return False, None

    def wanted(self, resource: dict[str, Any]) -> bool:
        """True for a resource the rules read."""
        return self.select(resource)[0]


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
        problems.append(
            Issue(f"{kind}.status {echo(status)} is not one of {sorted(allowed)}", f"{path}.status")
        )
    try:
        model = MODELS[kind].model_validate(raw, strict=True)
    except pydantic.ValidationError as exc:
        for error in exc.errors(include_url=False):
            problems.append(Issue(f"{kind}: {error['msg']}", fhirpath(path, error["loc"])))
        return None, problems
    return (None if problems else model), problems


# Bytes of JSON the validation memo keeps per worker by default (VALIDATION_MEMO_BYTES).
# Memo keys of the hook path's light objects start with this byte (no JSON text starts with it).
LEAN_KEY = b"\x00"
DEFAULT_MEMO_BYTES = 4 * 1024 * 1024


class ValidatedModels:
    """Models of valid resources this worker has already validated, keyed by their exact JSON.

    An EHR sends the same lab results and answers again on every chart open and on each hook of
    one order (select, then sign); validation is deterministic, so byte-identical JSON gets the
    model built last time. Only valid resources are kept (problems carry per-request paths), the
    least recently used goes first, and the models are never modified after validation.

    Bounded by entries and by the bytes of JSON kept (a model takes about ten times its JSON);
    a resource larger than 1/64 of the byte budget is never kept, so a few huge resources cannot
    take a worker's memory.
    """

    def __init__(self, max_entries: int, max_bytes: int = DEFAULT_MEMO_BYTES) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.largest = max_bytes // 64
        self.bytes = 0
        self._models: OrderedDict[bytes, Any] = OrderedDict()
        # What later layers read from a kept model (service/facts/memo.py), by the model's id:
        # dropped with the model, so it shares the memo's bounds and is never kept without it.
        self._derived: dict[int, dict[Hashable, Any]] = {}
        self._lock = threading.Lock()  # gthread workers share one memo
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._models)

    def get(self, key: bytes) -> Any | None:
        """The model validated from exactly this JSON, or None."""
        with self._lock:
            model = self._models.get(key)
            if model is None:
                self.misses += 1
                return None
            self._models.move_to_end(key)
            self.hits += 1
            return model

    def derived(self, model: Any) -> dict[Hashable, Any] | None:
        """The room for what is read from `model` while this memo keeps it; None when it does not.

        Keyed by identity: a kept model is alive, so its id is never another object's meanwhile.
        """
        return self._derived.get(id(model))

    def clear(self) -> None:
        """Forget every model."""
        with self._lock:
            self._models.clear()
            self._derived.clear()
            self.bytes = 0

    def put(self, key: bytes, model: Any) -> None:
        """Keep a valid resource's model, dropping the least recently used past either bound."""
        if len(key) > self.largest:
            return
        with self._lock:
            previous = self._models.get(key)
            if previous is None:
                self.bytes += len(key)
            elif previous is not model:
                self._derived.pop(id(previous), None)
            self._models[key] = model
            self._derived.setdefault(id(model), {})
            self._models.move_to_end(key)
            while len(self._models) > self.max_entries or self.bytes > self.max_bytes:
                dropped, gone = self._models.popitem(last=False)
                self.bytes -= len(dropped)
                self._derived.pop(id(gone), None)


class Validator:
    """Validation as the edge does it: depth limit first, then the R4B model, remembered when valid."""

    def __init__(self, max_depth: int, memo_entries: int = 0, memo_bytes: int = DEFAULT_MEMO_BYTES) -> None:
        self.max_depth = max_depth
        self.memo = ValidatedModels(memo_entries, memo_bytes) if memo_entries > 0 and memo_bytes > 0 else None

    def __call__(self, located: Located) -> tuple[Any | None, list[Issue]]:
        """The model or the problems (nesting past the limit is one, found before any model work)."""
        key = None
        if self.memo is not None:
            try:
                key = orjson.dumps(located.resource)
            except (TypeError, orjson.JSONEncodeError):
                key = None  # not JSON orjson can write (a test's Python object): validate it afresh
            model = self.memo.get(key) if key is not None else None
            if model is not None:
                return model, []
        # Only what is modelled is walked (pydantic and the answer checks recurse); the parts of a
        # request nobody reads are left to orjson's own limit of 1,024 levels.
        # Reported like any invalid resource (data card on a hook call, 422 on /evaluate): the
        # fault may be the FHIR server's, when the resource was fetched, not the caller's.
        if json_depth_exceeds(located.resource, self.max_depth):
            return None, [Issue(f"this resource nests deeper than {self.max_depth} levels", located.path)]
        model, problems = validate(located)
        if key is not None and model is not None and not problems:
            assert self.memo is not None
            self.memo.put(key, model)
        return model, problems

    def lean(self, located: Located) -> tuple[Any | None, list[Issue]]:
        """The hook path's check: only the fields the rules read (service/fhir/lean.py), remembered too."""
        key = None
        if self.memo is not None:
            try:
                # A prefix keeps light objects and models apart: /evaluate must get a model.
                key = LEAN_KEY + orjson.dumps(located.resource)
            except (TypeError, orjson.JSONEncodeError):
                key = None
            remembered = self.memo.get(key) if key is not None else None
            if remembered is not None:
                return remembered, []
        # Nesting cannot pass the limit with fewer objects and arrays than levels: counted in the
        # memo key's text by two C scans (brackets inside strings only over-count), the walk is
        # taken only by a resource with that many (a typical Observation has a dozen or two).
        containers = key.count(b"{") + key.count(b"[") if key is not None else self.max_depth + 1
        if containers > self.max_depth and json_depth_exceeds(located.resource, self.max_depth):
            return None, [Issue(f"this resource nests deeper than {self.max_depth} levels", located.path)]
        raw = located.resource
        resource, problems = lean.read(raw, located.path, STATUS_VALUES.get(str(raw.get("resourceType"))))
        if key is not None and resource is not None:
            assert self.memo is not None
            self.memo.put(key, resource)
        return resource, problems


def _effective_date(raw: dict[str, Any]) -> date | None:
    """The day a raw Observation counts from, as the extractor reads it from the model; None if unclear."""
    period = raw.get("effectivePeriod")
    period_end = (period.get("end") or period.get("start")) if isinstance(period, dict) else None
    return fhir_date(
        raw.get("effectiveDateTime") or raw.get("effectiveInstant") or period_end or raw.get("issued")
    )


def take_in(
    resources: Iterable[Located],
    selector: Selector,
    usable_lab: Callable[[Any], bool] | None = None,
    validator: Callable[[Located], tuple[Any | None, list[Issue]]] = validate,
) -> Intake:
    """Validate the resources the rules read; everything invalid is reported with its path.

    With `usable_lab`, lab results are validated newest first, per analyte code and subject, until
    one is valid and usable: the rules read only the latest, so older ones are never modelled.
    """
    intake = Intake()
    results: dict[int, tuple[Located, Any, list[Issue]]] = {}
    labs: dict[tuple[str, str], list[tuple[date | None, int, Located]]] = {}
    for index, located in enumerate(resources):
        wanted, group = selector.select(located.resource)
        if not wanted:
            continue
        if group is not None and usable_lab is not None:
            labs.setdefault(group, []).append((_effective_date(located.resource), index, located))
        else:
            results[index] = (located, *validator(located))
    for candidates in labs.values():
        # Newest first, and among one day the earliest in the request (the extractor's tie-break).
        candidates.sort(key=lambda c: (-(c[0] or date.min).toordinal(), c[1]))
        chosen = False
        for when, index, located in candidates:
            # Past the chosen one only results of unclear date are read: the extractor may rank them.
            if chosen and when is not None:
                continue
            model, problems = validator(located)
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
