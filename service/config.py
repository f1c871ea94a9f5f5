"""Settings: embedded defaults, overridden by TWITCH_CDS_* environment variables or create_app(config)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parent.parent

# Each setting: default and a one-line meaning; README's configuration table mirrors this.
DEFAULTS: dict[str, tuple[Any, str]] = {
    "MAX_CONTENT_LENGTH": (8 * 1024 * 1024, "Largest request body in bytes; larger gets 413."),
    "RULES_DIR": (str(PROJECT_ROOT / "rules"), "Folder of the rule set and its reference data."),
    "LAB_CODE_MAP": (
        "",
        "A FHIR R4 ConceptMap (JSON file) mapping this deployment's local lab codes to known codes;"
        " checked at start-up.",
    ),
    "CANONICAL_BASE": (
        "https://twitch-cds.example.org/fhir",
        "Base of canonical URLs (Questionnaire, local code systems); set it to your own domain.",
    ),
    "SERVICE_ID": (
        "twitching-red-flags",
        "The patient-view service id; order-select and order-sign are this id + -order-select, -order-sign.",
    ),
    "LOG_LEVEL": ("INFO", "Python log level."),
    "WARM_UP": (
        0,
        "1: run one dummy evaluation at start-up so the first call is not slow (gunicorn sets 1).",
    ),
    "TODAY": ("", "Evaluate as of this ISO date instead of today (reproducible tests and demos)."),
    # Serving (gunicorn.conf.py, docs/deploy.md): read by the gunicorn configuration, not the app.
    "BIND": ("127.0.0.1:8080", "Address gunicorn listens on (the container image sets 0.0.0.0:8080)."),
    "WORKERS": (0, "gunicorn worker processes; 0: one per CPU the process may use (cgroup limit)."),
    "THREADS": (1, "Threads per worker; 1: sync workers, more: gthread workers."),
    "OPENAPI_PATH": ("", "openapi.yaml served at /openapi.yaml and /docs; empty: the checkout's."),
    "EXAMPLES_DIR": ("", "fhir_examples/ folder the card viewer offers; empty: the checkout's."),
    # Trust (docs/security.md): authentication, storage, audit and abuse limits.
    "ENV": ("development", "development or production; production refuses to start without issuers etc."),
    "PUBLIC_BASE_URL": ("", "External base URL (with any path prefix); a JWT's aud must be it + the path."),
    "ISSUERS": ("[]", "JSON list of trusted CDS clients {iss, jwks_url, jku, algorithms, subjects}."),
    "JWT_LEEWAY_SECONDS": (30, "Clock skew allowed on exp, iat and nbf."),
    "JWT_MAX_LIFETIME_SECONDS": (3600, "Longest exp - iat accepted (bounds the replay cache)."),
    "JWKS_CACHE_SECONDS": (3600, "How long fetched JWKS keys are trusted before a refetch."),
    "JWKS_MIN_REFRESH_SECONDS": (10, "Least time between two fetches of one JWKS (unknown kid)."),
    "JWKS_TIMEOUT_SECONDS": (5, "Connect and read timeout of a JWKS fetch."),
    "REDIS_URL": ("", "Redis for the jti replay cache and rate limits; empty: in-process only."),
    "REDIS_TIMEOUT_SECONDS": (0.25, "Connect and reply timeout of one Redis round trip (no retries)."),
    "REDIS_PREFIX": ("twitch-cds:", "Prefix of every Redis key this service writes."),
    "DATABASE_URL": ("", "postgresql://... for feedback and audit; empty: SQLite in INSTANCE_DIR."),
    "DB_TIMEOUT_SECONDS": (
        0.5,
        "Most one database operation may take (connect and statements); past it, 503 or spooled.",
    ),
    "AUDIT_SPOOL_MAX_BYTES": (
        67108864,
        "Bytes of audit records a worker keeps on disk while the database is away; past it, refused.",
    ),
    "INSTANCE_DIR": ("", "Writable folder: SQLite file, audit spool, dev secret; empty: Flask's instance."),
    "PATIENT_HASH_SECRET": ("", "HMAC key for patient references in the audit; empty: generated (dev)."),
    "RATE_LIMIT_PER_MINUTE": (600, "Requests per minute per issuer (per client address without auth)."),
    "MAX_JSON_DEPTH": (64, "Deepest JSON nesting accepted in the parts of a body read; deeper gets 400."),
    "VALIDATION_MEMO_ENTRIES": (
        2048,
        "Valid resources per worker whose models (hook calls: light objects) are reused; 0: off.",
    ),
    "VALIDATION_MEMO_BYTES": (
        4194304,
        "Bytes of JSON the memo keeps per worker (models take ~10x); a resource over 1/64 is not kept.",
    ),
    "CORS_ORIGINS": ("*", "Browser origins allowed: * or a JSON list of origins."),
    # Fallback fetch from the EHR's FHIR server when prefetch lacks data (docs/fhir-server.md).
    "FHIR_SERVER_ALLOWLIST": (
        "[]",
        "JSON list of FHIR base URLs the service may fetch from; [] disables fetching.",
    ),
    "FHIR_FETCH_BUDGET_SECONDS": (2.0, "Time the whole fallback fetch may take (all requests, all pages)."),
    "FHIR_FETCH_MAX_PAGES": (10, "Pages read per search (following next links); more ends on a warning."),
    "FHIR_FETCH_PAGE_SIZE": (100, "_count asked of each search page."),
    "FHIR_FETCH_MAX_BYTES": (4194304, "Most bytes read (decoded) per read or search, all pages together."),
    "FHIR_CA_BUNDLE": ("", "PEM file of CAs that sign the FHIR servers' TLS certificates; empty: certifi."),
    # The SMART app that records the twitching assessment in the EHR (docs/smart-app.md).
    "SMART_CLIENT_ID": ("", "Client id the EHR registered for the SMART app; empty: no app, no card link."),
    "SMART_ALLOWED_ISSUERS": (
        "[]",
        "JSON list of FHIR base URLs (iss) the app may be launched from; matched as FHIR_SERVER_ALLOWLIST.",
    ),
    "SMART_SCOPES": (
        "launch patient/Patient.r patient/Observation.rs patient/Condition.rs"
        " patient/QuestionnaireResponse.rs patient/QuestionnaireResponse.c",
        "Scopes the app asks for (SMART v2); /smart/cards reads each type they let it search.",
    ),
    "SMART_CONNECT_ORIGINS": (
        "[]",
        "JSON list of extra https origins the app's page may call (a token endpoint off the FHIR origin).",
    ),
}

ENV_PREFIX = "TWITCH_CDS_"


def load_config(overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Merge defaults, environment and explicit overrides (in that order of precedence)."""
    config: dict[str, Any] = {key: default for key, (default, _) in DEFAULTS.items()}
    for key, (default, _) in DEFAULTS.items():
        raw = os.environ.get(ENV_PREFIX + key)
        if raw is not None:
            config[key] = type(default)(raw) if isinstance(default, int) else raw
    config.update(overrides or {})
    return config
