"""Run the rule set over one patient's facts and coalesce the result into an ordered plan of cards."""

from __future__ import annotations

from dataclasses import dataclass, field

from service.engine.reference import Orderable
from service.engine.ruleset import CATEGORIES, INDICATORS, PRIORITIES, Rule, RuleSet, Suggestion
from service.facts.model import Evidence, PatientFacts


@dataclass
class PlannedSuggestion:
    """An order to offer on a card, after de-duplication across cards and existing work."""

    orderable: Orderable
    priority: str
    reason: str


@dataclass
class Firing:
    """A rule that fired: its resolved card text, the evidence behind it and what to offer."""

    rule: Rule
    indicator: str
    summary: str
    advice: str
    evidence: tuple[Evidence, ...]
    wanted: tuple[Suggestion, ...]
    suggestions: list[PlannedSuggestion] = field(default_factory=list)
    already: list[str] = field(default_factory=list)  # work already done or ordered, as text
    withheld: list[str] = field(default_factory=list)  # routine orders held back beside an emergency


def _fire(rule: Rule, facts: PatientFacts) -> Firing | None:
    truth, evidence = rule.when.check(facts)
    if truth is not True:
        return None
    indicator, summary, advice = rule.indicator, rule.summary, rule.advice
    wanted = rule.suggestions
    for variant in rule.variants:
        vtruth, vevidence = variant.when.check(facts)
        if vtruth is not True:
            continue
        indicator = variant.indicator or indicator
        summary = variant.summary or summary
        advice = variant.advice or advice
        wanted = variant.suggestions if variant.suggestions is not None else wanted
        wanted = tuple(
            Suggestion(s.order, variant.priority.get(s.order, s.priority), s.reason) for s in wanted
        )
        evidence = evidence + tuple(e for e in vevidence if e not in evidence)
        break
    for name in rule.also_show:
        shown_fact = facts.get(name)
        if shown_fact:
            evidence = evidence + shown_fact.evidence
    labs = [e for e in evidence if e.lab]
    if rule.stale and labs and all(e.stale for e in labs):
        # Every result behind the card is older than its look-back: say so, ask for a repeat.
        indicator = rule.stale.indicator or indicator
        summary = rule.stale.summary or summary
        advice = rule.stale.advice or advice
    unique = tuple(dict.fromkeys(evidence))
    if any(not e.context for e in unique):
        unique = tuple(e for e in unique if not e.context)
    shown = {e.label for e in unique}
    extra = [
        text for fact, text in rule.advice_by_fact.items()
        if (f := facts.get(fact)) and any(e.label in shown for e in f.evidence)
    ]  # fmt: skip
    if extra:
        advice = advice + "\n" + "\n".join(f"- {line}" for line in extra)
    return Firing(rule, indicator, summary, advice, unique, wanted)


def _sort_key(firing: Firing) -> tuple[int, int, str]:
    return (
        INDICATORS.index(firing.indicator),
        CATEGORIES.index(firing.rule.category),
        firing.rule.id,
    )


def _plan_orders(firings: list[Firing], ruleset: RuleSet, facts: PatientFacts) -> None:
    # An order appears once, on the card that asks for it most urgently (the first such card), so
    # the priority of a draft always matches the words of the card it sits on.
    owners: dict[str, tuple[int, Suggestion]] = {}
    for index, firing in enumerate(firings):
        for wanted in firing.wanted:
            owner = owners.get(wanted.order)
            if owner is None or PRIORITIES.index(wanted.priority) > PRIORITIES.index(owner[1].priority):
                owners[wanted.order] = (index, wanted)
    emergency = next((f for f in firings if f.rule.withholds_routine), None)
    for index, firing in enumerate(firings):
        for wanted in firing.wanted:
            orderable = ruleset.reference.orderables[wanted.order]
            done = _existing_work(orderable, facts)
            if done:
                firing.already.append(done)
                continue
            owner_index, chosen = owners[wanted.order]
            if owner_index != index or chosen is not wanted:
                where = "above" if owner_index < index else "below"
                firing.already.append(f"{orderable.label}: suggested on a card {where}")
                continue
            if emergency is not None and wanted.priority == "routine":
                # An emergency comes first: routine work-up beside it would only distract.
                firing.withheld.append(
                    f"{orderable.label}: not offered now; {emergency.rule.title} comes first"
                )
                continue
            firing.suggestions.append(PlannedSuggestion(orderable, wanted.priority, wanted.reason))


def _existing_work(orderable: Orderable, facts: PatientFacts) -> str | None:
    codes = orderable.all_codes()
    for order in facts.orders:
        if order.codes & codes:
            return f"{orderable.label}: already ordered ({order.source}, {order.status})"
    if orderable.covered_by_results:
        results = [facts.labs.get(a) for a in orderable.covered_by_results]
        # Only current, in-range results make an order redundant: an abnormal one needs confirming.
        if all(r is not None and r.current and r.status == "normal" for r in results):
            shown = "; ".join(
                f"{r.display} {r.shown_value} ({r.effective})" for r in results if r is not None
            )
            return f"{orderable.label}: current results on record: {shown}"
    return None


def evaluate(ruleset: RuleSet, facts: PatientFacts) -> list[Firing]:
    """Fire every rule, apply exclusivity and suppression, order the cards, plan the orders."""
    fired = [f for rule in ruleset.rules if (f := _fire(rule, facts)) is not None]
    exclusive = [f for f in fired if f.rule.exclusive]
    if exclusive:
        fired = exclusive
    fired_ids = {f.rule.id for f in fired}
    fired = [f for f in fired if not set(f.rule.replaced_by) & fired_ids]
    present = {f.rule.category for f in fired}
    if facts.problems:
        present.add("data-problems")
    kept = [f for f in fired if not (set(f.rule.suppressed_by) & (present - {f.rule.category}))]
    kept.sort(key=_sort_key)
    _plan_orders(kept, ruleset, facts)
    return kept
