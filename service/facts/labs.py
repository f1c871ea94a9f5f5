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

from service.engine.reference import LOINC, SNOMED, Analyte, CalciumAdjustment, LabCode, Range, ReferenceData
from service.errors import Issue
from service.facts.model import LabResult
from service.fhir.dates import fhir_date

LAB_STATUSES = frozenset({"final", "amended", "corrected"})
# Retracted results are not results: never used, never listed.
RETRACTED_STATUSES = frozenset({"entered-in-error", "cancelled"})
INTERPRETATION_LOW = frozenset({"L", "LL", "LU", "<"})
INTERPRETATION_HIGH = frozenset({"H", "HH", "HU", ">"})
INTERPRETATION_CRITICAL = {"LL": "severe-low", "HH": "severe-high"}
INTERPRETATION_ABNORMAL = frozenset({"A", "AA"})
MAX_VALUE = 1e9  # past this no laboratory value is plausible (and formatting it could overflow)
MAX_UNIT_LENGTH = 64  # a longer unit string is never parsed (parsing cost grows with length)
SYSTEM_NAMES = {LOINC: "LOINC", SNOMED: "SNOMED CT"}
FLAG_WORDS = {
    "L": "low", "LL": "critically low", "LU": "significantly low", "<": "below the measurable range",
    "H": "high", "HH": "critically high", "HU": "significantly high", ">": "above the measurable range",
    "A": "abnormal", "AA": "critically abnormal", "N": "normal",
}  # fmt: skip


def flag_text(interp: set[str]) -> str:
    """The laboratory's own interpretation, in words with its code, e.g. "flagged low (L) by the lab"."""
    flags = [f"{FLAG_WORDS[c]} ({c})" for c in sorted(interp) if c in FLAG_WORDS]
    return f"flagged {', '.join(flags)} by the lab" if flags else ""


def _codes(concept: Any) -> list[tuple[str, str]]:
    return [(c.system, c.code) for c in (getattr(concept, "coding", None) or ()) if c.system and c.code]


def _ref(resource: Any) -> str:
    rid = getattr(resource, "id", None)
    return f"{resource.get_resource_type()}/{rid}" if rid else f"{resource.get_resource_type()} (no id)"


def _num(value: float) -> str:
    """A converted number to three significant figures (whole numbers from 100 up)."""
    if abs(value) >= 100:
        return str(round(value))
    return f"{value:.3g}"


