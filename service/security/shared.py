"""State shared by every worker: the jti replay cache and rate-limit counters (memory or Redis)."""

from __future__ import annotations

import hashlib
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import redis

# Redis keys are digests: a jti or an issuer URL is caller-chosen text of any length.
RATE_WINDOW_SECONDS = 60


def digest(text: str) -> str:
    """A short, fixed-length key for caller-chosen text."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:40]


class StoreUnavailable(Exception):
    """The shared store could not be reached."""


@dataclass(frozen=True)
class Admission:
    """What the shared state says of one request: a fresh jti, and room under the rate limit."""

    fresh: bool  # the jti was not used before (True when no jti was checked)
    retry_after: int | None  # None: under the limit; else seconds until the window resets


class SharedState(Protocol):
    """Remembers each (issuer, jti) until its token expires and counts requests per caller."""

    def admit(self, jti_key: str | None, jti_ttl: int, rate_key: str, limit: int) -> Admission:
        """Record the jti (when given) and count one request for `rate_key`, together."""
        ...


def _retry_after(now: float, window: int) -> int:
    return max(1, math.ceil((window + 1) * RATE_WINDOW_SECONDS - now))


class MemoryReplayCache:
    """Each key until it expires, in this process."""

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
        return None if count <= limit else _retry_after(now, window)


class MemoryState:
    """One process only: fine for one worker; production uses Redis (shared by all workers)."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.replay = MemoryReplayCache(clock)
        self.limiter = MemoryRateLimiter(clock)

    def admit(self, jti_key: str | None, jti_ttl: int, rate_key: str, limit: int) -> Admission:
        """Record the jti and count the request in this process."""
        fresh = jti_key is None or self.replay.first_use(jti_key, jti_ttl)
        return Admission(fresh, self.limiter.hit(rate_key, limit))


class RedisState:
    """SET NX for the jti and INCR for the window, in one MULTI: one round trip per request.

    Atomic across every worker and replica sharing the Redis; each key expires with its token
    or its window. Keys are digests: a jti or an issuer URL is caller-chosen text of any length.
    """

    def __init__(self, client: redis.Redis, prefix: str, clock: Callable[[], float] = time.time) -> None:
        self._client = client
        self._jti_prefix = prefix + "jti:"
        self._rate_prefix = prefix + "rate:"
        self._clock = clock

    def admit(self, jti_key: str | None, jti_ttl: int, rate_key: str, limit: int) -> Admission:
        """One transaction; StoreUnavailable when Redis cannot be reached."""
        now = self._clock()
        window = int(now // RATE_WINDOW_SECONDS)
        counter = f"{self._rate_prefix}{digest(rate_key)}:{window}"
        try:
            pipe = self._client.pipeline(transaction=True)
            if jti_key is not None:
                pipe.set(self._jti_prefix + digest(jti_key), b"1", nx=True, ex=max(1, jti_ttl))
            pipe.incr(counter)
            pipe.expire(counter, RATE_WINDOW_SECONDS + 5)
            replies = pipe.execute()
        except redis.RedisError as exc:
            raise StoreUnavailable(type(exc).__name__) from exc
        fresh = jti_key is None or bool(replies[0])
        count = int(replies[-2])
        return Admission(fresh, None if count <= limit else _retry_after(now, window))


def redis_client(url: str) -> redis.Redis:
    """A client with short timeouts: a slow Redis must not hold a hook call for long."""
    return redis.Redis.from_url(url, socket_timeout=1.0, socket_connect_timeout=1.0)
