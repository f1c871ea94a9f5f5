"""Every error is a JSON OperationOutcome with the right status: never HTML, never a 500 for bad input."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from service.app import create_app
from tests.conftest import EXAMPLE_DAY

HOOK = "/cds-services/twitching-red-flags"


def _outcome(response: TestResponse, status: int) -> list[dict[str, Any]]:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/fhir+json"
    body = response.get_json()
    assert body["resourceType"] == "OperationOutcome"
    assert body["issue"], "an OperationOutcome needs at least one issue"
    for issue in body["issue"]:
        assert issue["severity"] in ("fatal", "error", "warning", "information")
        assert issue["code"]
        assert issue["diagnostics"]
    return list(body["issue"])


def _expressions(issues: list[dict[str, Any]]) -> set[str]:
    return {e for i in issues for e in i.get("expression", [])}


def test_malformed_json_is_400(client: FlaskClient) -> None:
    """A body that is not JSON names the parse error."""
    issues = _outcome(client.post(HOOK, data=b"{not json", content_type="application/json"), 400)
    assert "not valid JSON" in issues[0]["diagnostics"]


def test_empty_body_is_400(client: FlaskClient) -> None:
    """No body at all is a clear 400."""
    _outcome(client.post(HOOK, data=b"", content_type="application/json"), 400)


def test_envelope_problems_each_have_a_path(client: FlaskClient) -> None:
    """Every envelope problem is listed with its path, not just the first."""
    body = {
        "hook": "patient-view",
        "hookInstance": "not-a-uuid",
        "fhirServer": "not a url",
        "fhirAuthorization": {"access_token": "x"},
        "context": {"userId": "Nobody", "patientId": ""},
        "prefetch": {"patient": "Patient/1"},
    }
    issues = _outcome(client.post(HOOK, json=body), 400)
    assert {
        "hookInstance",
        "fhirServer",
        "fhirAuthorization.token_type",
        "fhirAuthorization.expires_in",
        "fhirAuthorization.scope",
        "fhirAuthorization.subject",
        "context.userId",
        "context.patientId",
    } <= _expressions(issues)


def test_missing_context_is_400(client: FlaskClient) -> None:
    """A hook call without context names the missing member."""
    body = {"hook": "patient-view", "hookInstance": "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea"}
    assert "context" in _expressions(_outcome(client.post(HOOK, json=body), 400))


def test_body_not_an_object_is_400(client: FlaskClient) -> None:
    """A JSON array or string is not a hook request."""
    _outcome(client.post(HOOK, json=[1, 2]), 400)
    _outcome(client.post("/evaluate", json="Bundle"), 400)


def test_unsupported_hook_is_400(client: FlaskClient) -> None:
    """A hook the service does not answer is refused with the hook path."""
    body = {
        "hook": "encounter-start",
        "hookInstance": "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea",
        "context": {"userId": "Practitioner/1", "patientId": "1"},
    }
    assert "hook" in _expressions(_outcome(client.post(HOOK, json=body), 400))


def test_unknown_service_is_404(client: FlaskClient) -> None:
    """An unknown service id is 404, not a crash."""
    _outcome(client.post("/cds-services/nope", json={}), 404)


def test_unknown_route_is_404_json(client: FlaskClient) -> None:
    """Even an unknown URL answers an OperationOutcome, never an HTML page."""
    _outcome(client.get("/no/such/page"), 404)


def test_wrong_method_is_405_with_allow(client: FlaskClient) -> None:
    """GET on the hook endpoint is 405 with an Allow header."""
    response = client.get(HOOK)
    _outcome(response, 405)
    assert "POST" in response.headers["Allow"]
    _outcome(client.delete("/cds-services"), 405)


def test_wrong_content_type_is_415(client: FlaskClient) -> None:
    """Form posts and text are refused with 415."""
    _outcome(client.post(HOOK, data="a=b", content_type="application/x-www-form-urlencoded"), 415)
    _outcome(client.post("/evaluate", data="{}", content_type="text/plain"), 415)


def test_fhir_json_content_type_is_accepted(client: FlaskClient) -> None:
    """application/fhir+json (with a charset) is as good as application/json."""
    response = client.post(
        "/evaluate",
        data=b'{"resourceType": "Bundle", "type": "collection", "entry": []}',
        content_type="application/fhir+json; charset=utf-8",
    )
    _outcome(response, 422)  # accepted and parsed: it fails only for holding no Patient


def test_body_over_the_limit_is_413() -> None:
    """The body limit is configurable and answered with 413."""
    app = create_app({"TODAY": EXAMPLE_DAY, "MAX_CONTENT_LENGTH": 1000})
    response = app.test_client().post(
        "/evaluate", data=b'{"x": "' + b"a" * 2000 + b'"}', content_type="application/json"
    )
    _outcome(response, 413)


def test_missing_prefetch_is_412(client: FlaskClient) -> None:
    """No prefetch and no way to fetch: 412 naming each missing key."""
    body = {
        "hook": "patient-view",
        "hookInstance": "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea",
        "context": {"userId": "Practitioner/1", "patientId": "1"},
    }
    issues = _outcome(client.post(HOOK, json=body), 412)
    assert _expressions(issues) == {
        "prefetch.patient",
        "prefetch.observations",
        "prefetch.questionnaireResponses",
    }


def test_bug_is_500_outcome_without_patient_data(
    app: Flask,
    client: FlaskClient,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A genuine bug (a test double: the engine made to raise) still answers an OperationOutcome."""

    patient_name = "".join(["Ja", "ne"])  # built at run time: the traceback's source lines lack it

    def broken(*_: Any, **__: Any) -> None:
        raise RuntimeError(f"secret patient name {patient_name}")

    monkeypatch.setattr(app.extensions["evaluator"], "run", broken)
    body = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [{"resource": {"resourceType": "Patient", "id": "p1"}}],
    }
    with caplog.at_level(logging.ERROR):
        issues = _outcome(client.post("/evaluate", json=body), 500)
    assert "Jane" not in issues[0]["diagnostics"]
    assert "RuntimeError" in caplog.text
    assert "Jane" not in caplog.text


