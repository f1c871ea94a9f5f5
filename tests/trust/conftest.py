"""Real keys, a loopback JWKS server, token minting, and the real PostgreSQL and Redis (loopback only)."""

from __future__ import annotations

import base64
import copy
import os
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
import orjson
import psycopg
import pytest
import redis
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from flask import Flask
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from werkzeug.test import TestResponse

from service.app import create_app
from tests.conftest import EXAMPLE_DAY, EXAMPLES, bundle_to_hook_request, load_json

LOOPBACK = "127.0.0.1"
BASE = "https://cds.test"
SERVICE = "/cds-services/twitching-red-flags"
HOOK_AUD = BASE + SERVICE
EHR_ISS = "https://ehr.test/fhir/R4"
EPIC_ISS = "https://epic.test/interconnect-fhir-oauth/api/FHIR/R4"
LEGACY_ISS = "https://legacy.test/fhir"
SPEC_ISS = "https://fhir-ehr.example.com/"  # the issuer of the spec's JWT example (ex_22)
PATIENT_ID = "pt-7d3c1a9e-unique"  # distinctive, so a leak into logs or the database is findable
POSTGRES_URL = os.environ.get("TWITCH_CDS_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("TWITCH_CDS_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


@dataclass(frozen=True)
class SigningKey:
    """A private key, its kid and algorithm, and its public JWK."""

    kid: str
    alg: str
    private: Any
    jwk: dict[str, Any]


def ec_key(kid: str, alg: str = "ES384") -> SigningKey:
    """A fresh EC key (P-384 for ES384, P-256 for ES256)."""
    curve = ec.SECP384R1() if alg == "ES384" else ec.SECP256R1()
    private = ec.generate_private_key(curve)
    jwk = dict(ECAlgorithm.to_jwk(private.public_key(), as_dict=True))
    return SigningKey(kid, alg, private, {**jwk, "kid": kid, "use": "sig", "alg": alg})


def rsa_key(kid: str, alg: str = "RS384", with_alg: bool = True) -> SigningKey:
    """A fresh 2048-bit RSA key; Epic's JWKS entries carry no alg, hence `with_alg`."""
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = dict(RSAAlgorithm.to_jwk(private.public_key(), as_dict=True))
    jwk = {**jwk, "kid": kid, "use": "sig"}
    if with_alg:
        jwk["alg"] = alg
    return SigningKey(kid, alg, private, jwk)


@dataclass(frozen=True)
class Keys:
    """Every key the tests sign with."""

    es384: SigningKey
    rs384: SigningKey
    rs256: SigningKey
    epic: SigningKey
    legacy: SigningKey
    attacker: SigningKey  # published only on the attacker's own (not allow-listed) JWKS
    unpublished: SigningKey  # a kid no JWKS lists


@pytest.fixture(scope="session")
def keys() -> Keys:
    """Generated once per session (RSA generation is the slow part)."""
    return Keys(
        es384=ec_key("ehr-es384"),
        rs384=rsa_key("ehr-rs384"),
        rs256=rsa_key("ehr-rs256", "RS256"),
        epic=rsa_key("epic-2026", with_alg=False),
        legacy=rsa_key("legacy-rs256", "RS256"),
        attacker=ec_key("attacker"),
        unpublished=ec_key("not-published"),
    )


class KeyServer:
    """JWKS documents served from 127.0.0.1 by a thread; counts the GETs of each path."""

    def __init__(self) -> None:
        self.documents: dict[str, bytes] = {}
        self.hits: Counter[str] = Counter()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.hits[self.path] += 1
                body = server.documents.get(self.path)
                self.send_response(200 if body is not None else 404)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(body or b"{}")

            def log_message(self, *_: Any) -> None:
                pass  # quiet test output

        self.httpd = ThreadingHTTPServer((LOOPBACK, 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        """The loopback URL of a path."""
        return f"http://{LOOPBACK}:{self.httpd.server_address[1]}{path}"

    def publish(self, path: str, *jwks: dict[str, Any]) -> str:
        """Serve these public JWKs as a JWK Set at `path`; returns its URL."""
        self.documents[path] = orjson.dumps({"keys": list(jwks)})
        return self.url(path)

    def close(self) -> None:
        """Stop serving."""
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def key_server(keys: Keys) -> Iterator[KeyServer]:
    """A fresh loopback JWKS server per test, publishing each trusted issuer's keys."""
    server = KeyServer()
    server.publish("/ehr/jwks", keys.es384.jwk, keys.rs384.jwk, keys.rs256.jwk)
    server.publish("/epic/jwks", keys.epic.jwk)
    server.publish("/legacy/jwks", keys.legacy.jwk)
    server.publish("/attacker/jwks", keys.attacker.jwk)
    yield server
    server.close()


def issuers(server: KeyServer) -> list[dict[str, Any]]:
    """The trusted issuers: a generic EHR, Epic (jku only), a legacy RS256 client, the spec's example."""
    return [
        {"iss": EHR_ISS, "jwks_url": server.url("/ehr/jwks")},
        {"iss": EPIC_ISS, "jku": [server.url("/epic/jwks")], "algorithms": ["RS384"]},
        {"iss": LEGACY_ISS, "jwks_url": server.url("/legacy/jwks"), "algorithms": ["RS256"]},
        {"iss": SPEC_ISS, "jku": [server.url("/spec/jwks")], "algorithms": ["ES384"]},
    ]


def mint(
    key: SigningKey,
    *,
    iss: str = EHR_ISS,
    aud: str | list[str] = HOOK_AUD,
    now: int | None = None,
    lifetime: int = 300,
    headers: dict[str, Any] | None = None,
    alg: str | None = None,
    **claims: Any,
) -> str:
    """A signed JWT as a CDS client sends it; claims given as None are left out."""
    issued = int(time.time()) if now is None else now
    payload: dict[str, Any] = {
        "iss": iss,
        "sub": "cds-client-1",
        "aud": aud,
        "iat": issued,
        "exp": issued + lifetime,
        "jti": str(uuid.uuid4()),
        **claims,
    }
    payload = {k: v for k, v in payload.items() if v is not None}
    return jwt.encode(
        payload, key.private, algorithm=alg or key.alg, headers={"kid": key.kid, **(headers or {})}
    )


def b64(data: bytes) -> str:
    """base64url without padding."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def bearer(token: str) -> dict[str, str]:
    """The Authorization header."""
    return {"Authorization": f"Bearer {token}"}


def hook_body(
    patient_id: str = PATIENT_ID, example: str = "motor-neuron-red-flags/fires-weakness.json"
) -> Any:
    """A patient-view call that fires a card with suggestions, for a patient with a distinctive id."""
    bundle = load_json(EXAMPLES / example)
    old = next(e["resource"]["id"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient")
    text = orjson.dumps(bundle_to_hook_request(bundle)).decode().replace(old, patient_id)
    body = orjson.loads(text)
    body["hookInstance"] = str(uuid.uuid4())
    return body


@pytest.fixture
def instance_dir(tmp_path: Any) -> Any:
    """A per-test instance folder (SQLite file and dev secret)."""
    return tmp_path / "instance"


@pytest.fixture
def make_app(key_server: KeyServer, instance_dir: Any) -> Callable[..., Flask]:
    """Build an app that trusts the test issuers; keyword arguments override settings."""

    def make(**overrides: Any) -> Flask:
        config: dict[str, Any] = {
            "TESTING": True,
            "TODAY": EXAMPLE_DAY,
            "ISSUERS": issuers(key_server),
            "PUBLIC_BASE_URL": BASE,
            "INSTANCE_DIR": str(instance_dir),
            **overrides,
        }
        return create_app(copy.deepcopy(config))

    return make


@pytest.fixture(scope="session")
def redis_url() -> str:
    """The machine's Redis (loopback), or skip saying it is not running."""
    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1).ping()
    except redis.RedisError as exc:
        pytest.skip(
            f"Redis is not reachable at {REDIS_URL} ({type(exc).__name__}); start it to run this test"
        )
    return REDIS_URL


@pytest.fixture
def redis_prefix(redis_url: str) -> Iterator[str]:
    """A key prefix of this test only; its keys are deleted afterwards."""
    prefix = f"twitch-cds-test-{uuid.uuid4().hex[:12]}:"
    yield prefix
    client = redis.Redis.from_url(redis_url)
    for name in client.scan_iter(match=prefix + "*"):
        client.delete(name)


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh schema in the machine's PostgreSQL (loopback), dropped afterwards; or skip saying why."""
    schema = f"twitch_cds_test_{uuid.uuid4().hex[:12]}"
    try:
        with psycopg.connect(POSTGRES_URL, autocommit=True, connect_timeout=3) as conn:
            conn.execute(f"CREATE SCHEMA {schema}")
    except psycopg.OperationalError as exc:
        pytest.skip(f"PostgreSQL is not reachable at {POSTGRES_URL} ({type(exc).__name__})")
    yield f"{POSTGRES_URL}?options=-csearch_path%3D{schema}"
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA {schema} CASCADE")


class SignedClient:
    """A test client that signs every call as a CDS client would: a fresh token per request."""

    def __init__(self, app: Flask, key: SigningKey, iss: str = EHR_ISS, **claims: Any) -> None:
        self.app = app
        self.client = app.test_client()
        self.key = key
        self.iss = iss
        self.claims = claims

    def _headers(self, path: str, headers: dict[str, str] | None) -> dict[str, str]:
        token = mint(self.key, iss=self.iss, aud=BASE + path, **self.claims)
        return {**bearer(token), **(headers or {})}

    def post(self, path: str, json: Any = None, headers: dict[str, str] | None = None) -> TestResponse:
        """POST with a token for this path."""
        return self.client.post(path, json=json, headers=self._headers(path, headers))

    def get(self, path: str, headers: dict[str, str] | None = None) -> TestResponse:
        """GET with a token for this path."""
        return self.client.get(path, headers=self._headers(path, headers))
