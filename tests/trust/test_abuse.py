"""Abuse resistance: body size and nesting, per-issuer rate limits, CORS, security headers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask

from service.app import create_app
from service.security.limits import json_depth_exceeds
from tests.conftest import EXAMPLE_DAY
from tests.trust.conftest import BASE, LEGACY_ISS, SERVICE, Keys, SignedClient, hook_body

FEEDBACK = SERVICE + "/feedback"


def _dev(instance_dir: Any, **settings: Any) -> Flask:
    return create_app({"TESTING": True, "TODAY": EXAMPLE_DAY, "INSTANCE_DIR": str(instance_dir), **settings})


def _nested(depth: int) -> Any:
    value: Any = 1
    for i in range(depth):
        value = [value] if i % 2 else {"a": value}
    return value


def test_depth_counter() -> None:
    """Objects and arrays count; scalars do not."""
    assert not json_depth_exceeds(_nested(10), 10)
    assert json_depth_exceeds(_nested(11), 10)
    assert not json_depth_exceeds("text", 0)


@pytest.mark.parametrize("path", [SERVICE, FEEDBACK, "/evaluate"])
def test_deep_nesting_is_400(path: str, instance_dir: Any) -> None:
    """Past MAX_JSON_DEPTH every JSON endpoint answers 400 before any work."""
    client = _dev(instance_dir, MAX_JSON_DEPTH=20).test_client()
    response = client.post(path, json={"deep": _nested(40)})
    assert response.status_code == 400
    assert "nests deeper than 20" in response.get_json()["issue"][0]["diagnostics"]


def test_default_depth_admits_real_requests(instance_dir: Any) -> None:
    """A full patient-view request is far from the default limit."""
    assert _dev(instance_dir).test_client().post(SERVICE, json=hook_body()).status_code == 200


def test_body_over_the_limit_is_413_on_feedback(instance_dir: Any) -> None:
    """MAX_CONTENT_LENGTH covers the feedback endpoint too."""
    client = _dev(instance_dir, MAX_CONTENT_LENGTH=1000).test_client()
    response = client.post(FEEDBACK, data=b'{"x": "' + b"a" * 2000 + b'"}', content_type="application/json")
    assert response.status_code == 413
    assert response.get_json()["resourceType"] == "OperationOutcome"


def test_rate_limit_without_auth_is_per_client_address(instance_dir: Any) -> None:
    """Development (no issuers): keyed by client address; 429 with Retry-After and an OperationOutcome."""
    client = _dev(instance_dir, RATE_LIMIT_PER_MINUTE=3).test_client()
    statuses = [client.get("/cds-services").status_code for _ in range(4)]
    assert statuses == [200, 200, 200, 429]
    response = client.get("/cds-services")
    assert 1 <= int(response.headers["Retry-After"]) <= 60
    assert response.mimetype == "application/fhir+json"
    assert response.get_json()["issue"][0]["code"] == "throttled"
    assert client.get("/healthz").status_code == 200, "public documents are not limited"


def test_rate_limit_is_per_issuer_and_shared_through_redis(
    make_app: Callable[..., Flask], keys: Keys, redis_url: str, redis_prefix: str
) -> None:
    """Two workers count one issuer together; another issuer has its own budget."""
    settings = {"REDIS_URL": redis_url, "REDIS_PREFIX": redis_prefix, "RATE_LIMIT_PER_MINUTE": 3}
    worker_a, worker_b = make_app(**settings), make_app(**settings)
    ehr_a, ehr_b = SignedClient(worker_a, keys.es384), SignedClient(worker_b, keys.rs384)
    statuses = [c.get("/cds-services").status_code for c in (ehr_a, ehr_b, ehr_a, ehr_b)]
    assert statuses == [200, 200, 200, 429]
    assert SignedClient(worker_b, keys.legacy, iss=LEGACY_ISS).get("/cds-services").status_code == 200


def test_rate_limit_store_down_lets_calls_through(
    instance_dir: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """The limiter fails open, loudly; only the replay check fails closed (see test_auth)."""
    client = _dev(instance_dir, REDIS_URL="redis://127.0.0.1:1/0").test_client()
    assert client.get("/cds-services").status_code == 200
    assert "rate-limit store unavailable" in caplog.text


def test_cors_preflight_needs_no_token(make_app: Callable[..., Flask]) -> None:
    """The sandbox's preflight: origin allowed, Authorization and Content-Type allowed, no 401."""
    client = make_app().test_client()
    response = client.options(
        SERVICE,
        headers={
            "Origin": "https://sandbox.cds-hooks.org",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )
    assert response.status_code == 200
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    allowed = {h.strip().lower() for h in response.headers["Access-Control-Allow-Headers"].split(",")}
    assert {"authorization", "content-type"} <= allowed
    assert "POST" in response.headers["Access-Control-Allow-Methods"]


def test_cors_on_answers_and_refusals(make_app: Callable[..., Flask], keys: Keys) -> None:
    """A browser client can read the answer and the 401 challenge."""
    app = make_app()
    origin = {"Origin": "https://sandbox.cds-hooks.org"}
    refused = app.test_client().post(SERVICE, json=hook_body(), headers=origin)
    assert refused.status_code == 401
    assert refused.headers["Access-Control-Allow-Origin"] == "*"
    assert "WWW-Authenticate" in refused.headers["Access-Control-Expose-Headers"]
    ok = SignedClient(app, keys.es384).post(SERVICE, json=hook_body(), headers=origin)
    assert ok.headers["Access-Control-Allow-Origin"] == "*"


def test_cors_origin_list(make_app: Callable[..., Flask]) -> None:
    """With a list, only listed origins are echoed (and the answer varies by Origin)."""
    client = make_app(CORS_ORIGINS='["https://sandbox.cds-hooks.org"]').test_client()
    listed = client.get("/healthz", headers={"Origin": "https://sandbox.cds-hooks.org"})
    assert listed.headers["Access-Control-Allow-Origin"] == "https://sandbox.cds-hooks.org"
    assert "Origin" in listed.headers["Vary"]
    other = client.get("/healthz", headers={"Origin": "https://evil.test"})
    assert "Access-Control-Allow-Origin" not in other.headers


def test_security_headers(make_app: Callable[..., Flask], keys: Keys) -> None:
    """nosniff, a deny-all CSP, no referrer, no-store on hook answers, HSTS behind an https base."""
    app = make_app()
    answers = [
        SignedClient(app, keys.es384).post(SERVICE, json=hook_body()),
        app.test_client().post(SERVICE, json=hook_body()),
        app.test_client().get("/healthz"),
    ]
    assert answers[0].status_code == 200
    for response in answers:
        headers = response.headers
        assert headers["X-Content-Type-Options"] == "nosniff"
        assert headers["Content-Security-Policy"].startswith("default-src 'none'")
        assert "frame-ancestors 'none'" in headers["Content-Security-Policy"]
        assert headers["Referrer-Policy"] == "no-referrer"
        assert headers["Cache-Control"] == "no-store"
        assert headers["Strict-Transport-Security"].startswith("max-age=")
    assert BASE.startswith("https://")
