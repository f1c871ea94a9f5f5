"""Turn validated FHIR resources into the named facts the rules read."""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable, Hashable, Iterator
from datetime import date
from typing import Any

from service.engine.reference import Measurement, Questionnaire, ReferenceData
from service.errors import Issue, echo
from service.facts.labs import (
    LAB_STATUSES,
    RETRACTED_STATUSES,
    Component,
    LabReader,
    Unusable,
    effective_date,
    unit_spelling,
)
from service.facts.memo import ResourceMemo
from service.facts.model import Evidence, ExistingOrder, Fact, FactValue, LabResult, PatientFacts
from service.fhir.dates import fhir_date
from service.fhir.intake import Intake

RESPONSE_STATUSES = frozenset({"completed", "amended", "in-progress"})
ACTIVE_ORDER_STATUSES = frozenset({"draft", "active", "on-hold"})
INACTIVE_CONDITION = frozenset({"inactive", "remission", "resolved"})
UNCONFIRMED = frozenset({"refuted", "entered-in-error"})
OBS_FINDING_STATUSES = frozenset({"preliminary", "final", "amended", "corrected"})
ACTIVE_MEDICATION_STATUSES = frozenset({"active"})
# A coded measurement's fact, value and evidence, or the fact and why the Observation was not used.
Measured = tuple[str, FactValue, Evidence] | tuple[str, Issue]


def _ref(resource: Any) -> str:
    rid = getattr(resource, "id", None)
    return f"{resource.get_resource_type()}/{rid}" if rid else f"{resource.get_resource_type()} (no id)"


def _codes(concept: Any) -> Iterator[tuple[str, str]]:
    for coding in (getattr(concept, "coding", None) or ()) if concept else ():
        if coding.system and coding.code:
            yield (coding.system, coding.code)


def _fmt_number(value: float) -> str:
    return f"{value:g}"


class FactBuilder:
    """Collects evidence per fact from every source, then merges it (true wins, with all sources)."""

    def __init__(self) -> None:
        self._values: dict[str, list[tuple[FactValue, Evidence]]] = defaultdict(list)

    def add(self, name: str, value: FactValue, evidence: Evidence) -> None:
        """Record one observed value of a fact."""
        self._values[name].append((value, evidence))

    def has(self, name: str) -> bool:
        """Whether any source gave this fact."""
        return name in self._values

    def build(self) -> dict[str, Fact]:
        """Merge: for booleans any true source makes it true; otherwise the first source wins."""
        facts: dict[str, Fact] = {}
        for name, entries in self._values.items():
            values = [v for v, _ in entries]
            if all(isinstance(v, bool) for v in values):
                truth = any(values)
                evidence = tuple(e for v, e in entries if v is truth)
                facts[name] = Fact(name, truth, evidence)
            else:
                value, evidence0 = entries[0]
                facts[name] = Fact(name, value, (evidence0,))
        return facts


