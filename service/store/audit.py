"""The audit trail: one row per hook call, and every card it issued (what feedback refers to)."""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson

from service.ids import new_ordered_hex
from service.store.db import Database, Tx, json_value

log = logging.getLogger("twitch_cds.audit")
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


# Records per hook_call INSERT: 15 parameters each, 960 a statement, far under either database's limit.
CALL_ROWS = 64
_INSERT_COLUMNS = ("call_key", *_CALL_COLUMNS)
_CALL_ROW = "(" + ", ".join("?" * len(_INSERT_COLUMNS)) + ")"
_CARD_COLUMN_KEYS = ("uuid", "rule", "version", "suggestions")  # what hook_call.cards keeps of each card
EARLY_FEEDBACK_CHUNK = 500  # card uuids per lookup (SQLite allows 32,766 parameters a statement)


def _json(value: Any) -> str:
    return orjson.dumps(value).decode()


def _attribute_early_feedback(tx: Tx, uuids: list[str], call_ids: set[int]) -> None:
    """Feedback that arrived before its card's record left another worker's spool: now known.

    Decided from the cards as stored, so only a card this batch stored counts (a uuid repeated in
    a later record keeps its first row, and the feedback its first owner), and looked up once
    per EARLY_FEEDBACK_CHUNK uuids of the batch rather than once per card: feedback before the
    record is rare, and this runs for every card stored.
    """
    for first in range(0, len(uuids), EARLY_FEEDBACK_CHUNK):
        chunk = uuids[first : first + EARLY_FEEDBACK_CHUNK]
        rows = tx.rows(
            "SELECT f.id, f.service_id, f.issuer, f.accepted_suggestions, c.call_id, c.service_id,"  # noqa: S608
            " c.issuer, c.rule_id, c.rule_version, c.suggestion_uuids"
            " FROM feedback f JOIN issued_card c ON c.card_uuid = f.card_uuid"
            f" WHERE f.known_card = ? AND f.card_uuid IN ({', '.join('?' * len(chunk))})",
            (False, *chunk),
        )
        for feedback_id, service_id, issuer, accepted, call_id, card_service, card_issuer, *card in rows:
            if call_id not in call_ids:
                continue  # the card was stored before this batch: its own insert decided then
            if service_id != card_service or issuer != card_issuer:
                continue  # feedback from another client stays unknown, as FeedbackStore.save decides
            rule_id, rule_version, offered = card
            offered_list = json_value(offered)
            unknown = [s for s in json_value(accepted) if s not in offered_list]
            tx.execute(
                "UPDATE feedback SET known_card = ?, rule_id = ?, rule_version = ?, unknown_suggestions = ?"
                " WHERE id = ?",
                (True, rule_id, rule_version, _json(unknown), feedback_id),
            )


def call_record(call: HookCall, call_key: str) -> dict[str, Any]:
    """The audit record of one call as the spool keeps it (JSON); `call_key` makes replays harmless."""
    return {
        "key": call_key,
        "at": call.received_at.isoformat(),
        "request_id": call.request_id,
        "service_id": call.service_id,
        "hook": call.hook,
        "hook_instance": call.hook_instance,
        "issuer": call.issuer,
        "subject": call.subject,
        "tenant": call.tenant,
        "jti": call.jti,
        "patient_hash": call.patient_hash,
        "status": call.status,
        "latency_ms": round(call.latency_ms, 3),
        "rules": call.rules,
        "cards": [
            {
                "uuid": c.uuid,
                "rule": c.rule_id,
                "topic": c.topic_code,
                "version": c.rule_version,
                "suggestions": c.suggestions,
            }
            for c in call.cards
        ],
    }


RECORD_KEYS = frozenset(call_record(HookCall(datetime.now(), "", "", 0, 0.0), "").keys())
CARD_KEYS = frozenset({"uuid", "rule", "topic", "version", "suggestions"})


def well_formed(record: dict[str, Any]) -> bool:
    """A record this version can store (a line from a foreign or damaged file may not be one)."""
    cards = record.get("cards")
    key = record.get("key")
    return (
        record.keys() >= RECORD_KEYS
        # The batch is keyed by it, and the database hands it back as text: a non-text key would
        # store its call but lose its cards.
        and isinstance(key, str)
        and bool(key)
        and isinstance(cards, list)
        and all(isinstance(c, dict) and c.keys() >= CARD_KEYS for c in cards)
    )


