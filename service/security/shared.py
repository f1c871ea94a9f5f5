"""State shared by every worker: the jti replay cache and rate-limit counters (memory or Redis)."""

from __future__ import annotations

import hashlib
import math
import threading
import time
from collections.abc import Callable
from typing import Protocol, cast

import redis

# Redis keys are digests: a jti or an issuer URL is caller-chosen text of any length.
RATE_WINDOW_SECONDS = 60


def digest(text: str) -> str:
    """A short, fixed-length key for caller-chosen text."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:40]


class StoreUnavailable(Exception):
    """The shared store could not be reached."""


class ReplayCache(Protocol):
    """Remembers each (issuer, jti) until its token expires."""

    def first_use(self, key: str, ttl_seconds: int) -> bool:
        """True the first time `key` is seen within `ttl_seconds`, False on every later use."""
        ...


class RateLimiter(Protocol):
    """Counts requests per caller in fixed one-minute windows."""

    def hit(self, key: str, limit: int) -> int | None:
        """None when under the limit, else the seconds until the window resets."""
        ...


class MemoryReplayCache:
    """One process only: fine for one worker; production uses Redis (shared by all workers)."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._seen: dict[str, float] = {}
        self._lock = threading.Lock()
        self._clock = clock
        self._next_purge = 0.0

    def first_use(self, key: str, ttl_seconds: int) -> bool:
        """Record the key; False when it was already recorded and has not expired."""
        now = self._clock()
        with self._lock:
            if now >= self._next_purge:
                self._seen = {k: t for k, t in self._seen.items() if t > now}
                self._next_purge = now + 60
            expires = self._seen.get(key)
            if expires is not None and expires > now:
                return False
            self._seen[key] = now + ttl_seconds
            return True


class MemoryRateLimiter:
    """Per-process fixed-window counters."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._counts: dict[tuple[str, int], int] = {}
        self._lock = threading.Lock()
        self._clock = clock

    def hit(self, key: str, limit: int) -> int | None:
        """Count one request for `key` in the current window."""
        now = self._clock()
        window = int(now // RATE_WINDOW_SECONDS)
        with self._lock:
            if len(self._counts) > 10_000:
                self._counts = {k: v for k, v in self._counts.items() if k[1] >= window}
            count = self._counts.get((key, window), 0) + 1
            self._counts[(key, window)] = count
        if count <= limit:
            return None
        return max(1, math.ceil((window + 1) * RATE_WINDOW_SECONDS - now))


class RedisReplayCache:
    """SET NX with an expiry: atomic across every worker and replica sharing the Redis."""

    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self._client = client
        self._prefix = prefix + "jti:"

    def first_use(self, key: str, ttl_seconds: int) -> bool:
        """True when this call created the key."""
        try:
            created = self._client.set(self._prefix + digest(key), b"1", nx=True, ex=max(1, ttl_seconds))
        except redis.RedisError as exc:
            raise StoreUnavailable(type(exc).__name__) from exc
        return bool(created)


class RedisRateLimiter:
    """INCR on a per-window key that expires with its window: one counter for all workers."""

    def __init__(self, client: redis.Redis, prefix: str, clock: Callable[[], float] = time.time) -> None:
        self._client = client
        self._prefix = prefix + "rate:"
        self._clock = clock

    def hit(self, key: str, limit: int) -> int | None:
        """Count one request for `key` in the current window."""
        now = self._clock()
        window = int(now // RATE_WINDOW_SECONDS)
        name = f"{self._prefix}{digest(key)}:{window}"
        try:
            pipe = self._client.pipeline(transaction=True)
            pipe.incr(name)
            pipe.expire(name, RATE_WINDOW_SECONDS + 5)
            count = cast(int, pipe.execute()[0])
        except redis.RedisError as exc:
            raise StoreUnavailable(type(exc).__name__) from exc
        if count <= limit:
            return None
        return max(1, math.ceil((window + 1) * RATE_WINDOW_SECONDS - now))


def redis_client(url: str) -> redis.Redis:
    """A client with short timeouts: a slow Redis must not hold a hook call for long."""
    return redis.Redis.from_url(url, socket_timeout=1.0, socket_connect_timeout=1.0)
