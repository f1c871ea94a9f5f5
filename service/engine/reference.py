"""Reference data the rules stand on (rules/reference/*.yaml), loaded into typed, frozen records."""

from __future__ import annotations

import operator
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, cast

import yaml

from service.engine.units import Chemistry, UnitError, factor, normalise, validate_ucum

LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
CPT = "http://www.ama-assn.org/go/cpt"
UCUM = "http://unitsofmeasure.org"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
ATC = "http://www.whocc.no/atc"
RANGE_MEANING = "http://terminology.hl7.org/CodeSystem/referencerange-meaning"
KNOWN_SYSTEMS = frozenset({LOINC, SNOMED, ICD10CM, CPT, RXNORM, ATC, RANGE_MEANING, "local"})


# libyaml's safe loader when installed (7x faster on the lab-code tables), else the pure-Python one.
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class ReferenceDataError(ValueError):
    """Reference data that is missing or inconsistent: the service refuses to start."""


@dataclass(frozen=True)
class Coding:
    """A code from a known system; `local` codes are expanded to the service's own CodeSystem."""

    system: str
    code: str
    display: str = ""

    def key(self) -> tuple[str, str]:
        """Identity used for matching (system, code)."""
        return (self.system, self.code)


@dataclass(frozen=True)
class QuestionItem:
    """One answerable item of the twitching-assessment Questionnaire."""

    link_id: str
    type: str
    text: str
    label: str
    group: str
    repeats: bool = False
    options: tuple[str, ...] = ()
    code: Coding | None = None


@dataclass(frozen=True)
class Range:
    """A reference range in the analyte's canonical unit (either bound may be open)."""

    low: float | None
    high: float | None


_UNSEEN: Any = object()  # a spelling not yet in an analyte's unit-factor memo

# The four numeric tests a rule or a grade may name, shared by every comparison in the rules.
NUMERIC_TESTS: dict[str, Callable[[float, float], bool]] = {
    "above": operator.gt,
    "below": operator.lt,
    "at_least": operator.ge,
    "at_most": operator.le,
}
GRADE_OPS = (*NUMERIC_TESTS, "above_uln_times")


@dataclass(frozen=True)
class Grade:
    """A named threshold past the reference range (e.g. severe hyperkalaemia), with its source."""

    id: str
    op: str  # one of GRADE_OPS
    value: float  # in the analyte's canonical unit (a multiple of the upper limit for above_uln_times)
    label: str
    source: str

    @property
    def direction(self) -> str:
        """The side of the range the grade lies on: "low" or "high"."""
        return "low" if self.op in ("below", "at_most") else "high"

    def applies(self, value: float, high: float | None) -> bool:
        """Whether a canonical value reaches this grade (ULN multiples need the range's upper limit)."""
        if self.op == "above_uln_times":
            return high is not None and value > self.value * high
        return NUMERIC_TESTS[self.op](value, self.value)


@dataclass(frozen=True)
class LabCode:
    """A result code that names an analyte, with where it was verified."""

    system: str
    code: str
    display: str
    source: str


MAX_REMEMBERED_SPELLINGS = 256


