"""The hook path's intake: checks on exactly the fields the rules read, straight from the parsed JSON.

fhir.resources builds and validates every element of a resource (~105 µs an Observation, 630 µs a
Patient) although the rules read a few dozen fields. Here each resource type the rules read has a
reader that checks only those fields and returns a light, immutable object with the attribute
names and Python types the fact extractor reads from the R4B models (service/facts/extract.py,
service/facts/labs.py): Decimal for decimals, date or tz-aware datetime for full dates and times,
the original string for partial dates and leap seconds, lists for arrays, None for absent.
Reading any attribute that is not declared raises AttributeError, so nothing unchecked is read.

Checked on those fields: JSON type (string, number, boolean, array, object: FHIR JSON, so a
decimal sent as "3.1" or a boolean sent as 1 is a problem), non-empty strings, code and id syntax,
date/dateTime/instant syntax and calendar validity, integer range, required fields, one value per
choice element ([x]), and the status value sets (intake.STATUS_VALUES). A problem in one of them
is an Issue at its FHIRPath-style path and the resource is not used, as a model validation error
would make it. Everything else in a resource is not looked at (the /evaluate endpoint, `validate`
and the CLI still validate every element with fhir.resources).
"""

from __future__ import annotations

import math
import re
from datetime import date, datetime
from decimal import Decimal
from typing import Any, NamedTuple

from service.errors import Issue

_STRING = re.compile(r"[ \r\n\t\S]+")  # fhir.resources' String pattern (searched, not full-matched)
_CODE = re.compile(r"[^\s]+(\s[^\s]+)*")
_ID = re.compile(r"[A-Za-z0-9\-.]+")
_DATE = re.compile(
    r"([0-9]([0-9]([0-9][1-9]|[1-9]0)|[1-9]00)|[1-9]000)(-(0[1-9]|1[0-2])(-(0[1-9]|[1-2][0-9]|3[0-1]))?)?"
)
_DATE_TIME = re.compile(
    r"([0-9]([0-9]([0-9][1-9]|[1-9]0)|[1-9]00)|[1-9]000)(-(0[1-9]|1[0-2])(-(0[1-9]|[1-2][0-9]|"
    r"3[0-1])(T([01][0-9]|2[0-3]):[0-5][0-9]:([0-5][0-9]|60)(\.[0-9]+)?(Z|([+\-])((0[0-9]|"
    r"1[0-3]):[0-5][0-9]|14:00)))?)?)?"
)
_INSTANT = re.compile(
    r"([0-9]([0-9]([0-9][1-9]|[1-9]0)|[1-9]00)|[1-9]000)-(0[1-9]|1[0-2])-(0[1-9]|[1-2][0-9]|"
    r"3[0-1])T([01][0-9]|2[0-3]):[0-5][0-9]:([0-5][0-9]|60)(\.[0-9]+)?(Z|([+\-])((0[0-9]|"
    r"1[0-3]):[0-5][0-9]|14:00))"
)
_LEAP_SECOND = re.compile(r"(?P<head>.*T[0-9]{2}:[0-9]{2}:)60(?P<tail>.*)")
_INT_MIN, _INT_MAX = -(2**31), 2**31 - 1


