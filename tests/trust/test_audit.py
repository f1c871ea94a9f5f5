"""The audit trail of hook calls, and logs that carry a request id but no patient id and no token."""

from __future__ import annotations

import hashlib
import hmac
import io
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from flask import Flask

from service.logs import json_handler
from service.store.audit import DEV_SECRET_FILE
from tests.trust.conftest import (
    PATIENT_ID,
    SERVICE,
    Keys,
    SignedClient,
    bearer,
    hook_body,
    mint,
)

SECRET = "an audit key of at least thirty-two characters"


def _hash(patient_id: str, secret: bytes) -> str:
    return hmac.new(secret, f"Patient/{patient_id}".encode(), hashlib.sha256).hexdigest()


def _calls(app: Flask) -> list[dict[str, Any]]:
    found = app.extensions["stores"]
    assert found.spool.flush(5), "the audit spool did not reach the database"
    return list(found.audit.calls())


def test_a_hook_call_is_audited(make_app: Callable[..., Flask], keys: Keys) -> None:
    """Time, service, hook, hookInstance, issuer, tenant, rules with versions, uuids, latency, status."""
    app = make_app(PATIENT_HASH_SECRET=SECRET)
    client = SignedClient(app, keys.es384, tenant="hospital-42")
    body = hook_body()
    response = client.post(SERVICE, json=body, headers={"X-Request-ID": "req-123"})
    assert response.status_code == 200
    cards = response.get_json()["cards"]
    (call,) = _calls(app)
    ruleset = app.extensions["evaluator"].ruleset
    assert call["service_id"] == "twitching-red-flags"
    assert (call["hook"], call["hook_instance"]) == ("patient-view", body["hookInstance"])
    assert (call["issuer"], call["tenant"], call["subject"]) == (client.iss, "hospital-42", "cds-client-1")
    assert call["status"] == 200
    assert call["latency_ms"] > 0
    assert call["request_id"] == "req-123"
    assert call["patient_hash"] == _hash(PATIENT_ID, SECRET.encode())
    fired = [r["id"] for r in call["rules"]]
    assert "motor-neuron-red-flags" in fired
    assert all(r["version"] == ruleset.by_id(r["id"]).version for r in call["rules"])
    assert [c["uuid"] for c in call["cards"]] == [c["uuid"] for c in cards]
    assert [c["suggestions"] for c in call["cards"]] == [
        [s["uuid"] for s in c.get("suggestions", [])] for c in cards
    ]


def test_failed_calls_are_audited_and_refused_ones_are_not(
    make_app: Callable[..., Flask], keys: Keys
) -> None:
    """400 and 412 leave a record with their status; a 401 is only a log line (no flood of rows)."""
    app = make_app()
    client = SignedClient(app, keys.es384)
    body = hook_body()
    no_prefetch = {k: body[k] for k in ("hook", "hookInstance", "context")}
    assert client.post(SERVICE, json=no_prefetch).status_code == 412
    assert client.post(SERVICE, json={"hook": "patient-view"}).status_code == 400
    assert app.test_client().post(SERVICE, json=body).status_code == 401
    second, first = _calls(app)
    assert (first["status"], first["hook_instance"], first["cards"]) == (412, body["hookInstance"], [])
    assert (second["status"], second["hook"], second["patient_hash"]) == (400, None, None)


def test_no_patient_id_is_stored(make_app: Callable[..., Flask], keys: Keys, instance_dir: Path) -> None:
    """The database files hold the keyed hash, never the id (byte for byte, WAL included)."""
    app = make_app()
    SignedClient(app, keys.es384).post(SERVICE, json=hook_body())
    secret = (instance_dir / DEV_SECRET_FILE).read_bytes()
    _calls(app)
    app.extensions["stores"].db.close()
    stored = b"".join(p.read_bytes() for p in instance_dir.glob("twitch-cds.sqlite3*"))
    assert stored
    assert PATIENT_ID.encode() not in stored
    assert _hash(PATIENT_ID, secret).encode() in stored
    assert (instance_dir / DEV_SECRET_FILE).stat().st_mode & 0o077 == 0, "the dev key is private"


def test_the_dev_secret_is_per_instance_and_stable(make_app: Callable[..., Flask], keys: Keys) -> None:
    """Two starts on one instance folder hash alike (calls link up); the key is not a constant."""
    first, second = make_app(), make_app()
    for app in (first, second):
        SignedClient(app, keys.es384).post(SERVICE, json=hook_body())
    assert _calls(first)[0]["patient_hash"] == _calls(second)[0]["patient_hash"]
    assert _calls(first)[0]["patient_hash"] != _hash(PATIENT_ID, b"")


