"""What any authenticated JSON call costs on this stack, with no FHIR and no rules.

Served by the benchmark with the same `gunicorn -c gunicorn.conf.py` as the service, it does only
the steps a production hook call cannot skip: read the body, parse it with orjson, verify an
RS384 JWT with PyJWT, one Redis transaction (jti SET NX, rate INCR, EXPIRE) and one SQLite
insert, then answer {"cards": []}. `caller_check()` is the same authentication, used by the
field in bench/variants.py when the benchmark runs the production configuration.
"""

from __future__ import annotations

import os
import sqlite3
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jwt
import orjson
import redis
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from flask import Flask, Response, abort, request


def caller_check() -> Callable[[], dict[str, Any]] | None:
    """The production caller check (RS384 JWT, Redis replay and rate), or None when not configured."""
    pem = os.environ.get("FLOOR_PUBLIC_KEY_PEM")
    if not pem:
        return None
    key = load_pem_public_key(pem.encode())
    audience = os.environ["FLOOR_AUDIENCE"]
    client = redis.Redis.from_url(os.environ["TWITCH_CDS_REDIS_URL"])
    prefix = os.environ["TWITCH_CDS_REDIS_PREFIX"]

    def check() -> dict[str, Any]:
        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        try:
            claims: dict[str, Any] = jwt.decode(token, key=key, algorithms=["RS384"], audience=audience)  # type: ignore[arg-type]
        except jwt.PyJWTError:
            abort(401)
        pipe = client.pipeline(transaction=True)
        pipe.set(f"{prefix}floor:{claims['jti']}", b"1", nx=True, ex=300)
        pipe.incr(f"{prefix}floor:rate")
        pipe.expire(f"{prefix}floor:rate", 65)
        fresh, _, _ = pipe.execute()
        if not fresh:
            abort(401)  # a replayed token
        return claims

    return check


def create_floor_app() -> Flask:
    """Flask with one route doing the unavoidable work of a hook call."""
    app = Flask(__name__)
    check = caller_check()
    if check is None:
        raise RuntimeError("bench/floor.py needs FLOOR_PUBLIC_KEY_PEM and FLOOR_AUDIENCE")
    database = Path(os.environ["TWITCH_CDS_INSTANCE_DIR"]) / "floor.sqlite3"
    database.parent.mkdir(parents=True, exist_ok=True)
    connections: dict[int, sqlite3.Connection] = {}

    def connection() -> sqlite3.Connection:
        conn = connections.get(os.getpid())
        if conn is None:
            conn = sqlite3.connect(database, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("CREATE TABLE IF NOT EXISTS call (id TEXT, jti TEXT, size INTEGER)")
            connections[os.getpid()] = conn
        return conn

    @app.get("/readyz")
    def ready() -> Response:
        return Response(b'{"status":"ready"}', mimetype="application/json")

    @app.post("/cds-services/<service_id>")
    def call(service_id: str) -> Response:
        claims = check()
        body = orjson.loads(request.get_data(cache=False))
        conn = connection()
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO call VALUES (?, ?, ?)", (uuid.uuid4().hex, claims["jti"], len(body)))
        conn.execute("COMMIT")
        return Response(orjson.dumps({"cards": []}), mimetype="application/json")

    return app
