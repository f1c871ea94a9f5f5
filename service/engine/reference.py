"""Reference data the rules stand on (rules/reference/*.yaml), loaded into typed, frozen records."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
CPT = "http://www.ama-assn.org/go/cpt"
UCUM = "http://unitsofmeasure.org"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
ATC = "http://www.whocc.no/atc"
KNOWN_SYSTEMS = frozenset({LOINC, SNOMED, ICD10CM, CPT, RXNORM, ATC, "local"})


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
    """An adult reference range in the analyte's canonical unit (either bound may be open)."""

    low: float | None
    high: float | None


@dataclass(frozen=True)
class Analyte:
    """A lab analyte recognised by any of its LOINC codes."""

    id: str
    display: str
    loinc: dict[str, str]
    unit: str
    unit_factors: dict[str, float]
    ranges: dict[str, Range]  # "any", "male", "female"
    range_source: str
    lookback_days: int

    def default_range(self, sex: str | None) -> Range | None:
        """The example-lab range for this sex, or the sex-neutral one."""
        if sex in self.ranges:
            return self.ranges[sex]
        if "any" in self.ranges:
            return self.ranges["any"]
        # Sex unknown: judge against the widest sex-specific range, so only a value abnormal for
        # everyone is flagged, and a clearly abnormal one is never left unjudged.
        lows = [r.low for r in self.ranges.values() if r.low is not None]
        highs = [r.high for r in self.ranges.values() if r.high is not None]
        return Range(min(lows) if lows else None, max(highs) if highs else None)


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

    def measurement_by_code(self) -> dict[tuple[str, str], Measurement]:
        """Map each measurement's (system, code) to it."""
        return {m.code.key(): m for m in self.measurements.values()}

    def analyte_by_loinc(self) -> dict[str, Analyte]:
        """Map every recognised LOINC code to its analyte."""
        return {code: a for a in self.analytes.values() for code in a.loinc}


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
        return yaml.safe_load(path.read_text(encoding="utf-8"))
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


def _analyte(analyte_id: str, raw: dict[str, Any]) -> Analyte:
    raw_range = dict(raw["range"])
    source = str(raw_range.pop("source", ""))
    ranges: dict[str, Range] = {}
    if "male" in raw_range or "female" in raw_range:
        for sex in ("male", "female"):
            r = raw_range[sex]
            ranges[sex] = Range(r.get("low"), r.get("high"))
    else:
        ranges["any"] = Range(raw_range.get("low"), raw_range.get("high"))
    factors = {str(unit): float(f) for unit, f in raw["units"].items()}
    if raw["unit"] not in factors:
        raise ReferenceDataError(f"labs {analyte_id}: canonical unit missing from units")
    return Analyte(
        id=analyte_id,
        display=raw["display"],
        loinc={str(k): str(v) for k, v in raw["loinc"].items()},
        unit=raw["unit"],
        unit_factors=factors,
        ranges=ranges,
        range_source=source,
        lookback_days=int(raw["lookback_days"]),
    )


def load_reference(folder: Path) -> ReferenceData:
    """Load and cross-check every reference table in `folder`."""
    questionnaire = _questionnaire(_read(folder, "questionnaire.yaml"))
    analytes = {k: _analyte(k, v) for k, v in _read(folder, "labs.yaml").items()}
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
    )


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
