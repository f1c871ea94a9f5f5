"""Durable state: the audit trail of hook calls, the cards they issued, and clinicians' feedback."""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

from flask import Flask, Response, current_app, g, request

from service.ids import new_ordered_hex
from service.store.audit import AuditTrail, HookCall, PatientHasher, call_record, dev_secret, issued_cards
from service.store.db import Database
from service.store.feedback import FeedbackStore
from service.store.migrations import migrate
from service.store.spool import EXIT_DRAIN_SECONDS, AuditSpool

log = logging.getLogger("twitch_cds.audit")
HOOK_ENDPOINT = "hooks.call"
SMART_CARDS_ENDPOINT = "smart_cards.cards"  # the SMART app's patient-view cards (docs/smart-app.md)
SQLITE_FILE = "twitch-cds.sqlite3"
SPOOL_DIR = "audit-spool"


@dataclass(frozen=True)
class Stores:
    """The app's database and what is kept in it."""

    db: Database
    audit: AuditTrail
    feedback: FeedbackStore
    spool: AuditSpool  # hook calls' records on their way to the database
    patient_hash: PatientHasher
    rules_by_topic: dict[str, tuple[str, str]]  # card topic code -> (rule id, version)
    versions: dict[str, str]  # rule id -> version


def stores() -> Stores:
    """The stores built by create_app."""
    return cast(Stores, current_app.extensions["stores"])


def _hook_call(found: Stores, response: Response) -> HookCall:
    """What the audit keeps of this hook call: identifiers, never clinical content."""
    # The hook view leaves its parsed request and outcome on flask.g (absent when it failed early).
    hook_request: Any = g.get("hook_request")
    outcome: Any = g.get("hook_outcome")
    caller = g.get("caller")
    cards = issued_cards(list(getattr(outcome, "cards", None) or ()), found.rules_by_topic)
    fired = list(getattr(outcome, "fired", None) or ())
    versions = found.versions
    patient_id = getattr(hook_request, "patient_id", None)
    return HookCall(
        received_at=datetime.now(UTC),
        request_id=g.get("request_id", ""),
        service_id=g.get("audit_service_id") or (request.view_args or {}).get("service_id", ""),
        status=response.status_code,
        latency_ms=(time.perf_counter() - g.get("started", time.perf_counter())) * 1000,
        hook=getattr(hook_request, "hook", None),
        hook_instance=getattr(hook_request, "hook_instance", None),
        issuer=getattr(caller, "issuer", None),
        subject=getattr(caller, "subject", None),
        tenant=getattr(caller, "tenant", None),
        jti=getattr(caller, "jti", None),
        patient_hash=found.patient_hash(patient_id) if patient_id else None,
        rules=[{"id": r, "version": versions.get(r, "")} for r in fired],
        cards=cards,
    )


def _audit(found: Stores, response: Response) -> Response:
    # Refused callers (401) are logged, not audited: an unauthenticated flood must not fill the trail.
    if request.endpoint not in (HOOK_ENDPOINT, SMART_CARDS_ENDPOINT) or response.status_code == 401:
        return response
    # Anyone can send /smart/cards a body: its answers (200, 412, 422) are audited, its refusals
    # (400, 403 for an issuer off the list or a token the EHR refused, 413, ...) only logged.
    status = response.status_code
    if request.endpoint == SMART_CARDS_ENDPOINT and 400 <= status < 500 and status not in (412, 422):
        return response
    # A local append, never the database: a stalled database must not hold the answer. A full
    # spool refuses the record (counted, logged) and the answer still goes out.
    found.spool.append(call_record(_hook_call(found, response), new_ordered_hex()))
    return response


def spool_folder(instance: Path, db: Database) -> Path:
    """One folder per database: a record is only ever written to the database it was meant for."""
    key = hashlib.sha256(f"{db.dialect}:{db.url}".encode()).hexdigest()[:12]
    return instance / SPOOL_DIR / key


def install_stores(app: Flask) -> Stores:
    """Open (SQLite file or PostgreSQL), migrate, and record every hook call after it is answered."""
    instance = Path(app.config["INSTANCE_DIR"] or app.instance_path)
    db = Database(app.config["DATABASE_URL"], instance / SQLITE_FILE, float(app.config["DB_TIMEOUT_SECONDS"]))
    migrate(db)  # an unreachable database refuses to start, with the driver's message
    secret = str(app.config["PATIENT_HASH_SECRET"]).encode() or dev_secret(instance)
    ruleset = app.extensions["evaluator"].ruleset
    audit = AuditTrail(db)
    found = Stores(
        db=db,
        audit=audit,
        feedback=FeedbackStore(db),
        spool=AuditSpool(spool_folder(instance, db), audit.insert, int(app.config["AUDIT_SPOOL_MAX_BYTES"])),
        patient_hash=PatientHasher(secret),
        rules_by_topic={r.topic_code: (r.id, r.version) for r in ruleset.rules},
        versions={r.id: r.version for r in ruleset.rules},
    )
    app.extensions["stores"] = found
    app.after_request(lambda response: _audit(found, response))
    log.info("feedback and audit stored in %s", db.where)
    return found


def _stores_of(app: Any) -> Stores | None:
    found = getattr(app, "extensions", {}).get("stores")
    return found if isinstance(found, Stores) else None


def start_background(app: Any) -> None:
    """In a gunicorn worker after fork: start its audit writer, which adopts dead workers' spools."""
    found = _stores_of(app)
    if found is not None:
        found.spool.start()


def stop_background(app: Any, budget: float = EXIT_DRAIN_SECONDS) -> None:
    """A worker is exiting: write its backlog within `budget`; what is left waits in the spool."""
    found = _stores_of(app)
    if found is not None:
        found.spool.stop(budget)
