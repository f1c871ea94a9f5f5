"""POST /smart/cards without a browser: its refusals, and that the token it is sent is never kept.

Caller authentication is on (ISSUERS configured), so the hook itself refuses an unsigned call; the
EHR is tests/smart_server.py (authlib) on loopback, which checks every bearer token it is sent. Its
FHIR data store is out of reach (127.0.0.2), so a token it accepts ends in a 412 here: the flow
with a real record is tests/test_smart_e2e.py.
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from flask import Flask
from werkzeug.test import TestResponse

from service.app import create_app
from service.logs import json_handler
from tests.conftest import EXAMPLE_DAY
from tests.live import serve
from tests.smart_server import SmartServer

CARDS = "/smart/cards"
HOOK = "/cds-services/twitching-red-flags"
UNREACHABLE = "http://127.0.0.2:9/fhir"  # the EHR's own data store: never reached in these tests
PATIENT = "smart-cards-patient-1"
TOKEN = "tok-3f9a2c71e5"  # distinctive, so an echo is findable (x700 is past the 8192-character cap)
SCOPES = "launch patient/Patient.r patient/Observation.rs patient/Condition.rs"
SCOPES += " patient/QuestionnaireResponse.rs patient/QuestionnaireResponse.c"


@pytest.fixture(scope="module")
def ehr() -> Iterator[SmartServer]:
    """The EHR's authorization and resource server on loopback."""
    server = SmartServer(UNREACHABLE, "medplum-credentials-never-used")
    with serve(server.app) as live:
        server.bind(live.url)
        yield server


@pytest.fixture
def instance(tmp_path: Path) -> Path:
    """This test's SQLite file, dev secret and audit spool."""
    return tmp_path / "instance"


@pytest.fixture
def app(ehr: SmartServer, instance: Path) -> Flask:
    """The service with the SMART app on and caller authentication on."""
    return create_app(
        {
            "TESTING": True,
            "TODAY": EXAMPLE_DAY,
            "INSTANCE_DIR": str(instance),
            "PUBLIC_BASE_URL": "http://127.0.0.1:8080",
            # Never fetched: /smart/cards does not take a CDS client JWT, and the hook call is refused
            # for having none before any key is looked up.
            "ISSUERS": [{"iss": "https://cds-client.test", "jwks_url": "http://127.0.0.2:9/jwks"}],
            "SMART_CLIENT_ID": "twitch-cds-smart-app",
            "SMART_ALLOWED_ISSUERS": orjson.dumps([ehr.fhir_base]).decode(),
            "FHIR_FETCH_BUDGET_SECONDS": 5.0,
        }
    )


def _post(app: Flask, body: Any) -> tuple[TestResponse, float]:
    started = time.perf_counter()
    response = app.test_client().post(CARDS, json=body)
    return response, time.perf_counter() - started


def _issues(response: TestResponse) -> list[dict[str, Any]]:
    body = response.get_json(force=True)
    assert body["resourceType"] == "OperationOutcome", body
    return list(body["issue"])


def test_the_hook_wants_a_jwt_and_smart_cards_asks_the_ehr_instead(app: Flask, ehr: SmartServer) -> None:
    """Authentication is on (the hook: 401), yet /smart/cards reaches the EHR, which refuses a token
    it never issued: a 403 that says so, on access_token, within a second."""
    assert app.test_client().post(HOOK, json={"hook": "patient-view"}).status_code == 401
    calls = len(ehr.fhir_calls)
    response, elapsed = _post(
        app, {"fhirServer": ehr.fhir_base, "patient": PATIENT, "access_token": "forged"}
    )
    assert response.status_code == 403
    (issue,) = _issues(response)
    assert issue["code"] == "login"
    assert issue["expression"] == ["access_token"]
    assert "did not accept the access token (HTTP 401)" in issue["diagnostics"]
    assert "open the app again from the EHR" in issue["diagnostics"]
    assert len(ehr.fhir_calls) > calls  # the EHR itself judged the token
    assert ("GET", f"/fhir/Patient/{PATIENT}", 401) in ehr.refused
    assert "WWW-Authenticate" not in response.headers  # not the guard's refusal
    assert elapsed < 1.0


@pytest.mark.parametrize(
    "iss",
    [
        "https://ehr.example.org/fhir",  # another server altogether
        "{base}/other-fhir",  # the EHR's host, another path
        "{fhir}-evil",  # a look-alike path (a string prefix, not a segment)
        "{fhir}/../token",  # dot segments out of the allowed base
        "http://127.0.0.2:9/fhir",  # the EHR's own data store, behind its authorization server
    ],
)
def test_an_issuer_off_the_allow_list_is_refused_before_anything_is_sent(
    app: Flask, ehr: SmartServer, iss: str
) -> None:
    """403 on fhirServer, and no request leaves the service (the token goes nowhere)."""
    calls = len(ehr.fhir_calls)
    server = iss.format(base=ehr.base, fhir=ehr.fhir_base)
    response, elapsed = _post(app, {"fhirServer": server, "patient": PATIENT, "access_token": "t0ken"})
    assert response.status_code == 403
    (issue,) = _issues(response)
    assert (issue["code"], issue["expression"]) == ("forbidden", ["fhirServer"])
    assert issue["diagnostics"].startswith("No cards from that EHR: ")
    assert len(ehr.fhir_calls) == calls
    assert elapsed < 0.5


