"""JWKS fetching and caching: keys by (URL, kid), refetched when stale or on an unknown kid."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
import requests

log = logging.getLogger("twitch_cds.security")
MAX_JWKS_BYTES = 256 * 1024  # a JWKS is a few keys; anything larger is not one


class JwksUnavailable(Exception):
    """The key set could not be fetched and none is cached."""


@dataclass
class _Entry:
    keys: dict[str, dict[str, Any]] = field(default_factory=dict)
    fetched: float = float("-inf")  # last successful fetch (monotonic)
    attempted: float = float("-inf")  # last attempt, successful or not
    lock: threading.Lock = field(default_factory=threading.Lock)


def fetch_jwks(url: str, timeout: float) -> dict[str, Any]:
    """GET a JWKS document: no redirects (an allow-listed URL must not lead elsewhere), size capped."""
    with requests.get(url, timeout=timeout, allow_redirects=False, stream=True) as response:
        if response.status_code != 200:
            raise JwksUnavailable(f"HTTP {response.status_code}")
        body = response.raw.read(MAX_JWKS_BYTES + 1, decode_content=True)
    if len(body) > MAX_JWKS_BYTES:
        raise JwksUnavailable("the JWKS is too large")
    data = orjson.loads(body)
    if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
        raise JwksUnavailable("not a JWK Set (no keys array)")
    return data


class JwksCache:
    """Per-process key cache; thread-safe; at most one fetch per URL per `min_refresh` seconds."""

    def __init__(
        self,
        ttl: float,
        min_refresh: float,
        timeout: float,
        fetch: Callable[[str, float], dict[str, Any]] = fetch_jwks,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl = ttl
        self.min_refresh = min_refresh
        self.timeout = timeout
        self._fetch = fetch
        self._clock = clock
        self._entries: dict[str, _Entry] = {}
        self._lock = threading.Lock()

    def key(self, url: str, kid: str) -> dict[str, Any] | None:
        """The JWK with this kid at this URL, or None when the (possibly refreshed) set lacks it."""
        with self._lock:
            entry = self._entries.setdefault(url, _Entry())
        # One lock per URL: a slow EHR key set never holds up tokens of another issuer.
        with entry.lock:
            now = self._clock()
            fresh = now - entry.fetched < self.ttl
            if fresh and kid in entry.keys:
                return entry.keys[kid]
            # Stale, or a kid we do not know (the EHR may have rotated its key): refetch, but
            # not more often than min_refresh, so random kids cannot make us hammer the EHR.
            if now - entry.attempted >= self.min_refresh:
                entry.attempted = now
                self._refresh(url, entry, now)
            elif not fresh and not entry.keys:
                raise JwksUnavailable("fetch failed recently; waiting before the next try")
            return entry.keys.get(kid)

    def _refresh(self, url: str, entry: _Entry, now: float) -> None:
        try:
            data = self._fetch(url, self.timeout)
        except (requests.RequestException, orjson.JSONDecodeError, JwksUnavailable) as exc:
            reason = type(exc).__name__ if isinstance(exc, requests.RequestException) else str(exc)
            if entry.keys:
                # Keep the keys we had: an EHR's JWKS outage must not lock every clinician out.
                log.warning("JWKS refresh failed (%s) for %s; keeping cached keys", reason, url)
                return
            log.error("JWKS fetch failed (%s) for %s", reason, url)
            raise JwksUnavailable(reason) from exc
        entry.keys = {
            k["kid"]: k
            for k in data["keys"]
            if isinstance(k, dict) and isinstance(k.get("kid"), str) and k.get("use", "sig") == "sig"
        }
        entry.fetched = now
        log.info("JWKS fetched from %s: %d signing key(s)", url, len(entry.keys))