class FactExtractor:
    """Reads answers, coded findings, labs and orders into PatientFacts."""

    def __init__(
        self,
        reference: ReferenceData,
        questionnaire_url: str,
        room_for: Callable[[Any], dict[Hashable, Any] | None] | None = None,
    ) -> None:
        self.reference = reference
        # Reads of objects the validation memo keeps, stored in its entries (service/facts/memo.py).
        self.memo = ResourceMemo(room_for)
        self.questionnaire: Questionnaire = reference.questionnaire
        self.questionnaire_url = questionnaire_url
        self.labs = LabReader(reference)
        self.measurements = reference.measurement_by_code()
        medications = reference.medications
        self.drug_by_code: dict[tuple[str, str], str] = {
            c.key(): i.id for i in medications.ingredients.values() for c in i.codes
        }
        self.drug_by_name = {n: i.id for i in medications.ingredients.values() for n in i.names}
        # One pass over a medication's text finds every ingredient named in it, as whole words.
        names = sorted(self.drug_by_name, key=len, reverse=True)
        self.drug_names = re.compile(r"\b(" + "|".join(re.escape(n) for n in names) + r")\b", re.IGNORECASE)
        self.finding_facts: dict[tuple[str, str], str] = {
            c.key(): fact for fact, codes in reference.findings.items() for c in codes
        }

    # -- questionnaire answers -------------------------------------------------------------
    def _is_ours(self, response: Any, path: str) -> bool:
        canonical = response.questionnaire
        if canonical is not None:
            return bool(canonical.split("|")[0] == self.questionnaire_url)
        # A response naming no questionnaire is ours only if it answers one of our linkIds.
        return any(item.linkId in self.questionnaire.items for item, _ in self._walk(response.item, path))

    def _lookalike_response(self, response: Any, path: str) -> Issue | None:
        """A response naming this questionnaire's id under another canonical base: why it is not read."""
        canonical = (response.questionnaire or "").split("|")[0]
        tail = f"/Questionnaire/{self.questionnaire.id}"
        if not canonical.endswith(tail) or canonical == self.questionnaire_url:
            return None
        return Issue(
            f"QuestionnaireResponse names {canonical[:120]!r}, not this deployment's questionnaire"
            f" {self.questionnaire_url!r} (CANONICAL_BASE); its answers were not read",
            f"{path}.questionnaire",
            severity="warning",
            code="not-supported",
        )

    def _pick_response(self, intake: Intake, problems: list[Issue]) -> tuple[Any, str] | None:
        usable = []
        for r, p in intake.responses:
            if r.status not in RESPONSE_STATUSES:
                continue
            if self._is_ours(r, p):
                usable.append((r, p))
                continue
            lookalike = self._lookalike_response(r, p)
            if lookalike is not None:
                problems.append(lookalike)
        if not usable:
            return None

        def authored(entry: tuple[Any, str]) -> str:
            r = entry[0]
            stamp = r.authored or (r.meta.lastUpdated if r.meta else None)
            # A partial date ("2026-11") or a leap second stays the string sent: ISO text sorts alike.
            return stamp if isinstance(stamp, str) else stamp.isoformat() if stamp else ""

        return max(usable, key=authored)

    def _walk(self, items: Any, path: str) -> Iterator[tuple[Any, str]]:
        for i, item in enumerate(items or ()):
            item_path = f"{path}.item[{i}]"
            yield item, item_path
            yield from self._walk(item.item, item_path)
            for j, answer in enumerate(item.answer or ()):
                yield from self._walk(answer.item, f"{item_path}.answer[{j}]")

    def _answer_value(self, link_id: str, answers: list[Any], path: str) -> FactValue | Issue:
        spec = self.questionnaire.items[link_id]
        values: list[Any] = []
        for answer in answers:
            if spec.type == "boolean":
                values.append(answer.valueBoolean)
            elif spec.type in ("integer", "decimal"):
                raw = answer.valueDecimal if answer.valueDecimal is not None else answer.valueInteger
                values.append(None if raw is None else float(raw))
            elif spec.type == "choice":
                coding = answer.valueCoding
                values.append(coding.code if coding else answer.valueString)
            else:
                values.append(answer.valueString)
        if any(v is None for v in values):
            return Issue(f"item {link_id!r} expects a {spec.type} answer", f"{path}.answer")
        if spec.type == "choice":
            bad = [v for v in values if v not in spec.options]
            if bad:
                return Issue(
                    f"item {link_id!r}: {echo(bad[0])} is not one of {list(spec.options)}",
                    f"{path}.answer",
                )
            return tuple(values) if spec.repeats else str(values[0])
        if len(values) > 1:
            return Issue(f"item {link_id!r} takes one answer, got {len(values)}", f"{path}.answer")
        value: FactValue = values[0]
        return value

    def _read_answers(self, intake: Intake, builder: FactBuilder, problems: list[Issue]) -> None:
        picked = self._pick_response(intake, problems)
        if picked is None:
            return
        response, path = picked
        # Read once per object: the same (memoised) response on the next call is not walked again.
        answers, found = self.memo.read(response, "answers", path, self._answers, response, path)
        for name, value, evidence in answers:
            builder.add(name, value, evidence)
        problems.extend(found)

    def _answers(
        self, response: Any, path: str
    ) -> tuple[tuple[tuple[str, FactValue, Evidence], ...], tuple[Issue, ...]]:
        """Every answered item of our questionnaire as (fact, value, evidence), and the answers not read."""
        ref = _ref(response)
        when = fhir_date(response.authored)
        when_text = when.isoformat() if when else None
        answers: list[tuple[str, FactValue, Evidence]] = [
            ("twitching", True, Evidence("Twitching assessment", "completed", ref, when_text, context=True))
        ]
        problems: list[Issue] = []
        for item, item_path in self._walk(response.item, path):
            if item.linkId not in self.questionnaire.items or not item.answer:
                continue  # unanswered: unknown, never "no"
            value = self._answer_value(item.linkId, item.answer, item_path)
            if isinstance(value, Issue):
                problems.append(value)
                continue
            spec = self.questionnaire.items[item.linkId]
            shown = (
                ("yes" if value else "no")
                if isinstance(value, bool)
                else ", ".join(value)
                if isinstance(value, tuple)
                else _fmt_number(value)
                if isinstance(value, float)
                else str(value)
            )
            answers.append((item.linkId, value, Evidence(spec.label, shown, ref, when_text)))
        return tuple(answers), tuple(problems)

    # -- coded findings ----------------------------------------------------------------------
    def _read_findings(self, intake: Intake, builder: FactBuilder) -> None:
        for condition, _ in intake.conditions:
            clinical = {c for _, c in _codes(condition.clinicalStatus)}
            verification = {c for _, c in _codes(condition.verificationStatus)}
            if clinical & INACTIVE_CONDITION or verification & UNCONFIRMED:
                continue
            when = fhir_date(condition.onsetDateTime or condition.recordedDate)
            for key in _codes(condition.code):
                fact = self.finding_facts.get(key)
                if fact:
                    builder.add(
                        fact,
                        True,
                        Evidence(
                            self._finding_label(key),
                            "on the problem list",
                            _ref(condition),
                            when.isoformat() if when else None,
                        ),
                    )
        for obs, _ in intake.observations:
            if obs.status not in OBS_FINDING_STATUSES:
                continue
            keys = [*_codes(obs.code), *_codes(obs.valueCodeableConcept)]
            when = effective_date(obs)
            for key in keys:
                fact = self.finding_facts.get(key)
                if not fact:
                    continue
                present = obs.valueBoolean if obs.valueBoolean is not None else True
                builder.add(
                    fact,
                    present,
                    Evidence(
                        self._finding_label(key),
                        "present" if present else "absent",
                        _ref(obs),
                        when.isoformat() if when else None,
                    ),
                )

    def _finding_label(self, key: tuple[str, str]) -> str:
        fact = self.finding_facts[key]
        coding = next(c for c in self.reference.findings[fact] if c.key() == key)
        return f"{coding.display} ({key[1]})"

    # -- labs --------------------------------------------------------------------------------
    def usable_lab(self, obs: Any) -> bool:
        """True for a result _read_labs judges: final, with a value, in a unit converted here."""
        return self.labs.usable(obs)

    def _read_labs(self, intake: Intake, facts: PatientFacts, builder: FactBuilder, sex: str | None) -> None:
        latest: dict[str, LabResult] = {}
        unusable: list[Unusable] = []
        unread: list[tuple[str, Issue]] = []  # measurements that could not be used, by fact
        for obs, path in intake.observations:
            # The same (memoised) object on the next call is not read again.
            key = (path, sex, facts.today)
            measured, reads = self.memo.read(obs, "observation", key, self._read_observation, obs, *key)
            if measured is not None and isinstance(measured[1], Issue):
                unread.append((measured[0], measured[1]))
            elif measured is not None:
                builder.add(*measured)
            for read in reads:
                if isinstance(read, Unusable):
                    unusable.append(read)
                elif read is not None:
                    previous = latest.get(read.analyte)
                    if previous is None or (read.effective or date.min) > (previous.effective or date.min):
                        latest[read.analyte] = read
        self._adjust_calcium(latest, facts.today)
        for result in latest.values():
            if result.note is not None:
                facts.problems.append(result.note)
            elif result.status == "unknown" and self.reference.analytes[result.analyte].judged:
                facts.problems.append(
                    Issue(
                        f"{result.display}: no reference range or flag to judge {result.shown_value}"
                        f" against ({result.source})",
                        None,
                        severity="warning",
                        code="incomplete",
                    )
                )
        # A measurement that cannot be used matters unless the fact is known from another source
        # (the answer, or another Observation).
        facts.problems.extend(issue for fact, issue in unread if not builder.has(fact))
        # A result that cannot be used matters unless a usable one of the same analyte is newer.
        for item in unusable:
            newest = latest.get(item.analyte)
            if (
                newest is None
                or item.when is None
                or newest.effective is None
                or item.when >= newest.effective
            ):
                facts.problems.append(item.issue)
        facts.labs = {k: v for k, v in latest.items() if self.reference.analytes[k].judged}
        facts.helper_labs = {k: v for k, v in latest.items() if not self.reference.analytes[k].judged}

    def _read_observation(
        self, obs: Any, path: str, sex: str | None, today: date
    ) -> tuple[Measured | None, tuple[LabResult | Unusable | None, ...]]:
        """A measurement's fact (or why not), or the lab results (and unusable ones) one Observation holds."""
        measurement = next((self.measurements[k] for k in _codes(obs.code) if k in self.measurements), None)
        if measurement is not None:
            return self._read_measurement(obs, path, measurement), ()
        hit = self.labs.analyte(obs)  # once per Observation: read() is handed it
        reads: list[LabResult | Unusable | None] = []
        # A panel (e.g. a basic metabolic panel) carries its results in components: each
        # component that names an analyte is read as a result of its own.
        parts = self.labs.components(obs) if obs.component else []
        for index, part_hit in parts:
            part, part_path = Component(obs, index), f"{path}.component[{index}]"
            if part_hit is not None:
                reads.append(self.labs.read(part, part_path, sex, today, part_hit))
            else:
                reads.append(self.labs.lookalike(part, part_path))
        if hit is not None:
            if not (parts and obs.valueQuantity is None):
                reads.append(self.labs.read(obs, path, sex, today, hit))
        elif not parts:
            reads.append(None if self._is_finding(obs) else self.labs.lookalike(obs, path))
        return None, tuple(reads)

    def _adjust_calcium(self, latest: dict[str, LabResult], today: date) -> None:
        """Estimate albumin-adjusted calcium from total calcium and albumin when the lab gave none."""
        rule = self.reference.calcium_adjustment
        total, albumin = latest.get(rule.total), latest.get(rule.albumin)
        reported = latest.get(rule.adjusted)
        if total is None:
            return
        if reported is not None and (reported.effective or date.min) >= (total.effective or date.min):
            return  # the laboratory's own adjusted calcium is as new: prefer it
        if reported is not None:
            # A newer total calcium is the latest calcium: an older adjusted one no longer speaks
            # for it (else a current severe total would hide behind a stale adjusted result).
            del latest[rule.adjusted]
        if albumin is None or total.value is None or albumin.value is None:
            return
        if total.effective is None or albumin.effective is None:
            return
        if abs((total.effective - albumin.effective).days) > rule.max_days_apart:
            return
        estimate = self.labs.adjusted_calcium(total, albumin, rule, today)
        if estimate is not None:
            latest[rule.adjusted] = estimate

    def _is_finding(self, obs: Any) -> bool:
        keys = [*_codes(obs.code), *_codes(obs.valueCodeableConcept)]
        return any(key in self.finding_facts for key in keys)

    def _read_measurement(self, obs: Any, path: str, measurement: Measurement) -> Measured | None:
        """The fact a coded measurement gives; (fact, why not) when it cannot be used; None if retracted."""
        spec = self.questionnaire.items[measurement.fact]
        label = measurement.code.display or spec.label

        def unread(reason: str, where: str, code: str = "incomplete") -> tuple[str, Issue]:
            issue = Issue(f"{label}: {reason}; not used", where, severity="warning", code=code)
            return measurement.fact, issue

        if obs.status in RETRACTED_STATUSES:
            return None
        if obs.status not in LAB_STATUSES:
            return unread(f"status {obs.status!r} is not a final result", f"{path}.status")
        quantity = obs.valueQuantity
        if quantity is None or quantity.value is None:
            return unread("no numeric value", f"{path}.valueQuantity")
        spelled = unit_spelling(quantity)
        factor = measurement.unit_factors.get(spelled)
        if factor is None:
            accepted = ", ".join(measurement.unit_factors)
            where = f"{path}.valueQuantity.code" if quantity.code else f"{path}.valueQuantity.unit"
            return unread(f"unit {spelled[:40]!r} is not one of {accepted}", where, "code-invalid")
        value = float(quantity.value) * factor
        when = effective_date(obs)
        evidence = Evidence(
            label,
            f"{_fmt_number(round(value, 2))} {measurement.unit}",
            _ref(obs),
            when.isoformat() if when else None,
        )
        return measurement.fact, value, evidence

    # -- medications -------------------------------------------------------------------------
    @staticmethod
    def _drug_concept(resource: Any) -> tuple[Any | None, str | None]:
        """The medication's CodeableConcept, from the resource or a contained Medication."""
        if resource.medicationCodeableConcept is not None:
            return resource.medicationCodeableConcept, None
        reference = resource.medicationReference
        target = reference.reference if reference is not None else None
        if target and target.startswith("#"):
            for contained in resource.contained or ():
                if contained.get_resource_type() == "Medication" and contained.id == target[1:]:
                    return contained.code, None
        display = reference.display if reference is not None else None
        return None, display or target

    def _read_medications(self, intake: Intake, facts: PatientFacts, builder: FactBuilder) -> None:
        for resource, path in intake.medications:
            # The same (memoised) object on the next call is not read again.
            problem, adds = self.memo.read(resource, "medication", path, self._medication, resource, path)
            if problem is not None:
                facts.problems.append(problem)
            for name, value, evidence in adds:
                builder.add(name, value, evidence)

    def _medication(
        self, resource: Any, path: str
    ) -> tuple[Issue | None, tuple[tuple[str, FactValue, Evidence], ...]]:
        """The facts an active medicine gives (one per class fact), or why it cannot be read."""
        medications = self.reference.medications
        if resource.status not in ACTIVE_MEDICATION_STATUSES:
            return None, ()  # stopped, completed, entered-in-error...: not what the patient takes now
        concept, referenced = self._drug_concept(resource)
        if concept is None:
            return (
                Issue(
                    f"{resource.get_resource_type()}: the medicine is named only by a reference"
                    f" ({echo(referenced) if referenced else 'none'}) to a Medication that was not"
                    " sent; not read",
                    f"{path}.medicationReference",
                    severity="warning",
                    code="incomplete",
                ),
                (),
            )
        found: dict[str, str] = {}  # ingredient -> how it was matched
        for system, code in _codes(concept):
            coded = self.drug_by_code.get((system, code))
            if coded:
                short = "RxNorm" if "rxnorm" in system else "ATC"
                found.setdefault(coded, f"{short} {code}")
        texts = [concept.text or "", *(c.display or "" for c in concept.coding or ())]
        for text in texts:
            for match in self.drug_names.finditer(text):
                found.setdefault(self.drug_by_name[match.group(1).lower()], "matched by name")
        if not found:
            return None, ()
        shown = concept.text or next((c.display for c in concept.coding or () if c.display), "")
        when = fhir_date(
            getattr(resource, "authoredOn", None)
            or getattr(resource, "effectiveDateTime", None)
            or getattr(resource, "dateAsserted", None)
        )
        adds: list[tuple[str, FactValue, Evidence]] = []
        for ingredient_id, how in found.items():
            ingredient = medications.ingredients[ingredient_id]
            drug_class = medications.classes[ingredient.drug_class]
            evidence = Evidence(
                f"Medicine ({drug_class.label})",
                f"{shown or ingredient.id} ({ingredient.id}; {how})",
                _ref(resource),
                when.isoformat() if when else None,
            )
            adds += [(fact, True, evidence) for fact in drug_class.facts]
        return None, tuple(adds)

    # -- orders ------------------------------------------------------------------------------
    def _read_orders(self, intake: Intake, facts: PatientFacts, drafts: list[Any]) -> None:
        for request, _ in intake.service_requests:
            if request.status in ACTIVE_ORDER_STATUSES:
                facts.orders.append(
                    ExistingOrder(frozenset(_codes(request.code)), _ref(request), request.status)
                )
        for draft in drafts:
            codes = frozenset(
                (c.get("system", ""), c.get("code", ""))
                for c in ((draft.get("code") or {}).get("coding") or ())
                if isinstance(c, dict)
            )
            rid = draft.get("id")
            ref = f"{draft.get('resourceType')}/{rid}" if rid else str(draft.get("resourceType"))
            facts.orders.append(ExistingOrder(codes, f"{ref} (draft order)", "draft"))

    # -- the whole patient -------------------------------------------------------------------
    def extract(
        self, intake: Intake, patient: Any, today: date, drafts: list[Any] | None = None
    ) -> PatientFacts:
        """Build the PatientFacts for one patient from validated resources."""
        facts = PatientFacts(patient_ref=_ref(patient), today=today)
        facts.problems.extend(intake.problems)
        builder = FactBuilder()
        sex = patient.gender if patient.gender in ("male", "female") else None
        if patient.gender:
            builder.add("sex", patient.gender, Evidence("Sex", patient.gender, facts.patient_ref))
        birth = fhir_date(patient.birthDate)
        # A deceased patient's age stops at death (a record may be reviewed long after).
        end = min(today, fhir_date(patient.deceasedDateTime) or today)
        if birth is not None:
            years = end.year - birth.year - ((end.month, end.day) < (birth.month, birth.day))
            builder.add(
                "age-years",
                float(years),
                Evidence("Age", f"{years} years", facts.patient_ref, birth.isoformat()),
            )
        self._read_answers(intake, builder, facts.problems)
        self._read_findings(intake, builder)
        self._read_labs(intake, facts, builder, sex)
        self._read_orders(intake, facts, drafts or [])
        self._read_medications(intake, facts, builder)
        facts.facts = builder.build()
        self._derive(facts)
        return facts

    def _derive(self, facts: PatientFacts) -> None:
        # Known either way: no abnormal latest result (or no result at all) is false, not unknown.
        # A total calcium is judged through the adjusted calcium when one as new exists (reported
        # or estimated from albumin): its own range no longer decides whether it is abnormal.
        ca = self.reference.calcium_adjustment
        adjusted, total = facts.labs.get(ca.adjusted), facts.labs.get(ca.total)
        # The laboratory's own flag on the total still counts: it is never superseded.
        superseded = (
            {ca.total}
            if adjusted
            and total
            and not total.flagged
            and (adjusted.effective or date.min) >= (total.effective or date.min)
            else set()
        )
        abnormal = [
            lab.evidence
            for name, lab in facts.labs.items()
            if lab.status in ("low", "high", "abnormal") and name not in superseded
        ]
        facts.facts["abnormal-lab-on-record"] = Fact(
            "abnormal-lab-on-record", bool(abnormal), tuple(abnormal)
        )
        areas = facts.get("body-areas")
        if areas is not None and isinstance(areas.value, tuple):
            body = self.reference.body_areas
            regions = {body[a].region for a in areas.value if body[a].counts_for_spreading}
            facts.facts["multiple-body-regions"] = Fact(
                "multiple-body-regions", len(regions) >= 2, areas.evidence
            )
