"""Lab results: recognise the analyte by any coding, convert the unit, judge both directions and grades.

Everything clinical (codes, units, ranges, thresholds, molar masses) is reference data; this module
is the mechanism. A result that looks like one the rules read but cannot be used is returned as an
Issue with the reason, so the data card lists it and reassurance is withheld.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import date
from typing import Any

from service.engine.reference import (
    LOINC,
    SNOMED,
    UCUM,
    Analyte,
    CalciumAdjustment,
    LabCode,
    Range,
    ReferenceData,
)
from service.errors import Issue
from service.facts.model import LabResult
from service.fhir.dates import fhir_date

LAB_STATUSES = frozenset({"final", "amended", "corrected"})
# Retracted results are not results: never used, never listed.
RETRACTED_STATUSES = frozenset({"entered-in-error", "cancelled"})
MAX_VALUE = 1e9  # past this no laboratory value is plausible (and formatting it could overflow)
MAX_UNIT_LENGTH = 64  # a longer unit string is never parsed (parsing cost grows with length)
SYSTEM_NAMES = {LOINC: "LOINC", SNOMED: "SNOMED CT"}
# valueQuantity.comparator: the value is a bound, not the result (e.g. "<0.01" below the assay's limit).
BELOW = frozenset({"<", "<="})
ABOVE = frozenset({">", ">="})


def _codes(concept: Any) -> list[tuple[str, str]]:
    return [(c.system, c.code) for c in (getattr(concept, "coding", None) or ()) if c.system and c.code]


def _ref(resource: Any) -> str:
    if isinstance(resource, Component):
        return f"{_ref(resource.parent)} component[{resource.index}]"
    rid = getattr(resource, "id", None)
    return f"{resource.get_resource_type()}/{rid}" if rid else f"{resource.get_resource_type()} (no id)"


def _num(value: float) -> str:
    """A converted number to three significant figures (whole numbers from 100 up)."""
    if abs(value) >= 100:
        return str(round(value))
    return f"{value:.3g}"


def _as_sent(value: float) -> str:
    return f"{round(value, 4):g}"


def _one_side(sides: set[str], status: str) -> str:
    """The one side of the range that thresholds or flags put a result on; else `status` stands."""
    return next(iter(sides)) if len(sides) == 1 else status


def shown_value(value: float, comparator: str, unit: str) -> str:
    """The value as the laboratory sent it, with its comparator and unit ("<0.01 mIU/L")."""
    return f"{comparator}{_as_sent(value)} {unit}".strip()


def unit_spelling(quantity: Any) -> str:
    """The unit as the feed wrote it: the UCUM code, else the human-readable unit."""
    # A code from another system (e.g. SNOMED CT 258814008 for umol/L) is not a UCUM code:
    # the readable unit is then the better spelling to parse.
    if quantity.code and quantity.system in (None, UCUM):
        return str(quantity.code)
    return str(quantity.unit or quantity.code or "")


class Component:
    """An Observation.component read as a result: own code, value and range; the parent's status, date."""

    def __init__(self, parent: Any, index: int) -> None:
        self.parent = parent
        self.index = index
        part = parent.component[index]
        self.code = part.code
        self.valueQuantity = part.valueQuantity
        self.valueString = part.valueString
        self.dataAbsentReason = part.dataAbsentReason
        self.interpretation = part.interpretation
        self.referenceRange = part.referenceRange
        self.component = None
        self.id = parent.id

    def __getattr__(self, name: str) -> Any:
        return getattr(self.parent, name)  # status, effective[x], issued, subject


def effective_date(obs: Any) -> date | None:
    """The day a result counts from: effective time, else the end of its period, else issued."""
    period_end = obs.effectivePeriod.end or obs.effectivePeriod.start if obs.effectivePeriod else None
    return fhir_date(obs.effectiveDateTime or obs.effectiveInstant or period_end or obs.issued)


@dataclass(frozen=True)
class Unusable:
    """A result of an analyte the rules read that cannot be used, and why (for the data card)."""

    analyte: str
    when: date | None
    issue: Issue


