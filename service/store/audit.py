"""The audit trail: one row per hook call, and every card it issued (what feedback refers to)."""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson

from service.store.db import Database

DEV_SECRET_FILE = "patient-hash.key"  # noqa: S105 - a file name, not a secret


@dataclass(frozen=True)
class IssuedCard:
    """One card as the audit keeps it: no text, only identifiers."""

    uuid: str
    rule_id: str
    topic_code: str
    rule_version: str
    suggestions: list[str]


@dataclass(frozen=True)
class HookCall:
    """One hook call as the audit keeps it; the patient only as a keyed hash."""

    received_at: datetime
    request_id: str
    service_id: str
    status: int
    latency_ms: float
    hook: str | None = None
    hook_instance: str | None = None
    issuer: str | None = None
    subject: str | None = None
    tenant: str | None = None
    jti: str | None = None
    patient_hash: str | None = None
    rules: list[dict[str, str]] = field(default_factory=list)
    cards: list[IssuedCard] = field(default_factory=list)


def dev_secret(instance_dir: Path) -> bytes:
    """The per-instance patient-hash key for development: made once, then read by every worker."""
    path = instance_dir / DEV_SECRET_FILE
    instance_dir.mkdir(parents=True, exist_ok=True)
    try:
        # O_EXCL: when two workers start together, one creates the key and the other reads it.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_bytes().strip()
    value = secrets.token_hex(32).encode("ascii")
    with os.fdopen(fd, "wb") as out:
        out.write(value)
    return value


class PatientHasher:
    """HMAC-SHA256 of the patient reference: the same patient links across calls, yet no id is kept."""

    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    def __call__(self, patient_id: str) -> str:
        """The keyed hash of Patient/<id>, hex."""
        return hmac.new(self._secret, f"Patient/{patient_id}".encode(), hashlib.sha256).hexdigest()


def issued_cards(
    cards: list[dict[str, Any]], rules_by_topic: Mapping[str, tuple[str, str]]
) -> list[IssuedCard]:
    """Identifiers of the cards of one answer; the rule and version come from the card's topic code."""
    out: list[IssuedCard] = []
    for card in cards:
        uuid = card.get("uuid")
        if not isinstance(uuid, str):
            continue  # a card without uuid cannot receive feedback; nothing to remember
        topic = ((card.get("source") or {}).get("topic") or {}).get("code") or ""
        rule_id, version = rules_by_topic.get(topic, (topic, ""))
        suggestions = [s["uuid"] for s in card.get("suggestions") or () if isinstance(s.get("uuid"), str)]
        out.append(IssuedCard(uuid, rule_id, topic, version, suggestions))
    return out


_CALL_COLUMNS = (
    "received_at",
    "request_id",
    "service_id",
    "hook",
    "hook_instance",
    "issuer",
    "subject",
    "tenant",
    "jti",
    "patient_hash",
    "status",
    "latency_ms",
    "rules",
    "cards",
)

_LATEST_CALLS = f"SELECT {', '.join(_CALL_COLUMNS)} FROM hook_call ORDER BY id DESC LIMIT ?"  # noqa: S608


def _json(value: Any) -> str:
    return orjson.dumps(value).decode()


class AuditTrail:
    """Writes hook calls and their cards in one transaction."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def record(self, call: HookCall) -> None:
        """Store one hook call and the cards it issued."""
        at = call.received_at.isoformat()
        cards = [
            {"uuid": c.uuid, "rule": c.rule_id, "version": c.rule_version, "suggestions": c.suggestions}
            for c in call.cards
        ]
        with self.db.transaction() as tx:
            row = tx.execute(
                "INSERT INTO hook_call (received_at, request_id, service_id, hook, hook_instance,"
                " issuer, subject, tenant, jti, patient_hash, status, latency_ms, rules, cards)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
                (
                    at,
                    call.request_id,
                    call.service_id,
                    call.hook,
                    call.hook_instance,
                    call.issuer,
                    call.subject,
                    call.tenant,
                    call.jti,
                    call.patient_hash,
                    call.status,
                    round(call.latency_ms, 3),
                    _json(call.rules),
                    _json(cards),
                ),
            ).fetchone()
            call_id = int(row[0])
            for card in call.cards:
                # A uuid is issued once; ON CONFLICT keeps a (never expected) repeat from failing the call.
                tx.execute(
                    "INSERT INTO issued_card (card_uuid, call_id, service_id, issuer, rule_id, topic_code,"
                    " rule_version, suggestion_uuids, issued_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
                    " ON CONFLICT (card_uuid) DO NOTHING",
                    (
                        card.uuid,
                        call_id,
                        call.service_id,
                        call.issuer,
                        card.rule_id,
                        card.topic_code,
                        card.rule_version,
                        _json(card.suggestions),
                        at,
                    ),
                )

    def calls(self, limit: int = 100) -> list[dict[str, Any]]:
        """The latest hook calls, newest first (for tests and operators)."""
        with self.db.transaction() as tx:
            rows = tx.rows(_LATEST_CALLS, (limit,))
        out = []
        for row in rows:
            record = dict(zip(_CALL_COLUMNS, row, strict=True))
            for key in ("rules", "cards"):
                if isinstance(record[key], str):
                    record[key] = orjson.loads(record[key])
            record["received_at"] = str(record["received_at"])
            out.append(record)
        return out
