"""The request edge: request id, bearer-JWT authentication, rate limits, CORS and security headers."""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import orjson
from flask import Flask, Response, g, request

from service.errors import ServiceUnavailable, TooManyRequests
from service.ids import new_hex
from service.security.issuers import ConfigError, Issuer, parse_issuers
from service.security.jwks import JwksCache
from service.security.shared import (
    Admission,
    MemoryState,
    RedisState,
    SharedState,
    StoreUnavailable,
    redis_client,
)
from service.security.tokens import AuthError, Caller, TokenVerifier, shown

log = logging.getLogger("twitch_cds.security")

ENVIRONMENTS = ("development", "production")
# Blueprints that serve no patient data and do no work worth limiting: open to anyone. The
# card viewer, API docs and SMART app pages are static pages; their calls to the API are still checked.
PUBLIC_BLUEPRINTS = frozenset({"health", "catalogue", "fhir", "ui", "apidocs", "smart"})
# Endpoints whose caller proves access with the EHR's own token in the body, checked by the EHR
# (docs/smart-app.md): no CDS client JWT, which a browser app cannot have, but rate-limited.
EHR_TOKEN_ENDPOINTS = frozenset({"smart_cards.cards"})
DISCOVERY_ENDPOINT = "discovery.services"
REALM = "twitch-cds"
REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
MIN_SECRET_LENGTH = 32
DEV_NOTICE = (
    "DEVELOPMENT MODE: this service does not authenticate its callers (no JWT issuers are"
    " configured); do not send it real patient data. "
)
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    # JSON only: nothing may be loaded, framed or submitted from a response of this service.
    "Content-Security-Policy": (
        "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    ),
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}
CORS_ALLOW_HEADERS = "Authorization, Content-Type"
CORS_ALLOW_METHODS = "GET, POST, OPTIONS"
CORS_EXPOSE_HEADERS = "WWW-Authenticate, Retry-After, X-Request-ID"


@dataclass(frozen=True)
class Guard:
    """Everything the request hooks need, built once per app."""

    verifier: TokenVerifier | None  # None: development without issuers (no authentication)
    shared: SharedState  # jti replay cache and rate counters
    rate_limit: int
    public_base_url: str
    cors_origins: frozenset[str] | None  # None: any origin
    hsts: bool


def _cors_origins(raw: Any) -> frozenset[str] | None:
    if raw in ("*", ["*"]):
        return None
    if isinstance(raw, str):
        try:
            raw = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise ConfigError('CORS_ORIGINS must be "*" or a JSON list of origins') from exc
    if not isinstance(raw, list) or not all(isinstance(o, str) and o for o in raw):
        raise ConfigError('CORS_ORIGINS must be "*" or a JSON list of origins')
    return None if "*" in raw else frozenset(o.rstrip("/") for o in raw)


def check_settings(config: dict[str, Any], issuers: dict[str, Issuer]) -> None:
    """Refuse to start on settings that are unsafe for the environment named by ENV."""
    env = config["ENV"]
    if env not in ENVIRONMENTS:
        raise ConfigError(f"ENV must be one of {ENVIRONMENTS}, not {env!r}")
    base = config["PUBLIC_BASE_URL"]
    if base and urlsplit(base).scheme not in ("http", "https"):
        raise ConfigError(f"PUBLIC_BASE_URL must be an absolute URL, not {base!r}")
    if env != "production":
        return
    problems = []
    if not issuers:
        problems.append("ISSUERS is empty: every caller would be anonymous")
    if not base.startswith("https://"):
        problems.append("PUBLIC_BASE_URL must be the https URL callers use (it is every token's aud)")
    if not config["REDIS_URL"]:
        problems.append("REDIS_URL is empty: the jti replay cache would not be shared by workers")
    if len(str(config["PATIENT_HASH_SECRET"])) < MIN_SECRET_LENGTH:
        problems.append(f"PATIENT_HASH_SECRET must be at least {MIN_SECRET_LENGTH} characters")
    if problems:
        raise ConfigError("production settings refused: " + "; ".join(problems))


