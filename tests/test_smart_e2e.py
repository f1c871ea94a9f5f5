"""The SMART app end to end: headless Chromium, a real authorization flow, a real FHIR server.

Medplum's FHIR server (tests/fhir_server) holds the patient; tests/smart_server.py (authlib)
stands in front of it as the EHR's authorization server and resource server; the service runs on
loopback with the SMART app configured. The flow is the clinician's: the card's link, the EHR
launch, authorization with PKCE, the pre-filled form, answering what is missing, saving, and
the cards on the updated record; then the refusals. Caller authentication is on (ISSUERS): the
EHR's hook calls carry a signed CDS client JWT, and the app, which has none, gets its cards from
POST /smart/cards with its own SMART token.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import orjson
import pytest
import requests
from flask import Flask
from selenium import webdriver
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from service.app import create_app
from service.logs import json_handler
from tests.conftest import EXAMPLES, bundle_to_hook_request, server_only
from tests.live import LiveServer, serve
from tests.smart_server import SmartServer
from tests.test_browser import browser  # noqa: F401  # the headless Chromium fixture (skips without it)
from tests.test_fhir_server_e2e import TOKEN, Patient, _load_example, _serving, node  # noqa: F401
from tests.trust.conftest import KeyServer, SigningKey, bearer, ec_key, mint

CLIENT_ID = "twitch-cds-smart-app"
CDS_CLIENT = "https://ehr-cds-client.test"  # the EHR as a CDS client: it signs its hook calls
HOOK = "/cds-services/twitching-red-flags"
EXAMPLE = EXAMPLES / "unanswered-red-flag-questions" / "fires-bulbar-questions-skipped.json"
UNANSWERED_SUMMARY = "Some twitching red-flag questions are unanswered"
CORE = ("weakness", "atrophy", "speech", "swallowing", "breathing", "bladder-bowel", "saddle-numbness",
        "numbness-tingling", "radiating-pain", "coordination", "spreading", "worsening")  # fmt: skip
WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class Deferred:
    """A WSGI app set after the server starts: the service and the EHR must each know the other's URL."""

    def __init__(self) -> None:
        self.app: WsgiApp | None = None

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        """Hand the request to the app."""
        assert self.app is not None
        return self.app(environ, start_response)


@dataclass
class World:
    """Everything the flow needs: the FHIR server, the EHR's SMART server, the service, a patient."""

    medplum: str
    ehr: SmartServer
    service: LiveServer
    app: Flask
    patient: Patient
    other: Patient
    coded: Patient  # an active Condition "muscle weakness" (SNOMED 26544005), weakness not asked
    inactive: Patient  # the same Condition, inactive
    signing_key: SigningKey  # the EHR's CDS client key (ISSUERS trusts its JWKS)


@pytest.fixture(scope="module")
def world(node: str) -> Iterator[World]:  # noqa: F811
    """Medplum with two patients, the SMART server in front of it, the service with the app on."""
    service_wsgi, ehr_wsgi = Deferred(), Deferred()
    key_server, signing_key = KeyServer(), ec_key("ehr-cds-client")
    jwks_url = key_server.publish("/jwks", signing_key.jwk)
    with _serving(node) as medplum, serve(service_wsgi) as service, serve(ehr_wsgi) as ehr_live:
        patient = _load_example(medplum, EXAMPLE)
        other = _load_example(medplum, EXAMPLES / "likely-benign" / "fires-short-isolated-calf.json")
        coded = _load_example(medplum, EXAMPLES / "motor-neuron-red-flags" / "fires-coded-weakness.json")
        inactive = _load_example(
            medplum, EXAMPLES / "motor-neuron-red-flags" / "near-miss-inactive-weakness-condition.json"
        )
        ehr = SmartServer(medplum, TOKEN)
        ehr.bind(ehr_live.url)
        ehr_wsgi.app = ehr.app
        app = create_app(
            {
                "ENV": "development",
                "RATE_LIMIT_PER_MINUTE": 1_000_000,
                "PUBLIC_BASE_URL": service.url,
                "SMART_CLIENT_ID": CLIENT_ID,
                "SMART_ALLOWED_ISSUERS": orjson.dumps([ehr.fhir_base]).decode(),
                # The next patient-view call reads the record from Medplum itself, as an EHR's would.
                "FHIR_SERVER_ALLOWLIST": orjson.dumps([medplum]).decode(),
                "FHIR_FETCH_BUDGET_SECONDS": 15.0,
                # Caller authentication on: an unsigned hook call (the app's old way) is a 401.
                "ISSUERS": [{"iss": CDS_CLIENT, "jwks_url": jwks_url}],
            }
        )
        service_wsgi.app = app
        scopes = app.extensions["smart"].scopes
        ehr.register(CLIENT_ID, service.url + "/smart/app", scopes)
        yield World(medplum, ehr, service, app, patient, other, coded, inactive, signing_key)
    key_server.close()


