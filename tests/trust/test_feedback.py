"""Feedback: the spec's and Epic's bodies, validation, idempotence, unknown cards, summary, durability."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
import pytest
import yaml
from flask import Flask
from flask.testing import FlaskClient
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from service.app import create_app
from service.store import stores
from service.store.migrations import MIGRATIONS, migrate, schema_version
from tests.conftest import EXAMPLE_DAY, ROOT, load_json, shared
from tests.trust.conftest import LEGACY_ISS, SERVICE, Keys, SignedClient, hook_body

FEEDBACK = SERVICE + "/feedback"
MND = "motor-neuron-red-flags"
AT = "2026-11-22T10:05:31Z"


def _dev_client(instance_dir: Any, **settings: Any) -> FlaskClient:
    app = create_app({"TESTING": True, "TODAY": EXAMPLE_DAY, "INSTANCE_DIR": str(instance_dir), **settings})
    return app.test_client()


def _cards(
    client: FlaskClient | SignedClient, example: str = "motor-neuron-red-flags/fires-weakness.json"
) -> list[Any]:
    response = client.post(SERVICE, json=hook_body(example=example))
    assert response.status_code == 200, response.get_data(as_text=True)
    return list(response.get_json()["cards"])


def _accepted(card: dict[str, Any], at: str = AT) -> dict[str, Any]:
    return {
        "card": card["uuid"],
        "outcome": "accepted",
        "acceptedSuggestions": [{"id": card["suggestions"][0]["uuid"]}],
        "outcomeTimestamp": at,
    }


def _overridden(card: dict[str, Any], code: str = "patient-declined", at: str = AT) -> dict[str, Any]:
    reason = next(r for r in card["overrideReasons"] if r["code"] == code)
    return {
        "card": card["uuid"],
        "outcome": "overridden",
        "overrideReason": {"reason": reason, "userComment": "Discussed; the patient prefers to wait."},
        "outcomeTimestamp": at,
    }


def _summary_row(client: FlaskClient | SignedClient, rule: str) -> dict[str, Any]:
    summary = client.get("/feedback/summary").get_json()
    return next(r for r in summary["rules"] if r["rule"] == rule)


@pytest.mark.parametrize("name", ["ex_18_feedback.json", "ex_19_feedback.json", "ex_20_feedback.json"])
def test_spec_examples_are_accepted_and_flagged_unknown(name: str, instance_dir: Any) -> None:
    """The spec's three feedback bodies pass; their cards were never issued here, so they are flagged."""
    client = _dev_client(instance_dir)
    body = load_json(shared("cds-hooks", "spec-2.0.1-examples", name))
    response = client.post(FEEDBACK, json=body)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.get_json() == {"stored": 1, "duplicates": 0, "unknownCards": 1}
    assert client.get("/feedback/summary").get_json()["unknownCardFeedback"] == 1


def test_epic_variant_is_accepted(instance_dir: Any) -> None:
    """`overrideReasons` (plural; an object or a list) and Epic's extensions are kept."""
    client = _dev_client(instance_dir)
    card = next(c for c in _cards(client) if c["source"]["topic"]["code"] == MND.replace("-", ""))
    reason = card["overrideReasons"][0]
    epic_single = {
        "card": card["uuid"],
        "outcome": "overridden",
        "overrideReasons": {
            "reason": reason,
            "userComment": "seen by neurology last week",
            "extension": {"com.epic.cdshooks.feedback.overrideReason.comment-required": False},
        },
        "outcomeTimestamp": "2026-11-22T10:00:00Z",
        "extension": {"com.epic.cdshooks.feedback.overrideReason.source": "BPA"},
    }
    epic_list = {**epic_single, "overrideReasons": [epic_single["overrideReasons"]], "outcomeTimestamp": AT}
    response = client.post(FEEDBACK, json={"feedback": [epic_single, epic_list]})
    assert response.get_json() == {"stored": 2, "duplicates": 0, "unknownCards": 0}
    row = _summary_row(client, MND)
    assert row["overridden"] == 1  # one card, counted once
    assert row["overrideReasons"] == [
        {"system": reason["system"], "code": reason["code"], "display": reason["display"], "count": 1}
    ]


def test_override_reasons_as_bare_codings(instance_dir: Any) -> None:
    """A client that echoes the card's overrideReasons (Codings, no `reason` wrapper) is understood."""
    client = _dev_client(instance_dir)
    card = _cards(client)[0]
    coding = card["overrideReasons"][1]
    entry = {
        "card": card["uuid"],
        "outcome": "overridden",
        "overrideReasons": [coding],
        "outcomeTimestamp": AT,
    }
    assert client.post(FEEDBACK, json={"feedback": [entry]}).get_json()["stored"] == 1
    assert _summary_row(client, MND)["overrideReasons"] == [{**coding, "count": 1}]


