"""One small database layer over SQLite (default, a file) and PostgreSQL (DATABASE_URL)."""

from __future__ import annotations

import contextlib
import math
import os
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal, Protocol

import orjson
import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

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


# psycopg never waits less than 2 s for a connection (libpq's rule); the caller's shorter
# deadline is kept by waiting for that attempt on a helper thread (see _connect_postgresql).
PG_CONNECT_FLOOR_SECONDS = 2
# Keepalives find a dead idle connection in ~8 s instead of the kernel's 2 hours.
PG_KEEPALIVES = {"keepalives": 1, "keepalives_idle": 5, "keepalives_interval": 1, "keepalives_count": 3}
MIGRATION_TIMEOUT_SECONDS = 60.0  # migrations may wait on another worker's advisory lock


class DatabaseError(Exception):
    """The database could not be reached or refused a statement."""


class _Deadline:
    """Shuts a PostgreSQL connection's socket when one operation outlives its budget.

    statement_timeout is the server's clock and tcp_user_timeout the kernel's; neither fires when
    the server (or a proxy in front of it) accepts bytes and never answers. Shutting the socket
    wakes psycopg's wait with an error, so the caller gets DatabaseError at its deadline.
    """

    def __init__(self, conn: Any, seconds: float) -> None:
        self._conn = conn
        self._lock = threading.Lock()
        self._active = True
        self.fired = False
        self._timer = threading.Timer(seconds, self._cut)
        self._timer.daemon = True
        self._timer.start()

    def _cut(self) -> None:
        with self._lock:
            if not self._active:
                return
            self.fired = True
            # A duplicate of the fd: shutdown acts on the connection, closing only the copy.
            with (
                contextlib.suppress(OSError, psycopg.Error),
                socket.socket(fileno=os.dup(self._conn.fileno())) as sock,
            ):
                sock.shutdown(socket.SHUT_RDWR)

    def end(self) -> None:
        """The operation finished (or failed): never cut after this."""
        with self._lock:
            self._active = False
        self._timer.cancel()


class Cursor(Protocol):
    """What both drivers' cursors offer and the stores use."""

    rowcount: int

    def fetchall(self) -> list[Any]:
        """Every remaining row."""
        ...

    def fetchone(self) -> Any:
        """The next row, or None."""
        ...


def json_value(value: Any) -> Any:
    """A JSON column's value: JSONB comes back parsed from PostgreSQL, TEXT as a string from SQLite."""
    return orjson.loads(value) if isinstance(value, str | bytes) else value


