"""The SMART app without a browser: settings, the card link, launch refusals, the vendored client."""

from __future__ import annotations

import hashlib
from typing import Any

import orjson
import pytest
from flask import Flask
from flask.testing import FlaskClient

from service.api.smart import VENDOR_DIR
from service.app import create_app
from service.cdshooks.smart import SmartConfigError
from tests.conftest import EXAMPLE_DAY, EXAMPLES, bundle_to_hook_request, load_json

ISS = "http://127.0.0.1:9711/fhir"
PUBLIC = "http://127.0.0.1:8080/prefix"
SMART = {
    "TESTING": True,
    "TODAY": EXAMPLE_DAY,
    "SMART_CLIENT_ID": "twitch-cds-app",
    "SMART_ALLOWED_ISSUERS": orjson.dumps([ISS]).decode(),
    "PUBLIC_BASE_URL": PUBLIC,
}
UNANSWERED = EXAMPLES / "unanswered-red-flag-questions" / "fires-bulbar-questions-skipped.json"
BENIGN = EXAMPLES / "likely-benign" / "fires-short-isolated-calf.json"
# fhirclient 2.6.3, build/fhir-client.pure.min.js (service/ui/static/vendor/VENDORED.md).
FHIRCLIENT_SHA256 = "658dec434e308a6ba682158f1e94bfaa0f600bb500e78443369bfe7818133d90"
HTML = {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}


@pytest.fixture
def smart_app() -> Flask:
    """The app with the SMART app configured for one loopback EHR."""
    return create_app(SMART)


def _cards(app: Flask, example: Any) -> list[dict[str, Any]]:
    response = app.test_client().post(
        "/cds-services/twitching-red-flags", json=bundle_to_hook_request(load_json(example))
    )
    assert response.status_code == 200, response.json
    cards: list[dict[str, Any]] = response.get_json(force=True)["cards"]
    return cards


def _card(cards: list[dict[str, Any]], summary_start: str) -> dict[str, Any]:
    return next(c for c in cards if c["summary"].startswith(summary_start))


def _answered(example: Any) -> set[str]:
    answered = set()
    for entry in load_json(example)["entry"]:
        resource = entry["resource"]
        if resource["resourceType"] == "QuestionnaireResponse":
            stack = list(resource.get("item", []))
            while stack:
                item = stack.pop()
                stack.extend(item.get("item", []))
                if item.get("answer"):
                    answered.add(item["linkId"])
    return answered


def test_unanswered_card_links_the_app_naming_the_unanswered_questions(smart_app: Flask) -> None:
    """The link is a CDS Hooks 2.0 smart link; appContext is a JSON string of the questions left."""
    card = _card(_cards(smart_app, UNANSWERED), "Some twitching red-flag questions are unanswered")
    assert len(card["links"]) == 1
    link = card["links"][0]
    assert link["label"] == "Record the twitching assessment"
    assert link["url"] == PUBLIC + "/smart/launch"
    assert link["type"] == "smart"
    assert isinstance(link["appContext"], str)
    context = orjson.loads(link["appContext"])
    assert (
        context["questionnaire"] == "https://twitch-cds.example.org/fhir/Questionnaire/twitching-assessment"
    )
    # The questions this card lists as not answered (the bulbar ones the example skips) are named...
    assert {"speech", "swallowing", "breathing"} <= set(context["unanswered"])
    # ...and none the response answered is.
    answered = _answered(UNANSWERED)
    assert answered
    assert not answered & set(context["unanswered"])


def test_likely_benign_card_links_the_app_and_red_flag_cards_do_not(smart_app: Flask) -> None:
    """Reassurance links the app too (what is still unasked); other cards carry no link."""
    cards = _cards(smart_app, BENIGN)
    benign = _card(cards, "Likely benign if the examination is normal")
    context = orjson.loads(benign["links"][0]["appContext"])
    assert "weakness" not in context["unanswered"]  # answered no: that is why the card fires
    assert not _answered(BENIGN) & set(context["unanswered"])
    red_flag = _cards(smart_app, EXAMPLES / "motor-neuron-red-flags" / "fires-weakness.json")
    assert red_flag
    assert all("links" not in c for c in red_flag)


def test_no_client_id_no_link(client: FlaskClient) -> None:
    """Without SMART_CLIENT_ID the cards are as before: no link to an app that is not there."""
    response = client.post(
        "/cds-services/twitching-red-flags", json=bundle_to_hook_request(load_json(UNANSWERED))
    )
    card = _card(response.get_json(force=True)["cards"], "Some twitching red-flag questions are unanswered")
    assert "links" not in card


def test_discovery_mentions_the_app_only_when_one_is_registered(
    smart_app: Flask, client: FlaskClient
) -> None:
    """The patient-view service's description names the launch URL with SMART_CLIENT_ID, not without."""

    def description(c: FlaskClient) -> str:
        services = c.get("/cds-services").get_json()["services"]
        return str(next(s["description"] for s in services if s["hook"] == "patient-view"))

    assert "/smart/launch" in description(smart_app.test_client())
    assert "SMART app" not in description(client)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"SMART_ALLOWED_ISSUERS": "[]"}, "SMART_ALLOWED_ISSUERS is empty"),
        ({"SMART_ALLOWED_ISSUERS": '["https://ehr.example.org/fhir?x=1"]'}, "query"),
        ({"SMART_ALLOWED_ISSUERS": "[1]"}, "JSON list"),
        ({"PUBLIC_BASE_URL": ""}, "PUBLIC_BASE_URL is not an absolute URL"),
        ({"SMART_SCOPES": "patient/Patient.r"}, "must include 'launch'"),
        ({"SMART_CONNECT_ORIGINS": '["http://auth.example.org"]'}, "not an https origin"),
        ({"ENV": "production", "SMART_ALLOWED_ISSUERS": '["http://ehr.example.org/fhir"]'}, "must use https"),
    ],
)
def test_unusable_smart_settings_refuse_to_start(change: dict[str, str], message: str) -> None:
    """A SMART app that could not launch safely is a start-up error, not a surprise at launch."""
    with pytest.raises(SmartConfigError, match=message):
        create_app({**SMART, **change})


