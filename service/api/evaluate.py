"""POST /evaluate: an integration tester posts one patient's FHIR Bundle and gets the hook's cards."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response

from service.api.common import evaluator, today
from service.errors import BadRequest, InvalidFhir, Issue, echo
from service.fhir.intake import Located
from service.metrics import count_cards
from service.security.limits import check_json_depth
from service.web import json_response, read_json_body

bp = Blueprint("evaluate", __name__)
BUNDLE_TYPES = frozenset(
    [
        "document",
        "message",
        "transaction",
        "transaction-response",
        "batch",
        "batch-response",
        "history",
        "searchset",
        "collection",
    ]
)


def _bundle_resources(body: Any) -> tuple[list[Located], set[str]]:
    """Every resource in the Bundle with its path, and the references that name its Patient."""
    if not isinstance(body, dict) or body.get("resourceType") != "Bundle":
        found = body.get("resourceType") if isinstance(body, dict) else type(body).__name__
        raise BadRequest.single(f"expected a FHIR Bundle, got {echo(found)}", "Bundle")
    issues: list[Issue] = []
    bundle_type = body.get("type")
    if not isinstance(bundle_type, str) or bundle_type not in BUNDLE_TYPES:
        issues.append(Issue(f"Bundle.type {echo(body.get('type'))} is not a Bundle type", "Bundle.type"))
    entries = body.get("entry", [])
    if not isinstance(entries, list):
        raise InvalidFhir.single("Bundle.entry must be an array", "Bundle.entry")
    located: list[Located] = []
    patient_refs: set[str] = set()
    patients = 0
    for i, entry in enumerate(entries):
        path = f"Bundle.entry[{i}]"
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if not isinstance(resource, dict) or not isinstance(resource.get("resourceType"), str):
            issues.append(Issue("entry has no resource with a resourceType", f"{path}.resource"))
            continue
        located.append(Located(resource, f"{path}.resource"))
        if resource["resourceType"] == "Patient":
            patients += 1
            if resource.get("id") and isinstance(resource["id"], str):  # else validation reports it
                patient_refs.add(f"Patient/{resource['id']}")
            if isinstance(entry.get("fullUrl"), str):
                patient_refs.add(entry["fullUrl"])
    if patients != 1:
        issues.append(Issue(f"the Bundle must hold exactly one Patient, it holds {patients}", "Bundle.entry"))
    if issues:
        raise InvalidFhir(issues)
    return located, patient_refs


@bp.post("/evaluate")
def evaluate_bundle() -> Response:
    """Validate what the rules read (422 listing every problem with its path), then answer cards."""
    body = read_json_body(check_depth=False)
    # Entries' resources are walked one by one as they are validated (service/fhir/intake.Validator).
    check_json_depth(body, without="entry")
    located, patient_refs = _bundle_resources(body)
    engine = evaluator()
    intake = engine.intake(located)
    if intake.problems:
        raise InvalidFhir(intake.problems)
    patient = intake.patients[0][0]
    # Without an id the Patient is named by its fullUrl (e.g. urn:uuid:…), as its resources are.
    patient_ref = f"Patient/{patient.id}" if patient.id else min(patient_refs, default="Patient")
    patient_refs.add(patient_ref)
    outcome = engine.run(intake, patient_refs, patient_ref, today())
    count_cards(outcome.cards, engine.rule_by_topic)
    return json_response({"cards": outcome.cards})
