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
from redis.backoff import NoBackoff
from redis.retry import Retry

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
        if jti_key is not None and not self.replay.first_use(jti_key, jti_ttl):
            return Admission(False, None)  # a replay is refused, and not counted as its issuer's
        return Admission(True, self.limiter.hit(rate_key, limit))


# KEYS: [jti key,] rate counter; ARGV: jti ttl, window ttl. Returns {fresh, count}: a replayed
# jti is not counted, so a stolen token replayed in a loop cannot use up its issuer's budget.
_ADMIT = """
local counter = KEYS[1]
if #KEYS == 2 then
  if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1]) then
    return {0, 0}
  end
  counter = KEYS[2]
end
local count = redis.call('INCR', counter)
redis.call('EXPIRE', counter, ARGV[2])
return {1, count}
"""


class RedisState:
    """The jti SET NX and the window's INCR in one server-side script: one round trip per request.

    Atomic across every worker and replica sharing the Redis; each key expires with its token
    or its window. Keys are digests: a jti or an issuer URL is caller-chosen text of any length.
    """

    def __init__(self, client: redis.Redis, prefix: str, clock: Callable[[], float] = time.time) -> None:
        self._script = client.register_script(_ADMIT)  # EVALSHA, loaded on first use
        self._jti_prefix = prefix + "jti:"
        self._rate_prefix = prefix + "rate:"
        self._clock = clock

    def admit(self, jti_key: str | None, jti_ttl: int, rate_key: str, limit: int) -> Admission:
        """One script call; StoreUnavailable when Redis cannot be reached."""
        now = self._clock()
        window = int(now // RATE_WINDOW_SECONDS)
        keys = [f"{self._rate_prefix}{digest(rate_key)}:{window}"]
        if jti_key is not None:
            keys.insert(0, self._jti_prefix + digest(jti_key))
        try:
            fresh, count = self._script(keys=keys, args=[max(1, jti_ttl), RATE_WINDOW_SECONDS + 5])
        except redis.RedisError as exc:
            raise StoreUnavailable(type(exc).__name__) from exc
        if not fresh:
            return Admission(False, None)
        return Admission(True, None if int(count) <= limit else _retry_after(now, window))


def redis_client(url: str, timeout: float = 0.25) -> redis.Redis:
    """A client whose every wait is `timeout` and that never retries: a stalled Redis costs a call
    at most one connect and one reply wait (2 x timeout), then StoreUnavailable decides."""
    return redis.Redis.from_url(
        url,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0),  # redis-py retries 3 times by default, with backoff
        health_check_interval=0,
    )