def _wait(driver: WebDriver, condition: Callable[[WebDriver], Any], timeout: float = 30) -> Any:
    try:
        return WebDriverWait(driver, timeout).until(condition)
    except TimeoutException:
        texts = [e.text for e in driver.find_elements(By.CSS_SELECTOR, ".status")]
        pytest.fail(f"timed out on {driver.current_url}; the page says {texts!r}")


def _status(driver: WebDriver, element_id: str = "status") -> str:
    return driver.find_element(By.ID, element_id).text


def _patient_view(world: World) -> list[dict[str, Any]]:
    """The call the EHR makes on opening the chart: fhirServer only, so the service reads Medplum."""
    call = server_only(
        bundle_to_hook_request({"entry": [{"resource": r} for r in world.patient.resources]}),
        world.medplum,
        TOKEN,
    )
    token = mint(world.signing_key, iss=CDS_CLIENT, aud=world.service.url + HOOK)
    response = requests.post(world.service.url + HOOK, json=call, headers=bearer(token), timeout=60)
    assert response.status_code == 200, response.text[:2000]
    return list(response.json()["cards"])


def _launch_url(world: World, link: dict[str, Any], patient_id: str) -> str:
    """What the EHR opens for a smart link: its URL with iss and a launch for the patient."""
    return f"{link['url']}?{urlencode({'iss': world.ehr.fhir_base, 'launch': world.ehr.launch(patient_id)})}"