def test_launch_from_an_allowed_issuer_serves_the_launch_page(smart_app: Flask) -> None:
    """The page hands fhirclient the client id, scopes and redirect URI; CSP lets it reach the EHR."""
    response = smart_app.test_client().get(f"/smart/launch?iss={ISS}&launch=xyz", headers=HTML)
    assert response.status_code == 200
    page = response.get_data(as_text=True)
    assert 'data-client-id="twitch-cds-app"' in page
    assert f'data-redirect-uri="{PUBLIC}/smart/app"' in page
    assert "patient/QuestionnaireResponse.c" in page
    assert "/smart/vendor/fhir-client.pure.min.js" in page
    csp = response.headers["Content-Security-Policy"]
    assert "script-src 'self';" in csp
    assert "'unsafe-inline'" not in csp
    assert "'unsafe-eval'" not in csp
    assert "connect-src 'self' http://127.0.0.1:9711;" in csp
    assert "frame-ancestors 'none'" in csp
    assert response.headers["Referrer-Policy"] == "no-referrer"


@pytest.mark.parametrize(
    "iss",
    [
        "http://127.0.0.1:9712/fhir",  # another port
        "http://127.0.0.1:9711/fhirx",  # a path that only starts like the allowed one
        "http://127.0.0.1:9711/fhir/../other",
        "https://evil.example/fhir",
    ],
)
def test_launch_from_an_unknown_issuer_is_refused_with_a_page(smart_app: Flask, iss: str) -> None:
    """The clinician sees why, in words; nothing is handed to fhirclient."""
    response = smart_app.test_client().get(
        "/smart/launch", query_string={"iss": iss, "launch": "x"}, headers=HTML
    )
    assert response.status_code == 403
    assert response.mimetype == "text/html"
    page = response.get_data(as_text=True)
    assert "This app may not be launched from that EHR" in page
    assert "fhir-client" not in page
    assert "data-client-id" not in page


def test_refusals_are_operation_outcomes_for_api_clients(smart_app: Flask) -> None:
    """A client that does not ask for HTML gets the OperationOutcome with the parameter's path."""
    client = smart_app.test_client()
    refused = client.get("/smart/launch?iss=https://evil.example/fhir&launch=x")
    assert refused.status_code == 403
    assert refused.mimetype == "application/fhir+json"
    assert refused.get_json(force=True)["issue"][0]["code"] == "forbidden"
    assert refused.get_json(force=True)["issue"][0]["expression"] == ["iss"]
    missing = client.get(f"/smart/launch?iss={ISS}")
    assert missing.status_code == 400
    assert missing.get_json(force=True)["issue"][0]["expression"] == ["launch"]
    # fhirclient would obey these in the page URL (a "fake launch" that skips authorization).
    extra = client.get(f"/smart/launch?iss={ISS}&launch=x&fhirServiceUrl=http://127.0.0.2/fhir")
    assert extra.status_code == 400
    assert extra.get_json(force=True)["issue"][0]["expression"] == ["fhirServiceUrl"]


def test_without_a_client_id_the_app_is_not_there(client: FlaskClient) -> None:
    """Both pages say the app is not configured (404), as a page for a browser."""
    for path in (f"/smart/launch?iss={ISS}&launch=x", "/smart/app"):
        response = client.get(path, headers=HTML)
        assert response.status_code == 404, path
        assert "SMART_CLIENT_ID is empty" in response.get_data(as_text=True)


def test_app_page_names_the_published_questionnaire(smart_app: Flask) -> None:
    """The redirect URI page loads the vendored client and the app module, nothing inline."""
    response = smart_app.test_client().get("/smart/app?code=abc&state=def", headers=HTML)
    assert response.status_code == 200
    page = response.get_data(as_text=True)
    assert (
        'data-questionnaire-url="https://twitch-cds.example.org/fhir/Questionnaire/twitching-assessment"'
        in page
    )
    assert '<script src="/smart/vendor/fhir-client.pure.min.js"></script>' in page
    assert '<script type="module" src="/ui/smart-app.js"></script>' in page
    assert response.headers["Cache-Control"] == "no-store"


def test_vendored_fhirclient_is_the_published_build(smart_app: Flask) -> None:
    """The served file is byte for byte fhirclient 2.6.3's browser build, with its licences beside it."""
    data = (VENDOR_DIR / "fhir-client.pure.min.js").read_bytes()
    assert hashlib.sha256(data).hexdigest() == FHIRCLIENT_SHA256
    assert FHIRCLIENT_SHA256 in (VENDOR_DIR / "VENDORED.md").read_text(encoding="utf-8")
    assert "Apache License" in (VENDOR_DIR / "fhirclient.LICENSE").read_text(encoding="utf-8")
    assert (VENDOR_DIR / "fhir-client.pure.min.js.LICENSE.txt").is_file()
    served = smart_app.test_client().get("/smart/vendor/fhir-client.pure.min.js")
    assert served.status_code == 200
    assert served.mimetype == "text/javascript"
    assert served.data == data
    assert smart_app.test_client().get("/smart/vendor/VENDORED.md").status_code == 404
    assert smart_app.test_client().get("/smart/vendor/..%2Fapp.js").status_code == 404
