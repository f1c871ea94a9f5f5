"""The audit spool: hook calls' records appended to a local file, stored in the database by a thread.

A hook call's answer must not wait for the database. Its audit record is appended (one write(2))
to this worker's file `<pid>-<n>.jsonl`; a background thread inserts the records into the
database in order and truncates the file once everything in it is stored. A stalled or down
database only makes the file grow, up to AUDIT_SPOOL_MAX_BYTES; past that, records are refused,
counted and logged, and the answers still go out. Inserts are idempotent (each record carries a
unique call key), so a crash between insert and truncate replays records without doubling them.

Durability: write(2) on the request path, so an acknowledged record survives the worker's crash or
SIGKILL (it is in the kernel); while records wait for the database the thread fdatasyncs the file
at least every FSYNC_SECONDS, so a power loss or kernel crash during an outage can lose at most
that much. Files of dead processes (and of apps of this process that were garbage-collected) are
adopted: copied into a live worker's file and drained from there.

Threads: the writer starts on the first record (or `start()`, gunicorn's post_worker_init), after
any fork, and holds only a weak reference to its spool, so an app that is dropped ends its thread
and closes its file (weakref.finalize). A stopping worker (`stop()`, gunicorn's worker_exit, or
atexit) writes what it can within EXIT_DRAIN_SECONDS; the rest stays for adoption.
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import logging
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from service.metrics import SPOOL_BYTES, SPOOL_DROPPED, SPOOL_OLDEST, SPOOL_PENDING, SPOOL_WRITTEN
from service.store.db import DatabaseError

log = logging.getLogger("twitch_cds.audit")

BATCH = 200  # records per transaction
# Records written in groups: the writer is woken at GROUP pending records, else it takes them on its
# next idle cycle (IDLE_SECONDS). One transaction per group instead of one commit per call.
GROUP = 64
CHUNK = 256 * 1024  # bytes read from the file at a time: an outage's backlog is not re-read whole
IDLE_SECONDS = 1.0  # the thread's wake-up with nothing to write (fsync, adoption, metrics)
RETRY_SECONDS = (0.1, 0.25, 0.5, 1.0, 2.0)  # pauses between attempts while the database is down
FSYNC_SECONDS = 1.0  # longest a record waits for fdatasync while the database is down
ADOPT_SECONDS = 10.0  # how often the folder is scanned for files of dead processes
REPORT_SECONDS = 30.0  # how often an outage's backlog is logged
EXIT_DRAIN_SECONDS = 2.0  # what a stopping worker spends writing its backlog (the rest stays)

_sequence = itertools.count()
_live_paths: set[str] = set()  # spool files owned by live spools of this process
_spools: weakref.WeakSet[AuditSpool] = weakref.WeakSet()


@dataclass(frozen=True)
class SpoolStats:
    """How far behind the database the audit is, in this process."""

    pending: int  # records in the file not yet in the database
    oldest_age: float  # seconds the oldest of them has waited (0 when none)
    bytes: int  # size of the file (what AUDIT_SPOOL_MAX_BYTES bounds)
    dropped: int  # records refused since start (spool full or disk error)
    database_ok: bool  # the last write to the database succeeded


class _File:
    """The open spool file: all the finalizer needs, without a reference to the spool."""

    def __init__(self) -> None:
        self.fd: int | None = None
        self.path: Path | None = None

    def close(self) -> None:
        """Close the file: removed when empty, else its records stay on disk for adoption."""
        if self.fd is not None:
            with contextlib.suppress(OSError):
                if os.fstat(self.fd).st_size == 0 and self.path is not None:
                    self.path.unlink(missing_ok=True)
                os.close(self.fd)
        if self.path is not None:
            _live_paths.discard(str(self.path))
        self.fd = None


def _finalize(file: _File, wake: threading.Event) -> None:
    file.close()
    wake.set()  # the thread wakes, finds its spool gone and ends


def _owner_pid(name: str) -> int | None:
    head = name.split("-", 1)[0].split(".", 1)[0]
    return int(head) if head.isdigit() else None


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def _records(data: bytes, start: int) -> list[tuple[int, dict[str, Any] | None]]:
    """(end offset, record or None when unreadable) of each complete line."""
    out: list[tuple[int, dict[str, Any] | None]] = []
    offset = start
    for raw in data.split(b"\n")[:-1]:
        offset += len(raw) + 1
        try:
            record = orjson.loads(raw)
        except orjson.JSONDecodeError:
            record = None
        out.append((offset, record if isinstance(record, dict) else None))
    return out


class AuditSpool:
    """A bounded, append-only local queue of audit records, drained into the database by a thread."""

    def __init__(self, directory: Path, write: Callable[[list[dict[str, Any]]], int], max_bytes: int) -> None:
        self.directory = directory
        self.max_bytes = int(max_bytes)
        self._write = write
        self._file = _File()
        self._wake = threading.Event()
        self._reset()
        weakref.finalize(self, _finalize, self._file, self._wake)
        _spools.add(self)

    def _reset(self) -> None:
        """Per-process state: a forked child starts with none of its parent's."""
        self._lock = threading.Lock()
        self._drained = threading.Condition(self._lock)
        self._pid: int | None = None
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._size = 0  # bytes in the file
        self._done = 0  # bytes of it already in the database
        self._pending: deque[tuple[int, float]] = deque()  # (end offset, spooled at) per record
        self._appended = 0  # records ever put in the file by this process (adopted ones too)
        self._settled = 0  # of those, records stored (or unreadable and skipped)
        self._dropped = 0
        self._db_ok = True
        self._failures = 0
        self._failing_since = 0.0
        self._next_report = 0.0
        self._next_adopt = 0.0
        self._synced = True
        self._last_sync = 0.0
        self._next_drop_log = 0.0

    def _forked(self) -> None:
        if self._file.fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._file.fd)  # the parent's descriptor; the parent keeps its own
        self._file.fd, self._file.path = None, None
        self._reset()

    # --- the request path ---------------------------------------------------------------

    def append(self, record: dict[str, Any]) -> bool:
        """Queue one record durably (write(2)); False when refused (full or disk error), logged."""
        now = time.time()
        line = orjson.dumps({**record, "spooled": now}) + b"\n"
        with self._lock:
            refused = self._write_locked(line, now)
            if refused is not None:
                self._dropped += 1
            stats = self._stats_locked(now)
        if refused is not None:
            self._refused(refused, str(record.get("request_id", "")), stats)
            return False
        if stats.pending >= GROUP:
            self._wake.set()  # otherwise the writer's next idle cycle takes this group
        SPOOL_PENDING.set(stats.pending)
        SPOOL_BYTES.set(stats.bytes)
        return True

    def _write_locked(self, line: bytes, now: float) -> str | None:
        """Append one line; the reason when it was refused."""
        try:
            fd = self._open_locked()
        except OSError as exc:
            return f"io_error ({exc.strerror})"  # the folder is missing or read-only
        if self._size + len(line) > self.max_bytes:
            return "full"
        refused: str | None
        try:
            written = os.write(fd, line)
        except OSError as exc:
            written, refused = 0, f"io_error ({exc.strerror})"  # ENOSPC: the disk is full
        else:
            refused = None if written == len(line) else "io_error (short write)"
        if refused is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, self._size)  # no partial line for the next record to follow
            return refused
        self._size += written
        self._pending.append((self._size, now))
        self._appended += 1
        self._synced = False
        return None

    def _refused(self, reason: str, request_id: str, stats: SpoolStats) -> None:
        SPOOL_DROPPED.labels(reason.split(" ", 1)[0]).inc()
        now = time.monotonic()
        if now >= self._next_drop_log:
            self._next_drop_log = now + 60
            log.error(
                "audit record of request %s NOT kept: spool %s (%d bytes, max %d, %d pending);"
                " %d records refused so far",
                request_id,
                reason,
                stats.bytes,
                self.max_bytes,
                stats.pending,
                stats.dropped,
            )

    # --- state --------------------------------------------------------------------------

    def _open_locked(self) -> int:
        """This process's file, opened (and the writer started) on first use after any fork."""
        if self._pid != os.getpid():
            if self._pid is not None:
                self._forked()  # not through os.fork (register_at_fork covers that): be safe
            self.directory.mkdir(parents=True, exist_ok=True)
            path = self.directory / f"{os.getpid()}-{next(_sequence)}.jsonl"
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
            self._pid = os.getpid()  # only once the file is open: an error here is retried next time
            self._stopping = False
            self._file.fd, self._file.path = fd, path
            _live_paths.add(str(path))
            self._take_existing_locked(fd)
            self._thread = threading.Thread(
                target=_run, args=(weakref.ref(self), self._wake), name="twitch-cds-audit-spool", daemon=True
            )
            self._thread.start()
            # `python -m service` or any plain exit: write the backlog within the budget first.
            atexit.register(_at_exit, weakref.ref(self))
        assert self._file.fd is not None
        return self._file.fd

    def _take_existing_locked(self, fd: int) -> None:
        # A file of the same name from an earlier process with this pid: all of it is pending.
        size = os.fstat(fd).st_size
        if size:
            for end, record in _records(os.pread(fd, size, 0), 0):
                self._pending.append((end, float((record or {}).get("spooled", time.time()))))
                self._appended += 1
        self._size = size

    def _stats_locked(self, now: float) -> SpoolStats:
        oldest = now - self._pending[0][1] if self._pending else 0.0
        return SpoolStats(len(self._pending), max(0.0, oldest), self._size, self._dropped, self._db_ok)

    def stats(self) -> SpoolStats:
        """How far behind the database this process's audit is."""
        with self._lock:
            return self._stats_locked(time.time())

    def publish(self) -> SpoolStats:
        """Set the spool gauges from this process's state (before a scrape, and by the thread)."""
        stats = self.stats()
        SPOOL_PENDING.set(stats.pending)
        SPOOL_OLDEST.set(round(stats.oldest_age, 3))
        SPOOL_BYTES.set(stats.bytes)
        return stats

    @property
    def path(self) -> Path | None:
        """This process's spool file (None before the first record)."""
        return self._file.path

    def start(self) -> None:
        """Open the file and start the writer now (a gunicorn worker after fork), not on first record."""
        try:
            with self._lock:
                self._open_locked()
        except OSError as exc:
            # The worker still serves; each record is then refused (counted, logged) until it can.
            log.error("audit spool: cannot open %s (%s)", self.directory, exc.strerror)

    def flush(self, timeout: float) -> bool:
        """Wait until every record queued so far is stored; False at once while the database is down."""
        deadline = time.monotonic() + timeout
        with self._lock:
            if self._pid != os.getpid():
                return True  # nothing was ever queued in this process
            target = self._appended
            self._wake.set()
            while self._settled < target:
                left = deadline - time.monotonic()
                if not self._db_ok or left <= 0:
                    return False
                self._drained.wait(left)
            return True

    def stop(self, budget: float = EXIT_DRAIN_SECONDS) -> SpoolStats:
        """A worker is exiting: write what the budget allows, sync, end the thread; the rest stays."""
        started = time.monotonic()
        self.flush(budget)
        with self._lock:
            self._stopping = True
            thread = self._thread if self._pid == os.getpid() else None
        self._wake.set()
        if thread is not None:
            thread.join(max(0.0, budget - (time.monotonic() - started)))
        stats = self.stats()
        with self._lock:
            if self._file.fd is not None and self._pid == os.getpid():
                with contextlib.suppress(OSError):
                    os.fdatasync(self._file.fd)
                if thread is None or not thread.is_alive():
                    self._file.close()
                    self._pid = None
        if stats.pending:
            log.warning(
                "audit spool: %d records left in %s for the next worker (database not reached in %.1f s)",
                stats.pending,
                self.directory,
                budget,
            )
        return stats

    # --- the writer thread ----------------------------------------------------------------

    def _cycle(self) -> float:
        """Write what is pending; returns how long to wait before the next cycle."""
        now = time.time()
        if now >= self._next_adopt:
            self._next_adopt = now + ADOPT_SECONDS
            self._adopt()
        with self._lock:
            start, end, fd = self._done, self._size, self._file.fd
        if fd is None or self._pid != os.getpid():
            return IDLE_SECONDS
        try:
            if end > start:
                self._drain(fd, start, end)
        except (DatabaseError, KeyError, TypeError) as exc:
            return self._outage(exc)
        if not self._db_ok:
            self._recovered()
        self._settle()
        if self._pending:
            self.publish()
        return IDLE_SECONDS

    def _drain(self, fd: int, start: int, end: int) -> None:
        offset = start
        while offset < end:
            data = os.pread(fd, min(CHUNK, end - offset), offset)
            if b"\n" not in data:  # one record longer than a chunk: read it whole
                data = os.pread(fd, end - offset, offset)
            data = data[: data.rfind(b"\n") + 1]
            self._drain_chunk(_records(data, offset))
            offset += len(data)

    def _drain_chunk(self, entries: list[tuple[int, dict[str, Any] | None]]) -> None:
        for first in range(0, len(entries), BATCH):
            batch = entries[first : first + BATCH]
            records = [r for _, r in batch if r is not None]
            if len(records) < len(batch):
                log.error("audit spool: %d unreadable line(s) skipped", len(batch) - len(records))
            if records:
                self._write(records)  # DatabaseError: try again later, from this batch on
            with self._lock:
                self._done = batch[-1][0]
                while self._pending and self._pending[0][0] <= self._done:
                    self._pending.popleft()
                self._settled += len(batch)
                self._drained.notify_all()
            SPOOL_WRITTEN.inc(len(records))

    def _settle(self) -> None:
        """Truncate a fully written file; compact one whose written part passed half the bound."""
        with self._lock:
            fd, path = self._file.fd, self._file.path
            if fd is None or path is None:
                return
            if self._done and self._done == self._size:
                os.ftruncate(fd, 0)
                self._size = self._done = 0
                self._pending.clear()
                self._synced = True
                SPOOL_PENDING.set(0)
                SPOOL_OLDEST.set(0)
                SPOOL_BYTES.set(0)
            elif self._done > self.max_bytes // 2:
                self._compact_locked(fd, path)

    def _compact_locked(self, fd: int, path: Path) -> None:
        tail = os.pread(fd, self._size - self._done, self._done)
        temporary = path.with_name(path.name + ".compact")
        out = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(out, tail)
            os.fdatasync(out)
        finally:
            os.close(out)
        os.replace(temporary, path)  # atomic: the file holds either every record or the pending ones
        new_fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CLOEXEC)
        os.close(fd)
        self._file.fd = new_fd
        shift = self._done
        self._pending = deque((end - shift, at) for end, at in self._pending)
        self._size -= shift
        self._done = 0

    def _outage(self, exc: Exception) -> float:
        now = time.time()
        with self._lock:
            self._drained.notify_all()  # flushers give up: the database is not answering
            was_ok, self._db_ok = self._db_ok, False
            stats = self._stats_locked(now)
        self._failures += 1
        if was_ok:
            self._failing_since = now
            self._next_report = now + REPORT_SECONDS
            log.error(
                "audit spool: database not written (%s); %d record(s) kept in %s until it answers",
                exc,
                stats.pending,
                self._file.path,
            )
        elif now >= self._next_report:
            self._next_report = now + REPORT_SECONDS
            log.warning(
                "audit spool: database unreachable for %.0f s; %d records pending, oldest %.1f s,"
                " %d bytes of %d",
                now - self._failing_since,
                stats.pending,
                stats.oldest_age,
                stats.bytes,
                self.max_bytes,
            )
        self._sync(now)
        self.publish()
        return RETRY_SECONDS[min(self._failures, len(RETRY_SECONDS)) - 1]

    def _recovered(self) -> None:
        with self._lock:
            self._db_ok = True
        log.warning(
            "audit spool: database written again after %.1f s of failures; backlog stored",
            time.time() - self._failing_since,
        )
        self._failures = 0

    def _sync(self, now: float) -> None:
        with self._lock:
            fd = self._file.fd
            due = not self._synced and now - self._last_sync >= FSYNC_SECONDS
        if fd is not None and due:
            with contextlib.suppress(OSError):
                os.fdatasync(fd)
            with self._lock:
                self._synced, self._last_sync = True, now

    def _adopt(self) -> None:
        """Copy the files of dead processes (or dropped apps of this one) into ours."""
        mine = str(self._file.path)
        with contextlib.suppress(FileNotFoundError):
            for path in sorted(self.directory.iterdir()):
                pid = _owner_pid(path.name)
                if str(path) == mine or str(path) in _live_paths or pid is None or path.suffix == ".compact":
                    continue
                if pid != os.getpid() and _alive(pid):
                    continue
                self._adopt_one(path)

    def _adopt_one(self, path: Path) -> None:
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            return
        with self._lock:
            room = self.max_bytes - self._size
        if size > room:
            log.warning("audit spool: %s (%d bytes) waits for room before it is adopted", path.name, size)
            return
        claimed = path.with_name(f"{os.getpid()}.adopting.{path.name}")
        try:
            path.rename(claimed)  # only one worker wins the rename
        except FileNotFoundError:
            return
        data = claimed.read_bytes()
        data = data[: data.rfind(b"\n") + 1]  # a dead writer's torn last line is not a record
        with self._lock:
            fd = self._file.fd
            if fd is None or self._pid != os.getpid():
                claimed.rename(path)
                return
            os.write(fd, data)
            os.fdatasync(fd)
            for end, record in _records(data, self._size):
                self._pending.append((end, float((record or {}).get("spooled", time.time()))))
                self._appended += 1
            self._size += len(data)
        claimed.unlink()
        log.warning("audit spool: adopted %d bytes of records left by %s", len(data), path.name)


def _run(ref: weakref.ReferenceType[AuditSpool], wake: threading.Event) -> None:
    """The writer: holds its spool only while a cycle runs, so a dropped app ends this thread."""
    while True:
        spool = ref()
        if spool is None or spool._stopping:
            return
        wake.clear()
        try:
            pause = spool._cycle()
        except Exception:
            log.exception("audit spool: writer cycle failed")
            pause = RETRY_SECONDS[-1]
        del spool
        wake.wait(pause)


def _at_exit(ref: weakref.ReferenceType[AuditSpool]) -> None:
    spool = ref()
    if spool is not None and spool._pid == os.getpid() and not spool._stopping:
        spool.stop()


def _after_fork_in_child() -> None:
    _live_paths.clear()
    for spool in list(_spools):
        spool._forked()


os.register_at_fork(after_in_child=_after_fork_in_child)
