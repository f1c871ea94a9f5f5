"""JWT authentication of CDS clients: the attack table is refused (401), real clients' tokens pass."""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import time
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from cryptography.hazmat.primitives import serialization
from flask import Flask
from werkzeug.test import TestResponse

from service.app import create_app
from service.security import ConfigError
from service.security.guard import PUBLIC_BLUEPRINTS
from tests.conftest import EXAMPLE_DAY, load_json, shared
from tests.trust.conftest import (
    BASE,
    EHR_ISS,
    EPIC_ISS,
    HOOK_AUD,
    LEGACY_ISS,
    SERVICE,
    SPEC_ISS,
    Keys,
    KeyServer,
    b64,
    bearer,
    hook_body,
    mint,
)

WWW_AUTHENTICATE = re.compile(
    r'^Bearer realm="twitch-cds", error="invalid_token", error_description="[^"\\]+"$'
)


def _refused(response: TestResponse) -> str:
    """A bare 401 with an RFC 6750 challenge; returns the error_description."""
    assert response.status_code == 401, response.get_data(as_text=True)
    assert response.get_data() == b"", "a 401 carries no body"
    challenge = response.headers["WWW-Authenticate"]
    assert WWW_AUTHENTICATE.match(challenge), challenge
    return challenge.split('error_description="')[1].rstrip('"')


def _unsigned(claims: dict[str, Any]) -> str:
    header = b64(orjson.dumps({"alg": "none", "typ": "JWT", "kid": "ehr-es384"}))
    return f"{header}.{b64(orjson.dumps(claims))}."


def _hs256_with_public_key(keys: Keys, claims: dict[str, Any]) -> str:
    # The classic algorithm-confusion attack: HMAC keyed with the verifier's public key (PEM).
    secret = keys.rs384.private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    header = b64(orjson.dumps({"alg": "HS256", "typ": "JWT", "kid": keys.rs384.kid}))
    body = b64(orjson.dumps(claims))
    signature = hmac.new(secret, f"{header}.{body}".encode(), hashlib.sha256).digest()
    return f"{header}.{body}.{b64(signature)}"


def _tampered(keys: Keys) -> str:
    header, _, signature = mint(keys.es384).split(".")
    claims: dict[str, Any] = {"iss": EHR_ISS, "aud": HOOK_AUD, "sub": "someone-else", "jti": "x"}
    claims |= {"iat": int(time.time()), "exp": int(time.time()) + 300}
    return f"{header}.{b64(orjson.dumps(claims))}.{signature}"


def _claims() -> dict[str, Any]:
    now = int(time.time())
    return {"iss": EHR_ISS, "aud": HOOK_AUD, "iat": now, "exp": now + 300, "jti": "attack"}