def _responses(world: World, patient_id: str) -> list[dict[str, Any]]:
    response = requests.get(
        f"{world.medplum}/QuestionnaireResponse",
        params={"patient": f"Patient/{patient_id}", "_count": "100"},
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    return [e["resource"] for e in response.json().get("entry", [])]


def _csp_violations(driver: webdriver.Chrome) -> list[str]:
    logs = driver.get_log("browser")  # type: ignore[no-untyped-call]  # selenium leaves it unannotated
    return [e["message"] for e in logs if "Content Security Policy" in e["message"]]


def _open_app(driver: WebDriver, world: World, patient_id: str) -> None:
    """Launch as the EHR does (the first test follows a card's link; its URL is this one)."""
    driver.get(_launch_url(world, {"url": world.app.extensions["smart"].launch_url}, patient_id))
    _wait(driver, lambda d: urlsplit(d.current_url).path == "/smart/app" and d.find_elements(By.ID, "status"))


@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    """Everything logged in the process (service, EHR, Medplum's client) at DEBUG and above."""
    stream = io.StringIO()
    handler = json_handler(stream)
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    yield stream
    root.removeHandler(handler)
    root.setLevel(level)


def test_card_link_to_saved_answers_to_updated_cards(
    browser: webdriver.Chrome,  # noqa: F811
    world: World,
    json_log: io.StringIO,
) -> None:
    """The whole loop: link, launch, PKCE authorization, pre-filled form, save, new cards, with
    caller authentication on: the app's cards come from /smart/cards on its own SMART token."""
    # The app's old way to its cards, an unsigned hook call from the browser, is refused.
    unsigned = requests.post(world.service.url + HOOK, json={"hook": "patient-view"}, timeout=10)
    assert unsigned.status_code == 401
    before = _patient_view(world)
    card = next(c for c in before if c["summary"].startswith(UNANSWERED_SUMMARY))
    link = card["links"][0]
    assert link["type"] == "smart"
    assert link["url"] == world.service.url + "/smart/launch"
    asked = orjson.loads(link["appContext"])["unanswered"]
    assert {"speech", "swallowing", "breathing"} <= set(asked)
    earlier = _responses(world, world.patient.id)
    assert len(earlier) == 1

    browser.get(_launch_url(world, link, world.patient.id))
    form = _wait(browser, lambda d: (f := d.find_element(By.ID, "assessment-form")).is_displayed() and f)
    assert urlsplit(browser.current_url).path == "/smart/app"
    # fhirclient took the code off the address once it had the token: nothing to copy or bookmark.
    assert "code=" not in browser.current_url
    assert "unanswered" in _status(browser)

    # Pre-filled from the patient's latest response: what it answered is set, what it skipped is marked.
    earlier_answers = {
        i["linkId"]: i["answer"][0]
        for g in earlier[0].get("item", [])
        for i in g.get("item", [g])
        if i.get("answer")
    }
    assert earlier_answers
    for link_id, answer in earlier_answers.items():
        if "valueBoolean" in answer:
            value = "true" if answer["valueBoolean"] else "false"
            radio = form.find_element(By.CSS_SELECTOR, f'[data-link-id="{link_id}"][value="{value}"]')
            assert radio.is_selected(), link_id
    marked = {e.get_attribute("data-question") for e in form.find_elements(By.CSS_SELECTOR, ".unanswered")}
    assert {"speech", "swallowing", "breathing"} <= marked
    assert not marked & set(earlier_answers)

    # Answer every core question still missing: no.
    for link_id in CORE:
        if link_id in marked:
            radio = form.find_element(By.CSS_SELECTOR, f'[data-link-id="{link_id}"][value="false"]')
            browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", radio)
            radio.click()
    saved_at = len(world.ehr.fhir_calls)
    browser.find_element(By.ID, "save-button").click()
    _wait(browser, lambda d: _status(d).startswith("Saved to the record as QuestionnaireResponse/"))
    saved_ref = browser.find_element(By.ID, "smart-app").get_attribute("data-saved") or ""
    _wait(
        browser, lambda d: "card" in _status(d, "cards-status") and "Asking" not in _status(d, "cards-status")
    )

    # The response is on the FHIR server: the published canonical, the launch patient, the answers.
    after = _responses(world, world.patient.id)
    assert len(after) == 2
    saved = next(r for r in after if f"QuestionnaireResponse/{r['id']}" == saved_ref)
    assert saved["questionnaire"].split("|")[0] == link_and_canonical(link)
    assert saved["subject"]["reference"] == f"Patient/{world.patient.id}"
    assert saved["status"] == "completed"
    answers = {
        i["linkId"]: i["answer"][0] for g in saved["item"] for i in g.get("item", []) if i.get("answer")
    }
    for link_id in CORE:
        assert link_id in answers, link_id
    assert answers["speech"] == {"valueBoolean": False}

    # The next patient-view call (the EHR reading its own record) no longer asks for the questions,
    # and the app showed the same cards.
    now = _patient_view(world)
    assert not [c for c in now if c["summary"].startswith(UNANSWERED_SUMMARY)]
    shown = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#cards article.card .card-summary")]
    assert sorted(shown) == sorted(c["summary"] for c in now)
    assert not _csp_violations(browser)
    # The app's cards were made by /smart/cards from the record its token read (the service's
    # own fetch, not the browser's: the EHR saw the service's searches with the app's token).
    by_service = {path for _, path, agent in world.ehr.fhir_calls[saved_at:] if agent == "twitch-cds"}
    assert by_service >= {
        f"/fhir/Patient/{world.patient.id}",
        "/fhir/Observation",
        "/fhir/QuestionnaireResponse",
    }
    assert "could not be fetched" not in _status(browser, "cards-status")
    # It is audited like a hook call, with no caller (no CDS client signed it), and the cards it issued.
    stores = world.app.extensions["stores"]
    assert stores.spool.flush(5), "the audit spool did not reach the database"
    calls = list(stores.audit.calls())
    app_calls = [c for c in calls if c["issuer"] is None and c["status"] == 200]
    assert app_calls, calls
    shown_uuids = {
        e.get_attribute("data-uuid") for e in browser.find_elements(By.CSS_SELECTOR, "#cards article.card")
    }
    assert {c["uuid"] for c in app_calls[0]["cards"]} == shown_uuids
    # No token the EHR issued is in any log line of the process (but the test EHR's own authlib,
    # which logs the tokens it issues at DEBUG), nor in the audit or an answer.
    logged = "\n".join(
        line
        for line in json_log.getvalue().splitlines()
        if not orjson.loads(line)["logger"].startswith("authlib")
    )
    assert "smart cards instance=" in logged
    assert world.ehr.tokens
    for token in world.ehr.tokens:
        assert token not in logged
        assert token not in str(calls)
        assert token not in str(now)


def link_and_canonical(link: dict[str, Any]) -> str:
    """The published canonical the card's appContext names."""
    return str(orjson.loads(link["appContext"])["questionnaire"])


def _forget(world: World, patient: Patient, link_id: str) -> None:
    """Replace the patient's response on the FHIR server with one that never asked `link_id`."""
    response = next(r for r in patient.resources if r["resourceType"] == "QuestionnaireResponse")
    edited = {**response, "item": [
        {**g, "item": [i for i in g.get("item", []) if i["linkId"] != link_id]} for g in response["item"]
    ]}  # fmt: skip
    put = requests.put(
        f"{world.medplum}/QuestionnaireResponse/{response['id']}",
        json=edited,
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=30,
    )
    assert put.status_code == 200, put.text


def _weakness(driver: webdriver.Chrome, world: World, patient: Patient) -> tuple[str, str, str]:
    """Launch for the patient; the weakness question's checked value, classes and text."""
    _open_app(driver, world, patient.id)
    form = _wait(driver, lambda d: (f := d.find_element(By.ID, "assessment-form")).is_displayed() and f)
    field = form.find_element(By.CSS_SELECTOR, '[data-question="weakness"]')
    checked = [
        r.get_attribute("value") for r in field.find_elements(By.CSS_SELECTOR, "input") if r.is_selected()
    ]
    assert len(checked) == 1
    return checked[0] or "", field.get_attribute("class") or "", field.text


def test_chart_diagnosis_prefills_a_coded_question(browser: webdriver.Chrome, world: World) -> None:  # noqa: F811
    """An active coded diagnosis answers its unanswered question, flags a contrary "no", and an
    inactive one does neither."""
    # The example answered weakness "no" beside an active "muscle weakness" Condition: kept, flagged.
    value, classes, text = _weakness(browser, world, world.coded)
    assert value == "false"
    assert "chart-conflict" in classes
    assert "active diagnosis" in text
    # Never asked: the chart answers it, marked as such.
    _forget(world, world.coded, "weakness")
    value, classes, text = _weakness(browser, world, world.coded)
    assert value == "true"
    assert "from-chart" in classes
    assert "unanswered" not in classes
    assert "diagnosis in the chart" in text
    # The same Condition, inactive: the question stays unanswered.
    _forget(world, world.inactive, "weakness")
    value, classes, _ = _weakness(browser, world, world.inactive)
    assert value == ""
    assert "unanswered" in classes
    assert "from-chart" not in classes


def test_launch_from_an_unknown_issuer_is_refused(browser: webdriver.Chrome, world: World) -> None:  # noqa: F811
    """An iss off the allow-list gets a clear page; the EHR's authorize endpoint is never reached."""
    codes_before = len(world.ehr.codes)
    url = (
        world.service.url
        + "/smart/launch?"
        + urlencode({"iss": world.ehr.base + "/other-fhir", "launch": "x"})
    )
    browser.get(url)
    refusal = _wait(browser, lambda d: d.find_element(By.ID, "refusal"))
    assert "This app may not be launched from that EHR" in refusal.text
    assert "SMART_ALLOWED_ISSUERS" in refusal.text
    assert urlsplit(browser.current_url).path == "/smart/launch"
    assert len(world.ehr.codes) == codes_before


def test_a_write_for_another_patient_is_refused(browser: webdriver.Chrome, world: World) -> None:  # noqa: F811
    """The token is for the launch patient: a response for anyone else is refused, and not stored."""
    _open_app(browser, world, world.patient.id)
    _wait(browser, lambda d: d.find_element(By.ID, "assessment-form").is_displayed())
    result = browser.execute_async_script(
        """
        const done = arguments[arguments.length - 1];
        FHIR.oauth2.ready()
          .then((client) => client.create({resourceType: "QuestionnaireResponse", status: "completed",
                 questionnaire: arguments[1], subject: {reference: "Patient/" + arguments[0]}}))
          .then(() => done("created"), (error) => done(String(error.status || error.message)));
        """,
        world.other.id,
        "https://twitch-cds.example.org/fhir/Questionnaire/twitching-assessment",
    )
    assert result == "403"
    assert ("POST", "/fhir/QuestionnaireResponse", 403) in world.ehr.refused
    assert len(_responses(world, world.other.id)) == 1  # only the example's own


def test_missing_scope_is_said_and_nothing_is_written(browser: webdriver.Chrome, world: World) -> None:  # noqa: F811
    """An EHR that will not grant the create scope: the app names it and offers no form."""
    scopes = world.app.extensions["smart"].scopes
    world.ehr.register(
        CLIENT_ID, world.service.url + "/smart/app", scopes.replace(" patient/QuestionnaireResponse.c", "")
    )
    try:
        before = len(_responses(world, world.patient.id))
        _open_app(browser, world, world.patient.id)
        _wait(browser, lambda d: "did not grant" in _status(d))
        assert "patient/QuestionnaireResponse.c" in _status(browser)
        assert not browser.find_element(By.ID, "assessment-form").is_displayed()
        assert len(_responses(world, world.patient.id)) == before
    finally:
        world.ehr.register(CLIENT_ID, world.service.url + "/smart/app", scopes)


def test_authorization_server_requires_pkce_s256(world: World) -> None:
    """The happy path above passed through PKCE: without a challenge (or with plain) there is no code."""
    base = {
        "response_type": "code",
        "client_id": CLIENT_ID,
        "redirect_uri": world.service.url + "/smart/app",
        "scope": "launch patient/Patient.r",
        "state": "s1",
        "aud": world.ehr.fhir_base,
    }
    for extra in ({}, {"code_challenge": "a" * 43, "code_challenge_method": "plain"}):
        params = {**base, **extra, "launch": world.ehr.launch(world.patient.id)}
        response = requests.get(
            world.ehr.base + "/authorize", params=params, allow_redirects=False, timeout=10
        )
        assert response.status_code == 302
        query = parse_qs(urlsplit(response.headers["Location"]).query)
        assert query["error"] == ["invalid_request"], query
        assert "code" not in query
    wrong = {
        **base,
        "redirect_uri": world.service.url + "/elsewhere",
        "launch": world.ehr.launch(world.patient.id),
    }
    response = requests.get(world.ehr.base + "/authorize", params=wrong, allow_redirects=False, timeout=10)
    assert response.status_code == 400  # never redirected to an unregistered URI