class LabReader:
    """Reads Observations as lab results against the reference data's analytes."""

    def __init__(self, reference: ReferenceData) -> None:
        self.by_code = {(c.system, c.code): (a, c) for a in reference.analytes.values() for c in a.codes}
        self.other_specimen = {
            (c.system, c.code): (a, c) for a in reference.analytes.values() for c in a.other_specimen
        }
        names = sorted({n for a in reference.analytes.values() for n in a.names}, key=len, reverse=True)
        self.name_pattern = re.compile(r"\b(" + "|".join(re.escape(n) for n in names) + r")\b")
        self.analyte_by_name = {n: a for a in reference.analytes.values() for n in a.names}
        self.analytes = reference.analytes
        self.flags = reference.lab_flags

    def flag_text(self, interp: set[str]) -> str:
        """The laboratory's own interpretation, in words with its code, e.g. "flagged low (L) by the lab"."""
        words = self.flags.words
        flags = [f"{words[c]} ({c})" for c in sorted(interp) if c in words]
        return f"flagged {', '.join(flags)} by the lab" if flags else ""

    def components(self, obs: Any) -> list[tuple[int, tuple[Analyte, LabCode] | None]]:
        """The components of a panel Observation that name an analyte (by code, or by name: None)."""
        out: list[tuple[int, tuple[Analyte, LabCode] | None]] = []
        for i, part in enumerate(obs.component or ()):
            keys = _codes(part.code)
            hit = next((self.by_code[k] for k in keys if k in self.by_code), None)
            if hit is not None:
                out.append((i, hit))
            elif any(k in self.other_specimen for k in keys) or self._names_concept(part.code):
                out.append((i, None))
        return out

    def _names_concept(self, concept: Any) -> bool:
        if concept is None:
            return False
        texts = [concept.text or "", *(c.display or "" for c in concept.coding or ())]
        return any(self.named(t) is not None for t in texts if t)

    # -- recognition -------------------------------------------------------------------------
    def analyte(self, obs: Any) -> tuple[Analyte, LabCode] | None:
        """The analyte of the first coding of Observation.code that names one (any system)."""
        for key in _codes(obs.code):
            hit = self.by_code.get(key)
            if hit is not None:
                return hit
        return None

    def named(self, text: str) -> Analyte | None:
        """The analyte a display or text names, if any."""
        match = self.name_pattern.search(text.lower())
        return self.analyte_by_name[match.group(1)] if match else None

    def lookalike(self, obs: Any, path: str) -> Unusable | None:
        """An Observation with no recognised code that still names an analyte: why it is not used."""
        if obs.status in RETRACTED_STATUSES:
            return None
        when = effective_date(obs)
        for system, code in _codes(obs.code):
            hit = self.other_specimen.get((system, code))
            if hit is not None:
                analyte, lab_code = hit
                return Unusable(
                    analyte.id,
                    when,
                    Issue(
                        f"{analyte.display}: {SYSTEM_NAMES.get(system, system)} {code}"
                        f" ({lab_code.display}) is measured in a specimen the rules do not read;"
                        " result not used",
                        f"{path}.code",
                        severity="warning",
                        code="not-supported",
                    ),
                )
        texts = [obs.code.text or "", *(c.display or "" for c in obs.code.coding or ())] if obs.code else []
        for text in texts:
            named = self.named(text)
            if named is not None:
                shown = ", ".join(f"{s}|{c}" for s, c in _codes(obs.code)) or "no coding"
                return Unusable(
                    named.id,
                    when,
                    Issue(
                        f"{named.display}? {text[:80]!r} looks like a {named.display.lower()} result,"
                        f" but its code ({shown[:120]}) is not one this service recognises; result not"
                        " used (a deployment maps local codes with LAB_CODE_MAP)",
                        f"{path}.code",
                        severity="warning",
                        code="code-invalid",
                    ),
                )
        return None

    # -- reading -----------------------------------------------------------------------------
    def usable(self, obs: Any) -> bool:
        """True for a result `read` turns into a LabResult (used to validate newest first)."""
        hit = self.analyte(obs)
        if hit is None or obs.status not in LAB_STATUSES:
            return False
        quantity = obs.valueQuantity
        if quantity is None or quantity.value is None:
            return False
        return hit[0].to_canonical(unit_spelling(quantity)) is not None

    def read(
        self,
        obs: Any,
        path: str,
        sex: str | None,
        today: date,
        hit: tuple[Analyte, LabCode] | None = None,
    ) -> LabResult | Unusable | None:
        """One recognised Observation as a LabResult, or why it cannot be used (None: retracted)."""
        hit = hit or self.analyte(obs)
        if hit is None or obs.status in RETRACTED_STATUSES:
            return None
        analyte, lab_code = hit
        when = effective_date(obs)

        def unusable(reason: str, where: str, code: str = "incomplete") -> Unusable:
            return Unusable(
                analyte.id,
                when,
                Issue(f"{analyte.display}: {reason}; result not used", where, severity="warning", code=code),
            )

        if obs.status not in LAB_STATUSES:
            return unusable(f"status {obs.status!r} is not a final result", f"{path}.status")
        quantity = obs.valueQuantity
        if quantity is None or quantity.value is None:
            if obs.valueString is not None:
                return unusable(f"value {obs.valueString[:40]!r} is not a number", f"{path}.valueString")
            if obs.dataAbsentReason is not None:
                reason = obs.dataAbsentReason.text or ", ".join(c for _, c in _codes(obs.dataAbsentReason))
                return unusable(f"no value (dataAbsentReason: {reason[:60]})", f"{path}.dataAbsentReason")
            if obs.component:
                return unusable("its values are in components, which are not read", f"{path}.component")
            return unusable("no numeric value", f"{path}.valueQuantity")
        raw_value = float(quantity.value)
        spelled = unit_spelling(quantity)
        if not math.isfinite(raw_value) or abs(raw_value) > MAX_VALUE:
            return unusable(f"value {raw_value:g} is not a plausible result", f"{path}.valueQuantity.value")
        if len(spelled) > MAX_UNIT_LENGTH:
            return unusable(f"unit of {len(spelled)} characters is not a unit", f"{path}.valueQuantity")
        shown_unit = quantity.unit or quantity.code or ""
        comparator = quantity.comparator or ""
        to_canonical = analyte.to_canonical(spelled) if spelled else None
        interp = {c for concept in obs.interpretation or () for _, c in _codes(concept)}
        if to_canonical is None:
            # The value cannot be judged against our thresholds, but the laboratory's own flag
            # and range, written in its own unit, still can (and the data card says so).
            judged = self._judge_raw(obs, raw_value, spelled, interp, comparator)
            issue = unusable(
                f"unit {spelled!r} is not a UCUM unit that converts to {analyte.unit}"
                + (" (judged by the laboratory's own flag or range only)" if judged else ""),
                f"{path}.valueQuantity.code" if quantity.code else f"{path}.valueQuantity.unit",
                code="code-invalid",
            )
            if judged is None:
                return issue
            status, range_text = judged
            return self._result(
                analyte, lab_code, obs, None, raw_value, comparator, shown_unit, 1.0, status, range_text,
                self._flag_grades(interp, status), (), today, when, issue.issue, None, interp,
            )  # fmt: skip
        value = raw_value * to_canonical
        status, bounds, whose = self._status(obs, analyte, value, spelled, sex, interp, comparator)
        note: Issue | None = None
        # A bound ("<0.01") reaches only the grades on its own side of the range.
        side = "low" if comparator in BELOW else "high" if comparator in ABOVE else ""
        reached = [
            g
            for g in analyte.grades
            if g.applies(value, bounds.high if bounds else None) and side in ("", g.direction)
        ]
        # Past a severe threshold the value is abnormal in that direction, whatever a contradicting
        # flag or an unusually wide record range says: the threshold is the guideline's.
        status = _one_side({g.direction for g in reached}, status)
        # A critical flag reaches the severe grade on the side the result lies (never the other).
        grades = tuple(g.id for g in reached) + self._flag_grades(interp, status)
        if status == "abnormal" and interp & self.flags.critical:
            note = Issue(
                f"{analyte.display}: {shown_value(raw_value, comparator, shown_unit)} is"
                f" {self.flag_text(interp)}, but no range shows which way; shown as abnormal",
                f"{path}.interpretation",
                severity="warning",
                code="incomplete",
            )
        elif status == "unknown" and comparator and bounds is not None:
            note = unusable(
                f"{shown_value(raw_value, comparator, shown_unit)} is a bound that the range"
                f" ({self._range_text(bounds, whose, to_canonical, shown_unit, set())}) does not decide",
                f"{path}.valueQuantity.comparator",
            ).issue
        range_text = self._range_text(bounds, whose, to_canonical, shown_unit, interp)
        return self._result(
            analyte, lab_code, obs, value, raw_value, comparator, shown_unit, to_canonical, status,
            range_text, tuple(dict.fromkeys(grades)), tuple(g.label for g in reached), today, when,
            note, bounds, interp,
        )  # fmt: skip

    def _flag_grades(self, interp: set[str], status: str) -> tuple[str, ...]:
        """The severe grade a critical flag (LL, HH, or AA with a direction) reaches."""
        critical = interp & self.flags.critical
        out = []
        for code in sorted(critical):
            direction = self.flags.directions[code]
            if direction in (status, "abnormal") and status in ("low", "high"):
                out.append(f"severe-{status}")
        return tuple(dict.fromkeys(out))

    def _result(
        self,
        analyte: Analyte,
        lab_code: LabCode,
        obs: Any,
        value: float | None,
        raw_value: float,
        comparator: str,
        shown_unit: str,
        to_canonical: float,
        status: str,
        range_text: str,
        grades: tuple[str, ...],
        grade_labels: tuple[str, ...],
        today: date,
        when: date | None,
        note: Issue | None,
        bounds: Range | None,
        interp: set[str],
    ) -> LabResult:
        converted = (
            f"{comparator}{_num(value)} {analyte.unit}"
            if value is not None and abs(to_canonical - 1.0) > 1e-9
            else ""
        )
        current = when is not None and (today - when).days <= analyte.lookback_days
        return LabResult(
            analyte=analyte.id,
            display=analyte.display,
            value=value,
            unit=analyte.unit,
            shown_value=shown_value(raw_value, comparator, shown_unit),
            effective=when,
            status=status,
            range_text=range_text,
            current=current,
            lookback_days=analyte.lookback_days,
            source=_ref(obs),
            code=f"{SYSTEM_NAMES.get(lab_code.system, lab_code.system)} {lab_code.code}",
            grades=grades,
            grade_labels=grade_labels,
            converted=converted,
            note=note,
            bounds=None if bounds is None else (bounds.low, bounds.high),
            flags=tuple(sorted(interp)),
            flagged=any(self.flags.directions.get(c) in ("low", "high", "abnormal") for c in interp),
        )

    def _ranges(self, obs: Any, sex: str | None) -> list[Any]:
        """The record's reference ranges that are this patient's normal range, sex-specific first."""
        general, own = [], []
        for rr in obs.referenceRange or ():
            if rr.age:
                continue  # an age band: the patient's age is not checked against it here
            if rr.type is not None and not any(k in self.flags.range_meanings for k in _codes(rr.type)):
                continue  # a therapeutic or treatment range is not the normal range
            if rr.appliesTo:
                sexes = {self.flags.sex_codes.get(k) for concept in rr.appliesTo for k in _codes(concept)}
                if sexes == {sex} and sex is not None:
                    own.append(rr)
                continue  # another population (race, pregnancy, the other sex) is not this patient's
            general.append(rr)
        return own + general

    def _status(
        self,
        obs: Any,
        analyte: Analyte,
        value: float,
        spelled: str,
        sex: str | None,
        interp: set[str],
        comparator: str,
    ) -> tuple[str, Range | None, str]:
        bounds: Range | None = None
        whose = ""
        for rr in self._ranges(obs, sex):
            # A bound written without a unit is in the value's unit (as laboratories send it).
            low = self._bound(analyte, rr.low, spelled)
            high = self._bound(analyte, rr.high, spelled)
            if low is not None or high is not None:
                bounds, whose = Range(low, high), "record's range"
                break
        if bounds is None:
            default = analyte.default_range(sex)
            if default is not None and (default.low is not None or default.high is not None):
                bounds, whose = default, analyte.range_source
        if self.flags.of("low", interp):
            return "low", bounds, whose
        if self.flags.of("high", interp):
            return "high", bounds, whose
        direction = self._direction(value, bounds, comparator)
        if self.flags.of("abnormal", interp):
            return (direction if direction in ("low", "high") else "abnormal"), bounds, whose
        if self.flags.of("normal", interp) and not comparator:
            return "normal", bounds, whose
        return direction, bounds, whose

    @staticmethod
    def _direction(value: float, bounds: Range | None, comparator: str = "") -> str:
        """Low, high or normal against the range; a bound ("<5") only when the range decides it."""
        if bounds is None:
            return "unknown"
        low, high = bounds.low, bounds.high
        if comparator in BELOW:  # the result is at most `value`
            if low is not None and value <= low:
                return "low"
            return "normal" if low is None and (high is None or value <= high) else "unknown"
        if comparator in ABOVE:  # the result is at least `value`
            if high is not None and value >= high:
                return "high"
            return "normal" if high is None and (low is None or value >= low) else "unknown"
        if low is not None and value < low:
            return "low"
        if high is not None and value > high:
            return "high"
        return "normal"

    @staticmethod
    def _bound(analyte: Analyte, quantity: Any, value_unit: str) -> float | None:
        if quantity is None or quantity.value is None:
            return None
        to_canonical = analyte.to_canonical(unit_spelling(quantity) or value_unit)
        return None if to_canonical is None else float(quantity.value) * to_canonical

    def _range_text(
        self, bounds: Range | None, whose: str, to_canonical: float, shown_unit: str, interp: set[str]
    ) -> str:
        if bounds is None:
            text = "no range"
        else:
            # In the unit the laboratory reported, so value and range read side by side.
            low = "" if bounds.low is None else _num(bounds.low / to_canonical)
            high = "" if bounds.high is None else _num(bounds.high / to_canonical)
            text = f"{low}–{high} {shown_unit}, {whose}"
        flag = self.flag_text(interp)
        return f"{text}; {flag}" if flag else text

    def _judge_raw(
        self, obs: Any, value: float, spelled: str, interp: set[str], comparator: str
    ) -> tuple[str, str] | None:
        """Status from the laboratory's flag, or its range written in the same unit string."""
        flag = self.flag_text(interp)
        if self.flags.of("low", interp):
            return "low", flag
        if self.flags.of("high", interp):
            return "high", flag
        for rr in obs.referenceRange or ():
            low, high = rr.low, rr.high
            same = [q for q in (low, high) if q is not None and unit_spelling(q) in (spelled, "")]
            if not same:
                continue
            lo = float(low.value) if low is not None and low.value is not None else None
            hi = float(high.value) if high is not None and high.value is not None else None
            bounds = Range(lo, hi)
            text = (
                f"{'' if lo is None else _num(lo)}–{'' if hi is None else _num(hi)} {spelled}, record's range"
            )
            return LabReader._direction(value, bounds, comparator), text
        if self.flags.of("abnormal", interp):
            return "abnormal", flag
        if self.flags.of("normal", interp) and not comparator:
            return "normal", flag
        return None

    def adjusted_calcium(
        self, total: LabResult, albumin: LabResult, rule: CalciumAdjustment, today: date
    ) -> LabResult | None:
        """Albumin-adjusted calcium estimated from a total calcium and an albumin (labelled so)."""
        if total.value is None or albumin.value is None:
            return None
        analyte = self.analytes[rule.adjusted]
        value = total.value + rule.factor * (rule.reference_albumin - albumin.value)
        # The adjustment refers the total to the laboratory's total-calcium range: the record's
        # own range of the total, when it sent one, is the range the estimate is judged against.
        own = total.bounds is not None and "record's range" in total.range_text
        bounds = Range(*total.bounds) if own and total.bounds is not None else analyte.default_range(None)
        whose = "the total calcium's record range" if own else analyte.range_source
        status = self._direction(value, bounds)
        reached = [g for g in analyte.grades if g.applies(value, bounds.high if bounds else None)]
        # Past a severe threshold, or flagged low or high by the laboratory on the total, the
        # estimate is abnormal that way (an estimate never overrules the laboratory's own flag).
        flagged_sides = {self.flags.directions.get(c, "") for c in total.flags} & {"low", "high"}
        status = _one_side({g.direction for g in reached} or flagged_sides, status)
        flag_grades = self._flag_grades(set(total.flags), status) if total.flagged else ()
        grades = tuple(dict.fromkeys((*(g.id for g in reached), *flag_grades)))
        range_text = self._range_text(bounds, whose, 1.0, analyte.unit, set())
        when = max(d for d in (total.effective, albumin.effective) if d is not None)
        return LabResult(
            analyte=analyte.id,
            display=analyte.display,
            value=value,
            unit=analyte.unit,
            shown_value=f"{_num(value)} {analyte.unit}",
            effective=when,
            status=status,
            range_text=range_text,
            current=(today - when).days <= analyte.lookback_days,
            lookback_days=analyte.lookback_days,
            source=f"{total.source} + {albumin.source}",
            code="",
            grades=grades,
            grade_labels=tuple(g.label for g in reached),
            estimated=(f"{rule.label}: calcium {total.shown_value}, albumin {albumin.shown_value}"),
            bounds=None if bounds is None else (bounds.low, bounds.high),
        )
