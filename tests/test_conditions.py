"""Three-valued logic of the compiled conditions, against a plain Kleene truth table.

Rules read facts that are often unanswered: unknown must stay unknown through every connective,
and a true condition must carry the evidence of the parts that made it true. The conditions are
compiled to closures at load (service/engine/conditions.py); this checks them on random trees.
"""

from __future__ import annotations

from datetime import date
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from service.engine.conditions import All, AnyOf, Condition, CountOf, IsTrue, Not, Result, Unanswered
from service.facts.model import Evidence, Fact, PatientFacts

NAMES = ("f0", "f1", "f2", "f3")


def _evidence(name: str) -> tuple[Evidence, ...]:
    return (Evidence(name, "seen", "Observation/x"),)


def _expected(node: Condition, known: dict[str, bool]) -> Result:
    """The truth table written out plainly: what the compiled closures must give."""
    if isinstance(node, IsTrue):
        return (known[node.name], _evidence(node.name)) if node.name in known else (None, ())
    if isinstance(node, Not):
        truth, evidence = _expected(node.inner, known)
        return (None if truth is None else not truth), evidence
    results = [_expected(p, known) for p in node.parts] if isinstance(node, (All, AnyOf, CountOf)) else []
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
states = st.dictionaries(st.sampled_from(NAMES), st.booleans())


@settings(max_examples=400, deadline=None)
@given(trees, states)
def test_compiled_conditions_follow_the_truth_table(tree: Condition, known: dict[str, bool]) -> None:
    """Truth and evidence match the written-out Kleene table for any tree and any answers."""
    facts = PatientFacts(
        patient_ref="Patient/p",
        today=date(2026, 11, 22),
        facts={n: Fact(n, v, _evidence(n)) for n, v in known.items()},
    )
    assert tree.check(facts) == _expected(tree, known)
    assert tree.evaluate(facts) == tree.check(facts)


def test_unknown_is_never_no() -> None:
    """Nothing answered: a conjunction, a disjunction and a negation all stay unknown."""
    facts = PatientFacts(patient_ref="Patient/p", today=date(2026, 11, 22))
    for node in (All((IsTrue("f0"), IsTrue("f1"))), AnyOf((IsTrue("f0"),)), Not(IsTrue("f0"))):
        assert node.check(facts) == (None, ())