@dataclass(frozen=True)
class Analyte:
    """A lab analyte recognised by any of its codes (LOINC, SNOMED CT, a deployment's local map)."""

    id: str
    display: str
    codes: tuple[LabCode, ...]
    other_specimen: tuple[LabCode, ...]  # the analyte measured in a specimen the rules do not read
    names: tuple[str, ...]  # words naming it in a code's display or text (to refuse visibly)
    unit: str  # canonical UCUM unit
    chemistry: Chemistry
    unit_aliases: dict[str, str]  # feed spellings that mean a UCUM unit for this analyte only
    ranges: dict[str, Range]  # "any", "male", "female"
    range_source: str
    grades: tuple[Grade, ...]
    lookback_days: int
    judged: bool = True  # False: read only to derive another result (e.g. albumin for calcium)

    def default_range(self, sex: str | None) -> Range | None:
        """The example-lab range for this sex, or the sex-neutral one."""
        if sex in self.ranges:
            return self.ranges[sex]
        if "any" in self.ranges:
            return self.ranges["any"]
        if not self.ranges:
            return None
        # Sex unknown: judge against the widest sex-specific range, so only a value abnormal for
        # everyone is flagged, and a clearly abnormal one is never left unjudged.
        lows = [r.low for r in self.ranges.values() if r.low is not None]
        highs = [r.high for r in self.ranges.values() if r.high is not None]
        return Range(min(lows) if lows else None, max(highs) if highs else None)

    def to_canonical(self, spelling: str) -> float | None:
        """Factor from a feed's unit spelling to the canonical unit; None when it does not convert."""
        # A feed's spellings repeat on every result, and normalising one costs more than the rest
        # of reading its value: each analyte remembers its own (bounded: spellings come from records).
        memo: dict[str, float | None] = self.__dict__.setdefault("_factors", {})
        known = memo.get(spelling, _UNSEEN)  # one lookup: another thread may clear the memo meanwhile
        if known is not _UNSEEN:
            return cast(float | None, known)
        try:
            found: float | None = factor(normalise(spelling, self.unit_aliases), self.unit, self.chemistry)
        except UnitError:
            found = None
        if len(memo) >= MAX_REMEMBERED_SPELLINGS:
            memo.clear()
        memo[spelling] = found
        return found


@dataclass(frozen=True)
class Orderable:
    """An order or referral the rules may suggest as a ServiceRequest draft."""

    id: str
    label: str
    category: str
    code: Coding
    matches: tuple[Coding, ...]
    covered_by_results: tuple[str, ...]

    def all_codes(self) -> frozenset[tuple[str, str]]:
        """Every (system, code) that counts as this order."""
        return frozenset({self.code.key(), *(c.key() for c in self.matches)})


@dataclass(frozen=True)
class Source:
    """A citable source: a seed article or a guideline."""

    id: str
    label: str
    url: str | None = None
    file: str | None = None
    status: str | None = None  # V (read in the primary source) or V2 (a secondary summary only)


@dataclass(frozen=True)
class BodyArea:
    """A body-areas answer: the region it lies in, and whether it counts towards spreading."""

    option: str
    region: str
    counts_for_spreading: bool


@dataclass(frozen=True)
class Measurement:
    """A coded Observation read as a number-valued fact (e.g. sleep duration in hours)."""

    fact: str
    code: Coding
    unit: str  # the question's unit, shown on cards
    unit_factors: dict[str, float]  # recorded unit -> factor to the fact's unit


@dataclass(frozen=True)
class DrugClass:
    """A class of medicines and the facts a medicine of the class sets (e.g. lowers potassium)."""

    id: str
    label: str
    facts: tuple[str, ...]
    sources: tuple[str, ...]


@dataclass(frozen=True)
class Ingredient:
    """A medicine ingredient, recognised by its verified codes or by name."""

    id: str
    drug_class: str
    names: tuple[str, ...]  # lower case; matched as whole words in a medication's text
    codes: tuple[Coding, ...]


@dataclass(frozen=True)
class Medications:
    """medications.yaml: the facts medicines set, their classes and ingredients."""

    facts: dict[str, str]  # fact -> label
    classes: dict[str, DrugClass]
    ingredients: dict[str, Ingredient]


@dataclass(frozen=True)
class Questionnaire:
    """The twitching-assessment Questionnaire's metadata and items."""

    id: str
    version: str
    name: str
    title: str
    description: str
    groups: tuple[tuple[str, str], ...]  # (linkId, text)
    items: dict[str, QuestionItem]


@dataclass(frozen=True)
class CalciumAdjustment:
    """How to estimate albumin-adjusted calcium (factor per g/L of albumin, in the adjusted unit)."""

    adjusted: str
    total: str
    albumin: str
    factor: float  # canonical unit of `adjusted` per g/L of albumin below the reference
    reference_albumin: float  # g/L
    max_days_apart: int
    label: str
    source: str


