"""Rules as data (rules/set/*.yaml): loaded, checked against the facts and references, or refused."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from service.engine.conditions import Condition, ConditionError, FactSpec, lab_states, parse_condition
from service.engine.reference import ReferenceData, load_reference
from service.facts.registry import fact_registry

INDICATORS = ("critical", "warning", "info")
# Card order within one indicator follows this list; "differential" and "medication" cards offer
# another explanation (restless legs, a drug) and are not red flags.
CATEGORIES = (
    "red-flag",
    "known-diagnosis",
    "lab",
    "medication",
    "differential",
    "population",
    "lifestyle",
    "completeness",
    "reassurance",
)
PRIORITIES = ("routine", "urgent", "asap", "stat")
SUPPRESSORS = (*CATEGORIES, "data-problems")
SUMMARY_LIMIT = 140
# A draft order's priority must be what the card says: these words on the card (summary or advice)
# for each priority above routine; vague words that name no priority are refused in summaries.
PRIORITY_WORDS = {"urgent": ("urgent",), "asap": ("as soon as possible",), "stat": ("immediate", "emergency")}
VAGUE_WORDS = ("prompt", "promptly", "soon")
RULE_KEYS = frozenset(
    [
        "id",
        "version",
        "title",
        "category",
        "indicator",
        "logic",
        "sources",
        "when",
        "summary",
        "advice",
        "suggestions",
        "advice_by_fact",
        "variants",
        "suppressed_by",
        "exclusive",
        "stale",
        "also_show",
        "replaced_by",
        "withholds_routine",
        "app_link",
    ]
)
VARIANT_KEYS = frozenset(["when", "indicator", "summary", "advice", "priority", "suggestions"])


class RuleSetError(ValueError):
    """The rule set is inconsistent: the service must not start with it."""


@dataclass(frozen=True)
class Suggestion:
    """An order a rule suggests, with its priority and the reason written into the draft."""

    order: str
    priority: str
    reason: str


@dataclass(frozen=True)
class Variant:
    """A stronger or different card when an extra condition also holds."""

    when: Condition
    indicator: str | None
    summary: str | None
    advice: str | None
    priority: Mapping[str, str]
    suggestions: tuple[Suggestion, ...] | None


@dataclass(frozen=True)
class Rule:
    """One clinical rule: metadata, its condition over named facts, and its card as data."""

    id: str
    version: str
    title: str
    category: str
    indicator: str
    logic: str
    sources: tuple[str, ...]
    when: Condition
    summary: str
    advice: str
    suggestions: tuple[Suggestion, ...]
    advice_by_fact: Mapping[str, str] = field(default_factory=dict)
    variants: tuple[Variant, ...] = ()
    suppressed_by: tuple[str, ...] = ()
    exclusive: bool = False
    stale: Variant | None = None  # applied when every lab result behind the card is stale
    also_show: tuple[str, ...] = ()  # facts shown as evidence whenever known (e.g. a drug name)
    replaced_by: tuple[str, ...] = ()  # rule ids: when one of them fires, this card is not shown
    withholds_routine: bool = False  # an emergency: no routine order is offered beside it
    app_link: str = ""  # label of a link to the service's SMART app (only when the app is configured)
    file: str = ""

    @property
    def topic_code(self) -> str:
        """Stable card topic code: letters and digits only (what Epic requires)."""
        return re.sub(r"[^A-Za-z0-9]", "", self.id)


@dataclass(frozen=True)
class RuleSet:
    """The loaded rules plus the reference data and fact registry they were checked against."""

    rules: tuple[Rule, ...]
    reference: ReferenceData
    registry: Mapping[str, FactSpec]

    def by_id(self, rule_id: str) -> Rule:
        """Look up a rule by id."""
        return next(r for r in self.rules if r.id == rule_id)


def _suggestions(raw: Any, reference: ReferenceData, where: str) -> tuple[Suggestion, ...]:
    out: list[Suggestion] = []
    for entry in raw or ():
        order = entry.get("order")
        if order not in reference.orderables:
            raise RuleSetError(f"{where}: unknown order {order!r}")
        priority = entry.get("priority", "routine")
        if priority not in PRIORITIES:
            raise RuleSetError(f"{where}: priority {priority!r} not in {PRIORITIES}")
        reason = entry.get("reason")
        if not reason:
            raise RuleSetError(f"{where}: suggestion {order!r} needs a reason")
        out.append(Suggestion(order, priority, str(reason)))
    return tuple(out)


def _check_summary(summary: Any, where: str) -> str:
    if not isinstance(summary, str) or not summary.strip():
        raise RuleSetError(f"{where}: summary is required")
    if len(summary) >= SUMMARY_LIMIT:
        raise RuleSetError(f"{where}: summary has {len(summary)} characters (limit {SUMMARY_LIMIT - 1})")
    return summary


def _check_priority_words(summary: str, advice: str, suggestions: tuple[Suggestion, ...], where: str) -> None:
    """Refuse a card whose draft orders are more urgent than its words (or words with no priority)."""
    text = f"{summary}\n{advice}".lower()
    for suggestion in suggestions:
        words = PRIORITY_WORDS.get(suggestion.priority, ())
        if words and not any(w in text for w in words):
            raise RuleSetError(
                f"{where}: {suggestion.order} is ordered {suggestion.priority!r} but the card's"
                f" words do not say so (expected one of {list(words)})"
            )
    vague = [w for w in VAGUE_WORDS if re.search(rf"\b{w}\b", summary.lower())]
    if vague:
        raise RuleSetError(f"{where}: summary says {vague[0]!r}, which names no priority")


def _parse_rule(raw: Any, reference: ReferenceData, registry: Mapping[str, FactSpec], where: str) -> Rule:
    if not isinstance(raw, dict):
        raise RuleSetError(f"{where}: a rule file holds one mapping")
    unknown_keys = set(raw) - RULE_KEYS
    if unknown_keys:
        raise RuleSetError(f"{where}: unknown keys {sorted(unknown_keys)}")
    for key in ("id", "version", "title", "category", "indicator", "logic", "when", "advice"):
        if not raw.get(key):
            raise RuleSetError(f"{where}: {key} is required")
    rule_id = str(raw["id"])
    if not re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", rule_id):
        raise RuleSetError(f"{where}: id {rule_id!r} must be lower-case words joined by hyphens")
    if raw["category"] not in CATEGORIES:
        raise RuleSetError(f"{where}: category {raw['category']!r} not in {CATEGORIES}")
    if raw["indicator"] not in INDICATORS:
        raise RuleSetError(f"{where}: indicator {raw['indicator']!r} not in {INDICATORS}")
    logic = " ".join(str(raw["logic"]).split())
    if not (logic.startswith("When ") and " Then " in logic and " Source" in logic):
        raise RuleSetError(f"{where}: logic must read 'When … Then … Source …'")
    sources = tuple(raw.get("sources") or ())
    if not sources:
        raise RuleSetError(f"{where}: every rule cites at least one source")
    missing = [s for s in sources if s not in reference.sources]
    if missing:
        raise RuleSetError(f"{where}: unknown sources {missing}")
    analytes = reference.analytes
    stale_raw = raw.get("stale")
    if stale_raw is not None:
        if not isinstance(stale_raw, dict) or set(stale_raw) - {"indicator", "summary", "advice"}:
            raise RuleSetError(f"{where}: stale takes indicator, summary, advice")
        stale_raw = {**stale_raw, "when": "twitching"}  # never evaluated: freshness decides
    also_show = tuple(raw.get("also_show") or ())
    for fact in also_show:
        if fact not in registry:
            raise RuleSetError(f"{where}: also_show names unknown fact {fact!r}")
    try:
        when = parse_condition(raw["when"], registry, analytes)
        variants = []
        for i, v in enumerate([*(raw.get("variants") or ()), *([stale_raw] if stale_raw else [])]):
            vwhere = f"{where} stale" if v is stale_raw else f"{where} variant {i}"
            if set(v) - VARIANT_KEYS:
                raise RuleSetError(f"{vwhere}: unknown keys {sorted(set(v) - VARIANT_KEYS)}")
            if v.get("indicator") and v["indicator"] not in INDICATORS:
                raise RuleSetError(f"{vwhere}: indicator {v['indicator']!r} not in {INDICATORS}")
            priority = dict(v.get("priority") or {})
            for order, p in priority.items():
                if order not in reference.orderables or p not in PRIORITIES:
                    raise RuleSetError(f"{vwhere}: bad priority override {order}: {p}")
            variants.append(
                Variant(
                    when=parse_condition(v["when"], registry, analytes),
                    indicator=v.get("indicator"),
                    summary=_check_summary(v["summary"], vwhere) if "summary" in v else None,
                    advice=v.get("advice"),
                    priority=priority,
                    suggestions=(
                        _suggestions(v["suggestions"], reference, vwhere) if "suggestions" in v else None
                    ),
                )
            )
    except ConditionError as exc:
        raise RuleSetError(f"{where}: {exc}") from exc
    advice_by_fact = dict(raw.get("advice_by_fact") or {})
    for fact in advice_by_fact:
        if fact not in registry:
            raise RuleSetError(f"{where}: advice_by_fact names unknown fact {fact!r}")
    suppressed_by = tuple(raw.get("suppressed_by") or ())
    bad = [s for s in suppressed_by if s not in SUPPRESSORS]
    if bad:
        raise RuleSetError(f"{where}: suppressed_by {bad} not in {SUPPRESSORS}")
    stale = variants.pop() if stale_raw else None
    summary = _check_summary(raw.get("summary"), where)
    advice = str(raw["advice"]).strip()
    suggestions = _suggestions(raw.get("suggestions"), reference, where)
    _check_priority_words(summary, advice, suggestions, where)
    for i, variant in enumerate(variants):
        wanted = variant.suggestions if variant.suggestions is not None else suggestions
        wanted = tuple(
            Suggestion(s.order, variant.priority.get(s.order, s.priority), s.reason) for s in wanted
        )
        _check_priority_words(
            variant.summary or summary, variant.advice or advice, wanted, f"{where} variant {i}"
        )
    replaced_by = tuple(str(r) for r in raw.get("replaced_by") or ())
    app_link = raw.get("app_link") or ""
    if not isinstance(app_link, str) or len(app_link) > SUMMARY_LIMIT:
        raise RuleSetError(f"{where}: app_link must be a link label of at most {SUMMARY_LIMIT} characters")
    return Rule(
        id=rule_id,
        version=str(raw["version"]),
        title=str(raw["title"]),
        category=raw["category"],
        indicator=raw["indicator"],
        logic=logic,
        sources=sources,
        when=when,
        summary=summary,
        advice=advice,
        suggestions=suggestions,
        advice_by_fact=advice_by_fact,
        variants=tuple(variants),
        suppressed_by=suppressed_by,
        exclusive=bool(raw.get("exclusive", False)),
        stale=stale,
        also_show=also_show,
        replaced_by=replaced_by,
        withholds_routine=bool(raw.get("withholds_routine", False)),
        app_link=app_link.strip(),
        file=where,
    )


def load_ruleset(rules_dir: Path, local_lab_codes: Path | None = None) -> RuleSet:
    """Load rules/reference and rules/set; raise RuleSetError with a clear message on any flaw."""
    try:
        reference = load_reference(rules_dir / "reference", local_lab_codes)
    except (ValueError, KeyError, TypeError) as exc:
        raise RuleSetError(f"reference data: {exc}") from exc
    try:
        registry = fact_registry(reference)
    except ValueError as exc:
        raise RuleSetError(f"reference data: {exc}") from exc
    rules: list[Rule] = []
    files = sorted((rules_dir / "set").glob("*.yaml"))
    if not files:
        raise RuleSetError(f"no rules in {rules_dir / 'set'}")
    for path in files:
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as exc:
            raise RuleSetError(f"{path.name}: {exc}") from exc
        rules.append(_parse_rule(raw, reference, registry, path.name))
    seen: dict[str, str] = {}
    for rule in rules:
        for key in (rule.id, rule.topic_code):
            if key in seen:
                raise RuleSetError(f"{rule.file}: duplicate rule id {rule.id!r} (also {seen[key]})")
            seen[key] = rule.file
    for rule in rules:
        unknown = [r for r in rule.replaced_by if r not in seen or r == rule.id]
        if unknown:
            raise RuleSetError(f"{rule.file}: replaced_by names unknown rules {unknown}")
    _check_lab_coverage(rules, reference)
    return RuleSet(tuple(rules), reference, registry)


# Each way a judged result can be abnormal, and the LabIs states that name it on a card.
LAB_DIRECTIONS = {
    "low": {"low", "abnormal"},
    "high": {"high", "abnormal"},
    "abnormal-no-direction": {"abnormal-no-direction", "abnormal"},
}


def _check_lab_coverage(rules: list[Rule], reference: ReferenceData) -> None:
    """Every judged analyte, abnormal either way, is named by some rule (never only withheld)."""
    tested: set[tuple[str, str]] = set()
    for rule in rules:
        tested |= lab_states(rule.when)
    missing = [
        f"{analyte.id} {direction}"
        for analyte in reference.analytes.values()
        if analyte.judged
        for direction, states in LAB_DIRECTIONS.items()
        if not any((analyte.id, s) in tested for s in states)
    ]
    if missing:
        raise RuleSetError(
            f"labs: an abnormal result would be named by no card: {', '.join(missing)}; add each"
            " to a rule's `when` (lab-abnormal-other names results without a rule of their own)"
        )