def _json_type(value: Any) -> str:
    """The JSON type of a parsed value, as a problem names it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


class Check:
    """The problems found in one resource, each with its path; messages name the resource type.

    Each check takes the value, its parent's path and its own name: the path of a field is built
    only when it is needed (a problem, or a structure to descend into), not for every absent one.
    """

    __slots__ = ("kind", "problems")

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.problems: list[Issue] = []

    def fail(self, message: str, path: str) -> None:
        """Record one problem."""
        self.problems.append(Issue(f"{self.kind}: {message}", path))

    def wrong_type(self, expected: str, value: Any, path: str, name: str) -> None:
        """Record a value of the wrong JSON type."""
        self.fail(f"{name} must be a JSON {expected}, got {_json_type(value)}", f"{path}.{name}")

    # -- primitives ----------------------------------------------------------------------------
    def uri(self, value: Any, path: str, name: str) -> str | None:
        """A uri or canonical: any JSON string (fhir.resources' pattern admits every string)."""
        if value is None or isinstance(value, str):
            return value
        self.wrong_type("string", value, path, name)
        return None

    def string(self, value: Any, path: str, name: str) -> str | None:
        """A FHIR string: a non-empty JSON string."""
        text = self.uri(value, path, name)
        if text is not None and _STRING.search(text) is None:
            self.fail(f"{name} must not be an empty string", f"{path}.{name}")
            return None
        return text

    def code(self, value: Any, path: str, name: str) -> str | None:
        """A FHIR code: no leading, trailing or doubled whitespace."""
        text = self.uri(value, path, name)
        if text is not None and _CODE.fullmatch(text) is None:
            self.fail(
                f"{text[:40]!r} is not a code (no leading, trailing or repeated whitespace)",
                f"{path}.{name}",
            )
            return None
        return text

    def id(self, value: Any, path: str, name: str) -> str | None:
        """A resource id: letters, digits, '-' and '.'."""
        text = self.uri(value, path, name)
        if text is not None and _ID.fullmatch(text) is None:
            self.fail(f"{text[:40]!r} is not an id (letters, digits, '-' and '.')", f"{path}.{name}")
            return None
        return text

    def boolean(self, value: Any, path: str, name: str) -> bool | None:
        """A JSON true or false."""
        if value is None or isinstance(value, bool):
            return value
        self.wrong_type("boolean", value, path, name)
        return None

    def decimal(self, value: Any, path: str, name: str) -> Decimal | None:
        """A JSON number, as the Decimal fhir.resources makes of it (floats through str())."""
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            self.wrong_type("number", value, path, name)
            return None
        if isinstance(value, float):
            if not math.isfinite(value):  # orjson never parses one; a Python caller could pass it
                self.fail(f"{value} is not a decimal", f"{path}.{name}")
                return None
            return Decimal(str(value))
        return Decimal(value)

    def integer(self, value: Any, path: str, name: str) -> int | None:
        """A JSON integer within FHIR's 32-bit range."""
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            self.wrong_type("integer", value, path, name)
            return None
        if not _INT_MIN <= value <= _INT_MAX:
            self.fail(f"{value} is outside the 32-bit integer range", f"{path}.{name}")
            return None
        return value

    def day(self, value: Any, path: str, name: str) -> date | str | None:
        """A FHIR date: a date, or the string itself when partial (YYYY, YYYY-MM)."""
        if value is None:
            return None
        if not isinstance(value, str):
            self.wrong_type("string", value, path, name)
            return None
        if _DATE.fullmatch(value) is None:
            self.fail(f"{value[:40]!r} is not a FHIR date (YYYY, YYYY-MM or YYYY-MM-DD)", f"{path}.{name}")
            return None
        if len(value) < 10:
            return value
        try:
            return date(int(value[:4]), int(value[5:7]), int(value[8:10]))
        except ValueError:
            self.fail(f"{value!r} is not a calendar date", f"{path}.{name}")
            return None

    def date_time(self, value: Any, path: str, name: str) -> datetime | date | str | None:
        """A FHIR dateTime: a tz-aware datetime with a time, a date without; partial dates as sent."""
        if value is None:
            return None
        if not isinstance(value, str):
            self.wrong_type("string", value, path, name)
            return None
        if _DATE_TIME.fullmatch(value) is None:
            self.fail(
                f"{value[:40]!r} is not a FHIR dateTime (YYYY, YYYY-MM, YYYY-MM-DD or"
                " YYYY-MM-DDThh:mm:ss with a time zone)",
                f"{path}.{name}",
            )
            return None
        if len(value) == 10 or "T" in value:
            return self._timestamp(value, path, name)
        return value

    def instant(self, value: Any, path: str, name: str) -> datetime | str | None:
        """A FHIR instant: a tz-aware datetime to the second."""
        if value is None:
            return None
        if not isinstance(value, str):
            self.wrong_type("string", value, path, name)
            return None
        if _INSTANT.fullmatch(value) is None:
            self.fail(
                f"{value[:40]!r} is not a FHIR instant (YYYY-MM-DDThh:mm:ss with a time zone)",
                f"{path}.{name}",
            )
            return None
        return self._timestamp(value, path, name)  # type: ignore[return-value]

    def _timestamp(self, value: str, path: str, name: str) -> datetime | date | str | None:
        """A syntactically valid full date or date and time, checked against the calendar."""
        try:
            if len(value) == 10:
                return date(int(value[:4]), int(value[5:7]), int(value[8:10]))
            leap = _LEAP_SECOND.fullmatch(value)
            if leap is not None:
                # datetime cannot hold second 60: checked with 59 and kept as sent (as fhir.resources does)
                _parse_time(leap.group("head") + "59" + leap.group("tail"))
                return value
            return _parse_time(value)
        except ValueError:
            self.fail(f"{value!r} is not a calendar date and time", f"{path}.{name}")
            return None

    # -- structures ----------------------------------------------------------------------------
    def obj(self, value: Any, path: str, name: str) -> dict[str, Any] | None:
        """A JSON object, or None (with a problem when something else was sent)."""
        if value is None:
            return None
        if isinstance(value, dict):
            return value
        self.wrong_type("object", value, path, name)
        return None

    def objects(self, value: Any, path: str, name: str) -> list[tuple[dict[str, Any], str]] | None:
        """A JSON array of objects, each with its path; None when absent."""
        if value is None:
            return None
        if not isinstance(value, list):
            self.wrong_type("array", value, path, name)
            return None
        here = f"{path}.{name}"
        out = []
        for i, item in enumerate(value):
            if isinstance(item, dict):
                out.append((item, f"{here}[{i}]"))
            else:
                self.fail(f"{name}[{i}] must be a JSON object, got {_json_type(item)}", f"{here}[{i}]")
        return out

    def one_of(self, raw: dict[str, Any], prefix: str, path: str, required: bool = False) -> None:
        """At most one (with `required`, exactly one) value of a choice element [x]."""
        # A null counts as absent, as it does for the models.
        cut = len(prefix)
        present = [
            k for k, v in raw.items() if v is not None and k.startswith(prefix) and k[cut : cut + 1].isupper()
        ]
        if len(present) > 1:
            self.fail(f"{prefix}[x] takes one value, got {', '.join(sorted(present))}", path)
        elif required and not present:
            self.fail(f"{prefix}[x] is required", f"{path}.{prefix}[x]")

    def required(self, raw: dict[str, Any], key: str, path: str) -> None:
        """A primitive field the resource must carry (null is absent)."""
        if raw.get(key) is None:
            self.fail(f"{key} is required", f"{path}.{key}")

    def present(self, raw: dict[str, Any], key: str, path: str) -> None:
        """A structure the resource must carry (as the models require it: the member, even null)."""
        if key not in raw:
            self.fail(f"{key} is required", f"{path}.{key}")

    def status(self, raw: dict[str, Any], path: str, allowed: frozenset[str] | None) -> str | None:
        """A required status code from its value set."""
        self.required(raw, "status", path)
        status = self.code(raw.get("status"), path, "status")
        if status is not None and allowed and status not in allowed:
            # Worded as the full validation words it (intake.validate)
            message = f"{self.kind}.status {status!r} is not one of {sorted(allowed)}"
            self.problems.append(Issue(message, f"{path}.status"))
            return None
        return status

    def coding(self, raw: dict[str, Any], path: str) -> Coding:
        """A Coding's system, code and display (`path` is the Coding's own)."""
        return Coding(
            self.uri(raw.get("system"), path, "system"),
            self.code(raw.get("code"), path, "code"),
            self.string(raw.get("display"), path, "display"),
        )

    def concept(self, value: Any, path: str, name: str) -> CodeableConcept | None:
        """A CodeableConcept's codings and text."""
        if value is None:
            return None
        if not isinstance(value, dict):
            self.wrong_type("object", value, path, name)
            return None
        here = f"{path}.{name}"
        codings = self.objects(value.get("coding"), here, "coding")
        return CodeableConcept(
            None if codings is None else [self.coding(c, p) for c, p in codings],
            self.string(value.get("text"), here, "text"),
        )

    def concepts(self, value: Any, path: str, name: str) -> list[CodeableConcept] | None:
        """An array of CodeableConcepts."""
        items = self.objects(value, path, name)
        if items is None:
            return None
        out = []
        for item, p in items:
            codings = self.objects(item.get("coding"), p, "coding")
            out.append(
                CodeableConcept(
                    None if codings is None else [self.coding(c, cp) for c, cp in codings],
                    self.string(item.get("text"), p, "text"),
                )
            )
        return out

    def reference(self, value: Any, path: str, name: str) -> Reference | None:
        """A Reference's reference and display."""
        if value is None:
            return None
        if not isinstance(value, dict):
            self.wrong_type("object", value, path, name)
            return None
        here = f"{path}.{name}"
        return Reference(
            self.string(value.get("reference"), here, "reference"),
            self.string(value.get("display"), here, "display"),
        )

    def quantity(self, value: Any, path: str, name: str) -> Quantity | None:
        """A Quantity: its value a JSON number, its unit, code, system and comparator."""
        if value is None:
            return None
        if not isinstance(value, dict):
            self.wrong_type("object", value, path, name)
            return None
        here = f"{path}.{name}"
        return Quantity(
            self.decimal(value.get("value"), here, "value"),
            self.string(value.get("unit"), here, "unit"),
            self.uri(value.get("system"), here, "system"),
            self.code(value.get("code"), here, "code"),
            self.code(value.get("comparator"), here, "comparator"),
        )

    def span(self, value: Any, path: str, name: str) -> Range | None:
        """A Range's low and high."""
        raw = self.obj(value, path, name)
        if raw is None:
            return None
        here = f"{path}.{name}"
        return Range(self.quantity(raw.get("low"), here, "low"), self.quantity(raw.get("high"), here, "high"))

    def period(self, value: Any, path: str, name: str) -> Period | None:
        """A Period's start and end."""
        raw = self.obj(value, path, name)
        if raw is None:
            return None
        here = f"{path}.{name}"
        return Period(
            self.date_time(raw.get("start"), here, "start"), self.date_time(raw.get("end"), here, "end")
        )


def _parse_time(value: str) -> datetime:
    """A FHIR date and time (already matched: 'Z' or an offset) as a tz-aware datetime."""
    head, dot, rest = value.partition(".")
    if dot:
        # datetime holds microseconds: longer fractions are cut, as pydantic cuts them
        digits = len(rest) - len(rest.lstrip("0123456789"))
        value = f"{head}.{rest[: min(digits, 6)].ljust(6, '0')}{rest[digits:]}"
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


# -- the light objects (attribute names as in the R4B models) ------------------------------------
class Coding(NamedTuple):
    """Coding: system, code, display."""

    system: str | None
    code: str | None
    display: str | None


class CodeableConcept(NamedTuple):
    """CodeableConcept: coding, text."""

    coding: list[Coding] | None
    text: str | None


class Reference(NamedTuple):
    """Reference: reference, display."""

    reference: str | None
    display: str | None


class Quantity(NamedTuple):
    """Quantity: value (Decimal), unit, system, code, comparator."""

    value: Decimal | None
    unit: str | None
    system: str | None
    code: str | None
    comparator: str | None


class Range(NamedTuple):
    """Range: low, high."""

    low: Quantity | None
    high: Quantity | None


class Period(NamedTuple):
    """Period: start, end."""

    start: datetime | date | str | None
    end: datetime | date | str | None


class Meta(NamedTuple):
    """Meta: lastUpdated."""

    lastUpdated: datetime | str | None  # noqa: N815 (the FHIR element name)


class ReferenceRange(NamedTuple):
    """Observation.referenceRange: low, high, type, appliesTo, age."""

    low: Quantity | None
    high: Quantity | None
    type: CodeableConcept | None
    appliesTo: list[CodeableConcept] | None  # noqa: N815
    age: Range | None


class ObservationComponent(NamedTuple):
    """Observation.component: the fields a component read as a result has."""

    code: CodeableConcept | None
    valueQuantity: Quantity | None  # noqa: N815
    valueString: str | None  # noqa: N815
    dataAbsentReason: CodeableConcept | None  # noqa: N815
    interpretation: list[CodeableConcept] | None
    referenceRange: list[ReferenceRange] | None  # noqa: N815


class Observation(NamedTuple):
    """Observation: what the lab, measurement and finding readers read."""

    id: str | None
    status: str | None
    code: CodeableConcept | None
    subject: Reference | None
    effectiveDateTime: datetime | date | str | None  # noqa: N815
    effectiveInstant: datetime | str | None  # noqa: N815
    effectivePeriod: Period | None  # noqa: N815
    issued: datetime | str | None
    valueQuantity: Quantity | None  # noqa: N815
    valueString: str | None  # noqa: N815
    valueBoolean: bool | None  # noqa: N815
    valueCodeableConcept: CodeableConcept | None  # noqa: N815
    dataAbsentReason: CodeableConcept | None  # noqa: N815
    interpretation: list[CodeableConcept] | None
    referenceRange: list[ReferenceRange] | None  # noqa: N815
    component: list[ObservationComponent] | None

    @staticmethod
    def get_resource_type() -> str:
        """The FHIR resource type."""
        return "Observation"


class Patient(NamedTuple):
    """Patient: id, gender, birthDate, deceasedDateTime."""

    id: str | None
    gender: str | None
    birthDate: date | str | None  # noqa: N815
    deceasedDateTime: datetime | date | str | None  # noqa: N815

    @staticmethod
    def get_resource_type() -> str:
        """The FHIR resource type."""
        return "Patient"


class Answer(NamedTuple):
    """QuestionnaireResponse.item.answer: the value[x] the answer reader reads, and nested items."""

    valueBoolean: bool | None  # noqa: N815
    valueDecimal: Decimal | None  # noqa: N815
    valueInteger: int | None  # noqa: N815
    valueCoding: Coding | None  # noqa: N815
    valueString: str | None  # noqa: N815
    item: list[Item] | None


class Item(NamedTuple):
    """QuestionnaireResponse.item: linkId, answer, nested items."""

    linkId: str | None  # noqa: N815
    answer: list[Answer] | None
    item: list[Item] | None


class QuestionnaireResponse(NamedTuple):
    """QuestionnaireResponse: which questionnaire, its status and time, its items."""

    id: str | None
    status: str | None
    questionnaire: str | None
    authored: datetime | date | str | None
    meta: Meta | None
    subject: Reference | None
    item: list[Item] | None

    @staticmethod
    def get_resource_type() -> str:
        """The FHIR resource type."""
        return "QuestionnaireResponse"


class Condition(NamedTuple):
    """Condition: code, statuses, onset and recorded dates, subject."""

    id: str | None
    code: CodeableConcept | None
    clinicalStatus: CodeableConcept | None  # noqa: N815
    verificationStatus: CodeableConcept | None  # noqa: N815
    onsetDateTime: datetime | date | str | None  # noqa: N815
    recordedDate: datetime | date | str | None  # noqa: N815
    subject: Reference | None

    @staticmethod
    def get_resource_type() -> str:
        """The FHIR resource type."""
        return "Condition"


class ServiceRequest(NamedTuple):
    """ServiceRequest: status, code, subject."""

    id: str | None
    status: str | None
    code: CodeableConcept | None
    subject: Reference | None

    @staticmethod
    def get_resource_type() -> str:
        """The FHIR resource type."""
        return "ServiceRequest"


class Contained(NamedTuple):
    """A contained resource: its type and id, and its code when it is a Medication."""

    resourceType: str  # noqa: N815
    id: str | None
    code: CodeableConcept | None

    def get_resource_type(self) -> str:
        """The FHIR resource type."""
        return self.resourceType


class MedicationRequest(NamedTuple):
    """MedicationRequest: status, the medicine (coded, or a reference to a contained one), when, subject."""

    id: str | None
    status: str | None
    medicationCodeableConcept: CodeableConcept | None  # noqa: N815
    medicationReference: Reference | None  # noqa: N815
    contained: list[Contained] | None
    authoredOn: datetime | date | str | None  # noqa: N815
    subject: Reference | None

    @staticmethod
    def get_resource_type() -> str:
        """The FHIR resource type."""
        return "MedicationRequest"


class MedicationStatement(NamedTuple):
    """MedicationStatement: status, the medicine, when, subject."""

    id: str | None
    status: str | None
    medicationCodeableConcept: CodeableConcept | None  # noqa: N815
    medicationReference: Reference | None  # noqa: N815
    contained: list[Contained] | None
    effectiveDateTime: datetime | date | str | None  # noqa: N815
    dateAsserted: datetime | date | str | None  # noqa: N815
    subject: Reference | None

    @staticmethod
    def get_resource_type() -> str:
        """The FHIR resource type."""
        return "MedicationStatement"


# -- readers, one per resource type -------------------------------------------------------------
def _reference_ranges(c: Check, value: Any, path: str, name: str) -> list[ReferenceRange] | None:
    items = c.objects(value, path, name)
    if items is None:
        return None
    return [
        ReferenceRange(
            c.quantity(rr.get("low"), p, "low"),
            c.quantity(rr.get("high"), p, "high"),
            c.concept(rr.get("type"), p, "type"),
            c.concepts(rr.get("appliesTo"), p, "appliesTo"),
            c.span(rr.get("age"), p, "age"),
        )
        for rr, p in items
    ]


def _component(c: Check, raw: dict[str, Any], path: str) -> ObservationComponent:
    c.present(raw, "code", path)
    c.one_of(raw, "value", path)
    return ObservationComponent(
        c.concept(raw.get("code"), path, "code"),
        c.quantity(raw.get("valueQuantity"), path, "valueQuantity"),
        c.string(raw.get("valueString"), path, "valueString"),
        c.concept(raw.get("dataAbsentReason"), path, "dataAbsentReason"),
        c.concepts(raw.get("interpretation"), path, "interpretation"),
        _reference_ranges(c, raw.get("referenceRange"), path, "referenceRange"),
    )


def _observation(c: Check, raw: dict[str, Any], path: str, allowed: frozenset[str] | None) -> Observation:
    c.present(raw, "code", path)
    c.one_of(raw, "value", path)
    c.one_of(raw, "effective", path)
    components = c.objects(raw.get("component"), path, "component")
    return Observation(
        c.id(raw.get("id"), path, "id"),
        c.status(raw, path, allowed),
        c.concept(raw.get("code"), path, "code"),
        c.reference(raw.get("subject"), path, "subject"),
        c.date_time(raw.get("effectiveDateTime"), path, "effectiveDateTime"),
        c.instant(raw.get("effectiveInstant"), path, "effectiveInstant"),
        c.period(raw.get("effectivePeriod"), path, "effectivePeriod"),
        c.instant(raw.get("issued"), path, "issued"),
        c.quantity(raw.get("valueQuantity"), path, "valueQuantity"),
        c.string(raw.get("valueString"), path, "valueString"),
        c.boolean(raw.get("valueBoolean"), path, "valueBoolean"),
        c.concept(raw.get("valueCodeableConcept"), path, "valueCodeableConcept"),
        c.concept(raw.get("dataAbsentReason"), path, "dataAbsentReason"),
        c.concepts(raw.get("interpretation"), path, "interpretation"),
        _reference_ranges(c, raw.get("referenceRange"), path, "referenceRange"),
        None if components is None else [_component(c, part, p) for part, p in components],
    )


def _patient(c: Check, raw: dict[str, Any], path: str, allowed: frozenset[str] | None) -> Patient:
    c.one_of(raw, "deceased", path)
    return Patient(
        c.id(raw.get("id"), path, "id"),
        c.code(raw.get("gender"), path, "gender"),
        c.day(raw.get("birthDate"), path, "birthDate"),
        c.date_time(raw.get("deceasedDateTime"), path, "deceasedDateTime"),
    )


def _items(c: Check, value: Any, path: str, name: str) -> list[Item] | None:
    items = c.objects(value, path, name)
    if items is None:
        return None
    out = []
    for raw, p in items:
        c.required(raw, "linkId", p)
        answers = c.objects(raw.get("answer"), p, "answer")
        out.append(
            Item(
                c.string(raw.get("linkId"), p, "linkId"),
                None if answers is None else [_answer(c, a, ap) for a, ap in answers],
                _items(c, raw.get("item"), p, "item"),
            )
        )
    return out


def _answer(c: Check, raw: dict[str, Any], path: str) -> Answer:
    c.one_of(raw, "value", path)
    coding = c.obj(raw.get("valueCoding"), path, "valueCoding")
    return Answer(
        c.boolean(raw.get("valueBoolean"), path, "valueBoolean"),
        c.decimal(raw.get("valueDecimal"), path, "valueDecimal"),
        c.integer(raw.get("valueInteger"), path, "valueInteger"),
        None if coding is None else c.coding(coding, f"{path}.valueCoding"),
        c.string(raw.get("valueString"), path, "valueString"),
        _items(c, raw.get("item"), path, "item"),
    )


def _response(
    c: Check, raw: dict[str, Any], path: str, allowed: frozenset[str] | None
) -> QuestionnaireResponse:
    meta = c.obj(raw.get("meta"), path, "meta")
    return QuestionnaireResponse(
        c.id(raw.get("id"), path, "id"),
        c.status(raw, path, allowed),
        c.uri(raw.get("questionnaire"), path, "questionnaire"),
        c.date_time(raw.get("authored"), path, "authored"),
        None if meta is None else Meta(c.instant(meta.get("lastUpdated"), f"{path}.meta", "lastUpdated")),
        c.reference(raw.get("subject"), path, "subject"),
        _items(c, raw.get("item"), path, "item"),
    )


def _condition(c: Check, raw: dict[str, Any], path: str, allowed: frozenset[str] | None) -> Condition:
    c.present(raw, "subject", path)
    c.one_of(raw, "onset", path)
    return Condition(
        c.id(raw.get("id"), path, "id"),
        c.concept(raw.get("code"), path, "code"),
        c.concept(raw.get("clinicalStatus"), path, "clinicalStatus"),
        c.concept(raw.get("verificationStatus"), path, "verificationStatus"),
        c.date_time(raw.get("onsetDateTime"), path, "onsetDateTime"),
        c.date_time(raw.get("recordedDate"), path, "recordedDate"),
        c.reference(raw.get("subject"), path, "subject"),
    )


def _service_request(
    c: Check, raw: dict[str, Any], path: str, allowed: frozenset[str] | None
) -> ServiceRequest:
    c.present(raw, "subject", path)
    return ServiceRequest(
        c.id(raw.get("id"), path, "id"),
        c.status(raw, path, allowed),
        c.concept(raw.get("code"), path, "code"),
        c.reference(raw.get("subject"), path, "subject"),
    )


def _contained(c: Check, value: Any, path: str, name: str) -> list[Contained] | None:
    items = c.objects(value, path, name)
    if items is None:
        return None
    out = []
    for raw, p in items:
        kind = raw.get("resourceType")
        if not isinstance(kind, str) or not kind:
            c.fail("a contained resource needs its resourceType", f"{p}.resourceType")
            continue
        medication = kind == "Medication"
        out.append(
            Contained(
                kind,
                c.id(raw.get("id"), p, "id"),
                c.concept(raw.get("code"), p, "code") if medication else None,
            )
        )
    return out


def _medication_request(
    c: Check, raw: dict[str, Any], path: str, allowed: frozenset[str] | None
) -> MedicationRequest:
    c.present(raw, "subject", path)
    c.one_of(raw, "medication", path, required=True)
    return MedicationRequest(
        c.id(raw.get("id"), path, "id"),
        c.status(raw, path, allowed),
        c.concept(raw.get("medicationCodeableConcept"), path, "medicationCodeableConcept"),
        c.reference(raw.get("medicationReference"), path, "medicationReference"),
        _contained(c, raw.get("contained"), path, "contained"),
        c.date_time(raw.get("authoredOn"), path, "authoredOn"),
        c.reference(raw.get("subject"), path, "subject"),
    )


def _medication_statement(
    c: Check, raw: dict[str, Any], path: str, allowed: frozenset[str] | None
) -> MedicationStatement:
    c.present(raw, "subject", path)
    c.one_of(raw, "medication", path, required=True)
    c.one_of(raw, "effective", path)
    return MedicationStatement(
        c.id(raw.get("id"), path, "id"),
        c.status(raw, path, allowed),
        c.concept(raw.get("medicationCodeableConcept"), path, "medicationCodeableConcept"),
        c.reference(raw.get("medicationReference"), path, "medicationReference"),
        _contained(c, raw.get("contained"), path, "contained"),
        c.date_time(raw.get("effectiveDateTime"), path, "effectiveDateTime"),
        c.date_time(raw.get("dateAsserted"), path, "dateAsserted"),
        c.reference(raw.get("subject"), path, "subject"),
    )


READERS = {
    "Observation": _observation,
    "Patient": _patient,
    "QuestionnaireResponse": _response,
    "Condition": _condition,
    "ServiceRequest": _service_request,
    "MedicationRequest": _medication_request,
    "MedicationStatement": _medication_statement,
}


def read(raw: dict[str, Any], path: str, allowed: frozenset[str] | None) -> tuple[Any | None, list[Issue]]:
    """The light object of one selected resource, or None with the problems in the fields read."""
    kind = str(raw.get("resourceType"))
    check = Check(kind)
    resource = READERS[kind](check, raw, path, allowed)
    if check.problems:
        return None, check.problems
    return resource, []
