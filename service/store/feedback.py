"""Feedback on issued cards: stored idempotently, unknown cards flagged, summarised per rule version."""

from __future__ import annotations

import hashlib
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from service.store.db import Database, Tx, json_value


@dataclass(frozen=True)
class FeedbackEntry:
    """One validated feedback entry (the spec's or Epic's shape, normalised)."""

    card: str
    outcome: str
    outcome_timestamp: datetime
    accepted_suggestions: list[str]
    override_reasons: list[dict[str, str]]  # codings: system, code, display
    user_comment: str | None
    raw: dict[str, Any]  # as received, extensions included


@dataclass(frozen=True)
class SaveResult:
    """What one feedback submission did."""

    stored: int
    duplicates: int
    unknown_cards: int


def _json(value: Any) -> str:
    return orjson.dumps(value).decode()


def entry_key(service_id: str, issuer: str | None, raw: dict[str, Any]) -> str:
    """Identity of a submission: the same entry sent again by the same client is a duplicate."""
    canonical = orjson.dumps([service_id, issuer, raw], option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(canonical).hexdigest()


def _rate(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


class FeedbackStore:
    """Feedback rows and the governance summary."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def _issued(self, tx: Tx, service_id: str, card: str) -> tuple[str, str, list[str], str | None] | None:
        rows = tx.rows(
            "SELECT rule_id, rule_version, suggestion_uuids, issuer FROM issued_card"
            " WHERE card_uuid = ? AND service_id = ?",
            (card, service_id),
        )
        if not rows:
            return None
        rule_id, version, suggestions, issuer = rows[0]
        return str(rule_id), str(version), list(json_value(suggestions)), issuer

    def save(
        self,
        service_id: str,
        entries: list[FeedbackEntry],
        issuer: str | None,
        tenant: str | None,
        request_id: str,
    ) -> SaveResult:
        """Store each entry once; an entry for a card this service did not issue is kept, flagged."""
        stored = duplicates = unknown = 0
        now = datetime.now(UTC).isoformat()
        with self.db.transaction() as tx:
            for entry in entries:
                issued = self._issued(tx, service_id, entry.card)
                # A card issued to another client counts as unknown: no client can skew another's rates.
                known = issued is not None and issued[3] == issuer
                unknown_suggestions = (
                    [s for s in entry.accepted_suggestions if s not in issued[2]]
                    if issued is not None and known
                    else list(entry.accepted_suggestions)
                )
                cursor = tx.execute(
                    "INSERT INTO feedback (entry_key, received_at, request_id, service_id, issuer, tenant,"
                    " card_uuid, known_card, rule_id, rule_version, outcome, outcome_timestamp,"
                    " accepted_suggestions, unknown_suggestions, override_reasons, user_comment, entry)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                    " ON CONFLICT (entry_key) DO NOTHING",
                    (
                        entry_key(service_id, issuer, entry.raw),
                        now,
                        request_id,
                        service_id,
                        issuer,
                        tenant,
                        entry.card,
                        known,
                        issued[0] if known and issued else None,
                        issued[1] if known and issued else None,
                        entry.outcome,
                        entry.outcome_timestamp.astimezone(UTC).isoformat(),
                        _json(entry.accepted_suggestions),
                        _json(unknown_suggestions),
                        _json(entry.override_reasons),
                        entry.user_comment,
                        _json(entry.raw),
                    ),
                )
                if cursor.rowcount == 0:
                    duplicates += 1
                    continue
                stored += 1
                unknown += 0 if known else 1
        return SaveResult(stored, duplicates, unknown)

    def summary(self) -> dict[str, Any]:
        """Per rule and version: cards shown, accepted, overridden (latest outcome per card), reasons."""
        with self.db.transaction() as tx:
            shown = tx.rows(
                "SELECT rule_id, rule_version, COUNT(*) FROM issued_card GROUP BY rule_id, rule_version"
            )
            # A clinician may change their mind: each card counts once, by its latest outcome.
            latest = tx.rows(
                "SELECT f.rule_id, f.rule_version, f.outcome, f.override_reasons FROM feedback f"
                " WHERE f.known_card = ? AND f.id = (SELECT f2.id FROM feedback f2"
                " WHERE f2.card_uuid = f.card_uuid AND f2.known_card = ?"
                " ORDER BY f2.outcome_timestamp DESC, f2.id DESC LIMIT 1)",
                (True, True),
            )
            unknown = tx.rows("SELECT COUNT(*) FROM feedback WHERE known_card = ?", (False,))
        rules: dict[tuple[str, str], dict[str, Any]] = {}
        for rule_id, version, count in shown:
            rules[(rule_id, version)] = {"shown": int(count), "accepted": 0, "overridden": 0}
        reasons: dict[tuple[str, str], dict[tuple[str, str], dict[str, Any]]] = defaultdict(dict)
        for rule_id, version, outcome, override_reasons in latest:
            counts = rules.setdefault((rule_id, version), {"shown": 0, "accepted": 0, "overridden": 0})
            counts[outcome] += 1
            if outcome != "overridden":
                continue
            codings = json_value(override_reasons) or [{"display": "no reason given"}]
            for coding in codings:
                key = (coding.get("system", ""), coding.get("code", ""))
                reason = reasons[(rule_id, version)].setdefault(
                    key, {**({"display": coding["display"]} if coding.get("display") else {}), "count": 0}
                )
                reason["count"] += 1
        out = []
        for (rule_id, version), counts in sorted(rules.items()):
            out.append(
                {
                    "rule": rule_id,
                    "version": version,
                    **counts,
                    "noFeedback": max(0, counts["shown"] - counts["accepted"] - counts["overridden"]),
                    "acceptedRate": _rate(counts["accepted"], counts["shown"]),
                    "overriddenRate": _rate(counts["overridden"], counts["shown"]),
                    "overrideReasons": [
                        {**({"system": s} if s else {}), **({"code": c} if c else {}), **v}
                        for (s, c), v in sorted(
                            reasons[(rule_id, version)].items(), key=lambda kv: (-kv[1]["count"], kv[0])
                        )
                    ],
                }
            )
        return {
            "generatedAt": datetime.now(UTC).isoformat(),
            "rules": out,
            "unknownCardFeedback": int(unknown[0][0]),
        }