@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    """Everything logged at DEBUG and above, as the service's JSON lines."""
    stream = io.StringIO()
    handler = json_handler(stream)
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    yield stream
    root.removeHandler(handler)
    root.setLevel(level)


def test_logs_are_json_with_a_request_id_and_no_patient_data(
    make_app: Callable[..., Flask], keys: Keys, json_log: io.StringIO
) -> None:
    """A hook call, a refused call, feedback and an error: no patient id, no token, no comment."""
    app = make_app()
    client = SignedClient(app, keys.es384)
    body = hook_body()
    family = "Weakness-Family-Name"
    body["prefetch"]["patient"]["name"] = [{"family": family}]
    tokens = []
    good = mint(keys.es384)
    tokens.append(good)
    assert app.test_client().post(SERVICE, json=body, headers=bearer(good)).status_code == 200
    assert app.test_client().post(SERVICE, json=body, headers=bearer(good)).status_code == 401  # replay
    expired = mint(keys.es384, lifetime=-120)
    tokens.append(expired)
    assert app.test_client().post(SERVICE, json=body, headers=bearer(expired)).status_code == 401
    cards = client.post(SERVICE, json=body, headers={"X-Request-ID": "trace-me"}).get_json()["cards"]
    comment = "Patient pt-7d3c1a9e-unique said no"
    entry = {
        "card": cards[0]["uuid"],
        "outcome": "overridden",
        "overrideReason": {"userComment": comment},
        "outcomeTimestamp": "2026-11-22T10:00:00Z",
    }
    assert client.post(SERVICE + "/feedback", json={"feedback": [entry]}).status_code == 200
    broken = {
        **body,
        "prefetch": {**body["prefetch"], "patient": {**body["prefetch"]["patient"], "gender": 5}},
    }
    client.post(SERVICE, json=broken)
    text = json_log.getvalue()
    lines = [orjson.loads(line) for line in text.splitlines()]
    assert len(lines) >= 6
    for secret in (PATIENT_ID, family, comment, *tokens, *(t.split(".")[2] for t in tokens)):
        assert secret not in text
    in_requests = [line for line in lines if line["logger"] in ("twitch_cds.hooks", "twitch_cds.feedback")]
    assert in_requests
    assert all(line.get("request_id") for line in in_requests)
    assert any(line.get("request_id") == "trace-me" for line in lines)
    refusals = [line["message"] for line in lines if line["message"].startswith("401 on")]
    assert any("replayed" in m for m in refusals)
    assert any("expired" in m for m in refusals)


def test_request_id_is_echoed_or_made(make_app: Callable[..., Flask]) -> None:
    """A sane X-Request-ID is kept (tracing across the EHR and us); anything else is replaced."""
    client = make_app().test_client()
    assert client.get("/healthz", headers={"X-Request-ID": "abc-123"}).headers["X-Request-ID"] == "abc-123"
    made = client.get("/healthz", headers={"X-Request-ID": "bad id; with spaces"}).headers["X-Request-ID"]
    assert len(made) == 32
    assert " " not in made


def test_audit_records_reach_the_database_in_groups(make_app: Callable[..., Flask], keys: Keys) -> None:
    """A few calls wait for the writer's idle cycle (within ~1 s); 64 wake it at once, one group."""
    import time

    from service.store.spool import GROUP, IDLE_SECONDS

    app = make_app()
    client = SignedClient(app, keys.es384)
    found = app.extensions["stores"]
    assert client.post(SERVICE, json=hook_body()).status_code == 200
    assert found.spool.flush(5)  # the writer has just run a cycle: its next idle one is ~1 s away
    assert client.post(SERVICE, json=hook_body()).status_code == 200
    first = time.monotonic()
    # Not woken for one record: on the file, not yet in the database (the writer is idle).
    assert len(list(found.audit.calls())) == 1
    while len(list(found.audit.calls())) < 2:
        assert time.monotonic() - first < IDLE_SECONDS + 1.5, "the idle cycle did not take the record"
        time.sleep(0.05)
    for _ in range(GROUP):
        assert client.post(SERVICE, json=hook_body()).status_code == 200
    grouped = time.monotonic()
    while len(list(found.audit.calls())) < GROUP + 2:
        assert time.monotonic() - grouped < IDLE_SECONDS, "a full group did not wake the writer"
        time.sleep(0.02)
