"""One evaluation from located FHIR resources to cards: intake, facts, rules, cards."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Any

from service.cdshooks.cards import CardRenderer
from service.cdshooks.smart import AppLink
from service.engine.evaluate import evaluate
from service.engine.ruleset import RuleSet
from service.errors import BadRequest, InvalidFhir, Issue, MissingData, echo
from service.facts.extract import FactExtractor
from service.fhir.intake import DEFAULT_MEMO_BYTES, Intake, Located, Selector, Validator, take_in
from service.fhir.questionnaire import questionnaire_url


@dataclass(frozen=True)
class Outcome:
    """The cards of one evaluation and the ids of the rules that fired (for logs and audit)."""

    cards: list[dict[str, Any]]
    fired: list[str]


def _subject_ref(resource: Any) -> str | None:
    subject = getattr(resource, "subject", None)
    return subject.reference if subject is not None and subject.reference else None


class Evaluator:
    """Holds everything built once per worker: the rule set, selector, extractor and renderer."""

    def __init__(
        self,
        ruleset: RuleSet,
        canonical_base: str,
        service_title: str,
        max_depth: int = 64,
        memo_entries: int = 0,
        memo_bytes: int = DEFAULT_MEMO_BYTES,
        app_launch_url: str | None = None,
    ) -> None:
        self.ruleset = ruleset
        self.selector = Selector(ruleset.reference)
        self.validator = Validator(max_depth, memo_entries, memo_bytes)
        published = questionnaire_url(canonical_base, ruleset.reference.questionnaire)
        # What the extractor reads from a kept object is kept with it, in the validation memo.
        memo = self.validator.memo
        room_for = memo.derived if memo is not None else None
        self.extractor = FactExtractor(ruleset.reference, published, room_for)
        app_link = None
        if app_launch_url:
            app_link = AppLink(app_launch_url, published, tuple(ruleset.reference.questionnaire.items))
        self.renderer = CardRenderer(ruleset.reference, canonical_base, service_title, app_link)
        self.rule_by_topic = {rule.topic_code: rule.id for rule in ruleset.rules}  # for the card metrics

    def intake(self, resources: list[Located], latest_labs_only: bool = False, lean: bool = False) -> Intake:
        """Select and validate the resources the rules read.

        `latest_labs_only`: only the latest lab results per analyte; `lean`: only the fields the
        rules read are checked, and light objects stand in for models (service/fhir/lean.py).
        """
        usable_lab = self.extractor.usable_lab if latest_labs_only else None
        return take_in(resources, self.selector, usable_lab, self.validator.lean if lean else self.validator)

    def run(
        self,
        intake: Intake,
        patient_refs: set[str],
        patient_ref: str,
        today: date,
        drafts: list[dict[str, Any]] | None = None,
        notes: list[Issue] | None = None,
    ) -> Outcome:
        """Evaluate the rules for the one patient named by `patient_refs`."""
        # A Patient without an id (allowed in a collection Bundle) is matched by its fullUrl upstream.
        patients = [
            (p, path) for p, path in intake.patients if p.id is None or f"Patient/{p.id}" in patient_refs
        ]
        if not patients and intake.patients:
            other, path = intake.patients[0]
            raise BadRequest.single(
                f"Patient/{other.id} is not the patient in context ({sorted(patient_refs)[0]})",
                f"{path}.id",
            )
        if not patients:
            if intake.patient_problems:
                raise InvalidFhir(intake.patient_problems)
            raise MissingData.single("no Patient resource for this patient was provided", None)
        patient = patients[0][0]
        self._drop_other_subjects(intake, patient_refs)
        facts = self.extractor.extract(intake, patient, today, drafts)
        facts.patient_ref = patient_ref
        facts.problems.extend(notes or ())
        firings = evaluate(self.ruleset, facts)
        return Outcome(self.renderer.cards(firings, facts), [f.rule.id for f in firings])

    @staticmethod
    def _drop_other_subjects(intake: Intake, patient_refs: set[str]) -> None:
        # Another patient's data must never inform this patient's cards: drop it, and say so.
        buckets: tuple[list[tuple[Any, str]], ...] = (
            intake.observations,
            intake.responses,
            intake.conditions,
            intake.service_requests,
            intake.medications,
        )
        for bucket in buckets:
            kept = []
            for resource, path in bucket:
                ref = _subject_ref(resource)
                if ref is None or ref in patient_refs or any(ref.endswith("/" + p) for p in patient_refs):
                    kept.append((resource, path))
                else:
                    intake.problems.append(
                        Issue(
                            f"subject {echo(ref)} is not this patient; the resource was not used",
                            f"{path}.subject",
                            code="business-rule",
                        )
                    )
            bucket[:] = kept