def test_bad_feedback_is_400_with_paths(instance_dir: Any) -> None:
    """Every problem is an OperationOutcome issue with its path."""
    client = _dev_client(instance_dir)
    body = {
        "feedback": [
            {"outcome": "maybe", "outcomeTimestamp": "yesterday"},
            {
                "card": "c",
                "outcome": "accepted",
                "outcomeTimestamp": AT,
                "overrideReason": {"userComment": "x"},
            },
            {
                "card": "c",
                "outcome": "overridden",
                "outcomeTimestamp": AT,
                "acceptedSuggestions": [{"id": "s"}],
            },
            {"card": "c", "outcome": "overridden", "outcomeTimestamp": AT, "overrideReason": {"reason": {}}},
        ]
    }
    response = client.post(FEEDBACK, json=body)
    assert response.status_code == 400
    assert response.mimetype == "application/fhir+json"
    paths = {e for i in response.get_json()["issue"] for e in i.get("expression", [])}
    assert {
        "feedback[0].card",
        "feedback[0].outcome",
        "feedback[0].outcomeTimestamp",
        "feedback[1].overrideReason",
        "feedback[2].acceptedSuggestions",
        "feedback[3].overrideReason.reason.code",
    } <= paths
    bad: Any
    for bad in ({}, {"feedback": []}, {"feedback": "x"}, []):
        assert client.post(FEEDBACK, json=bad).status_code == 400
    assert client.post("/cds-services/other/feedback", json=body).status_code == 404


def test_repeated_submission_is_idempotent(instance_dir: Any) -> None:
    """A client that resends a batch (a timeout, a retry) is acknowledged; nothing is counted twice."""
    client = _dev_client(instance_dir)
    card = _cards(client)[0]
    body = {"feedback": [_accepted(card)]}
    assert client.post(FEEDBACK, json=body).get_json() == {"stored": 1, "duplicates": 0, "unknownCards": 0}
    assert client.post(FEEDBACK, json=body).get_json() == {"stored": 0, "duplicates": 1, "unknownCards": 0}
    row = _summary_row(client, MND)
    assert (row["shown"], row["accepted"]) == (1, 1)


def test_unknown_card_is_kept_and_flagged(instance_dir: Any) -> None:
    """Feedback on a card this service never issued is stored, flagged, and kept out of the rates."""
    client = _dev_client(instance_dir)
    _cards(client)
    unknown = {"card": "not-issued-here", "outcome": "accepted", "outcomeTimestamp": AT}
    assert client.post(FEEDBACK, json={"feedback": [unknown]}).get_json()["unknownCards"] == 1
    summary = client.get("/feedback/summary").get_json()
    assert summary["unknownCardFeedback"] == 1
    assert next(r for r in summary["rules"] if r["rule"] == MND)["accepted"] == 0
    with client.application.app_context(), stores().db.transaction() as tx:
        flagged = tx.rows(
            "SELECT known_card, rule_id FROM feedback WHERE card_uuid = ?", ("not-issued-here",)
        )
    assert [(bool(k), r) for k, r in flagged] == [(False, None)]


def test_summary_rates_per_rule_and_version(instance_dir: Any) -> None:
    """Shown, accepted, overridden, no feedback, rates and reasons; each card counts by its latest outcome."""
    client = _dev_client(instance_dir)
    cards = [_cards(client)[0] for _ in range(4)]
    entries = [
        _accepted(cards[0]),
        _accepted(cards[1]),
        _overridden(cards[2], "patient-declined"),
        # cards[3]: accepted first, then overridden (the latest outcome counts)
        _accepted(cards[3], "2026-11-22T10:00:00Z"),
        _overridden(cards[3], "already-addressed", "2026-11-22T11:00:00Z"),
    ]
    assert client.post(FEEDBACK, json={"feedback": entries}).get_json()["stored"] == 5
    row = _summary_row(client, MND)
    version = client.application.extensions["evaluator"].ruleset.by_id(MND).version
    assert row["version"] == version
    assert {k: row[k] for k in ("shown", "accepted", "overridden", "noFeedback")} == {
        "shown": 4,
        "accepted": 2,
        "overridden": 2,
        "noFeedback": 0,
    }
    assert (row["acceptedRate"], row["overriddenRate"]) == (0.5, 0.5)
    assert sorted((r["code"], r["count"]) for r in row["overrideReasons"]) == [
        ("already-addressed", 1),
        ("patient-declined", 1),
    ]
    assert "Discussed" not in orjson.dumps(client.get("/feedback/summary").get_json()).decode()