def test_a_token_for_another_patient_reads_nothing(app: Flask, ehr: SmartServer) -> None:
    """The EHR refuses the launch patient's token for anyone else: 403 naming access_token."""
    token = ehr.grant("the-launch-patient", SCOPES)
    response, elapsed = _post(app, {"fhirServer": ehr.fhir_base, "patient": PATIENT, "access_token": token})
    assert response.status_code == 403
    (issue,) = _issues(response)
    assert (issue["code"], issue["expression"]) == ("forbidden", ["access_token"])
    assert "refused this access token" in issue["diagnostics"]
    assert "Patient" in issue["diagnostics"]
    assert "another patient or lacks a scope" in issue["diagnostics"]
    assert ("GET", f"/fhir/Patient/{PATIENT}", 403) in ehr.refused
    assert elapsed < 1.0


def test_the_keys_read_are_the_ones_the_scopes_cover(app: Flask, ehr: SmartServer) -> None:
    """The default scopes read Patient, Observation, QuestionnaireResponse and Condition, never
    ServiceRequest or medications (the token could not, and an EHR would log the refusals)."""
    fetcher = app.extensions["smart_fetcher"]
    assert set(fetcher.queries) == {"patient", "observations", "questionnaireResponses", "conditions"}
    assert [b.text for b in fetcher.settings.allowlist] == [ehr.fhir_base]
    before = len(ehr.fhir_calls)
    _post(app, {"fhirServer": ehr.fhir_base, "patient": PATIENT, "access_token": "forged"})
    asked = {path.split("/")[2] for _, path, _ in ehr.fhir_calls[before:]}
    assert asked == {"Patient", "Observation", "QuestionnaireResponse", "Condition"}


@pytest.mark.parametrize(
    ("body", "paths"),
    [
        ({}, {"fhirServer", "patient", "access_token"}),
        ({"fhirServer": "x", "patient": "not an id!", "access_token": ""}, {"patient", "access_token"}),
        ({"fhirServer": "x", "patient": "p", "access_token": TOKEN, "userId": "u"}, {"userId"}),
        ({"fhirServer": "x", "patient": "p", "access_token": TOKEN * 700}, {"access_token"}),
        ({"fhirServer": 5, "patient": "p", "access_token": TOKEN}, {"fhirServer"}),
        ({"fhirServer": "x", "patient": "p", "access_token": ["t0k-en-in-a-list"]}, {"access_token"}),
    ],
)
def test_a_malformed_body_is_a_400_naming_each_problem(
    app: Flask, body: dict[str, Any], paths: set[str]
) -> None:
    """Every problem with its path; none of the messages quotes the token."""
    response, _ = _post(app, body)
    assert response.status_code == 400
    issues = _issues(response)
    assert {e for i in issues for e in i["expression"]} == paths
    assert TOKEN not in response.get_data(as_text=True)
    assert "t0k-en-in-a-list" not in response.get_data(as_text=True)


def test_body_size_type_and_shape_are_checked(app: Flask) -> None:
    """Over 16 kB: 413 (the app-wide limit is 8 MB); not JSON: 415; not an object: 400."""
    big = {"fhirServer": "x", "patient": "p", "access_token": "t", "pad": "x" * 17_000}
    assert _post(app, big)[0].status_code == 413
    client = app.test_client()
    assert client.post(CARDS, data="a=b", content_type="application/x-www-form-urlencoded").status_code == 415
    assert client.post(CARDS, json=["a"]).status_code == 400


def test_without_a_smart_app_there_is_no_cards_route(instance: Path) -> None:
    """SMART_CLIENT_ID empty: 404, as for the app's pages."""
    plain = create_app({"TESTING": True, "INSTANCE_DIR": str(instance)})
    response = plain.test_client().post(CARDS, json={"fhirServer": "x", "patient": "p", "access_token": "t"})
    assert response.status_code == 404
    assert "SMART_CLIENT_ID" in _issues(response)[0]["diagnostics"]


@pytest.fixture
def json_log(app: Flask) -> Iterator[io.StringIO]:
    """Everything logged at DEBUG and above while the test runs, as the service's JSON lines."""
    stream = io.StringIO()
    handler = json_handler(stream)
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    yield stream
    root.removeHandler(handler)
    root.setLevel(level)