@dataclass(frozen=True)
class LabFlags:
    """lab-flags.yaml: interpretation flags, the range types judged against, sex-specific ranges."""

    directions: dict[str, str]  # interpretation code -> "low", "high", "abnormal" or "normal"
    words: dict[str, str]  # interpretation code -> words on the card
    critical: frozenset[str]  # codes that reach the severe grade (LL, HH, AA)
    range_meanings: frozenset[tuple[str, str]]  # referenceRange.type codes judged against
    sex_codes: dict[tuple[str, str], str]  # referenceRange.appliesTo code -> "male" or "female"

    def of(self, direction: str, codes: set[str]) -> set[str]:
        """The codes among `codes` that mean `direction`."""
        return {c for c in codes if self.directions.get(c) == direction}


@dataclass(frozen=True)
class ReferenceData:
    """All reference tables, cross-checked."""

    questionnaire: Questionnaire
    analytes: dict[str, Analyte]
    orderables: dict[str, Orderable]
    findings: dict[str, tuple[Coding, ...]]
    sources: dict[str, Source]
    finding_labels: dict[str, str]  # label of a coded fact that is not also a question
    body_areas: dict[str, BodyArea]
    measurements: dict[str, Measurement]  # keyed by fact
    override_reasons: tuple[tuple[str, str], ...]  # (code, display)
    medications: Medications
    calcium_adjustment: CalciumAdjustment
    lab_flags: LabFlags

    def measurement_by_code(self) -> dict[tuple[str, str], Measurement]:
        """Map each measurement's (system, code) to it."""
        return {m.code.key(): m for m in self.measurements.values()}

    def analyte_by_code(self) -> dict[tuple[str, str], Analyte]:
        """Map every recognised (system, code) to its analyte."""
        return {(c.system, c.code): a for a in self.analytes.values() for c in a.codes}

    def analyte_by_other_specimen(self) -> dict[tuple[str, str], Analyte]:
        """Map each code of an analyte in a specimen the rules do not read to that analyte."""
        return {(c.system, c.code): a for a in self.analytes.values() for c in a.other_specimen}


def _coding(raw: Any, where: str) -> Coding:
    if not isinstance(raw, dict) or "system" not in raw or "code" not in raw:
        raise ReferenceDataError(f"{where}: a coding needs system and code")
    system = str(raw["system"])
    if system not in KNOWN_SYSTEMS:
        raise ReferenceDataError(f"{where}: unknown code system {system!r}")
    return Coding(system, str(raw["code"]), str(raw.get("display", "")))


def _read(folder: Path, name: str) -> Any:
    path = folder / name
    try:
        return yaml.load(path.read_text(encoding="utf-8"), Loader=_LOADER)  # noqa: S506 - CSafeLoader is safe
    except (OSError, yaml.YAMLError) as exc:
        raise ReferenceDataError(f"{path}: {exc}") from exc


def _questionnaire(raw: dict[str, Any]) -> Questionnaire:
    items: dict[str, QuestionItem] = {}
    groups: list[tuple[str, str]] = []
    for group in raw["groups"]:
        groups.append((group["linkId"], group["text"]))
        for item in group["items"]:
            link_id = item["linkId"]
            if link_id in items:
                raise ReferenceDataError(f"questionnaire: duplicate linkId {link_id!r}")
            code = item.get("code")
            items[link_id] = QuestionItem(
                link_id=link_id,
                type=item["type"],
                text=item["text"],
                label=item["label"],
                group=group["linkId"],
                repeats=bool(item.get("repeats", False)),
                options=tuple(item.get("options", ())),
                code=_coding(code, f"questionnaire {link_id}") if code else None,
            )
    return Questionnaire(
        id=raw["id"],
        version=str(raw["version"]),
        name=raw["name"],
        title=raw["title"],
        description=raw["description"],
        groups=tuple(groups),
        items=items,
    )


ANALYTE_KEYS = frozenset(
    ["display", "names", "unit", "chemistry", "codes", "other_specimen", "unit_aliases", "range",
     "grades", "lookback_days", "judged"]
)  # fmt: skip