class Tx:
    """Statements inside one transaction; SQL is written with `?` placeholders for both dialects."""

    def __init__(self, conn: Any, dialect: Dialect) -> None:
        self._conn = conn
        self.dialect = dialect

    def _sql(self, sql: str) -> str:
        # The stores' SQL holds no literal question marks.
        return sql.replace("?", "%s") if self.dialect == "postgresql" else sql

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Cursor:
        """Run one statement."""
        cursor: Cursor = self._conn.execute(self._sql(sql), tuple(params))
        return cursor

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        """Run one statement for each row of parameters (one call into the driver)."""
        params = [tuple(r) for r in rows]
        if self.dialect == "postgresql":
            with self._conn.cursor() as cursor:
                cursor.executemany(self._sql(sql), params)
        else:
            self._conn.executemany(sql, params)

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run a query and return every row as a tuple."""
        return [tuple(r) for r in self.execute(sql, params).fetchall()]


class Database:
    """A connection per thread and process (opened on first use, so forks after start-up are safe)."""

    def __init__(self, url: str, sqlite_path: Path, timeout: float = 0.5) -> None:
        self.timeout = float(timeout)  # seconds one operation may take: connect and statements
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

    def _connection(self, timeout: float | None = None) -> Any:
        conn = getattr(self._local, "conn", None)
        if conn is not None and self._local.pid == os.getpid():
            return conn
        if self.dialect == "sqlite":
            Path(self.url).parent.mkdir(parents=True, exist_ok=True)
            # busy_timeout: a writer waits this long for another worker's lock, then errors.
            conn = sqlite3.connect(
                self.url, timeout=self.timeout, isolation_level=None, check_same_thread=True
            )
            conn.execute(f"PRAGMA busy_timeout={max(1, round(self.timeout * 1000))}")
            # WAL lets the workers read while one writes; NORMAL is durable across a process crash.
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA foreign_keys=ON")
        else:
            conn = self._connect_postgresql(timeout)
        self._local.conn = conn
        self._local.pid = os.getpid()
        return conn

    def conninfo(self) -> str:
        """The PostgreSQL URL's parameters with this service's deadlines added (caller's options kept)."""
        params: dict[str, Any] = {**conninfo_to_dict(self.url)}
        ms = max(1, round(self.timeout * 1000))
        # Server side: no statement, lock wait or idle transaction outlives the budget.
        options = (
            f"-c statement_timeout={ms} -c lock_timeout={ms} -c idle_in_transaction_session_timeout={10 * ms}"
        )
        params["options"] = f"{params.get('options', '')} {options}".strip()
        params["connect_timeout"] = max(PG_CONNECT_FLOOR_SECONDS, math.ceil(self.timeout))
        # Kernel side: unacknowledged data gives up after max(1 s, budget) instead of ~15 minutes.
        params["tcp_user_timeout"] = max(1000, ms)
        for key, value in PG_KEEPALIVES.items():
            params.setdefault(key, value)
        return make_conninfo("", **params)

    def _connect_postgresql(self, timeout: float | None = None) -> Any:
        """Connect within `timeout` (default: the budget); an attempt still running is abandoned."""
        outcome: dict[str, Any] = {}
        done = threading.Event()
        lock = threading.Lock()
        conninfo = self.conninfo()

        def attempt() -> None:
            try:
                conn = psycopg.connect(conninfo, autocommit=True)
            except psycopg.Error as exc:
                outcome["error"] = exc
                done.set()
                return
            with lock:
                if outcome.get("abandoned"):
                    conn.close()  # the caller gave up long ago: nobody will use it
                    return
                outcome["conn"] = conn
            done.set()

        # psycopg waits at least 2 s; this thread ends by then, so abandoned attempts cannot pile up.
        threading.Thread(target=attempt, name="twitch-cds-db-connect", daemon=True).start()
        done.wait(self.timeout if timeout is None else timeout)
        with lock:
            if "conn" in outcome:
                return outcome["conn"]
            if "error" in outcome:
                raise outcome["error"]
            outcome["abandoned"] = True
        raise psycopg.errors.ConnectionTimeout(f"no connection within {timeout or self.timeout:g} s")

    def _drop(self) -> None:
        conn = getattr(self._local, "conn", None)
        self._local.conn = None
        if conn is not None:
            # Already broken, perhaps; a new connection is opened next time either way.
            with contextlib.suppress(sqlite3.Error, psycopg.Error):
                conn.close()

    @contextmanager
    def _deadline(self, conn: Any, seconds: float) -> Iterator[_Deadline | None]:
        if self.dialect != "postgresql":
            yield None  # SQLite is a local file: busy_timeout bounds its only wait, the lock
            return
        deadline = _Deadline(conn, seconds)
        try:
            yield deadline
        finally:
            deadline.end()

    def _failed(self, exc: Exception, deadline: _Deadline | None) -> DatabaseError:
        if isinstance(exc, psycopg.OperationalError | sqlite3.OperationalError):
            self._drop()  # a broken connection is reopened on the next call
        if deadline is not None and deadline.fired:
            return DatabaseError(f"no answer within {self.timeout:g} s ({type(exc).__name__})")
        return DatabaseError(f"{type(exc).__name__}: {exc}")

    @contextmanager
    def transaction(self, timeout: float | None = None) -> Iterator[Tx]:
        """One transaction: committed on success, rolled back on any error, cut at its deadline.

        The deadline (`timeout`, default the budget) covers connecting and every statement.
        """
        budget = self.timeout if timeout is None else timeout
        deadline: _Deadline | None = None
        started = time.monotonic()
        try:
            conn = self._connection(budget)
            with self._deadline(conn, self._left(budget, started)) as deadline:
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
                        tx = Tx(conn, "postgresql")
                        if timeout is not None:
                            # This transaction only (migrations): the session's limit is the budget.
                            tx.execute(f"SET LOCAL statement_timeout = {max(1, round(budget * 1000))}")
                            tx.execute(f"SET LOCAL lock_timeout = {max(1, round(budget * 1000))}")
                        yield tx
        except (sqlite3.Error, psycopg.Error) as exc:
            raise self._failed(exc, deadline) from exc

    @staticmethod
    def _left(budget: float, started: float) -> float:
        # What connecting left of the budget; a few ms at least, so a statement can be sent at all.
        return max(0.005, budget - (time.monotonic() - started))

    def ping(self) -> None:
        """One round trip (SELECT 1) without a transaction, within the budget; DatabaseError when not."""
        deadline: _Deadline | None = None
        started = time.monotonic()
        try:
            conn = self._connection()
            with self._deadline(conn, self._left(self.timeout, started)) as deadline:
                conn.execute("SELECT 1").fetchone()
        except (sqlite3.Error, psycopg.Error) as exc:
            raise self._failed(exc, deadline) from exc

    def close(self) -> None:
        """Close this thread's connection."""
        self._drop()
