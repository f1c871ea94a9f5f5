"""The audit writer's batch insert, on both databases: every record under its own row, none doubled.

The writer stores a batch's calls in multi-row INSERTs of CALL_ROWS rows and maps the returned ids
back by call key (neither database promises RETURNING's order), so these tests check the mapping
where it could go wrong: replays in the middle of a batch and of a later statement, a key twice in
one batch, malformed records beside good ones, and cards filed under the right call.
"""

from __future__ import annotations

from typing import Any

from service.store.audit import CALL_ROWS, AuditTrail
from service.store.db import Database
from service.store.migrations import MIGRATIONS
from tests.trust.test_early_feedback import _record, db  # noqa: F401 (db is the fixture)


def _stored(database: Database) -> dict[str, tuple[str, str]]:
    """Each stored card's uuid: the call key and request id of the row it is filed under."""
    with database.transaction() as tx:
        rows = tx.rows(
            "SELECT c.card_uuid, h.call_key, h.request_id"
            " FROM issued_card c JOIN hook_call h ON h.id = c.call_id"
        )
    return {uuid: (key, request_id) for uuid, key, request_id in rows}


def _count(database: Database, table: str) -> int:
    with database.transaction() as tx:
        return int(tx.rows(f"SELECT COUNT(*) FROM {table}")[0][0])


def _batch(keys: list[str]) -> list[dict[str, Any]]:
    return [_record(key, [(f"{key}-a", "rule-a", ["s"]), (f"{key}-b", "rule-b", [])]) for key in keys]


def test_a_long_batch_files_every_card_under_its_own_call(db: Database) -> None:  # noqa: F811
    keys = [f"k{i:04d}" for i in range(CALL_ROWS * 2 + 7)]  # three statements, the last one short
    trail = AuditTrail(db)
    # One key of the second statement is already stored: that statement returns one row fewer.
    assert trail.insert(_batch([keys[CALL_ROWS + 3]])) == 1
    assert trail.insert(_batch(keys)) == len(keys) - 1
    stored = _stored(db)
    assert len(stored) == 2 * len(keys)
    for key in keys:
        assert stored[f"{key}-a"] == (key, key)
        assert stored[f"{key}-b"] == (key, key)


def test_replays_inside_a_batch_and_a_key_twice_are_stored_once(db: Database) -> None:  # noqa: F811
    trail = AuditTrail(db)
    assert trail.insert(_batch(["k2", "k5"])) == 2
    # k2 and k5 are replays (a crash between insert and truncate); k7 comes twice in this batch.
    again = _batch(["k1", "k2", "k3", "k7", "k5", "k6"])
    second_k7 = _record("k7", [("k7-other", "rule-c", [])])
    assert trail.insert([*again[:4], second_k7, *again[4:]]) == 4
    assert _count(db, "hook_call") == 6
    stored = _stored(db)
    assert "k7-other" not in stored  # the first record of a key decides, as one insert a row did
    assert {key for key, _ in stored.values()} == {"k1", "k2", "k3", "k5", "k6", "k7"}
    assert all(uuid.startswith(key) for uuid, (key, _) in stored.items())


def test_malformed_records_are_skipped_and_the_rest_stored(db: Database) -> None:  # noqa: F811
    good = _batch(["k1", "k2"])
    no_cards = {k: v for k, v in _record("k3", []).items() if k != "cards"}
    number_key = {**_record("k4", [("k4-a", "rule-a", [])]), "key": 4}
    null_key = {**_record("k5", [("k5-a", "rule-a", [])]), "key": None}
    assert AuditTrail(db).insert([good[0], no_cards, number_key, null_key, good[1]]) == 2
    assert _count(db, "hook_call") == 2
    assert {key for key, _ in _stored(db).values()} == {"k1", "k2"}


def test_the_patient_hash_has_no_index(db: Database) -> None:  # noqa: F811
    assert any(version == 3 for version, *_ in MIGRATIONS)
    with db.transaction() as tx:
        if tx.dialect == "sqlite":
            names = [r[0] for r in tx.rows("SELECT name FROM sqlite_master WHERE type = 'index'")]
        else:
            names = [
                r[0]
                for r in tx.rows(
                    "SELECT indexname FROM pg_indexes"
                    " WHERE tablename = 'hook_call' AND schemaname = current_schema()"
                )
            ]
    assert "hook_call_patient_hash" not in names
    assert "hook_call_call_key" in names  # replays still meet the unique key
