"""Conditions over named facts, in three-valued logic: an unanswered question is unknown, never no."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Protocol

from service.engine.reference import NUMERIC_TESTS
from service.facts.model import Evidence, LabResult, PatientFacts

# None means "unknown": a rule fires only when its condition is True.
Truth = bool | None
Result = tuple[Truth, tuple[Evidence, ...]]
Check = Callable[[PatientFacts], Result]
UNKNOWN: Result = (None, ())
FALSE: Result = (False, ())


class ConditionError(ValueError):
    """A condition in a rule file that does not parse or names an unknown fact."""


@dataclass(frozen=True)
class FactSpec:
    """A fact the rules may name: its kind decides which tests apply to it."""

    name: str
    kind: str  # "boolean", "number", "choice", "multi", "string"
    label: str
    options: tuple[str, ...] = ()


# Each condition is a frozen tree node (read by the catalogue and the start-up checks) whose `check`
# is its logic as one closure, built once: a rule set is evaluated on every call, and a closure
# over its constants costs about half what a method reading them from the node does.


class Condition(Protocol):
    """Anything that can be evaluated against a patient's facts."""

    @property
    def check(self) -> Check:
        """The condition as a function of the facts: truth value and the evidence that decided it."""

    def fact_names(self) -> set[str]:
        """Every fact this condition reads (for the catalogue and validation)."""


@dataclass(frozen=True)
class IsTrue:
    """A boolean fact is true (bare fact name in a rule)."""

    name: str

    @cached_property
    def check(self) -> Check:
        """True/False as recorded; unknown when never answered or coded."""
        name = self.name

        def is_true(facts: PatientFacts) -> Result:
            fact = facts.facts.get(name)
            if fact is None:
                return UNKNOWN
            return bool(fact.value), fact.evidence

        return is_true

    def fact_names(self) -> set[str]:
        """The one fact read."""
        return {self.name}


_COMPARISONS = ("above", "below", "at_least", "at_most", "equals", "includes")


def _includes(value: Any, operand: Any) -> bool:
    return isinstance(value, tuple) and operand in value


def _equals(value: Any, operand: Any) -> bool:
    return bool(value == operand)


@dataclass(frozen=True)
class Compare:
    """A number, choice or multi-choice fact compared with a constant."""

    name: str
    op: str
    operand: Any

    @cached_property
    def check(self) -> Check:
        """Compare the fact's value; unknown when the fact is unknown (or not a number for a number test)."""
        name, operand = self.name, self.operand
        if self.op in NUMERIC_TESTS:
            numeric, limit = NUMERIC_TESTS[self.op], float(operand)

            def compare_number(facts: PatientFacts) -> Result:
                fact = facts.facts.get(name)
                if fact is None or not isinstance(fact.value, float):
                    return UNKNOWN
                return bool(numeric(fact.value, limit)), fact.evidence

            return compare_number
        test = _includes if self.op == "includes" else _equals

        def compare(facts: PatientFacts) -> Result:
            fact = facts.facts.get(name)
            if fact is None:
                return UNKNOWN
            return test(fact.value, operand), fact.evidence

        return compare

    def fact_names(self) -> set[str]:
        """The one fact read."""
        return {self.name}


# "abnormal-no-direction": flagged abnormal (A, AA) by the laboratory with no range to say which way.
LAB_STATES = ("low", "high", "abnormal", "abnormal-no-direction", "absent")
_ABNORMAL = frozenset({"low", "high", "abnormal"})


def _directed(lab: LabResult, status: str) -> bool | None:
    # Flagged abnormal by the lab without a direction: neither low nor high is known.
    return None if lab.status == "abnormal" else lab.status == status


def _any_abnormal(lab: LabResult, status: str) -> bool | None:
    return lab.status in _ABNORMAL


def _undirected(lab: LabResult, status: str) -> bool | None:
    return lab.status == "abnormal"


def _past_grade(lab: LabResult, status: str) -> bool | None:
    return status in lab.grades


_LAB_MATCHES: dict[str, Callable[[LabResult, str], bool | None]] = {
    "low": _directed,
    "high": _directed,
    "abnormal": _any_abnormal,
    "abnormal-no-direction": _undirected,
}


@dataclass(frozen=True)
class LabIs:
    """The latest result of an analyte is low, high, abnormal, past a named grade, or absent."""

    analyte: str
    status: str  # one of LAB_STATES, or a grade id of the analyte (e.g. "severe-high")
    current: bool | None = None

    @cached_property
    def check(self) -> Check:
        """Judge the latest result; unknown when there is none or it could not be judged."""
        analyte, status, current = self.analyte, self.status, self.current
        if status == "absent":
            return lambda facts: (facts.labs.get(analyte) is None, ())
        matches = _LAB_MATCHES.get(status, _past_grade)

        def lab_is(facts: PatientFacts) -> Result:
            lab = facts.labs.get(analyte)
            if lab is None or lab.status == "unknown":
                return UNKNOWN
            truth = matches(lab, status)
            if truth is None:
                return UNKNOWN
            if current is not None and lab.current != current:
                truth = False
            return truth, (lab.evidence,)

        return lab_is

    def fact_names(self) -> set[str]:
        """Labs are named by analyte."""
        return {f"lab:{self.analyte}"}