# --- bounded echoes: an error quotes the caller's input only up to a limit ---------------------

BIG = 6_000_000  # under MAX_CONTENT_LENGTH (8 MB), so the body is read and refused on its content


def _small(response: TestResponse, status: int, limit: int = 4096) -> list[dict[str, Any]]:
    issues = _outcome(response, status)
    assert len(response.get_data()) < limit, len(response.get_data())
    return issues


@pytest.mark.parametrize("service", ["twitching-red-flags", "twitching-red-flags-order-sign"])
def test_a_6_mb_unknown_hook_is_quoted_200_characters(client: FlaskClient, service: str) -> None:
    """A 6 MB `hook` value: 400 on `hook`; the body quotes its start and says how long it was."""
    body = {
        "hook": "x" * BIG,
        "hookInstance": "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea",
        "context": {"userId": "Practitioner/1", "patientId": "1"},
    }
    (issue,) = _small(client.post(f"/cds-services/{service}", json=body), 400)
    assert issue["expression"] == ["hook"]
    assert f"not '{'x' * 200}'… ({BIG} characters)" in issue["diagnostics"]


def test_long_ids_paths_and_types_are_quoted_bounded(client: FlaskClient) -> None:
    """Unknown service id, path, Questionnaire id, content type: each quoted at most 200 characters."""
    long = "y" * 5000
    for response, status in (
        (client.post(f"/cds-services/{long}", json={}), 404),
        (client.post(f"/cds-services/{long}/feedback", json={}), 404),
        (client.get(f"/no/such/{long}"), 404),
        (client.get(f"/fhir/Questionnaire/{long}"), 404),
        (client.get(f"/ui/{long}"), 404),
        (client.put(f"/cds-services/{long}"), 405),
        (client.post(HOOK, data="{}", content_type=f"application/{long}"), 415),
    ):
        (issue,) = _small(response, status)
        assert "y" * 201 not in issue["diagnostics"]
        assert "characters)" in issue["diagnostics"], issue["diagnostics"]


def test_caller_keys_in_paths_are_bounded(client: FlaskClient) -> None:
    """A 1 MB prefetch key or unknown FHIR element name: the path names it, cut short."""
    key = "k" * 1_000_000
    body = {
        "hook": "patient-view",
        "hookInstance": "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea",
        "context": {"userId": "Practitioner/1", "patientId": "1"},
        "prefetch": {key: "not a resource"},
    }
    (issue,) = _small(client.post(HOOK, json=body), 400)
    assert issue["expression"] == [f"prefetch.{'k' * 200}…"]
    bundle = {
        "resourceType": "Bundle",
        "type": "z" * BIG,
        "entry": [{"resource": {"resourceType": "Patient", "id": "1", key: True}}],
    }
    issues = _small(client.post("/evaluate", json=bundle), 422)
    assert all(len(e) <= 600 for e in _expressions(issues))
    assert any(i["expression"] == ["Bundle.type"] for i in issues)