NOW = int(time.time())
# name -> (token maker, the words the client is told)
ATTACKS: dict[str, tuple[Callable[[Keys, KeyServer], str], str]] = {
    "unsigned (alg none)": (lambda k, s: _unsigned(_claims()), "algorithm not accepted"),
    "HS256 keyed with the public key": (lambda k, s: _hs256_with_public_key(k, _claims()), "algorithm"),
    "wrong aud (another endpoint)": (lambda k, s: mint(k.es384, aud=BASE + "/cds-services"), "audience"),
    "wrong aud (another host)": (lambda k, s: mint(k.es384, aud="https://evil.test" + SERVICE), "audience"),
    "expired": (lambda k, s: mint(k.es384, now=NOW - 900, lifetime=300), "expired"),
    "not yet valid (nbf)": (lambda k, s: mint(k.es384, nbf=int(time.time()) + 600), "not yet valid"),
    "issued in the future (iat)": (lambda k, s: mint(k.es384, now=int(time.time()) + 600), "not yet valid"),
    "unknown issuer": (lambda k, s: mint(k.es384, iss="https://evil.test/fhir"), "untrusted issuer"),
    "unknown kid": (lambda k, s: mint(k.unpublished), "unknown key"),
    "jku not allow-listed": (
        lambda k, s: mint(k.attacker, headers={"jku": s.url("/attacker/jwks")}),
        "key set not allowed",
    ),
    "tampered payload": (lambda k, s: _tampered(k), "signature"),
    "attacker's key under a trusted kid": (
        lambda k, s: mint(k.attacker, headers={"kid": k.es384.kid}),
        "signature",
    ),
    "EC key named by an RS384 header": (
        lambda k, s: mint(k.rs384, headers={"kid": k.es384.kid}),
        "algorithm not accepted",
    ),
    "RS256 from an issuer allowed only ES384/RS384": (lambda k, s: mint(k.rs256), "algorithm not accepted"),
    "missing jti": (lambda k, s: mint(k.es384, jti=None), "missing"),
    "missing exp": (lambda k, s: mint(k.es384, exp=None), "missing"),
    "lifetime of a day": (lambda k, s: mint(k.es384, lifetime=86400), "lifetime"),
    "not a JWT": (lambda k, s: "not.a.jwt", "malformed"),
}


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_attack_is_refused(
    attack: str, make_app: Callable[..., Flask], keys: Keys, key_server: KeyServer,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    """Each forged, misdirected, stale or malformed token gets a bare 401 and a log line saying why."""
    make_token, told = ATTACKS[attack]
    token = make_token(keys, key_server)
    client = make_app().test_client()
    with caplog.at_level(logging.INFO):
        response = client.post(SERVICE, json=hook_body(), headers=bearer(token))
    assert told in _refused(response)
    reasons = [r.getMessage() for r in caplog.records if r.getMessage().startswith("401 on POST")]
    assert len(reasons) == 1, caplog.text
    signature = token.split(".")[-1]
    assert token not in caplog.text
    assert not signature or signature not in caplog.text
    assert key_server.hits["/attacker/jwks"] == 0, "a non-allow-listed jku must never be fetched"


def test_valid_es384_and_rs384_are_accepted(make_app: Callable[..., Flask], keys: Keys) -> None:
    """The sandbox's ES384 and Epic's default RS384, from the EHR's configured JWKS."""
    client = make_app().test_client()
    for key in (keys.es384, keys.rs384):
        response = client.post(SERVICE, json=hook_body(), headers=bearer(mint(key)))
        assert response.status_code == 200, response.get_data(as_text=True)
        assert response.get_json()["cards"]


def test_epic_style_token_with_allow_listed_jku(
    make_app: Callable[..., Flask], keys: Keys, key_server: KeyServer
) -> None:
    """RS384, a jku on the Epic instance, iss/sub/aud/jti/iat/exp/nbf, a JWKS entry without alg."""
    now = int(time.time())
    token = mint(
        keys.epic, iss=EPIC_ISS, sub="epic-client-id", nbf=now, headers={"jku": key_server.url("/epic/jwks")}
    )
    response = make_app().test_client().post(SERVICE, json=hook_body(), headers=bearer(token))
    assert response.status_code == 200, response.get_data(as_text=True)
    # Without the jku header Epic's issuer has no key set at all.
    refused = (
        make_app()
        .test_client()
        .post(SERVICE, json=hook_body(), headers=bearer(mint(keys.epic, iss=EPIC_ISS)))
    )
    assert "key set not allowed" in _refused(refused)


def test_rs256_from_an_issuer_that_uses_it(make_app: Callable[..., Flask], keys: Keys) -> None:
    """RS256 passes only for an issuer whose configuration lists it."""
    response = (
        make_app()
        .test_client()
        .post(SERVICE, json=hook_body(), headers=bearer(mint(keys.legacy, iss=LEGACY_ISS)))
    )
    assert response.status_code == 200, response.get_data(as_text=True)


def test_the_spec_example_key(make_app: Callable[..., Flask], key_server: KeyServer) -> None:
    """The JWK Set and private key of the CDS Hooks 2.0.1 examples (ex_21..ex_24) sign a token we accept."""
    jwks = load_json(shared("cds-hooks", "spec-2.0.1-examples", "ex_23_other.json"))
    private_jwk = load_json(shared("cds-hooks", "spec-2.0.1-examples", "ex_24_other.json"))
    header = load_json(shared("cds-hooks", "spec-2.0.1-examples", "ex_21_other.json"))
    example_claims = load_json(shared("cds-hooks", "spec-2.0.1-examples", "ex_22_other.json"))
    key_server.publish("/spec/jwks", *jwks["keys"])
    import jwt

    private = jwt.PyJWK(private_jwk).key
    now = int(time.time())
    claims = {**example_claims, "aud": HOOK_AUD, "iat": now, "exp": now + 300}
    assert claims["iss"] == SPEC_ISS
    token = jwt.encode(
        claims,
        private,
        algorithm=header["alg"],
        headers={"kid": header["kid"], "jku": key_server.url("/spec/jwks")},
    )
    response = make_app().test_client().post(SERVICE, json=hook_body(), headers=bearer(token))
    assert response.status_code == 200, response.get_data(as_text=True)


def test_leeway_accepts_small_clock_skew(make_app: Callable[..., Flask], keys: Keys) -> None:
    """A token that expired 10 s ago passes with the default 30 s leeway; 60 s ago does not."""
    client = make_app().test_client()
    now = int(time.time())
    ok = client.post(SERVICE, json=hook_body(), headers=bearer(mint(keys.es384, now=now - 310, lifetime=300)))
    assert ok.status_code == 200
    late = client.post(
        SERVICE, json=hook_body(), headers=bearer(mint(keys.es384, now=now - 360, lifetime=300))
    )
    assert "expired" in _refused(late)


def test_replayed_jti_is_refused(make_app: Callable[..., Flask], keys: Keys) -> None:
    """The same token twice: the second use is a replay (in-memory cache, one worker)."""
    client = make_app().test_client()
    token = mint(keys.es384)
    assert client.post(SERVICE, json=hook_body(), headers=bearer(token)).status_code == 200
    assert "replayed" in _refused(client.post(SERVICE, json=hook_body(), headers=bearer(token)))


def test_replay_across_two_workers_sharing_redis(
    make_app: Callable[..., Flask], keys: Keys, redis_url: str, redis_prefix: str
) -> None:
    """Two app instances (two workers or replicas) share the Redis replay cache."""
    settings = {"REDIS_URL": redis_url, "REDIS_PREFIX": redis_prefix}
    worker_a, worker_b = make_app(**settings).test_client(), make_app(**settings).test_client()
    token = mint(keys.rs384)
    assert worker_a.post(SERVICE, json=hook_body(), headers=bearer(token)).status_code == 200
    assert "replayed" in _refused(worker_b.post(SERVICE, json=hook_body(), headers=bearer(token)))
    # Without the shared store the second worker would not know: the cache is what protects.
    other = make_app(REDIS_URL="").test_client()
    assert other.post(SERVICE, json=hook_body(), headers=bearer(token)).status_code == 200


def test_a_forged_token_does_not_burn_a_genuine_jti(make_app: Callable[..., Flask], keys: Keys) -> None:
    """The replay cache records a jti only after the signature and claims hold."""
    client = make_app().test_client()
    genuine = mint(keys.es384, jti="shared-jti")
    forged = mint(keys.attacker, headers={"kid": keys.es384.kid}, jti="shared-jti")
    _refused(client.post(SERVICE, json=hook_body(), headers=bearer(forged)))
    assert client.post(SERVICE, json=hook_body(), headers=bearer(genuine)).status_code == 200


@pytest.mark.parametrize("shared", ["memory", "redis"])
def test_replays_do_not_use_up_the_issuers_rate_budget(
    make_app: Callable[..., Flask], keys: Keys, redis_url: str, redis_prefix: str, shared: str
) -> None:
    """A stolen token replayed in a loop is refused every time and never counted against its EHR."""
    redis = {"REDIS_URL": redis_url, "REDIS_PREFIX": redis_prefix} if shared == "redis" else {}
    client = make_app(RATE_LIMIT_PER_MINUTE=2, **redis).test_client()
    stolen = mint(keys.rs384)
    assert client.post(SERVICE, json=hook_body(), headers=bearer(stolen)).status_code == 200
    for _ in range(5):
        assert "replayed" in _refused(client.post(SERVICE, json=hook_body(), headers=bearer(stolen)))
    genuine = client.post(SERVICE, json=hook_body(), headers=bearer(mint(keys.rs384)))
    assert genuine.status_code == 200, "the EHR's second genuine call is within its limit of 2"
    over = client.post(SERVICE, json=hook_body(), headers=bearer(mint(keys.rs384)))
    assert over.status_code == 429


def test_replay_cache_down_is_503_not_401(make_app: Callable[..., Flask], keys: Keys) -> None:
    """An unreachable Redis refuses the call (no replay check, no answer) as the service's fault."""
    client = make_app(REDIS_URL="redis://127.0.0.1:1/0").test_client()
    response = client.post(SERVICE, json=hook_body(), headers=bearer(mint(keys.es384)))
    assert response.status_code == 503
    assert response.get_json()["resourceType"] == "OperationOutcome"


def test_jwks_is_cached_and_refetched_for_a_new_kid(
    make_app: Callable[..., Flask], keys: Keys, key_server: KeyServer
) -> None:
    """One fetch serves many calls; a rotated key (unknown kid) triggers one refetch, then passes."""
    client = make_app(JWKS_MIN_REFRESH_SECONDS=0).test_client()
    for _ in range(3):
        assert client.post(SERVICE, json=hook_body(), headers=bearer(mint(keys.es384))).status_code == 200
    assert key_server.hits["/ehr/jwks"] == 1
    key_server.publish("/ehr/jwks", keys.es384.jwk, keys.rs384.jwk, keys.unpublished.jwk)
    assert client.post(SERVICE, json=hook_body(), headers=bearer(mint(keys.unpublished))).status_code == 200
    assert key_server.hits["/ehr/jwks"] == 2


def test_unknown_kids_cannot_make_us_hammer_the_jwks(
    make_app: Callable[..., Flask], keys: Keys, key_server: KeyServer
) -> None:
    """Within JWKS_MIN_REFRESH_SECONDS, unknown kids are refused without another fetch."""
    client = make_app(JWKS_MIN_REFRESH_SECONDS=60).test_client()
    for i in range(5):
        token = mint(keys.unpublished, headers={"kid": f"random-{i}"})
        _refused(client.post(SERVICE, json=hook_body(), headers=bearer(token)))
    assert key_server.hits["/ehr/jwks"] == 1


def test_every_cds_endpoint_needs_a_token(make_app: Callable[..., Flask], keys: Keys) -> None:
    """Discovery, hook, feedback and the summary need a token whose aud is their own URL."""
    client = make_app().test_client()
    feedback = {
        "feedback": [{"card": "c", "outcome": "overridden", "outcomeTimestamp": "2026-11-22T10:00:00Z"}]
    }
    calls = [
        ("get", "/cds-services", None),
        ("post", SERVICE, hook_body()),
        ("post", SERVICE + "/feedback", feedback),
        ("get", "/feedback/summary", None),
        ("post", "/evaluate", {"resourceType": "Bundle", "type": "collection"}),
    ]
    for method, path, body in calls:
        bare = getattr(client, method)(path, json=body)
        assert bare.status_code == 401
        assert bare.headers["WWW-Authenticate"] == 'Bearer realm="twitch-cds"'
        wrong_aud = getattr(client, method)(path, json=body, headers=bearer(mint(keys.es384)))
        if path != SERVICE:
            assert "audience" in _refused(wrong_aud), path
        ok = getattr(client, method)(path, json=body, headers=bearer(mint(keys.es384, aud=BASE + path)))
        assert ok.status_code not in (401, 403), (path, ok.status_code)
    basic = client.get("/cds-services", headers={"Authorization": "Basic dXNlcjpwdw=="})
    assert basic.status_code == 401
    assert 'error="invalid_request"' in basic.headers["WWW-Authenticate"]


def test_public_documents_need_no_token(make_app: Callable[..., Flask]) -> None:
    """Health, the rule catalogue, the Questionnaire, the viewer and docs hold no patient data."""
    app = make_app()
    client = app.test_client()
    public = [
        rule.rule
        for rule in app.url_map.iter_rules()
        if rule.endpoint.split(".")[0] in PUBLIC_BLUEPRINTS
        and not rule.arguments
        and "GET" in (rule.methods or ())
    ]
    assert {"/healthz", "/rules"} <= set(public)
    for path in [*public, "/fhir/Questionnaire/twitching-assessment"]:
        assert client.get(path).status_code not in (401, 429), path


def test_development_without_issuers_says_so(caplog: pytest.LogCaptureFixture) -> None:
    """No issuers: a WARNING at start-up and a notice in discovery's description."""
    with caplog.at_level(logging.WARNING):
        app = create_app({"TESTING": True, "TODAY": EXAMPLE_DAY})
    assert any(
        r.levelno == logging.WARNING and "AUTHENTICATION IS DISABLED" in r.getMessage()
        for r in caplog.records
    )
    for service in app.test_client().get("/cds-services").get_json()["services"]:
        assert service["description"].startswith("DEVELOPMENT MODE")


def test_development_notice_leaves_options_and_head_alone(instance_dir: Any) -> None:
    """Only GET's discovery body is annotated; OPTIONS and HEAD stay bodiless 200s."""
    client = create_app(
        {"TESTING": True, "TODAY": EXAMPLE_DAY, "INSTANCE_DIR": str(instance_dir)}
    ).test_client()
    assert client.options("/cds-services").status_code == 200
    assert client.head("/cds-services").status_code == 200


def test_with_issuers_discovery_has_no_notice(make_app: Callable[..., Flask], keys: Keys) -> None:
    """The notice is only for unauthenticated development."""
    client = make_app().test_client()
    response = client.get("/cds-services", headers=bearer(mint(keys.es384, aud=BASE + "/cds-services")))
    assert all("DEVELOPMENT" not in s["description"] for s in response.get_json()["services"])


def test_production_refuses_to_start_without_issuers() -> None:
    """ENV=production with embedded defaults names every missing safeguard."""
    with pytest.raises(ConfigError) as refused:
        create_app({"ENV": "production"})
    for name in ("ISSUERS", "PUBLIC_BASE_URL", "REDIS_URL", "PATIENT_HASH_SECRET"):
        assert name in str(refused.value)


def test_production_starts_when_complete(
    make_app: Callable[..., Flask], redis_url: str, redis_prefix: str
) -> None:
    """With issuers, an https base URL, Redis and a hash secret, production starts."""
    app = make_app(
        ENV="production", REDIS_URL=redis_url, REDIS_PREFIX=redis_prefix, PATIENT_HASH_SECRET="s" * 40
    )
    assert app.test_client().get("/healthz").status_code == 200


@pytest.mark.parametrize(
    ("issuers", "words"),
    [
        ('[{"iss": "x", "jwks_url": "https://x/jwks", "algorithms": ["HS256"]}]', "not accepted"),
        ('[{"iss": "x", "jwks_url": "https://x/jwks", "algorithms": ["none"]}]', "not accepted"),
        ('[{"iss": "x", "jwks_url": "http://ehr.example.org/jwks"}]', "https"),
        ('[{"iss": "x"}]', "jwks_url"),
        ('[{"iss": "x", "jwks_url": "https://x/j", "secret": "s"}]', "unknown keys"),
        ("{not json", "not valid JSON"),
    ],
)
def test_unsafe_issuer_settings_refuse_to_start(issuers: str, words: str) -> None:
    """Symmetric algorithms, plain-http key sets and typos are configuration errors."""
    with pytest.raises(ConfigError, match=words):
        create_app({"ISSUERS": issuers, "TODAY": EXAMPLE_DAY})


def test_issuers_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, key_server: KeyServer, keys: Keys, instance_dir: Any
) -> None:
    """TWITCH_CDS_ISSUERS holds the list as JSON."""
    issuers = [{"iss": EHR_ISS, "jwks_url": key_server.url("/ehr/jwks")}]
    monkeypatch.setenv("TWITCH_CDS_ISSUERS", orjson.dumps(issuers).decode())
    monkeypatch.setenv("TWITCH_CDS_PUBLIC_BASE_URL", BASE)
    client = create_app({"TODAY": EXAMPLE_DAY, "INSTANCE_DIR": str(instance_dir)}).test_client()
    assert client.post(SERVICE, json=hook_body()).status_code == 401
    assert client.post(SERVICE, json=hook_body(), headers=bearer(mint(keys.es384))).status_code == 200
