"""Feedback stored before its card's audit record: attributed when the record lands, on both databases.

Another worker's spool may hold a card's record while a clinician's feedback on it arrives; the
feedback is kept as "unknown card" and becomes known when the record is stored. The writer does
this once per batch (service/store/audit.py), so these tests hold it to what the per-card code
did: only a card the batch itself stored counts, its first stored row decides, and feedback from
another client or service stays unknown.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from service.store.audit import EARLY_FEEDBACK_CHUNK, AuditTrail
from service.store.db import Database
from service.store.feedback import FeedbackEntry, FeedbackStore
from service.store.migrations import migrate

SERVICE = "twitching-red-flags"


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Database:
    """A migrated database of each dialect (PostgreSQL: a fresh schema on loopback)."""
    url = "" if request.param == "sqlite" else request.getfixturevalue("postgres_url")
    database = Database(url, tmp_path / "audit.sqlite3", 5.0)
    migrate(database)
    return database


def _record(key: str, cards: list[tuple[str, str, list[str]]], issuer: str | None = "ehr") -> dict[str, Any]:
    return {
        "key": key,
        "at": "2026-12-03T12:00:00+00:00",
        "request_id": key,
        "service_id": SERVICE,
        "hook": "patient-view",
        "hook_instance": key,
        "issuer": issuer,
        "subject": None,
        "tenant": None,
        "jti": None,
        "patient_hash": None,
        "status": 200,
        "latency_ms": 1.0,
        "rules": [],
        "cards": [
            {"uuid": uuid, "rule": rule, "topic": rule, "version": "1.0.0", "suggestions": offered}
            for uuid, rule, offered in cards
        ],
    }


def _feedback(
    db: Database, card: str, accepted: list[str], issuer: str | None = "ehr", service: str = SERVICE
) -> None:
    entry = FeedbackEntry(card, "accepted", datetime.now(UTC), accepted, [], None, {"card": card})
    result = FeedbackStore(db).save(service, [entry], issuer, None, f"fb-{card}-{issuer}-{service}")
    assert result.unknown_cards == 1  # no record of the card yet


def _state(db: Database, card: str) -> list[tuple[Any, ...]]:
    with db.transaction() as tx:
        rows = tx.rows(
            "SELECT known_card, rule_id, unknown_suggestions FROM feedback WHERE card_uuid = ? ORDER BY id",
            (card,),
        )
    return [(bool(known), rule, u if isinstance(u, list) else orjson.loads(u)) for known, rule, u in rows]


def test_feedback_before_the_record_becomes_known_with_its_rule(db: Database) -> None:
    """Known once the record lands; an accepted suggestion the card never offered is named."""
    _feedback(db, "c1", ["s1", "s-foreign"])
    assert AuditTrail(db).insert([_record("k1", [("c1", "rule-a", ["s1", "s2"])])]) == 1
    assert _state(db, "c1") == [(True, "rule-a", ["s-foreign"])]


def test_another_client_or_service_stays_unknown(db: Database) -> None:
    """Feedback from another issuer, or sent to another service, is not attributed."""
    _feedback(db, "c2", [], issuer="someone-else")
    _feedback(db, "c2", [], service="another-service")
    AuditTrail(db).insert([_record("k2", [("c2", "rule-a", [])])])
    assert [known for known, _, _ in _state(db, "c2")] == [False, False]


def test_a_repeated_uuid_keeps_its_first_owner(db: Database) -> None:
    """In one batch the first record's card is stored and decides; in a later batch nothing changes."""
    _feedback(db, "c3", [], issuer="ehr")
    trail = AuditTrail(db)
    trail.insert(
        [_record("k3", [("c3", "first", [])]), _record("k4", [("c3", "second", [])], issuer="other")]
    )
    assert _state(db, "c3") == [(True, "first", [])]
    _feedback(db, "c4", [], issuer="other")
    trail.insert([_record("k5", [("c4", "first", [])], issuer="ehr")])  # stored for "ehr": stays unknown
    trail.insert([_record("k6", [("c4", "second", [])], issuer="other")])  # a repeat: not stored, no change
    assert [known for known, _, _ in _state(db, "c4")] == [False]


def test_a_batch_past_one_lookup_attributes_every_card(db: Database) -> None:
    """More cards than one lookup takes: feedback on the first and the last card both become known."""
    count = EARLY_FEEDBACK_CHUNK + 20
    uuids = [f"card-{i}" for i in range(count)]
    _feedback(db, uuids[0], [])
    _feedback(db, uuids[-1], [])
    records = [_record(f"key-{i}", [(u, "rule-a", [])]) for i, u in enumerate(uuids)]
    assert AuditTrail(db).insert(records) == count
    assert _state(db, uuids[0]) == [(True, "rule-a", [])]
    assert _state(db, uuids[-1]) == [(True, "rule-a", [])]
