"""Versioned schema migrations: each runs once, recorded in schema_migrations, under a lock."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from service.store.db import MIGRATION_TIMEOUT_SECONDS, TYPES, Database, Tx

log = logging.getLogger("twitch_cds.store")

# Append only: a released migration is never edited; a change is a new version.
MIGRATIONS: tuple[tuple[int, str, tuple[str, ...]], ...] = (
    (
        1,
        "audit trail, issued cards and feedback",
        (
            """CREATE TABLE hook_call (
                id {pk},
                received_at {ts} NOT NULL,
                request_id TEXT NOT NULL,
                service_id TEXT NOT NULL,
                hook TEXT,
                hook_instance TEXT,
                issuer TEXT,
                subject TEXT,
                tenant TEXT,
                jti TEXT,
                patient_hash TEXT,
                status INTEGER NOT NULL,
                latency_ms REAL NOT NULL,
                rules {json} NOT NULL,
                cards {json} NOT NULL
            )""",
            "CREATE INDEX hook_call_received_at ON hook_call (received_at)",
            "CREATE INDEX hook_call_patient_hash ON hook_call (patient_hash)",
            """CREATE TABLE issued_card (
                card_uuid TEXT PRIMARY KEY,
                call_id {bigint} NOT NULL REFERENCES hook_call (id),
                service_id TEXT NOT NULL,
                issuer TEXT,
                rule_id TEXT NOT NULL,
                topic_code TEXT NOT NULL,
                rule_version TEXT NOT NULL,
                suggestion_uuids {json} NOT NULL,
                issued_at {ts} NOT NULL
            )""",
            "CREATE INDEX issued_card_rule ON issued_card (rule_id, rule_version)",
            """CREATE TABLE feedback (
                id {pk},
                entry_key TEXT NOT NULL UNIQUE,
                received_at {ts} NOT NULL,
                request_id TEXT NOT NULL,
                service_id TEXT NOT NULL,
                issuer TEXT,
                tenant TEXT,
                card_uuid TEXT NOT NULL,
                known_card {bool} NOT NULL,
                rule_id TEXT,
                rule_version TEXT,
                outcome TEXT NOT NULL,
                outcome_timestamp {ts} NOT NULL,
                accepted_suggestions {json} NOT NULL,
                unknown_suggestions {json} NOT NULL,
                override_reasons {json} NOT NULL,
                user_comment TEXT,
                entry {json} NOT NULL
            )""",
            "CREATE INDEX feedback_card ON feedback (card_uuid)",
        ),
    ),
    (
        2,
        "hook_call.call_key: the audit spool's id of a call, so a replayed record is not doubled",
        (
            "ALTER TABLE hook_call ADD COLUMN call_key TEXT",
            "CREATE UNIQUE INDEX hook_call_call_key ON hook_call (call_key)",
        ),
    ),
    (
        3,
        "hook_call.patient_hash loses its index: no query of the service reads it, and as a keyed hash"
        " (random by design) it dirtied a random index page with every record stored",
        ("DROP INDEX IF EXISTS hook_call_patient_hash",),
    ),
)

_CREATE_TABLE = """CREATE TABLE IF NOT EXISTS schema_migrations (
    version INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    applied_at TEXT NOT NULL
)"""
# Any fixed number: every worker and replica takes the same advisory lock while migrating.
_PG_LOCK_ID = 7_460_515_801


def _lock(tx: Tx) -> None:
    if tx.dialect == "postgresql":
        tx.execute(f"SELECT pg_advisory_xact_lock({_PG_LOCK_ID})")
    # SQLite: the transaction's BEGIN IMMEDIATE already holds the database's write lock.


def migrate(db: Database) -> list[int]:
    """Apply every migration not yet recorded; returns the versions applied now."""
    applied_now: list[int] = []
    # Longer than a request's budget: another worker may hold the lock while it migrates.
    with db.transaction(MIGRATION_TIMEOUT_SECONDS) as tx:
        _lock(tx)
        tx.execute(_CREATE_TABLE)
        done = {int(r[0]) for r in tx.rows("SELECT version FROM schema_migrations")}
        for version, name, statements in MIGRATIONS:
            if version in done:
                continue
            for statement in statements:
                tx.execute(statement.format(**TYPES[tx.dialect]))
            tx.execute(
                "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                (version, name, datetime.now(UTC).isoformat()),
            )
            applied_now.append(version)
    if applied_now:
        log.info("database schema migrated to version %d (%s)", applied_now[-1], db.where)
    return applied_now


def schema_version(db: Database) -> int:
    """The highest applied migration (0 for an empty database)."""
    with db.transaction() as tx:
        tx.execute(_CREATE_TABLE)
        rows = tx.rows("SELECT MAX(version) FROM schema_migrations")
    return int(rows[0][0] or 0)
