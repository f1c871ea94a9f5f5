"""The published twitching-assessment Questionnaire, built from rules/reference/questionnaire.yaml."""

from __future__ import annotations

from typing import Any

from fhir.resources.R4B.questionnaire import Questionnaire as QuestionnaireModel

from service.engine.reference import Coding, Questionnaire

OPTION_SYSTEM_SUFFIX = "/CodeSystem/twitching-assessment-options"


def questionnaire_url(canonical_base: str, questionnaire: Questionnaire) -> str:
    """The stable canonical URL responses must name in `questionnaire`."""
    return f"{canonical_base}/Questionnaire/{questionnaire.id}"


def _coding(coding: Coding) -> dict[str, str]:
    return {"system": coding.system, "code": coding.code, "display": coding.display}


def build_questionnaire(questionnaire: Questionnaire, canonical_base: str) -> dict[str, Any]:
    """A FHIR R4 Questionnaire resource (validated with fhir.resources before it is returned)."""
    option_system = canonical_base + OPTION_SYSTEM_SUFFIX
    groups: list[dict[str, Any]] = []
    for group_id, group_text in questionnaire.groups:
        items: list[dict[str, Any]] = []
        for item in questionnaire.items.values():
            if item.group != group_id:
                continue
            entry: dict[str, Any] = {"linkId": item.link_id, "text": item.text, "type": item.type}
            if item.code:
                entry["code"] = [_coding(item.code)]
            if item.repeats:
                entry["repeats"] = True
            if item.options:
                entry["answerOption"] = [
                    {"valueCoding": {"system": option_system, "code": o, "display": o}} for o in item.options
                ]
            items.append(entry)
        groups.append({"linkId": group_id, "text": group_text, "type": "group", "item": items})
    resource: dict[str, Any] = {
        "resourceType": "Questionnaire",
        "id": questionnaire.id,
        "url": questionnaire_url(canonical_base, questionnaire),
        "version": questionnaire.version,
        "name": questionnaire.name,
        "title": questionnaire.title,
        "status": "active",
        "subjectType": ["Patient"],
        "description": questionnaire.description,
        "item": groups,
    }
    QuestionnaireModel.model_validate(resource, strict=True)
    return resource