@dataclass(frozen=True)
class LabCompare:
    """The latest result of an analyte compared with a number in the analyte's canonical unit."""

    analyte: str
    op: str
    limit: float

    @cached_property
    def check(self) -> Check:
        """Unknown when there is no result or it has no convertible value."""
        analyte, limit, numeric = self.analyte, self.limit, NUMERIC_TESTS[self.op]

        def lab_compare(facts: PatientFacts) -> Result:
            lab = facts.labs.get(analyte) or facts.helper_labs.get(analyte)
            if lab is None or lab.value is None:
                return UNKNOWN
            return bool(numeric(lab.value, limit)), (lab.evidence,)

        return lab_compare

    def fact_names(self) -> set[str]:
        """Labs are named by analyte."""
        return {f"lab:{self.analyte}"}


@dataclass(frozen=True)
class Not:
    """Known to be false (unknown stays unknown)."""

    inner: Condition

    @cached_property
    def check(self) -> Check:
        """Invert a known truth value."""
        inner = self.inner.check

        def negate(facts: PatientFacts) -> Result:
            truth, evidence = inner(facts)
            return (None if truth is None else not truth), evidence

        return negate

    def fact_names(self) -> set[str]:
        """What the inner condition reads."""
        return self.inner.fact_names()


def lab_states(condition: Any) -> set[tuple[str, str]]:
    """Every (analyte, state) a condition tree tests with LabIs (for the start-up coverage check)."""
    if isinstance(condition, LabIs):
        return {(condition.analyte, condition.status)}
    if isinstance(condition, Not):
        return lab_states(condition.inner)
    if isinstance(condition, (All, AnyOf, CountOf)):
        return set().union(*(lab_states(p) for p in condition.parts))
    return set()


@dataclass(frozen=True)
class All:
    """Every part is true (false as soon as one is false; otherwise unknown)."""

    parts: tuple[Condition, ...]

    @cached_property
    def check(self) -> Check:
        """Kleene conjunction; evidence of every part when true."""
        parts = tuple(p.check for p in self.parts)

        def every(facts: PatientFacts) -> Result:
            evidence: tuple[Evidence, ...] = ()
            unknown = False
            for part in parts:
                truth, seen = part(facts)
                if truth is False:
                    return FALSE  # false whatever the rest are: they need not be evaluated
                if truth is None:
                    unknown = True
                elif not unknown:
                    evidence += seen
            return UNKNOWN if unknown else (True, evidence)

        return every

    def fact_names(self) -> set[str]:
        """Union of the parts' facts."""
        return set().union(*(p.fact_names() for p in self.parts))


@dataclass(frozen=True)
class AnyOf:
    """At least one part is true (false only when every part is known false)."""

    parts: tuple[Condition, ...]

    @cached_property
    def check(self) -> Check:
        """Kleene disjunction; evidence of every true part, so the card lists all triggers."""
        parts = tuple(p.check for p in self.parts)

        def any_of(facts: PatientFacts) -> Result:
            true_evidence: list[Evidence] = []
            false_evidence: list[Evidence] = []
            found = unknown = False
            for part in parts:  # every part: the card names every trigger, not the first
                truth, seen = part(facts)
                if truth is True:
                    found = True
                    true_evidence += seen
                elif truth is None:
                    unknown = True
                else:
                    false_evidence += seen
            if found:
                return True, tuple(true_evidence)
            if not unknown:
                return False, tuple(false_evidence)
            return UNKNOWN

        return any_of

    def fact_names(self) -> set[str]:
        """Union of the parts' facts."""
        return set().union(*(p.fact_names() for p in self.parts))


@dataclass(frozen=True)
class CountOf:
    """At least N of the parts are true (the card lists which ones counted)."""

    parts: tuple[Condition, ...]
    at_least: int

    @cached_property
    def check(self) -> Check:
        """True when enough parts are true; false only when the rest could not reach N."""
        parts, at_least = tuple(p.check for p in self.parts), self.at_least

        def count_of(facts: PatientFacts) -> Result:
            true_evidence: list[Evidence] = []
            true_count = unknown_count = 0
            for part in parts:
                truth, seen = part(facts)
                if truth is True:
                    true_count += 1
                    true_evidence += seen
                elif truth is None:
                    unknown_count += 1
            if true_count >= at_least:
                return True, tuple(true_evidence)
            if true_count + unknown_count < at_least:
                return FALSE
            return UNKNOWN

        return count_of

    def fact_names(self) -> set[str]:
        """Union of the parts' facts."""
        return set().union(*(p.fact_names() for p in self.parts))


