"""Random identifiers (card and suggestion uuids, request ids, audit keys) from a buffered CSPRNG.

`uuid.uuid4()` makes one getrandom(2) call per id; a hook call needs several, and on the
benchmark machine each call cost ~11 µs. The bytes still come from `os.urandom`, 64 ids at a
time; a forked child drops the bytes it inherited, so two workers never hand out the same id.
"""

from __future__ import annotations

import os
import threading
import uuid

_BATCH = 64
_lock = threading.Lock()
_pool = bytearray()


def _forget() -> None:
    """In a forked child: the parent's unused bytes would repeat the parent's (and siblings') ids."""
    global _lock
    _pool.clear()
    _lock = threading.Lock()  # a lock held by another thread at fork time would never be released


os.register_at_fork(after_in_child=_forget)


def _take() -> bytes:
    with _lock:
        if not _pool:
            _pool.extend(os.urandom(16 * _BATCH))
        chunk = bytes(_pool[-16:])
        del _pool[-16:]
    return chunk


def new_uuid() -> uuid.UUID:
    """A random (version 4) UUID: the uuid module sets the version and variant bits."""
    return uuid.UUID(bytes=_take(), version=4)


def new_uuid_text() -> str:
    """A random UUID as the usual 36-character text."""
    return str(new_uuid())


def new_hex() -> str:
    """A random UUID as 32 hex digits (request ids, audit keys)."""
    return new_uuid().hex
