"""Three-valued logic of the compiled conditions, against a plain Kleene truth table.

Rules read facts that are often unanswered: unknown must stay unknown through every connective,
and a true condition must carry the evidence of the parts that made it true. The conditions are
compiled to closures at load (service/engine/conditions.py); this checks them on random trees.
"""

from __future__ import annotations

import itertools
from datetime import date
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from service.engine.conditions import (
    All,
    AnyOf,
    Compare,
    Condition,
    CountOf,
    IsTrue,
    LabCompare,
    LabIs,
    Not,
    Result,
    Unanswered,
)
from service.facts.model import Evidence, Fact, LabResult, PatientFacts

NAMES = ("f0", "f1", "f2", "f3")
NUMBER, CHOICE, MULTI = "n", "c", "m"  # a number, a choice and a multi-choice fact
ANALYTES = ("potassium", "sodium")
LAB_STATUSES = ("low", "high", "normal", "abnormal", "unknown")


def _evidence(name: str) -> tuple[Evidence, ...]:
    return (Evidence(name, "seen", "Observation/x"),)


def _expected(node: Condition, known: dict[str, Any], labs: dict[str, LabResult]) -> Result:
    """The truth table written out plainly: what the compiled closures must give."""
    if isinstance(node, IsTrue):
        return (bool(known[node.name]), _evidence(node.name)) if node.name in known else (None, ())
    if isinstance(node, Compare):
        value = known.get(node.name)
        if value is None:
            return None, ()
        evidence = _evidence(node.name)
        if node.op == "includes":
            return isinstance(value, tuple) and node.operand in value, evidence
        if node.op == "equals":
            return value == node.operand, evidence
        if not isinstance(value, float):
            return None, ()
        tests = {"above": value > node.operand, "below": value < node.operand}
        return tests[node.op], evidence
    if isinstance(node, LabIs):
        lab = labs.get(node.analyte)
        if node.status == "absent":
            return lab is None, ()
        if lab is None or lab.status == "unknown":
            return None, ()
        if node.status in ("low", "high"):
            if lab.status == "abnormal":
                return None, ()
            truth = lab.status == node.status
        elif node.status == "abnormal":
            truth = lab.status in ("low", "high", "abnormal")
        elif node.status == "abnormal-no-direction":
            truth = lab.status == "abnormal"
        else:
            truth = node.status in lab.grades
        if node.current is not None and lab.current != node.current:
            truth = False
        return truth, (lab.evidence,)
    if isinstance(node, LabCompare):
        lab = labs.get(node.analyte)
        if lab is None or lab.value is None:
            return None, ()
        above = {"above": lab.value > node.limit, "below": lab.value < node.limit}
        return above[node.op], (lab.evidence,)
    if isinstance(node, Not):
        inner, evidence = _expected(node.inner, known, labs)
        return (None if inner is None else not inner), evidence
    results = (
        [_expected(p, known, labs) for p in node.parts] if isinstance(node, (All, AnyOf, CountOf)) else []
    )
    truths = [t for t, _ in results]
    if isinstance(node, All):
        if False in truths:
            return False, ()
        if None in truths:
            return None, ()
        return True, tuple(e for _, ev in results for e in ev)
    if isinstance(node, AnyOf):
        if True in truths:
            return True, tuple(e for t, ev in results if t is True for e in ev)
        if all(t is False for t in truths):
            return False, tuple(e for _, ev in results for e in ev)
        return None, ()
    if isinstance(node, CountOf):
        count, open_ = truths.count(True), truths.count(None)
        if count >= node.at_least:
            return True, tuple(e for t, ev in results if t is True for e in ev)
        return (False, ()) if count + open_ < node.at_least else (None, ())
    assert isinstance(node, Unanswered)
    missing = [n for n in node.names if n not in known]
    return bool(missing), tuple(Evidence(n, "not answered", "twitching assessment") for n in missing)


leaves = st.one_of(
    st.sampled_from(NAMES).map(IsTrue),
    st.builds(Compare, st.just(NUMBER), st.sampled_from(["above", "below"]), st.sampled_from([1.0, 5.0])),
    st.builds(Compare, st.just(CHOICE), st.just("equals"), st.sampled_from(["a", "b"])),
    st.builds(Compare, st.just(MULTI), st.just("includes"), st.sampled_from(["a", "b"])),
    st.builds(
        LabIs,
        st.sampled_from(ANALYTES),
        st.sampled_from(["low", "high", "abnormal", "abnormal-no-direction", "absent", "severe-high"]),
        st.sampled_from([None, True, False]),
    ),
    st.builds(LabCompare, st.sampled_from(ANALYTES), st.sampled_from(["above", "below"]), st.just(4.0)),
    st.lists(st.sampled_from(NAMES), min_size=1, max_size=3, unique=True).map(
        lambda names: Unanswered(tuple(names), {n: n for n in names})
    ),
)


