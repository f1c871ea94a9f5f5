"""Prefetch: the templates discovery advertises, and reading whatever shape the EHR sent back."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from service.engine.reference import ReferenceData
from service.errors import Issue
from service.fhir.intake import Located
from service.fhir.raw import scalar_text

# prefetch key -> the resource type it brings; the first three are required to evaluate.
KEY_TYPES = {
    "patient": "Patient",
    "observations": "Observation",
    "questionnaireResponses": "QuestionnaireResponse",
    "conditions": "Condition",
    "serviceRequests": "ServiceRequest",
    "medicationRequests": "MedicationRequest",
    "medicationStatements": "MedicationStatement",
}
REQUIRED_KEYS = ("patient", "observations", "questionnaireResponses")


def prefetch_templates(reference: ReferenceData) -> dict[str, str]:
    """Templates asking for exactly what the rules read."""
    # Lab codes without their system: LOINC and SNOMED CT codes cannot collide, and two hundred
    # of them with systems would make a URL longer than many servers accept (the rules check the
    # system of what comes back).
    lab_codes = sorted({c.code for a in reference.analytes.values() for c in a.codes})
    finding_codes = [f"{c.system}|{c.code}" for codes in reference.findings.values() for c in codes]
    measured = [f"{m.code.system}|{m.code.code}" for m in reference.measurements.values()]
    observation_codes = ",".join([*lab_codes, *measured, *finding_codes])
    return {
        "patient": "Patient/{{context.patientId}}",
        "observations": f"Observation?patient={{{{context.patientId}}}}&code={observation_codes}",
        "questionnaireResponses": (
            "QuestionnaireResponse?patient={{context.patientId}}&status=completed,amended,in-progress"
        ),
        "conditions": f"Condition?patient={{{{context.patientId}}}}&code={','.join(finding_codes)}",
        "serviceRequests": "ServiceRequest?patient={{context.patientId}}&status=active,on-hold,draft",
        "medicationRequests": "MedicationRequest?patient={{context.patientId}}&status=active",
        "medicationStatements": "MedicationStatement?patient={{context.patientId}}&status=active",
    }


@dataclass
class PrefetchContent:
    """Every resource found in prefetch, with its path, and what was missing and why."""

    resources: list[Located] = field(default_factory=list)
    missing: dict[str, str] = field(default_factory=dict)  # key -> why it is unusable
    searched: set[str] = field(default_factory=set)  # resource types a searchset's self link names
    notes: list[Issue] = field(default_factory=list)  # OperationOutcome entries in searchsets
    paged: dict[str, str] = field(default_factory=dict)  # key -> the next link of a partial searchset


def _dicts(value: Any) -> list[dict[str, Any]]:
    """The objects of a raw JSON array (anything else in it, or a non-array, is skipped)."""
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def _outcome_text(outcome: dict[str, Any]) -> str:
    texts = []
    for issue in _dicts(outcome.get("issue")):
        details = issue.get("details")
        text = issue.get("diagnostics") or (details.get("text") if isinstance(details, dict) else None)
        texts.append(scalar_text(text or issue.get("code")))
    return "; ".join(texts) or "no details"


def _outcome_codes(outcome: dict[str, Any]) -> str:
    codes = [
        f"{scalar_text(i.get('severity', '?'))}/{scalar_text(i.get('code', '?'))}"
        for i in _dicts(outcome.get("issue"))
    ]
    return ", ".join(codes) or "no issues"


def _searched_types(bundle: dict[str, Any]) -> set[str]:
    # An empty searchset under a health system's own key name is identified by its self link.
    types = set()
    for link in _dicts(bundle.get("link")):
        url = link.get("url")
        if link.get("relation") == "self" and isinstance(url, str):
            path = url.split("?", 1)[0].rstrip("/")
            types.add(path.rsplit("/", 1)[-1])
    return types


def _next_link(bundle: dict[str, Any]) -> str | None:
    for link in _dicts(bundle.get("link")):
        url = link.get("url")
        if link.get("relation") == "next" and isinstance(url, str) and url:
            return url
    return None


def drop_key(content: PrefetchContent, key: str, origin: str = "prefetch") -> None:
    """Forget what one prefetch key brought (before it is read again, whole, from fhirServer)."""
    prefix = f"{origin}.{key}."
    content.resources = [r for r in content.resources if not r.path.startswith(prefix)]
    content.notes = [n for n in content.notes if not (n.expression or "").startswith(prefix)]
    content.paged.pop(key, None)


def read_prefetch(
    prefetch: dict[str, Any], origin: str = "prefetch", content: PrefetchContent | None = None
) -> PrefetchContent:
    """Read each value: searchset (maybe empty, maybe with OperationOutcomes), resource, null or outcome."""
    content = PrefetchContent() if content is None else content
    for key, value in prefetch.items():
        path = f"{origin}.{key}"
        if value is None:
            content.missing[key] = "sent as null (no data, or a template the EHR could not fill)"
        elif not isinstance(value, dict) or not isinstance(value.get("resourceType"), str):
            content.missing[key] = "not a FHIR resource (no resourceType)"
        elif value.get("resourceType") == "OperationOutcome":
            # Only the outcome's codes: its free text may quote the patient, and the 412 is logged.
            content.missing[key] = f"an OperationOutcome from the EHR ({_outcome_codes(value)})"
        elif value.get("resourceType") == "Bundle":
            content.searched.update(_searched_types(value))
            next_url = _next_link(value)
            if next_url is not None:
                content.paged[key] = next_url
            entries = value.get("entry") or []
            for i, entry in enumerate(entries if isinstance(entries, list) else []):
                resource = entry.get("resource") if isinstance(entry, dict) else None
                if not isinstance(resource, dict) or not isinstance(resource.get("resourceType"), str):
                    content.notes.append(
                        Issue("Bundle entry without a resource", f"{path}.entry[{i}]", "warning")
                    )
                elif resource.get("resourceType") == "OperationOutcome":
                    content.notes.append(
                        Issue(
                            f"the EHR reported: {_outcome_text(resource)}",
                            f"{path}.entry[{i}].resource",
                            "warning",
                            "incomplete",
                        )
                    )
                else:
                    content.resources.append(Located(resource, f"{path}.entry[{i}].resource"))
        else:
            content.resources.append(Located(value, path))
    return content


def missing_keys(content: PrefetchContent, prefetch: dict[str, Any]) -> dict[str, str]:
    """Each advertised key whose data is in no usable prefetch value (under any key name), and why."""
    present_types = {r.resource.get("resourceType") for r in content.resources} | content.searched
    return {
        key: content.missing.get(key, "not sent")
        for key, resource_type in KEY_TYPES.items()
        if not (key in prefetch and key not in content.missing) and resource_type not in present_types
    }