def test_card_issued_to_another_client_is_unknown(make_app: Callable[..., Flask], keys: Keys) -> None:
    """One client cannot count feedback on another client's cards."""
    app = make_app()
    ehr = SignedClient(app, keys.es384)
    card = _cards(ehr)[0]
    response = SignedClient(app, keys.rs384).post(FEEDBACK, json={"feedback": [_accepted(card)]})
    assert response.get_json()["unknownCards"] == 0  # the same issuer with its other key: known
    legacy = SignedClient(app, keys.legacy, iss=LEGACY_ISS)
    assert legacy.post(FEEDBACK, json={"feedback": [_overridden(card)]}).get_json()["unknownCards"] == 1
    row = _summary_row(ehr, MND)
    assert (row["accepted"], row["overridden"]) == (1, 0)


def _round_trip(first: Flask, second: Flask) -> None:
    card = _cards(first.test_client())[0]
    client = first.test_client()
    assert client.post(FEEDBACK, json={"feedback": [_accepted(card)]}).status_code == 200
    before = _summary_row(client, MND)
    after = _summary_row(second.test_client(), MND)
    assert before == after
    assert after["accepted"] == 1
    assert after["shown"] == 1
    # The restarted service still knows the card: a resend is a duplicate, not a new entry.
    resend = second.test_client().post(FEEDBACK, json={"feedback": [_accepted(card)]})
    assert resend.get_json() == {"stored": 0, "duplicates": 1, "unknownCards": 0}


def test_feedback_survives_a_restart_on_sqlite(instance_dir: Any) -> None:
    """A new app on the same instance folder (a restart) reads what the first stored."""
    settings = {"TESTING": True, "TODAY": EXAMPLE_DAY, "INSTANCE_DIR": str(instance_dir)}
    first = create_app(dict(settings))
    first.extensions["stores"].db.close()
    _round_trip(first, create_app(dict(settings)))
    assert (instance_dir / "twitch-cds.sqlite3").exists()


def test_feedback_survives_a_restart_on_postgresql(instance_dir: Any, postgres_url: str) -> None:
    """The same with DATABASE_URL on the machine's PostgreSQL."""
    settings = {
        "TESTING": True,
        "TODAY": EXAMPLE_DAY,
        "INSTANCE_DIR": str(instance_dir),
        "DATABASE_URL": postgres_url,
    }
    first = create_app(dict(settings))
    assert first.extensions["stores"].db.dialect == "postgresql"
    _round_trip(first, create_app(dict(settings)))
    assert not (instance_dir / "twitch-cds.sqlite3").exists()


def test_summary_rates_on_postgresql(instance_dir: Any, postgres_url: str) -> None:
    """The summary's SQL gives the same answer on PostgreSQL."""
    client = _dev_client(instance_dir, DATABASE_URL=postgres_url)
    cards = [_cards(client)[0] for _ in range(3)]
    entries = [
        _accepted(cards[0]),
        _overridden(cards[1]),
        {"card": "x", "outcome": "accepted", "outcomeTimestamp": AT},
    ]
    client.post(FEEDBACK, json={"feedback": entries})
    summary = client.get("/feedback/summary").get_json()
    row = next(r for r in summary["rules"] if r["rule"] == MND)
    assert (row["shown"], row["accepted"], row["overridden"], row["noFeedback"]) == (3, 1, 1, 1)
    assert row["acceptedRate"] == round(1 / 3, 4)
    assert summary["unknownCardFeedback"] == 1


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_migrations_run_once(backend: str, instance_dir: Any, request: pytest.FixtureRequest) -> None:
    """schema_migrations records each version; a second start applies nothing."""
    settings: dict[str, Any] = {"TESTING": True, "TODAY": EXAMPLE_DAY, "INSTANCE_DIR": str(instance_dir)}
    if backend == "postgresql":
        settings["DATABASE_URL"] = request.getfixturevalue("postgres_url")
    db = create_app(settings).extensions["stores"].db
    assert schema_version(db) == MIGRATIONS[-1][0]
    assert migrate(db) == []


def test_answers_match_openapi(instance_dir: Any) -> None:
    """The receipt and the summary match their schemas in openapi.yaml."""
    spec = yaml.safe_load((ROOT / "openapi.yaml").read_text(encoding="utf-8"))
    registry: Registry[Any] = Registry().with_resource("urn:spec", Resource.from_contents(spec, DRAFT202012))

    def valid(name: str, value: Any) -> None:
        schema = {"$ref": f"urn:spec#/components/schemas/{name}"}
        errors = list(Draft202012Validator(schema, registry=registry).iter_errors(value))
        assert not errors, [e.message for e in errors]

    client = _dev_client(instance_dir)
    cards = _cards(client)
    body = {"feedback": [_accepted(cards[0]), _overridden(cards[0], at="2026-11-22T11:00:00Z")]}
    valid("FeedbackRequest", body)
    valid("FeedbackReceipt", client.post(FEEDBACK, json=body).get_json())
    valid("FeedbackSummary", client.get("/feedback/summary").get_json())