def test_the_token_is_never_logged_or_stored(
    app: Flask, ehr: SmartServer, instance: Path, json_log: io.StringIO
) -> None:
    """Refused, accepted-then-failed and malformed calls: the token is in no log line, no audit row,
    no spool file and no SQLite byte; the call the EHR let through is audited, the refusals not."""
    accepted = ehr.grant(PATIENT, SCOPES)  # the EHR accepts it, but its data store is down
    other = ehr.grant("the-launch-patient", SCOPES)
    forged = "forged-" + "x" * 40
    base = {"fhirServer": ehr.fhir_base, "patient": PATIENT}
    assert _post(app, {**base, "access_token": forged})[0].status_code == 403
    assert _post(app, {**base, "access_token": other})[0].status_code == 403
    assert (
        _post(app, {**base, "fhirServer": "https://elsewhere.test/fhir", "access_token": other})[
            0
        ].status_code
        == 403
    )
    assert _post(app, {**base, "access_token": other, "extra": 1})[0].status_code == 400
    failed, _ = _post(app, {**base, "access_token": accepted})
    assert failed.status_code == 412
    assert {e for i in _issues(failed) for e in i["expression"]} == {"fhirServer"}
    assert "the FHIR server failed on the Patient read (HTTP 500)" in failed.get_data(as_text=True)

    spooled = b"".join(p.read_bytes() for p in instance.rglob("*") if p.is_file() and "spool" in str(p))
    stores = app.extensions["stores"]
    assert stores.spool.flush(5), "the audit spool did not reach the database"
    calls = list(stores.audit.calls())
    assert [(c["service_id"], c["hook"], c["status"]) for c in calls] == [
        ("twitching-red-flags", "patient-view", 412)
    ]
    stores.db.close()
    stored = b"".join(p.read_bytes() for p in instance.glob("twitch-cds.sqlite3*"))
    assert stored
    logged = json_log.getvalue()
    ours = [line for line in logged.splitlines() if orjson.loads(line)["logger"].startswith("twitch_cds")]
    assert sum("fetch server=" in line for line in ours) == 3  # the three calls that reached the EHR
    for token in (accepted, other, forged):
        assert token not in logged  # any logger in the process, the test EHR's own included
        assert token not in str(calls)
        assert token.encode() not in spooled
        assert token.encode() not in stored
    assert not [line for line in ours if PATIENT in line]


def test_it_is_rate_limited_like_any_unauthenticated_caller(ehr: SmartServer, instance: Path) -> None:
    """No CDS JWT is asked for, but the per-address limit holds: the third call in a minute is a 429."""
    limited = create_app(
        {
            "TESTING": True,
            "INSTANCE_DIR": str(instance),
            "PUBLIC_BASE_URL": "http://127.0.0.1:8080",
            "RATE_LIMIT_PER_MINUTE": 2,
            "SMART_CLIENT_ID": "twitch-cds-smart-app",
            "SMART_ALLOWED_ISSUERS": orjson.dumps([ehr.fhir_base]).decode(),
        }
    )
    body = {"fhirServer": "https://elsewhere.test/fhir", "patient": PATIENT, "access_token": "t0ken"}
    statuses = [limited.test_client().post(CARDS, json=body).status_code for _ in range(3)]
    assert statuses == [403, 403, 429]


@pytest.mark.parametrize(
    ("scopes", "keys"),
    [
        # SMART v1: patient/*.read reads every key the rules use.
        (
            "launch patient/*.read patient/QuestionnaireResponse.write",
            {
                "patient",
                "observations",
                "questionnaireResponses",
                "conditions",
                "serviceRequests",
                "medicationRequests",
                "medicationStatements",
            },
        ),
        # v2 letters: a read without search (Condition.r) does not make Condition searchable.
        (
            "launch patient/Patient.r patient/Observation.rs patient/Condition.r patient/MedicationRequest.s",
            {"patient", "observations", "questionnaireResponses", "medicationRequests"},
        ),
        # The required keys are read whatever the scopes say (the EHR refuses them if it must).
        ("launch", {"patient", "observations", "questionnaireResponses"}),
    ],
)
def test_the_keys_follow_smart_scopes(ehr: SmartServer, instance: Path, scopes: str, keys: set[str]) -> None:
    """SMART_SCOPES decides which optional keys /smart/cards asks the EHR for."""
    configured = create_app(
        {
            "TESTING": True,
            "INSTANCE_DIR": str(instance),
            "PUBLIC_BASE_URL": "http://127.0.0.1:8080",
            "SMART_CLIENT_ID": "twitch-cds-smart-app",
            "SMART_ALLOWED_ISSUERS": orjson.dumps([ehr.fhir_base]).decode(),
            "SMART_SCOPES": scopes,
        }
    )
    assert set(configured.extensions["smart_fetcher"].queries) == keys