@dataclass(frozen=True)
class Unanswered:
    """At least one of the named facts is unknown (used to prompt for missing answers)."""

    names: tuple[str, ...]
    labels: Mapping[str, str]

    @cached_property
    def check(self) -> Check:
        """True with one 'not answered' line per unknown fact."""
        lines = tuple(
            (n, Evidence(self.labels[n], "not answered", "twitching assessment")) for n in self.names
        )

        def unanswered(facts: PatientFacts) -> Result:
            known = facts.facts
            evidence = tuple(line for name, line in lines if known.get(name) is None)
            return bool(evidence), evidence

        return unanswered

    def fact_names(self) -> set[str]:
        """The facts checked for an answer."""
        return set(self.names)


def parse_condition(raw: Any, registry: Mapping[str, FactSpec], analytes: Mapping[str, Any]) -> Condition:
    """Parse a rule's condition (YAML data), check every fact and analyte it names, and compile it."""
    condition = _parse(raw, registry, analytes)
    condition.check  # noqa: B018 -- compiled at load: the first call pays nothing, a flaw stops start-up
    return condition


def _parse(raw: Any, registry: Mapping[str, FactSpec], analytes: Mapping[str, Any]) -> Condition:
    if isinstance(raw, str):
        spec = registry.get(raw)
        if spec is None:
            raise ConditionError(f"unknown fact {raw!r}")
        if spec.kind != "boolean":
            raise ConditionError(f"fact {raw!r} is {spec.kind}: compare it, e.g. {{fact: {raw}, ...}}")
        return IsTrue(raw)
    if not isinstance(raw, dict) or not raw:
        raise ConditionError(f"a condition is a fact name or a mapping, not {raw!r}")

    def parts(value: Any) -> tuple[Condition, ...]:
        if not isinstance(value, list) or not value:
            raise ConditionError(f"expected a non-empty list of conditions, got {value!r}")
        return tuple(parse_condition(v, registry, analytes) for v in value)

    keys = set(raw)
    if keys == {"all"}:
        return All(parts(raw["all"]))
    if keys == {"any"}:
        return AnyOf(parts(raw["any"]))
    if keys == {"not"}:
        return Not(parse_condition(raw["not"], registry, analytes))
    if keys == {"count_of", "at_least"}:
        return CountOf(parts(raw["count_of"]), int(raw["at_least"]))
    if keys == {"unanswered"}:
        names = tuple(raw["unanswered"])
        for name in names:
            if name not in registry:
                raise ConditionError(f"unknown fact {name!r}")
        return Unanswered(names, {n: registry[n].label for n in names})
    if "lab" in keys:
        analyte = analytes.get(raw["lab"])
        if analyte is None:
            raise ConditionError(f"unknown analyte {raw['lab']!r}")
        ops = keys & set(NUMERIC_TESTS)
        if ops:
            if len(ops) != 1 or not keys - ops <= {"lab", "unit"} or "unit" not in keys:
                raise ConditionError(
                    f"lab comparison takes lab, one of above/below/at_least/at_most, unit: {sorted(keys)}"
                )
            op = ops.pop()
            to_canonical = analyte.to_canonical(str(raw["unit"]))
            if to_canonical is None:
                raise ConditionError(
                    f"lab {raw['lab']!r}: unit {raw['unit']!r} does not convert to {analyte.unit}"
                )
            return LabCompare(raw["lab"], op, float(raw[op]) * to_canonical)
        if not keys <= {"lab", "is", "current"}:
            raise ConditionError(f"lab condition takes lab, is, current: {sorted(keys)}")
        states = (*LAB_STATES, *(g.id for g in analyte.grades), "severe-low", "severe-high")
        if raw.get("is") not in states:
            raise ConditionError(
                f"lab {raw['lab']!r}: 'is' must be one of {list(dict.fromkeys(states))}: {raw.get('is')!r}"
            )
        return LabIs(raw["lab"], raw["is"], raw.get("current"))
    if "fact" in keys:
        name = raw["fact"]
        spec = registry.get(name)
        if spec is None:
            raise ConditionError(f"unknown fact {name!r}")
        ops = keys - {"fact"}
        if len(ops) != 1 or not ops <= set(_COMPARISONS):
            raise ConditionError(f"fact {name!r}: one comparison of {_COMPARISONS} expected")
        op = ops.pop()
        operand = raw[op]
        allowed = {
            "number": {"above", "below", "at_least", "at_most", "equals"},
            "choice": {"equals"},
            "multi": {"includes"},
            "boolean": {"equals"},
            "string": {"equals"},
        }[spec.kind]
        if op not in allowed:
            raise ConditionError(f"fact {name!r} ({spec.kind}) cannot be tested with {op!r}")
        if spec.options and operand not in spec.options:
            raise ConditionError(f"fact {name!r} has no option {operand!r}")
        numeric = op in NUMERIC_TESTS or spec.kind == "number"
        if numeric and (isinstance(operand, bool) or not isinstance(operand, (int, float))):
            raise ConditionError(f"fact {name!r}: {op} takes a number, not {operand!r}")
        return Compare(name, op, operand)
    raise ConditionError(f"unknown condition keys {sorted(keys)}")