def build_guard(app: Flask) -> Guard:
    """Parse and check the settings, connect the shared stores; ConfigError refuses to start."""
    config = app.config
    issuers = parse_issuers(config["ISSUERS"])
    check_settings(dict(config), issuers)
    shared: SharedState
    if config["REDIS_URL"]:
        client = redis_client(config["REDIS_URL"], float(config["REDIS_TIMEOUT_SECONDS"]))
        shared = RedisState(client, config["REDIS_PREFIX"])
    else:
        shared = MemoryState()
    verifier = None
    if issuers:
        jwks = JwksCache(
            ttl=config["JWKS_CACHE_SECONDS"],
            min_refresh=config["JWKS_MIN_REFRESH_SECONDS"],
            timeout=config["JWKS_TIMEOUT_SECONDS"],
        )
        verifier = TokenVerifier(
            issuers, jwks, config["JWT_LEEWAY_SECONDS"], config["JWT_MAX_LIFETIME_SECONDS"]
        )
        log.info("authentication on: %d trusted issuer(s): %s", len(issuers), ", ".join(sorted(issuers)))
    else:
        log.warning(
            "AUTHENTICATION IS DISABLED: no JWT issuers are configured (ENV=%s). Any caller is"
            " accepted. Set TWITCH_CDS_ISSUERS before connecting real patient data.",
            config["ENV"],
        )
    if issuers and not config["PUBLIC_BASE_URL"]:
        log.warning("PUBLIC_BASE_URL is empty: token audiences are checked against the Host header")
    if not config["REDIS_URL"] and issuers:
        log.warning("REDIS_URL is empty: the jti replay cache is per process, not shared by workers")
    return Guard(
        verifier=verifier,
        shared=shared,
        rate_limit=int(config["RATE_LIMIT_PER_MINUTE"]),
        public_base_url=str(config["PUBLIC_BASE_URL"]).rstrip("/"),
        cors_origins=_cors_origins(config["CORS_ORIGINS"]),
        hsts=str(config["PUBLIC_BASE_URL"]).startswith("https://"),
    )


def current_caller() -> Caller | None:
    """The verified caller of this request (None without authentication)."""
    caller: Caller | None = g.get("caller")
    return caller


def _unauthorized(error: str | None, description: str | None) -> Response:
    # Bare, as RFC 6750 has it: the header says why; no body that could tell an attacker more.
    params = [f'realm="{REALM}"']
    if error:
        params.append(f'error="{error}"')
    if description:
        params.append(f'error_description="{description}"')
    response = Response(status=401)
    response.headers["WWW-Authenticate"] = "Bearer " + ", ".join(params)
    del response.headers["Content-Type"]
    return response


def _authenticate(guard: Guard) -> Response | None:
    assert guard.verifier is not None
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if not header:
        log.warning("401 on %s %s: no Authorization header", request.method, request.path)
        return _unauthorized(None, None)
    if scheme.lower() != "bearer" or not token.strip():
        log.warning("401 on %s %s: Authorization is not a Bearer token", request.method, request.path)
        return _unauthorized("invalid_request", "use Authorization: Bearer <JWT>")
    audience = (guard.public_base_url or request.host_url.rstrip("/")) + request.path
    try:
        g.caller = guard.verifier.verify(token.strip(), audience)
    except AuthError as exc:
        log.warning("401 on %s %s: %s", request.method, request.path, exc.reason)
        return _unauthorized("invalid_token", exc.description)
    return None


def _admit(guard: Guard) -> Response | None:
    """Check the jti was never used and count the request: one call to the shared state."""
    caller = current_caller()
    key = f"iss:{caller.issuer}" if caller else f"addr:{request.remote_addr}"
    try:
        jti_key, jti_ttl = (caller.jti_key, caller.jti_ttl) if caller else (None, 0)
        admission = guard.shared.admit(jti_key, jti_ttl, key, guard.rate_limit)
    except StoreUnavailable as exc:
        if caller is not None:
            # Without the replay cache a stolen token could be replayed: refuse, but say it is ours.
            log.error("replay cache unavailable (%s): refusing %s %s", exc, request.method, request.path)
            raise ServiceUnavailable.single("the service cannot check tokens right now; retry later") from exc
        # Fail open: losing the limiter for a moment must not take decision support away.
        log.error("rate-limit store unavailable (%s); request allowed", exc)
        return None
    return _enforce(guard, caller, admission)