def _extend(children: Any) -> Any:
    parts = st.lists(children, min_size=1, max_size=4).map(tuple)
    return st.one_of(
        children.map(Not),
        parts.map(All),
        parts.map(AnyOf),
        parts.flatmap(lambda ps: st.integers(1, len(ps)).map(lambda n: CountOf(ps, n))),
    )


trees = st.recursive(leaves, _extend, max_leaves=12)
states = st.fixed_dictionaries(
    {},
    optional={
        **{n: st.booleans() for n in NAMES},
        NUMBER: st.one_of(st.sampled_from([0.5, 1.0, 1.5, 5.0, 5.5, 7.0]), st.just("not a number")),
        CHOICE: st.sampled_from(["a", "b", "c"]),
        MULTI: st.lists(st.sampled_from(["a", "b", "c"]), unique=True).map(tuple),
    },
)


def _lab(analyte: str, status: str, value: float | None, current: bool, grades: tuple[str, ...]) -> LabResult:
    return LabResult(
        analyte=analyte,
        display=analyte,
        value=value,
        unit="mmol/L",
        shown_value=str(value),
        effective=date(2026, 11, 1),
        status=status,
        range_text="3.6–5.2 mmol/L",
        current=current,
        lookback_days=90,
        source=f"Observation/{analyte}",
        grades=grades,
    )


lab_results = st.dictionaries(
    st.sampled_from(ANALYTES),
    st.tuples(
        st.sampled_from(LAB_STATUSES),
        st.one_of(st.none(), st.sampled_from([2.0, 4.0, 6.0])),
        st.booleans(),
        st.sampled_from([(), ("severe-high",)]),
    ),
).map(lambda found: {a: _lab(a, *args) for a, args in found.items()})


@settings(max_examples=600, deadline=None)
@given(trees, states, lab_results)
def test_compiled_conditions_follow_the_truth_table(
    tree: Condition, known: dict[str, Any], labs: dict[str, LabResult]
) -> None:
    """Truth and evidence match the written-out Kleene table for any tree, answers and lab results."""
    facts = PatientFacts(
        patient_ref="Patient/p",
        today=date(2026, 11, 22),
        facts={n: Fact(n, v, _evidence(n)) for n, v in known.items()},
        labs=labs,
    )
    got, expected = tree.check(facts), _expected(tree, known, labs)
    assert got == expected
    assert got[0] is expected[0]  # exactly True, False or None: the engine tests identity


def test_unknown_is_never_no() -> None:
    """Nothing answered: a conjunction, a disjunction and a negation all stay unknown."""
    facts = PatientFacts(patient_ref="Patient/p", today=date(2026, 11, 22))
    for node in (All((IsTrue("f0"), IsTrue("f1"))), AnyOf((IsTrue("f0"),)), Not(IsTrue("f0"))):
        assert node.check(facts) == (None, ())


def test_every_leaf_against_every_state() -> None:
    """Each leaf on every value it can meet (exhaustive: the random trees may miss a corner)."""
    values: list[Any] = [
        0.5,
        1.0,
        1.5,
        5.0,
        5.5,
        7.0,
        "not a number",
        "a",
        "b",
        ("a",),
        ("b", "c"),
        True,
        False,
    ]
    fact_leaves: list[Condition] = [
        *(Compare(NUMBER, op, limit) for op in ("above", "below") for limit in (1.0, 5.0)),
        *(Compare(CHOICE, "equals", v) for v in ("a", "b")),
        *(Compare(MULTI, "includes", v) for v in ("a", "b")),
    ]
    checked = 0
    for leaf in fact_leaves:
        name = leaf.name if isinstance(leaf, Compare) else ""
        for value in [None, *values]:
            known = {} if value is None else {name: value}
            facts = PatientFacts(
                patient_ref="Patient/p",
                today=date(2026, 11, 22),
                facts={n: Fact(n, v, _evidence(n)) for n, v in known.items()},
            )
            assert leaf.check(facts) == _expected(leaf, known, {}), (leaf, value)
            checked += 1
    statuses = ["low", "high", "abnormal", "abnormal-no-direction", "absent", "severe-high"]
    lab_leaves: list[Condition] = [
        *(LabIs("potassium", s, current) for s in statuses for current in (None, True, False)),
        *(LabCompare("potassium", op, 4.0) for op in ("above", "below")),
    ]
    states = [
        None,
        *itertools.product(LAB_STATUSES, (None, 2.0, 4.0, 6.0), (True, False), ((), ("severe-high",))),
    ]
    for leaf in lab_leaves:
        for state in states:
            labs = {} if state is None else {"potassium": _lab("potassium", *state)}
            facts = PatientFacts(patient_ref="Patient/p", today=date(2026, 11, 22), labs=labs)
            got, expected = leaf.check(facts), _expected(leaf, {}, labs)
            assert got == expected, (leaf, state)
            assert got[0] is expected[0]
            checked += 1
    assert checked > 1500