def _lab_codes(raw: Any, where: str, known_sources: set[str]) -> tuple[LabCode, ...]:
    out = []
    for i, entry in enumerate(raw or ()):
        coding = _coding(entry, f"{where}[{i}]")
        display, source = str(entry.get("display", "")).strip(), str(entry.get("source", "")).strip()
        if not display or not source:
            raise ReferenceDataError(
                f"{where}[{i}] {coding.code}: every lab code needs a display and a source"
            )
        cited = "://" in source or any(re.search(rf"\b{re.escape(k)}\b", source) for k in known_sources)
        if not cited:
            raise ReferenceDataError(
                f"{where}[{i}] {coding.code}: source {source[:60]!r} names no URL"
                " and none of lab-code-sources.yaml"
            )
        out.append(LabCode(coding.system, coding.code, display, source))
    return tuple(out)


def _in_unit(value: Any, unit: str, analyte: str, chemistry: Chemistry, where: str) -> float:
    try:
        validate_ucum(unit)
        return float(value) * factor(unit, analyte, chemistry)
    except (UnitError, TypeError, ValueError) as exc:
        raise ReferenceDataError(f"{where}: {exc}") from exc


def _analyte(analyte_id: str, raw: dict[str, Any], code_sources: set[str]) -> Analyte:
    where = f"labs {analyte_id}"
    if not isinstance(raw, dict):
        raise ReferenceDataError(f"{where}: an analyte is a mapping")
    unknown = set(raw) - ANALYTE_KEYS
    if unknown:
        raise ReferenceDataError(f"{where}: unknown keys {sorted(unknown)}")
    unit = str(raw["unit"])
    try:
        validate_ucum(unit)
    except UnitError as exc:
        raise ReferenceDataError(f"{where}: canonical unit: {exc}") from exc
    chem = raw.get("chemistry") or {}
    if chem and not chem.get("source"):
        raise ReferenceDataError(f"{where}: chemistry needs a source")
    chemistry = Chemistry(
        float(chem["molar_mass"]) if "molar_mass" in chem else None, int(chem.get("charge", 1))
    )
    # Keyed in lower case: feeds do not keep a spelling's case ("mU/l" for "mU/L").
    aliases = {str(k).lower(): str(v) for k, v in (raw.get("unit_aliases") or {}).items()}
    for spelling, target in aliases.items():
        try:
            factor(target, unit, chemistry)
        except UnitError as exc:
            raise ReferenceDataError(f"{where}: unit alias {spelling!r}: {exc}") from exc
    raw_range = dict(raw.get("range") or {})
    source = str(raw_range.pop("source", ""))
    range_unit = str(raw_range.pop("unit", unit))

    def bound(r: dict[str, Any], key: str) -> float | None:
        v = r.get(key)
        return None if v is None else _in_unit(v, range_unit, unit, chemistry, f"{where} range")

    ranges: dict[str, Range] = {}
    if "male" in raw_range or "female" in raw_range:
        for sex in ("male", "female"):
            r = raw_range[sex]
            ranges[sex] = Range(bound(r, "low"), bound(r, "high"))
    elif raw_range:
        ranges["any"] = Range(bound(raw_range, "low"), bound(raw_range, "high"))
    if ranges and not source:
        raise ReferenceDataError(f"{where}: a range needs a source")
    grades = []
    for i, g in enumerate(raw.get("grades") or ()):
        gwhere = f"{where} grades[{i}]"
        ops = [op for op in GRADE_OPS if op in g]
        if len(ops) != 1 or not g.get("id") or not g.get("label") or not g.get("source"):
            raise ReferenceDataError(f"{gwhere}: a grade has an id, a label, a source and one of {GRADE_OPS}")
        op = ops[0]
        value = (
            float(g[op])
            if op == "above_uln_times"
            else _in_unit(g[op], str(g.get("unit", unit)), unit, chemistry, gwhere)
        )
        grades.append(Grade(str(g["id"]), op, value, str(g["label"]), str(g["source"])))
    names = tuple(str(n).lower() for n in raw.get("names") or ())
    if not names:
        raise ReferenceDataError(f"{where}: names (words that name the analyte in a display) are required")
    codes = _lab_codes(raw.get("codes"), f"{where} codes", code_sources)
    if not codes:
        raise ReferenceDataError(f"{where}: at least one code is required")
    return Analyte(
        id=analyte_id,
        display=raw["display"],
        codes=codes,
        other_specimen=_lab_codes(raw.get("other_specimen"), f"{where} other_specimen", code_sources),
        names=names,
        unit=unit,
        chemistry=chemistry,
        unit_aliases=aliases,
        ranges=ranges,
        range_source=source,
        grades=tuple(grades),
        lookback_days=int(raw["lookback_days"]),
        judged=bool(raw.get("judged", True)),
    )


