"""Render fired rules as CDS Hooks 2.0 cards: plain dicts, no empty values, evidence in the detail."""

from __future__ import annotations

from typing import Any

from service.cdshooks.smart import AppLink
from service.engine.evaluate import Firing, PlannedSuggestion
from service.engine.reference import ICD10CM, SNOMED, Coding, Orderable, ReferenceData
from service.errors import Issue
from service.facts.model import PatientFacts, md_escape
from service.ids import new_ordered_uuid_text, new_uuid_text

CATEGORY_CODINGS = {
    # FHIR R4 example value set http://hl7.org/fhir/ValueSet/servicerequest-category
    "lab": {"system": SNOMED, "code": "108252007", "display": "Laboratory procedure"},
    "imaging": {"system": SNOMED, "code": "363679005", "display": "Imaging"},
}
FASCICULATION = {"system": ICD10CM, "code": "R25.3", "display": "Fasciculation"}
MAX_PROBLEMS_SHOWN = 10


def _code_span(text: str) -> str:
    # A code span shows its text literally; only a backtick could end it early.
    return "`" + text.replace("`", "'") + "`"


def short_label(label: str, article: bool = False) -> str:
    """A source's label for the narrow card: up to its first ": " (the catalogue has the rest).

    Never cut inside parentheses (which would leave one open), and a consumer article is named by
    its title, not by its seed number alone (which means nothing to a clinician).
    """
    head, sep, rest = label.partition(": ")
    if article and sep:
        return f"consumer article “{rest}”"
    if not sep or head.count("(") != head.count(")"):
        return label
    return head


class CardRenderer:
    """Builds cards for one deployment (its canonical base names the local code systems)."""

    def __init__(
        self,
        reference: ReferenceData,
        canonical_base: str,
        service_title: str,
        app_link: AppLink | None = None,
    ) -> None:
        self.reference = reference
        self.app_link = app_link  # None: no SMART app configured, so no card links it
        self.topic_system = f"{canonical_base}/CodeSystem/twitch-cds-rules"
        self.local_system = f"{canonical_base}/CodeSystem/twitch-cds-local"
        self.override_system = f"{canonical_base}/CodeSystem/twitch-cds-override-reasons"
        self.service_title = service_title
        self.override_reasons = [
            {"system": self.override_system, "code": code, "display": display}
            for code, display in reference.override_reasons
        ]

    def coding(self, coding: Coding) -> dict[str, str]:
        """A FHIR Coding dict; local codes live in the service's own CodeSystem."""
        system = self.local_system if coding.system == "local" else coding.system
        out = {"system": system, "code": coding.code}
        if coding.display:
            out["display"] = coding.display
        return out

    def service_request(
        self, orderable: Orderable, patient_ref: str, priority: str, reason: str, note: str
    ) -> dict[str, Any]:
        """A valid R4 ServiceRequest draft for this patient."""
        resource: dict[str, Any] = {
            "resourceType": "ServiceRequest",
            "status": "draft",
            "intent": "order",
            "priority": priority,
            "code": {"coding": [self.coding(orderable.code)], "text": orderable.label},
            "subject": {"reference": patient_ref},
            "reasonCode": [{"coding": [FASCICULATION], "text": reason}],
            "note": [{"text": note}],
        }
        category = CATEGORY_CODINGS.get(orderable.category)
        if category:
            resource["category"] = [{"coding": [category]}]
        return resource

    def _suggestion(self, planned: PlannedSuggestion, firing: Firing, patient_ref: str) -> dict[str, Any]:
        order = planned.orderable
        priority = "" if planned.priority == "routine" else f" ({planned.priority})"
        note = f"Suggested by twitch-cds rule {firing.rule.id} v{firing.rule.version}."
        return {
            "label": f"Order: {order.label}{priority}",
            "uuid": new_uuid_text(),
            "actions": [
                {
                    "type": "create",
                    "description": f"Draft order: {order.label}",
                    "resource": self.service_request(
                        order, patient_ref, planned.priority, planned.reason, note
                    ),
                }
            ],
        }

    def _sources_text(self, firing: Firing) -> str:
        labels = []
        for sid in firing.rule.sources:
            source = self.reference.sources[sid]
            short = short_label(source.label, source.file is not None)
            labels.append(f"[{short}]({source.url})" if source.url else short)
        return "; ".join(labels)

    def _detail(self, firing: Firing, facts: PatientFacts) -> str:
        lines = ["**Why this card**", *(e.markdown for e in firing.evidence), "", firing.advice]
        if firing.already:
            lines += ["", "**Already in hand**", *(f"- {md_escape(text)}" for text in firing.already)]
        if firing.withheld:
            lines += ["", "**Not offered now**", *(f"- {md_escape(text)}" for text in firing.withheld)]
        if facts.problems:
            lines += [
                "",
                f"_{len(facts.problems)} problem(s) in the record data: see the data card._",
            ]
        rule = firing.rule
        lines += ["", f"Rule `{rule.id}` v{rule.version}. Sources: {self._sources_text(firing)}"]
        return "\n".join(lines)

    def card(self, firing: Firing, facts: PatientFacts) -> dict[str, Any]:
        """One card for one fired rule."""
        rule = firing.rule
        url = next(
            (self.reference.sources[s].url for s in rule.sources if self.reference.sources[s].url),
            None,
        )
        source: dict[str, Any] = {
            "label": f"{self.service_title}: {rule.title}",
            "topic": {"system": self.topic_system, "code": rule.topic_code, "display": rule.title},
        }
        if url:
            source["url"] = url
        card: dict[str, Any] = {
            "uuid": new_ordered_uuid_text(),  # the audit trail's index key: time-ordered
            "summary": firing.summary,
            "indicator": firing.indicator,
            "detail": self._detail(firing, facts),
            "source": source,
            "overrideReasons": self.override_reasons,
        }
        if firing.suggestions:
            card["suggestions"] = [self._suggestion(s, firing, facts.patient_ref) for s in firing.suggestions]
            card["selectionBehavior"] = "any"
        if rule.app_link and self.app_link is not None:
            card["links"] = [self.app_link.link(rule.app_link, facts)]
        return card

    def data_card(self, problems: list[Issue]) -> dict[str, Any]:
        """The card that reports record data the rules could not use (never silently dropped)."""
        shown = problems[:MAX_PROBLEMS_SHOWN]
        lines = [
            "Some of the record could not be read, so the other cards may be incomplete and"
            " no reassurance is offered.",
            "",
            *(f"- {_code_span(p.expression or 'request')}: {md_escape(p.diagnostics)}" for p in shown),
        ]
        if len(problems) > len(shown):
            lines.append(f"- … and {len(problems) - len(shown)} more")
        count = len(problems)
        plural = "s" if count != 1 else ""
        return {
            "uuid": new_ordered_uuid_text(),  # the audit trail's index key: time-ordered
            "summary": f"{count} record item{plural} could not be used: cards may be incomplete",
            "indicator": "warning",
            "detail": "\n".join(lines),
            "source": {
                "label": f"{self.service_title}: data quality",
                "topic": {
                    "system": self.topic_system,
                    "code": "dataquality",
                    "display": "Record data the rules could not use",
                },
            },
        }

    def cards(self, firings: list[Firing], facts: PatientFacts) -> list[dict[str, Any]]:
        """All cards for one evaluation, most urgent first; the data card follows the red flags."""
        cards = [self.card(f, facts) for f in firings]
        if facts.problems:
            cards.append(self.data_card(facts.problems))
        return cards