def _as_sent(value: float) -> str:
    return f"{round(value, 4):g}"


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
        return hit[0].to_canonical(quantity.code or quantity.unit or "") is not None

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
        spelled = quantity.code or quantity.unit or ""
        if not math.isfinite(raw_value) or abs(raw_value) > MAX_VALUE:
            return unusable(f"value {raw_value:g} is not a plausible result", f"{path}.valueQuantity.value")
        if len(spelled) > MAX_UNIT_LENGTH:
            return unusable(f"unit of {len(spelled)} characters is not a unit", f"{path}.valueQuantity")
        shown_unit = quantity.unit or quantity.code or ""
        to_canonical = analyte.to_canonical(spelled) if spelled else None
        interp = {c for concept in obs.interpretation or () for _, c in _codes(concept)}
        if to_canonical is None:
            # The value cannot be judged against our thresholds, but the laboratory's own flag
            # and range, written in its own unit, still can (and the data card says so).
            judged = self._judge_raw(obs, raw_value, spelled, interp)
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
                analyte,
                lab_code,
                obs,
                None,
                raw_value,
                shown_unit,
                1.0,
                status,
                range_text,
                tuple(INTERPRETATION_CRITICAL[c] for c in sorted(interp) if c in INTERPRETATION_CRITICAL),
                today,
                when,
                issue.issue,
            )
        value = raw_value * to_canonical
        status, bounds, whose = self._status(obs, analyte, value, sex, interp)
        grades = tuple(
            g.id for g in analyte.grades if g.applies(value, bounds.high if bounds else None)
        ) + tuple(INTERPRETATION_CRITICAL[c] for c in sorted(interp) if c in INTERPRETATION_CRITICAL)
        range_text = self._range_text(bounds, whose, to_canonical, shown_unit, interp)
        return self._result(
            analyte, lab_code, obs, value, raw_value, shown_unit, to_canonical, status, range_text,
            tuple(dict.fromkeys(grades)), today, when, None,
        )  # fmt: skip

    def _result(
        self,
        analyte: Analyte,
        lab_code: LabCode,
        obs: Any,
        value: float | None,
        raw_value: float,
        shown_unit: str,
        to_canonical: float,
        status: str,
        range_text: str,
        grades: tuple[str, ...],
        today: date,
        when: date | None,
        note: Issue | None,
    ) -> LabResult:
        labels = {g.id: g.label for g in analyte.grades}
        labels.update({"severe-low": labels.get("severe-low", "flagged critically low (LL) by the lab")})
        labels.update({"severe-high": labels.get("severe-high", "flagged critically high (HH) by the lab")})
        converted = (
            f"{_num(value)} {analyte.unit}" if value is not None and abs(to_canonical - 1.0) > 1e-9 else ""
        )
        current = when is not None and (today - when).days <= analyte.lookback_days
        return LabResult(
            analyte=analyte.id,
            display=analyte.display,
            value=value,
            unit=analyte.unit,
            shown_value=f"{_as_sent(raw_value)} {shown_unit}".strip(),
            effective=when,
            status=status,
            range_text=range_text,
            current=current,
            lookback_days=analyte.lookback_days,
            source=_ref(obs),
            code=f"{SYSTEM_NAMES.get(lab_code.system, lab_code.system)} {lab_code.code}",
            grades=grades,
            grade_labels=tuple(labels[g] for g in grades if g in labels),
            converted=converted,
            note=note,
        )

    def _status(
        self, obs: Any, analyte: Analyte, value: float, sex: str | None, interp: set[str]
    ) -> tuple[str, Range | None, str]:
        bounds: Range | None = None
        whose = ""
        for rr in obs.referenceRange or ():
            if rr.appliesTo or rr.age:
                continue  # a range for another group of patients is not this patient's
            low = self._bound(analyte, rr.low)
            high = self._bound(analyte, rr.high)
            if low is not None or high is not None:
                bounds, whose = Range(low, high), "record's range"
                break
        if bounds is None:
            default = analyte.default_range(sex)
            if default is not None and (default.low is not None or default.high is not None):
                bounds, whose = default, analyte.range_source
        if interp & INTERPRETATION_LOW:
            return "low", bounds, whose
        if interp & INTERPRETATION_HIGH:
            return "high", bounds, whose
        direction = self._direction(value, bounds)
        if interp & INTERPRETATION_ABNORMAL:
            return (direction if direction in ("low", "high") else "abnormal"), bounds, whose
        if interp & {"N"}:
            return "normal", bounds, whose
        return direction, bounds, whose

    @staticmethod
    def _direction(value: float, bounds: Range | None) -> str:
        if bounds is None:
            return "unknown"
        if bounds.low is not None and value < bounds.low:
            return "low"
        if bounds.high is not None and value > bounds.high:
            return "high"
        return "normal"

    @staticmethod
    def _bound(analyte: Analyte, quantity: Any) -> float | None:
        if quantity is None or quantity.value is None:
            return None
        to_canonical = analyte.to_canonical(quantity.code or quantity.unit or analyte.unit)
        return None if to_canonical is None else float(quantity.value) * to_canonical

    @staticmethod
    def _range_text(
        bounds: Range | None, whose: str, to_canonical: float, shown_unit: str, interp: set[str]
    ) -> str:
        if bounds is None:
            text = "no range"
        else:
            # In the unit the laboratory reported, so value and range read side by side.
            low = "" if bounds.low is None else _num(bounds.low / to_canonical)
            high = "" if bounds.high is None else _num(bounds.high / to_canonical)
            text = f"{low}–{high} {shown_unit}, {whose}"
        flag = flag_text(interp)
        return f"{text}; {flag}" if flag else text

    @staticmethod
    def _judge_raw(obs: Any, value: float, spelled: str, interp: set[str]) -> tuple[str, str] | None:
        """Status from the laboratory's flag, or its range written in the same unit string."""
        flag = flag_text(interp)
        if interp & INTERPRETATION_LOW:
            return "low", flag
        if interp & INTERPRETATION_HIGH:
            return "high", flag
        for rr in obs.referenceRange or ():
            low, high = rr.low, rr.high
            same = [q for q in (low, high) if q is not None and (q.code or q.unit or "") == spelled]
            if not same:
                continue
            lo = float(low.value) if low is not None and low.value is not None else None
            hi = float(high.value) if high is not None and high.value is not None else None
            bounds = Range(lo, hi)
            text = (
                f"{'' if lo is None else _num(lo)}–{'' if hi is None else _num(hi)} {spelled}, record's range"
            )
            return LabReader._direction(value, bounds), text
        if interp & INTERPRETATION_ABNORMAL:
            return "abnormal", flag
        if interp & {"N"}:
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
        default = analyte.default_range(None)
        status = self._direction(value, default)
        grades = tuple(g.id for g in analyte.grades if g.applies(value, default.high if default else None))
        range_text = self._range_text(default, analyte.range_source, 1.0, analyte.unit, set())
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
            grade_labels=tuple(g.label for g in analyte.grades if g.id in grades),
            estimated=(f"{rule.label}: calcium {total.shown_value}, albumin {albumin.shown_value}"),
        )