def _check_codes_unique(analytes: dict[str, Analyte]) -> None:
    owner: dict[tuple[str, str], str] = {}
    for analyte in analytes.values():
        for c in (*analyte.codes, *analyte.other_specimen):
            key = (c.system, c.code)
            if key in owner and owner[key] != analyte.id:
                raise ReferenceDataError(
                    f"labs: {c.system}|{c.code} is claimed by {owner[key]} and {analyte.id}"
                )
            if key in owner:
                raise ReferenceDataError(f"labs {analyte.id}: {c.system}|{c.code} is listed twice")
            owner[key] = analyte.id


def load_local_lab_codes(path: Path, analytes: dict[str, Analyte]) -> dict[str, Analyte]:
    """Add a deployment's local result codes from a FHIR R4 ConceptMap (local code -> a known code)."""
    from fhir.resources.R4B.conceptmap import ConceptMap  # only deployments with a map pay for it

    try:
        concept_map = ConceptMap.model_validate_json(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise ReferenceDataError(f"{path}: not a valid FHIR R4 ConceptMap: {exc}") from exc
    by_code = {(c.system, c.code): a for a in analytes.values() for c in a.codes}
    added: dict[str, list[LabCode]] = {}
    for g, group in enumerate(concept_map.group or ()):
        if not group.source or not group.target:
            raise ReferenceDataError(f"{path}: group[{g}] needs source and target systems")
        for e, element in enumerate(group.element or ()):
            where = f"{path}: group[{g}].element[{e}] {element.code!r}"
            targets = [t for t in element.target or () if t.equivalence in ("equivalent", "equal")]
            if len(targets) != 1:
                raise ReferenceDataError(f"{where}: exactly one target with equivalence equivalent or equal")
            analyte = by_code.get((str(group.target), str(targets[0].code)))
            if analyte is None:
                raise ReferenceDataError(
                    f"{where}: target {group.target}|{targets[0].code} is not a result code of any analyte"
                )
            if (str(group.source), str(element.code)) in by_code:
                raise ReferenceDataError(f"{where}: this code is already known")
            added.setdefault(analyte.id, []).append(
                LabCode(
                    str(group.source),
                    str(element.code),
                    element.display or analyte.display,
                    f"local ConceptMap {concept_map.url or path.name}",
                )
            )
    out = dict(analytes)
    for analyte_id, codes in added.items():
        a = analytes[analyte_id]
        out[analyte_id] = replace(a, codes=(*a.codes, *codes))
    _check_codes_unique(out)
    return out


def _calcium_adjustment(
    raw: Any, analytes: dict[str, Analyte], sources: dict[str, Source]
) -> CalciumAdjustment:
    where = "derived adjusted-calcium"
    for key in ("adjusted", "total", "albumin"):
        if raw.get(key) not in analytes:
            raise ReferenceDataError(f"{where}: {key} {raw.get(key)!r} is not an analyte")
    if raw.get("source") not in sources:
        raise ReferenceDataError(f"{where}: unknown source {raw.get('source')!r}")
    adjusted, albumin = analytes[raw["adjusted"]], analytes[raw["albumin"]]
    f = raw["factor"]
    try:
        per_albumin = factor(str(f["per"]), albumin.unit)  # g/L of albumin in albumin's unit
        value = float(f["value"]) * factor(str(f["unit"]), adjusted.unit, adjusted.chemistry) / per_albumin
        ref = raw["reference_albumin"]
        reference_albumin = float(ref["value"]) * factor(str(ref["unit"]), albumin.unit)
    except (UnitError, KeyError, TypeError, ValueError) as exc:
        raise ReferenceDataError(f"{where}: {exc}") from exc
    return CalciumAdjustment(
        raw["adjusted"], raw["total"], raw["albumin"], value, reference_albumin,
        int(raw["max_days_apart"]), str(raw["label"]), str(raw["source"]),
    )  # fmt: skip


def load_reference(folder: Path, local_lab_codes: Path | None = None) -> ReferenceData:
    """Load and cross-check every reference table in `folder` (and a deployment's local lab codes)."""
    questionnaire = _questionnaire(_read(folder, "questionnaire.yaml"))
    codes = _read(folder, "lab-codes.yaml")
    code_sources = set(_read(folder, "lab-code-sources.yaml"))
    raw_labs = _read(folder, "labs.yaml")
    if set(codes) != set(raw_labs):
        raise ReferenceDataError(
            f"lab-codes.yaml and labs.yaml name different analytes: {sorted(set(codes) ^ set(raw_labs))}"
        )
    analytes = {k: _analyte(k, {**v, **codes[k]}, code_sources) for k, v in raw_labs.items()}
    _check_codes_unique(analytes)
    if local_lab_codes is not None:
        analytes = load_local_lab_codes(local_lab_codes, analytes)
    orderables: dict[str, Orderable] = {}
    for order_id, raw in _read(folder, "orders.yaml").items():
        covered = tuple(raw.get("covered_by_results", ()))
        unknown = [a for a in covered if a not in analytes]
        if unknown:
            raise ReferenceDataError(f"orders {order_id}: unknown analytes {unknown}")
        orderables[order_id] = Orderable(
            id=order_id,
            label=raw["label"],
            category=raw["category"],
            code=_coding(raw["code"], f"orders {order_id}"),
            matches=tuple(_coding(m, f"orders {order_id}") for m in raw.get("matches", ())),
            covered_by_results=covered,
        )
    findings: dict[str, tuple[Coding, ...]] = {}
    finding_labels: dict[str, str] = {}
    for fact, raw in _read(folder, "findings.yaml").items():
        if not isinstance(raw, dict) or not raw.get("codes"):
            raise ReferenceDataError(f"findings {fact}: a mapping with codes (and label) is expected")
        findings[fact] = tuple(_coding(c, f"findings {fact}") for c in raw["codes"])
        if raw.get("label"):
            finding_labels[fact] = str(raw["label"])
    sources = {
        sid: Source(sid, raw["label"], raw.get("url"), raw.get("file"), raw.get("status"))
        for sid, raw in _read(folder, "sources.yaml").items()
    }
    for sid, source in sources.items():
        if source.status not in (None, "V", "V2"):
            raise ReferenceDataError(f"sources {sid}: status {source.status!r} is not V or V2")
    body_areas = _body_areas(_read(folder, "body-regions.yaml"), questionnaire, sources)
    measurements = _measurements(_read(folder, "measurements.yaml"), questionnaire)
    override_reasons = _override_reasons(_read(folder, "override-reasons.yaml"))
    medications = _medications(_read(folder, "medications.yaml"), sources)
    adjustment = _calcium_adjustment(_read(folder, "derived.yaml")["adjusted-calcium"], analytes, sources)
    lab_flags = _lab_flags(_read(folder, "lab-flags.yaml"))
    for analyte in analytes.values():
        for grade in analyte.grades:
            if grade.source not in sources:
                raise ReferenceDataError(
                    f"labs {analyte.id} grade {grade.id}: unknown source {grade.source!r}"
                )
    return ReferenceData(
        questionnaire,
        analytes,
        orderables,
        findings,
        sources,
        finding_labels,
        body_areas,
        measurements,
        override_reasons,
        medications,
        adjustment,
        lab_flags,
    )


LAB_FLAG_DIRECTIONS = ("low", "high", "abnormal", "normal")


def _lab_flags(raw: Any) -> LabFlags:
    """lab-flags.yaml, cross-checked: every flag has a direction and words, every part a source."""
    where = "lab-flags.yaml"
    if not isinstance(raw, dict) or set(raw) != {"interpretation", "range_meanings", "applies_to_sex"}:
        raise ReferenceDataError(f"{where}: interpretation, range_meanings and applies_to_sex are expected")
    for part in raw.values():
        if not isinstance(part, dict) or not part.get("source"):
            raise ReferenceDataError(f"{where}: every part needs a source")
    directions: dict[str, str] = {}
    words: dict[str, str] = {}
    critical: set[str] = set()
    for code, entry in (raw["interpretation"].get("flags") or {}).items():
        if (
            not isinstance(entry, dict)
            or entry.get("direction") not in LAB_FLAG_DIRECTIONS
            or not entry.get("words")
        ):
            raise ReferenceDataError(f"{where} flag {code!r}: a direction of {LAB_FLAG_DIRECTIONS} and words")
        directions[str(code)] = str(entry["direction"])
        words[str(code)] = str(entry["words"])
        if entry.get("critical"):
            if entry["direction"] == "normal":
                raise ReferenceDataError(f"{where} flag {code!r}: a normal flag cannot be critical")
            critical.add(str(code))
    if not {"low", "high"} <= set(directions.values()):
        raise ReferenceDataError(f"{where}: flags for both directions are required")
    meanings = frozenset(_coding(c, where).key() for c in raw["range_meanings"].get("judged_against") or ())
    if not meanings:
        raise ReferenceDataError(f"{where}: range_meanings.judged_against is empty")
    sex_codes: dict[tuple[str, str], str] = {}
    for entry in raw["applies_to_sex"].get("codes") or ():
        if entry.get("sex") not in ("male", "female"):
            raise ReferenceDataError(f"{where} applies_to_sex {entry.get('code')}: sex is male or female")
        sex_codes[_coding(entry, where).key()] = str(entry["sex"])
    return LabFlags(directions, words, frozenset(critical), meanings, sex_codes)


def _medications(raw: Any, sources: dict[str, Source]) -> Medications:
    """medications.yaml, cross-checked: classes set declared facts, cite known sources, codes are sourced."""
    if not isinstance(raw, dict) or not all(
        isinstance(raw.get(k), dict) for k in ("facts", "classes", "ingredients")
    ):
        raise ReferenceDataError("medications.yaml: facts, classes and ingredients mappings are expected")
    facts = {str(k): str(v) for k, v in raw["facts"].items()}
    classes: dict[str, DrugClass] = {}
    for cid, entry in raw["classes"].items():
        where = f"medications class {cid}"
        class_facts = tuple(entry.get("facts") or ())
        unknown = [f for f in class_facts if f not in facts]
        if not class_facts or unknown:
            raise ReferenceDataError(f"{where}: facts {unknown or 'missing'} are not declared under facts")
        cited = tuple(entry.get("sources") or ())
        if not cited or any(c not in sources for c in cited):
            raise ReferenceDataError(f"{where}: every class cites known sources, got {list(cited)}")
        classes[cid] = DrugClass(cid, str(entry["label"]), class_facts, cited)
    ingredients: dict[str, Ingredient] = {}
    seen_names: dict[str, str] = {}
    seen_codes: dict[tuple[str, str], str] = {}
    for iid, entry in raw["ingredients"].items():
        where = f"medications ingredient {iid}"
        if entry.get("class") not in classes:
            raise ReferenceDataError(f"{where}: unknown class {entry.get('class')!r}")
        names = tuple(str(n).lower() for n in entry.get("names") or ())
        if not names:
            raise ReferenceDataError(f"{where}: at least one name is required")
        codes = []
        for raw_code in entry.get("codes") or ():
            if raw_code.get("source") not in sources:
                raise ReferenceDataError(f"{where}: code {raw_code.get('code')} needs a known source")
            code = _coding(raw_code, where)
            if code.system not in (RXNORM, ATC):
                raise ReferenceDataError(f"{where}: only RxNorm or ATC codes, not {code.system}")
            codes.append(code)
        for name in names:
            if name in seen_names:
                raise ReferenceDataError(f"{where}: name {name!r} is also {seen_names[name]}")
            seen_names[name] = iid
        for code in codes:
            if code.key() in seen_codes:
                raise ReferenceDataError(f"{where}: code {code.code} is also {seen_codes[code.key()]}")
            seen_codes[code.key()] = iid
        ingredients[iid] = Ingredient(iid, str(entry["class"]), names, tuple(codes))
    return Medications(facts, classes, ingredients)


def _body_areas(raw: Any, questionnaire: Questionnaire, sources: dict[str, Source]) -> dict[str, BodyArea]:
    """body-regions.yaml: exactly one entry per body-areas option, each with a region."""
    item = questionnaire.items.get("body-areas")
    if item is None:
        raise ReferenceDataError("questionnaire: the body-areas item is missing")
    areas_raw = raw.get("areas") if isinstance(raw, dict) else None
    if not isinstance(areas_raw, dict):
        raise ReferenceDataError("body-regions.yaml: an `areas` mapping is expected")
    cited = [s for s in raw.get("sources", ()) if s not in sources]
    if cited:
        raise ReferenceDataError(f"body-regions.yaml: unknown sources {cited}")
    missing = [o for o in item.options if o not in areas_raw]
    if missing:
        raise ReferenceDataError(
            f"body-regions.yaml: body-areas option(s) {missing} have no region; add each with"
            " `region` (and `counts_for_spreading` if twitching there is not counted)"
        )
    extra = [a for a in areas_raw if a not in item.options]
    if extra:
        raise ReferenceDataError(f"body-regions.yaml: {extra} are not body-areas options")
    areas: dict[str, BodyArea] = {}
    for option, entry in areas_raw.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("region"), str):
            raise ReferenceDataError(f"body-regions.yaml {option}: a region is required")
        counts = entry.get("counts_for_spreading", True)
        if not isinstance(counts, bool):
            raise ReferenceDataError(f"body-regions.yaml {option}: counts_for_spreading is true or false")
        areas[option] = BodyArea(option, entry["region"], counts)
    return areas


