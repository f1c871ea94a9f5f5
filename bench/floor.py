"""The floor: what any authenticated JSON call costs on this stack, with no FHIR and no rules.

Served by the benchmark with the same `gunicorn -c gunicorn.conf.py` as the service, it does only
the steps a hook call cannot skip: read the body, parse it with orjson, verify an RS384 JWT with
PyJWT, one Redis transaction (jti SET NX, rate INCR, EXPIRE) and one SQLite insert, then answer
{"cards": []}. Its ratio to the baseline bounds what the real service could reach.
"""

from __future__ import annotations

import os
import sqlite3
import uuid
from pathlib import Path

import jwt
import orjson
import redis
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from flask import Flask, Response, request


def create_floor_app() -> Flask:
    """Flask with one route doing the unavoidable work of a hook call."""
    app = Flask(__name__)
    key = load_pem_public_key(os.environ["FLOOR_PUBLIC_KEY_PEM"].encode())
    audience = os.environ["FLOOR_AUDIENCE"]
    client = redis.Redis.from_url(os.environ["TWITCH_CDS_REDIS_URL"])
    prefix = os.environ["TWITCH_CDS_REDIS_PREFIX"]
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
        token = request.headers["Authorization"].removeprefix("Bearer ")
        claims = jwt.decode(token, key=key, algorithms=["RS384"], audience=audience)  # type: ignore[arg-type]
        body = orjson.loads(request.get_data(cache=False))
        pipe = client.pipeline(transaction=True)
        pipe.set(f"{prefix}floor:{claims['jti']}", b"1", nx=True, ex=300)
        pipe.incr(f"{prefix}floor:rate")
        pipe.expire(f"{prefix}floor:rate", 65)
        pipe.execute()
        conn = connection()
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO call VALUES (?, ?, ?)", (uuid.uuid4().hex, claims["jti"], len(body)))
        conn.execute("COMMIT")
        return Response(orjson.dumps({"cards": []}), mimetype="application/json")

    return app
