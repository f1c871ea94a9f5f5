"""Conditions over named facts, in three-valued logic: an unanswered question is unknown, never no."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from service.engine.reference import NUMERIC_TESTS
from service.facts.model import Evidence, PatientFacts

# None means "unknown": a rule fires only when its condition is True.
Truth = bool | None
Result = tuple[Truth, tuple[Evidence, ...]]


class ConditionError(ValueError):
    """A condition in a rule file that does not parse or names an unknown fact."""


@dataclass(frozen=True)
class FactSpec:
    """A fact the rules may name: its kind decides which tests apply to it."""

    name: str
    kind: str  # "boolean", "number", "choice", "multi", "string"
    label: str
    options: tuple[str, ...] = ()


class Condition(Protocol):
    """Anything that can be evaluated against a patient's facts."""

    def evaluate(self, facts: PatientFacts) -> Result:
        """Truth value and the evidence that decided it."""

    def fact_names(self) -> set[str]:
        """Every fact this condition reads (for the catalogue and validation)."""


def _evidence_of(facts: PatientFacts, name: str) -> tuple[Evidence, ...]:
    fact = facts.get(name)
    return fact.evidence if fact else ()


@dataclass(frozen=True)
class IsTrue:
    """A boolean fact is true (bare fact name in a rule)."""

    name: str

    def evaluate(self, facts: PatientFacts) -> Result:
        """True/False as recorded; unknown when never answered or coded."""
        fact = facts.get(self.name)
        if fact is None:
            return None, ()
        return bool(fact.value), fact.evidence

    def fact_names(self) -> set[str]:
        """The one fact read."""
        return {self.name}


_COMPARISONS = ("above", "below", "at_least", "at_most", "equals", "includes")


@dataclass(frozen=True)
class Compare:
    """A number, choice or multi-choice fact compared with a constant."""

    name: str
    op: str
    operand: Any

    def evaluate(self, facts: PatientFacts) -> Result:
        """Compare the fact's value; unknown when the fact is unknown."""
        fact = facts.get(self.name)
        if fact is None:
            return None, ()
        value = fact.value
        result: bool
        if self.op == "includes":
            result = isinstance(value, tuple) and self.operand in value
        elif self.op == "equals":
            result = value == self.operand
        elif isinstance(value, float):
            result = NUMERIC_TESTS[self.op](value, float(self.operand))
        else:
            return None, ()
        return result, fact.evidence

    def fact_names(self) -> set[str]:
        """The one fact read."""
        return {self.name}


# "abnormal-no-direction": flagged abnormal (A, AA) by the laboratory with no range to say which way.
LAB_STATES = ("low", "high", "abnormal", "abnormal-no-direction", "absent")


@dataclass(frozen=True)
class LabIs:
    """The latest result of an analyte is low, high, abnormal, past a named grade, or absent."""

    analyte: str
    status: str  # one of LAB_STATES, or a grade id of the analyte (e.g. "severe-high")
    current: bool | None = None

    def evaluate(self, facts: PatientFacts) -> Result:
        """Judge the latest result; unknown when there is none or it could not be judged."""
        lab = facts.labs.get(self.analyte)
        if self.status == "absent":
            return lab is None, ()
        if lab is None or lab.status == "unknown":
            return None, ()
        if self.status in ("low", "high"):
            if lab.status == "abnormal":
                return None, ()  # flagged abnormal by the lab without a direction
            matches = lab.status == self.status
        elif self.status == "abnormal":
            matches = lab.status in ("low", "high", "abnormal")
        elif self.status == "abnormal-no-direction":
            matches = lab.status == "abnormal"
        else:
            matches = self.status in lab.grades
        if self.current is not None and lab.current != self.current:
            matches = False
        return matches, (lab.evidence,)

    def fact_names(self) -> set[str]:
        """Labs are named by analyte."""
        return {f"lab:{self.analyte}"}