class AuditTrail:
    """Writes hook calls and their cards; each record once, however often it is replayed."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def record(self, call: HookCall) -> None:
        """Store one hook call and the cards it issued, now (the request path uses the spool)."""
        self.insert([call_record(call, new_ordered_hex())])

    def insert(self, records: list[dict[str, Any]]) -> int:
        """Store spooled records in one transaction; returns how many were new (not replays)."""
        batch: dict[str, dict[str, Any]] = {}  # by call key, the first of a key only
        for record in records:
            if not well_formed(record):
                log.error("audit record %s is malformed; skipped", str(record.get("key"))[:40])
                continue
            batch.setdefault(record["key"], record)
        cards: list[tuple[Any, ...]] = []
        uuids: dict[str, None] = {}  # the batch's card uuids, in order, once each
        # Opened even for a batch of only malformed records: the writer reads a return as "the
        # database answered".
        with self.db.transaction() as tx:
            # Keys already stored are records replayed after a crash between insert and truncate.
            call_ids = self._insert_calls(tx, list(batch.values()))
            for key, record in batch.items():
                call_id = call_ids.get(key)
                if call_id is None:
                    continue
                for card in record["cards"]:
                    uuids[card["uuid"]] = None
                    cards.append(
                        (
                            card["uuid"],
                            call_id,
                            record["service_id"],
                            record["issuer"],
                            card["rule"],
                            card["topic"],
                            card["version"],
                            _json(card["suggestions"]),
                            record["at"],
                        )
                    )
            if cards:
                # One statement for the batch's cards. A uuid is issued once; ON CONFLICT keeps a
                # (never expected) repeat from failing the batch.
                tx.executemany(
                    "INSERT INTO issued_card (card_uuid, call_id, service_id, issuer, rule_id, topic_code,"
                    " rule_version, suggestion_uuids, issued_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
                    " ON CONFLICT (card_uuid) DO NOTHING",
                    cards,
                )
                _attribute_early_feedback(tx, list(uuids), set(call_ids.values()))
        return len(call_ids)

    @staticmethod
    def _insert_calls(tx: Tx, records: list[dict[str, Any]]) -> dict[str, int]:
        """The new calls' row ids by call key (a key already stored is not among them).

        One multi-row INSERT per CALL_ROWS records: a statement a row was half the writer's time.
        RETURNING names each row's key, since neither database promises the rows' order.
        """
        ids: dict[str, int] = {}
        for first in range(0, len(records), CALL_ROWS):
            chunk = records[first : first + CALL_ROWS]
            values = ", ".join([_CALL_ROW] * len(chunk))
            params: list[Any] = []
            for record in chunk:
                params += (
                    record["key"],
                    record["at"],
                    record["request_id"],
                    record["service_id"],
                    record["hook"],
                    record["hook_instance"],
                    record["issuer"],
                    record["subject"],
                    record["tenant"],
                    record["jti"],
                    record["patient_hash"],
                    record["status"],
                    record["latency_ms"],
                    _json(record["rules"]),
                    _json([{k: c[k] for k in _CARD_COLUMN_KEYS} for c in record["cards"]]),
                )
            rows = tx.rows(
                f"INSERT INTO hook_call ({', '.join(_INSERT_COLUMNS)})"  # noqa: S608
                f" VALUES {values} ON CONFLICT (call_key) DO NOTHING RETURNING call_key, id",
                params,
            )
            ids.update((str(key), int(call_id)) for key, call_id in rows)
        return ids

    def calls(self, limit: int = 100) -> list[dict[str, Any]]:
        """The latest hook calls, newest first (for tests and operators)."""
        with self.db.transaction() as tx:
            rows = tx.rows(_LATEST_CALLS, (limit,))
        out = []
        for row in rows:
            record = dict(zip(_CALL_COLUMNS, row, strict=True))
            for key in ("rules", "cards"):
                record[key] = json_value(record[key])
            record["received_at"] = str(record["received_at"])
            out.append(record)
        return out