def _measurements(raw: Any, questionnaire: Questionnaire) -> dict[str, Measurement]:
    """measurements.yaml: each names a numeric question whose answer a coded Observation may give."""
    out: dict[str, Measurement] = {}
    for fact, entry in (raw or {}).items():
        item = questionnaire.items.get(fact)
        if item is None or item.type not in ("integer", "decimal"):
            raise ReferenceDataError(f"measurements {fact}: not a numeric questionnaire item")
        code = _coding(entry.get("code"), f"measurements {fact}")
        if item.code is not None and item.code.key() != code.key():
            raise ReferenceDataError(
                f"measurements {fact}: code {code.code} differs from the question's code {item.code.code}"
            )
        factors = {str(u): float(f) for u, f in (entry.get("units") or {}).items()}
        if not factors:
            raise ReferenceDataError(f"measurements {fact}: units are required")
        unit = str(entry.get("unit") or "")
        if not unit:
            raise ReferenceDataError(f"measurements {fact}: unit is required")
        out[fact] = Measurement(fact, code, unit, factors)
    return out


def _override_reasons(raw: Any) -> tuple[tuple[str, str], ...]:
    """override-reasons.yaml: the reasons a clinician may give for dismissing a card."""
    if not isinstance(raw, list) or not raw:
        raise ReferenceDataError("override-reasons.yaml: a non-empty list is expected")
    reasons: list[tuple[str, str]] = []
    for entry in raw:
        if not isinstance(entry, dict) or not entry.get("code") or not entry.get("display"):
            raise ReferenceDataError(f"override-reasons.yaml: {entry!r} needs code and display")
        reasons.append((str(entry["code"]), str(entry["display"])))
    codes = [c for c, _ in reasons]
    if len(set(codes)) != len(codes):
        raise ReferenceDataError("override-reasons.yaml: duplicate codes")
    return tuple(reasons)
