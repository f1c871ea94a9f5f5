"""Prometheus metrics: requests, hook latency, cards, FHIR fetches; summed across gunicorn workers.

Under gunicorn, gunicorn.conf.py sets PROMETHEUS_MULTIPROC_DIR before this module is imported, so
every worker writes its samples to files there and GET /metrics sums them (prometheus-client's
multiprocess mode). Without it (tests, `python -m service`) the process's own registry is served.
Labels are route templates, statuses, rule ids and indicators: never a patient id or request data.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from typing import Any

from flask import Flask, Response, g, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# From well under the 25 ms target to the 5 s a CDS client waits (Da Vinci CRD, p90).
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

REQUESTS = Counter(
    "twitch_cds_http_requests",
    "HTTP requests answered, by route template, method and status.",
    ["route", "method", "status"],
)
REQUEST_SECONDS = Histogram(
    "twitch_cds_http_request_duration_seconds",
    "Time from the request reaching Flask to the answer, by route template.",
    ["route"],
    buckets=LATENCY_BUCKETS,
)
HOOK_SECONDS = Histogram(
    "twitch_cds_hook_duration_seconds",
    "Time to answer a hook call that produced cards (envelope, fetch, rules, cards), by hook.",
    ["hook"],
    buckets=LATENCY_BUCKETS,
)
CARDS = Counter(
    "twitch_cds_cards",
    "Cards returned by hook calls and /evaluate, by rule id (or dataquality) and indicator.",
    ["rule", "indicator"],
)
FETCH_SECONDS = Histogram(
    "twitch_cds_fhir_fetch_duration_seconds",
    "Time of one fallback fetch from the EHR's FHIR server (all keys, all pages).",
    buckets=LATENCY_BUCKETS,
)
FETCH_FAILURES = Counter(
    "twitch_cds_fhir_fetch_failures",
    "Prefetch keys the fallback fetch could not fill, by FHIR issue code (timeout, forbidden, ...).",
    ["code"],
)
FETCH_RETRIES = Counter(
    "twitch_cds_fhir_fetch_retries",
    "GETs to the EHR's FHIR server made once more after a connection error (reset, refused, dropped).",
)

# The audit spool (service/store/spool.py): how far the audit trail is behind the database.
SPOOL_PENDING = Gauge(
    "twitch_cds_audit_spool_pending_records",
    "Audit records in the spool files not yet in the database (summed over live workers).",
    multiprocess_mode="livesum",
)
SPOOL_OLDEST = Gauge(
    "twitch_cds_audit_spool_oldest_age_seconds",
    "Seconds the oldest pending audit record has waited for the database (oldest over workers).",
    multiprocess_mode="livemax",
)
SPOOL_BYTES = Gauge(
    "twitch_cds_audit_spool_bytes",
    "Bytes in the spool files (each bounded by AUDIT_SPOOL_MAX_BYTES; summed over live workers).",
    multiprocess_mode="livesum",
)
SPOOL_DROPPED = Counter(
    "twitch_cds_audit_spool_dropped",
    "Audit records NOT kept: the spool was full or the disk refused the write, by reason.",
    ["reason"],
)
SPOOL_WRITTEN = Counter(
    "twitch_cds_audit_records_written",
    "Audit records moved from the spool into the database.",
)


def count_cards(cards: Iterable[dict[str, Any]], rule_by_topic: dict[str, str]) -> None:
    """Count each card under its rule id (from the topic code) and indicator."""
    for card in cards:
        topic = str(((card.get("source") or {}).get("topic") or {}).get("code", ""))
        CARDS.labels(rule_by_topic.get(topic, topic or "unknown"), str(card.get("indicator"))).inc()


def observe_fetch(seconds: float, failure_codes: Iterable[str]) -> None:
    """Record one fallback fetch: its duration and the issue code of each key it failed."""
    FETCH_SECONDS.observe(seconds)
    for code in failure_codes:
        FETCH_FAILURES.labels(code).inc()


def exposition() -> bytes:
    """The text exposition: summed over every worker's files in multiprocess mode."""
    if os.environ.get(MULTIPROC_ENV):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return bytes(generate_latest(registry))
    return bytes(generate_latest(REGISTRY))


def metrics_response() -> Response:
    """GET /metrics."""
    return Response(exposition(), content_type=CONTENT_TYPE_LATEST)


def _record(response: Response) -> Response:
    # The route template (/cds-services/<service_id>), never the path: a path could carry an id.
    route = request.url_rule.rule if request.url_rule is not None else "unmatched"
    REQUESTS.labels(route, request.method, str(response.status_code)).inc()
    started = g.get("metrics_started")
    if started is not None:
        REQUEST_SECONDS.labels(route).observe(time.perf_counter() - started)
    return response


def _start() -> None:
    g.metrics_started = time.perf_counter()


def install_metrics(app: Flask) -> None:
    """Count every answer (errors included) by route template and status."""
    app.before_request(_start)
    app.after_request(_record)
