"""One small database layer over SQLite (default, a file) and PostgreSQL (DATABASE_URL)."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal, Protocol

import psycopg

Dialect = Literal["sqlite", "postgresql"]
# Portable column types: each migration's SQL names these and each dialect fills them in.
TYPES: dict[Dialect, dict[str, str]] = {
    "sqlite": {
        "pk": "INTEGER PRIMARY KEY AUTOINCREMENT",
        "ts": "TEXT",
        "json": "TEXT",
        "bool": "INTEGER",
        "bigint": "INTEGER",
    },
    "postgresql": {
        "pk": "BIGSERIAL PRIMARY KEY",
        "ts": "TIMESTAMPTZ",
        "json": "JSONB",
        "bool": "BOOLEAN",
        "bigint": "BIGINT",
    },
}


class DatabaseError(Exception):
    """The database could not be reached or refused a statement."""


class Cursor(Protocol):
    """What both drivers' cursors offer and the stores use."""

    rowcount: int

    def fetchall(self) -> list[Any]:
        """Every remaining row."""
        ...

    def fetchone(self) -> Any:
        """The next row, or None."""
        ...


class Tx:
    """Statements inside one transaction; SQL is written with `?` placeholders for both dialects."""

    def __init__(self, conn: Any, dialect: Dialect) -> None:
        self._conn = conn
        self.dialect = dialect

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Cursor:
        """Run one statement."""
        if self.dialect == "postgresql":
            sql = sql.replace("?", "%s")  # the stores' SQL holds no literal question marks
        cursor: Cursor = self._conn.execute(sql, tuple(params))
        return cursor

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run a query and return every row as a tuple."""
        return [tuple(r) for r in self.execute(sql, params).fetchall()]


class Database:
    """A connection per thread and process (opened on first use, so forks after start-up are safe)."""

    def __init__(self, url: str, sqlite_path: Path) -> None:
        if url.startswith(("postgresql://", "postgres://")):
            self.dialect: Dialect = "postgresql"
            self.url = url
        elif url.startswith("sqlite:///"):
            self.dialect = "sqlite"
            self.url = url.removeprefix("sqlite:///")
        elif not url:
            self.dialect = "sqlite"
            self.url = str(sqlite_path)
        else:
            raise ValueError("DATABASE_URL must start with postgresql:// or sqlite:/// (or be empty)")
        self._local = threading.local()

    @property
    def where(self) -> str:
        """Where the data lives, without credentials (for the start-up log line)."""
        if self.dialect == "sqlite":
            return f"SQLite {self.url}"
        info = psycopg.conninfo.conninfo_to_dict(self.url)
        host, port = info.get("host", "local socket"), info.get("port", 5432)
        return f"PostgreSQL {host}:{port}/{info.get('dbname', '')}"

    def _connection(self) -> Any:
        conn = getattr(self._local, "conn", None)
        if conn is not None and self._local.pid == os.getpid():
            return conn
        if self.dialect == "sqlite":
            Path(self.url).parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.url, timeout=10, isolation_level=None, check_same_thread=True)
            # WAL lets the workers read while one writes; NORMAL is durable across a process crash.
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA foreign_keys=ON")
        else:
            conn = psycopg.connect(self.url, autocommit=True, connect_timeout=5)
        self._local.conn = conn
        self._local.pid = os.getpid()
        return conn

    def _drop(self) -> None:
        conn = getattr(self._local, "conn", None)
        self._local.conn = None
        if conn is not None:
            # Already broken, perhaps; a new connection is opened next time either way.
            with contextlib.suppress(sqlite3.Error, psycopg.Error):
                conn.close()

    @contextmanager
    def transaction(self) -> Iterator[Tx]:
        """One transaction: committed on success, rolled back on any error."""
        try:
            conn = self._connection()
            if self.dialect == "sqlite":
                # IMMEDIATE takes the write lock up front, so two workers never deadlock upgrading.
                conn.execute("BEGIN IMMEDIATE")
                try:
                    yield Tx(conn, "sqlite")
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
                conn.execute("COMMIT")
            else:
                with conn.transaction():
                    yield Tx(conn, "postgresql")
        except (sqlite3.Error, psycopg.Error) as exc:
            if isinstance(exc, psycopg.OperationalError | sqlite3.OperationalError):
                self._drop()
            raise DatabaseError(f"{type(exc).__name__}: {exc}") from exc

    def ping(self) -> None:
        """One round trip (SELECT 1) without a transaction; DatabaseError when unreachable."""
        try:
            self._connection().execute("SELECT 1").fetchone()
        except (sqlite3.Error, psycopg.Error) as exc:
            self._drop()  # a broken connection is reopened on the next call
            raise DatabaseError(f"{type(exc).__name__}: {exc}") from exc

    def close(self) -> None:
        """Close this thread's connection."""
        self._drop()
