"""The facts the rules read: answers, coded findings, labs and orders, each with where it came from."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from functools import cached_property

from service.errors import Issue

FactValue = bool | float | str | tuple[str, ...]
# Enough to stop emphasis, code, links, images and inline HTML; parentheses alone are harmless.
_MARKDOWN_SPECIALS = str.maketrans({c: "\\" + c for c in "\\`*_[]<>|"})


def md_escape(text: str) -> str:
    """Escape Markdown so text from a record (a drug name, an id) renders as text, never as a link."""
    return " ".join(text.split()).translate(_MARKDOWN_SPECIALS)


@dataclass(frozen=True)
class Evidence:
    """One piece of evidence shown on a card: what was seen, and in which resource."""

    label: str
    value: str
    source: str  # e.g. "QuestionnaireResponse/qr-1" or "Condition/c-7"
    when: str | None = None  # ISO date of the answer or result
    context: bool = False  # only sets the scene (e.g. "assessment completed"): shown when alone
    stale: bool = False  # a lab result older than its look-back
    lab: bool = False  # a lab result (freshness applies)

    @cached_property
    def markdown(self) -> str:
        """One markdown list line for the card detail (built once: remembered reads reuse evidence)."""
        when = f", {md_escape(self.when)}" if self.when else ""
        return f"- {md_escape(self.label)}: **{md_escape(self.value)}** ({md_escape(self.source)}{when})"


@dataclass(frozen=True)
class Fact:
    """A named fact's value and every piece of evidence behind it."""

    name: str
    value: FactValue
    evidence: tuple[Evidence, ...]


@dataclass(frozen=True)
class LabResult:
    """The latest usable result of one analyte, converted to the analyte's canonical unit."""

    analyte: str
    display: str
    value: float | None  # canonical unit; None when only the lab's own flag or range could judge it
    unit: str
    shown_value: str  # as recorded, with its own unit
    effective: date | None
    status: str  # "low", "high", "abnormal", "normal" or "unknown"
    range_text: str  # the range the status was judged against (in the recorded unit), and whose
    current: bool  # inside the analyte's look-back
    lookback_days: int
    source: str
    code: str = ""  # the code that was read, e.g. "LOINC 2823-3"
    grades: tuple[str, ...] = ()  # thresholds past the range that it reaches, e.g. "severe-high"
    grade_labels: tuple[str, ...] = ()
    converted: str = ""  # the value in the canonical unit, when the record used another
    estimated: str = ""  # how a derived result was computed (e.g. adjusted calcium)
    note: Issue | None = None  # why it was judged only in part (also on the data card)
    bounds: tuple[float | None, float | None] | None = None  # the range judged against, canonical unit
    flags: tuple[str, ...] = ()  # the laboratory's interpretation codes
    flagged: bool = False  # the laboratory flagged it low, high or abnormal

    @cached_property
    def evidence(self) -> Evidence:
        """The result as card evidence: value, flag, range, grade, freshness and the code read."""
        # Built once: every rule naming the analyte reads it (a frozen result never changes).
        flag = {"low": "low", "high": "high", "abnormal": "abnormal", "normal": "in range"}.get(
            self.status, "not judged"
        )
        judged_by = self.range_text
        parts = [flag, judged_by if judged_by.startswith(("flagged", "no range")) else f"range {judged_by}"]
        parts += list(self.grade_labels)
        if self.converted:
            parts.append(f"= {self.converted}")
        if self.estimated:
            parts.append(self.estimated)
        if not self.current:
            parts.append(f"stale: older than {self.lookback_days} days")
        if self.code:
            parts.append(self.code)
        return Evidence(
            label=self.display,
            value=f"{self.shown_value} ({'; '.join(parts)})",
            source=self.source,
            when=self.effective.isoformat() if self.effective else "date unknown",
            stale=not self.current,
            lab=True,
        )


@dataclass(frozen=True)
class ExistingOrder:
    """A ServiceRequest already active on the chart or drafted in this session."""

    codes: frozenset[tuple[str, str]]
    source: str
    status: str


@dataclass
class PatientFacts:
    """Everything the rules may read about one patient at one moment."""

    patient_ref: str
    today: date
    facts: dict[str, Fact] = field(default_factory=dict)
    labs: dict[str, LabResult] = field(default_factory=dict)
    helper_labs: dict[str, LabResult] = field(default_factory=dict)  # read only to derive others
    orders: list[ExistingOrder] = field(default_factory=list)
    problems: list[Issue] = field(default_factory=list)  # data that could not be used, with paths
    notes: list[str] = field(default_factory=list)  # e.g. OperationOutcome warnings from prefetch

    def get(self, name: str) -> Fact | None:
        """The fact, or None when it is unknown."""
        return self.facts.get(name)