@dataclass(frozen=True)
class LabCompare:
    """The latest result of an analyte compared with a number in the analyte's canonical unit."""

    analyte: str
    op: str
    limit: float

    def evaluate(self, facts: PatientFacts) -> Result:
        """Unknown when there is no result or it has no convertible value."""
        lab = facts.labs.get(self.analyte) or facts.helper_labs.get(self.analyte)
        if lab is None or lab.value is None:
            return None, ()
        return NUMERIC_TESTS[self.op](lab.value, self.limit), (lab.evidence,)

    def fact_names(self) -> set[str]:
        """Labs are named by analyte."""
        return {f"lab:{self.analyte}"}


@dataclass(frozen=True)
class Not:
    """Known to be false (unknown stays unknown)."""

    inner: Condition

    def evaluate(self, facts: PatientFacts) -> Result:
        """Invert a known truth value."""
        truth, evidence = self.inner.evaluate(facts)
        return (None if truth is None else not truth), evidence

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

    def evaluate(self, facts: PatientFacts) -> Result:
        """Kleene conjunction; evidence of every part when true."""
        evidence: list[Evidence] = []
        unknown = False
        for part in self.parts:
            truth, seen = part.evaluate(facts)
            if truth is False:
                return False, ()  # false whatever the rest are: they need not be evaluated
            if truth is None:
                unknown = True
            elif not unknown:
                evidence += seen
        return (None, ()) if unknown else (True, tuple(evidence))

    def fact_names(self) -> set[str]:
        """Union of the parts' facts."""
        return set().union(*(p.fact_names() for p in self.parts))


@dataclass(frozen=True)
class AnyOf:
    """At least one part is true (false only when every part is known false)."""

    parts: tuple[Condition, ...]

    def evaluate(self, facts: PatientFacts) -> Result:
        """Kleene disjunction; evidence of every true part, so the card lists all triggers."""
        results = [p.evaluate(facts) for p in self.parts]
        true_evidence = tuple(e for t, ev in results if t is True for e in ev)
        if any(t is True for t, _ in results):
            return True, true_evidence
        if all(t is False for t, _ in results):
            return False, tuple(e for _, ev in results for e in ev)
        return None, ()

    def fact_names(self) -> set[str]:
        """Union of the parts' facts."""
        return set().union(*(p.fact_names() for p in self.parts))


@dataclass(frozen=True)
class CountOf:
    """At least N of the parts are true (the card lists which ones counted)."""

    parts: tuple[Condition, ...]
    at_least: int

    def evaluate(self, facts: PatientFacts) -> Result:
        """True when enough parts are true; false only when the rest could not reach N."""
        results = [p.evaluate(facts) for p in self.parts]
        true_count = sum(1 for t, _ in results if t is True)
        unknown_count = sum(1 for t, _ in results if t is None)
        if true_count >= self.at_least:
            return True, tuple(e for t, ev in results if t is True for e in ev)
        if true_count + unknown_count < self.at_least:
            return False, ()
        return None, ()

    def fact_names(self) -> set[str]:
        """Union of the parts' facts."""
        return set().union(*(p.fact_names() for p in self.parts))


@dataclass(frozen=True)
class Unanswered:
    """At least one of the named facts is unknown (used to prompt for missing answers)."""

    names: tuple[str, ...]
    labels: Mapping[str, str]

    def evaluate(self, facts: PatientFacts) -> Result:
        """True with one 'not answered' line per unknown fact."""
        missing = [n for n in self.names if facts.get(n) is None]
        evidence = tuple(Evidence(self.labels[n], "not answered", "twitching assessment") for n in missing)
        return bool(missing), evidence

    def fact_names(self) -> set[str]:
        """The facts checked for an answer."""
        return set(self.names)


def parse_condition(raw: Any, registry: Mapping[str, FactSpec], analytes: Mapping[str, Any]) -> Condition:
    """Parse a rule's condition (YAML data) and check every fact and analyte it names."""
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
        return Compare(name, op, operand)
    raise ConditionError(f"unknown condition keys {sorted(keys)}")