def _enforce(guard: Guard, caller: Caller | None, admission: Admission) -> Response | None:
    if caller is not None and not admission.fresh:
        reason = f"jti {shown(caller.jti)} replayed (already used); iss {caller.issuer}"
        log.warning("401 on %s %s: %s", request.method, request.path, reason)
        g.caller = None  # a replayed token is nobody's: not audited, not counted as its issuer's
        return _unauthorized("invalid_token", "token replayed")
    if admission.retry_after is not None:
        g.retry_after = admission.retry_after
        who = caller.issuer if caller else "an unauthenticated client"
        log.warning("429 on %s %s: %s is over %d/min", request.method, request.path, who, guard.rate_limit)
        raise TooManyRequests.single(
            f"more than {guard.rate_limit} requests a minute; retry after {admission.retry_after} s"
        )
    return None


def _before(guard: Guard) -> Response | None:
    incoming = request.headers.get("X-Request-ID", "")
    g.request_id = incoming if REQUEST_ID.match(incoming) else new_hex()
    g.started = time.perf_counter()
    g.caller = None
    if request.method == "OPTIONS" or request.endpoint in (None, "static"):
        return None  # preflight, unknown routes (404/405) and static files
    if request.blueprint in PUBLIC_BLUEPRINTS:
        return None
    if guard.verifier is not None and request.endpoint not in EHR_TOKEN_ENDPOINTS:
        refused = _authenticate(guard)
        if refused is not None:
            return refused
    return _admit(guard)


def _dev_notice(response: Response) -> None:
    # Development without issuers: discovery itself says that nothing is authenticated.
    body = orjson.loads(response.get_data())
    for service in body.get("services", ()):
        service["description"] = DEV_NOTICE + service.get("description", "")
    response.set_data(orjson.dumps(body))


def _cors(guard: Guard, response: Response) -> None:
    origin = request.headers.get("Origin")
    if guard.cors_origins is None:
        response.headers["Access-Control-Allow-Origin"] = "*"
    elif origin and origin.rstrip("/") in guard.cors_origins:
        response.headers["Access-Control-Allow-Origin"] = origin
        response.vary.add("Origin")
    else:
        return
    response.headers["Access-Control-Expose-Headers"] = CORS_EXPOSE_HEADERS
    if request.method == "OPTIONS":
        response.headers["Access-Control-Allow-Methods"] = CORS_ALLOW_METHODS
        response.headers["Access-Control-Allow-Headers"] = CORS_ALLOW_HEADERS
        response.headers["Access-Control-Max-Age"] = "600"


def _after(guard: Guard, response: Response) -> Response:
    # GET only: HEAD and OPTIONS answer 200 without a discovery body to annotate.
    if (
        guard.verifier is None
        and request.method == "GET"
        and request.endpoint == DISCOVERY_ENDPOINT
        and response.status_code == 200
        and response.is_json
    ):
        _dev_notice(response)
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    # Answers are about one patient at one moment: no cache, shared or private, may keep them.
    response.headers.setdefault("Cache-Control", "no-store")
    if guard.hsts:
        response.headers.setdefault("Strict-Transport-Security", "max-age=31536000")
    if response.status_code == 429 and g.get("retry_after"):
        response.headers["Retry-After"] = str(g.retry_after)
    if g.get("request_id"):
        response.headers["X-Request-ID"] = g.request_id
    _cors(guard, response)
    return response


def install_guard(app: Flask) -> Guard:
    """Build the guard and hook it into every request."""
    guard = build_guard(app)
    app.extensions["guard"] = guard
    app.before_request(lambda: _before(guard))
    app.after_request(lambda response: _after(guard, response))
    return guard
