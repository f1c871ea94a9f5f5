"""Warm-up: one dummy hook evaluation at start-up, so no clinician waits for first-use costs."""

from __future__ import annotations

import logging
import time
from datetime import date
from typing import Any

import orjson

from service.cdshooks.pipeline import HookPipeline
from service.cdshooks.prefetch import read_prefetch
from service.evaluation import Evaluator
from service.fhir.questionnaire import questionnaire_url

log = logging.getLogger("twitch_cds.warmup")
PATIENT_ID = "warm-up"


# Fields real records carry (US Core extensions, addresses with geolocation, narrative, meta):
# fhir.resources builds their validators on first sight, which would otherwise cost the first
# /evaluate call in each worker ~100 ms (hook calls do not build models: service/fhir/lean.py).
_CODING = {"system": "http://example.org/warm-up", "code": "x", "display": "x"}
_RICH = {
    "meta": {"lastUpdated": "2020-01-01T00:00:00Z", "profile": ["http://example.org/warm-up"]},
    "text": {"status": "generated", "div": '<div xmlns="http://www.w3.org/1999/xhtml">warm-up</div>'},
    "identifier": [{"system": "urn:oid:1.2", "value": "1", "type": {"coding": [_CODING], "text": "x"}}],
    "extension": [
        {"url": "http://example.org/a", "valueString": "x"},
        {"url": "http://example.org/b", "extension": [{"url": "c", "valueCoding": _CODING}]},
        {"url": "http://example.org/d", "valueDecimal": 1.5},
    ],
}


def _searchset(*resources: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": r} for r in resources]}


def dummy_request(evaluator: Evaluator, canonical_base: str) -> dict[str, Any]:
    """A patient-view call touching every model the rules read: Patient, lab, finding, answers, order."""
    reference = evaluator.ruleset.reference
    subject = {"reference": f"Patient/{PATIENT_ID}"}
    analyte = next(iter(reference.analytes.values()))
    finding = next(iter(reference.findings.values()))[0]
    boolean = next(i for i in reference.questionnaire.items.values() if i.type == "boolean")
    lab = {
        "resourceType": "Observation",
        "id": "warm-up-lab",
        "status": "final",
        "code": {"coding": [{"system": analyte.codes[0].system, "code": analyte.codes[0].code}]},
        "subject": subject,
        "effectiveDateTime": "2020-01-01T00:00:00Z",
        "issued": "2020-01-01T00:00:00.000+00:00",
        "category": [{"coding": [_CODING]}],
        "encounter": {"reference": "Encounter/warm-up"},
        "valueQuantity": {"value": 1.0, "unit": analyte.unit, "code": analyte.unit},
        "interpretation": [{"coding": [_CODING]}],
        "referenceRange": [
            {"low": {"value": 0.5, "unit": analyte.unit}, "high": {"value": 2, "unit": analyte.unit}}
        ],
        **_RICH,
    }
    condition = {
        "resourceType": "Condition",
        "id": "warm-up-condition",
        "code": {"coding": [{"system": finding.system, "code": finding.code}]},
        "clinicalStatus": {"coding": [_CODING]},
        "onsetDateTime": "2020-01-01T00:00:00Z",
        "subject": subject,
        **_RICH,
    }
    response = {
        "resourceType": "QuestionnaireResponse",
        "id": "warm-up-answers",
        "questionnaire": questionnaire_url(canonical_base, reference.questionnaire),
        "status": "completed",
        "subject": subject,
        "authored": "2020-01-01T00:00:00Z",
        "item": [{"linkId": boolean.link_id, "answer": [{"valueBoolean": False}]}],
        **{key: value for key, value in _RICH.items() if key != "identifier"},  # QR has one identifier
    }
    order = {
        "resourceType": "ServiceRequest",
        "id": "warm-up-order",
        "status": "active",
        "intent": "order",
        "subject": subject,
        "code": {"coding": [{"system": finding.system, "code": finding.code}]},
    }
    return {
        "hook": "patient-view",
        "hookInstance": "00000000-0000-4000-8000-000000000000",
        "context": {"userId": "Practitioner/warm-up", "patientId": PATIENT_ID},
        "prefetch": {
            "patient": {
                "resourceType": "Patient",
                "id": PATIENT_ID,
                "gender": "male",
                "birthDate": "1970",
                "name": [{"use": "official", "family": "x", "given": ["x"], "prefix": ["x"]}],
                "telecom": [{"system": "phone", "value": "1", "use": "home"}],
                "address": [
                    {
                        "line": ["1"],
                        "city": "x",
                        "country": "x",
                        "extension": [
                            {
                                "url": "http://example.org/geo",
                                "extension": [{"url": "latitude", "valueDecimal": 1.5}],
                            }
                        ],
                    }
                ],
                "maritalStatus": {"coding": [_CODING], "text": "x"},
                "multipleBirthBoolean": False,
                "communication": [{"language": {"coding": [_CODING]}}],
                **_RICH,
            },
            "observations": _searchset(lab),
            "questionnaireResponses": _searchset(response),
            "conditions": _searchset(condition),
            "serviceRequests": _searchset(order),
        },
    }


def warm_up(pipeline: HookPipeline, canonical_base: str) -> float:
    """Run the hook path once without HTTP, audit or metrics; return the seconds it took."""
    started = time.perf_counter()
    body = orjson.loads(orjson.dumps(dummy_request(pipeline.evaluator, canonical_base)))
    outcome = pipeline.answer(pipeline.parse(body), date(2020, 1, 2))
    orjson.dumps({"cards": outcome.cards})
    # The hook path checks only the fields it reads; /evaluate validates the same resources with
    # the R4B models, whose validators are built here rather than on a caller's first request.
    pipeline.evaluator.intake(read_prefetch(body["prefetch"]).resources)
    if pipeline.evaluator.validator.memo is not None:
        pipeline.evaluator.validator.memo.clear()  # the dummy resources would only take up room
    elapsed = time.perf_counter() - started
    log.info("warmed up in %.0f ms", elapsed * 1000)
    return elapsed
