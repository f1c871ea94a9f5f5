"""The key cache: TTL, refetch on an unknown kid, throttled refetches, and EHR outages."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import requests
from flask import Flask

from service.security.jwks import JwksCache, JwksUnavailable, fetch_jwks
from tests.trust.conftest import Keys, KeyServer, bearer, hook_body, mint

URL = "https://ehr.test/jwks"


class FakeEhr:
    """A key set whose answers and clock the test controls."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.keys: list[dict[str, Any]] = [{"kid": "a", "kty": "EC"}]
        self.down = False
        self.fetches = 0

    def fetch(self, url: str, timeout: float) -> dict[str, Any]:
        self.fetches += 1
        if self.down:
            raise requests.ConnectionError("down")
        return {"keys": list(self.keys)}

    def cache(self, ttl: float = 60, min_refresh: float = 5) -> JwksCache:
        return JwksCache(ttl, min_refresh, 1.0, fetch=self.fetch, clock=lambda: self.now)


def test_ttl_and_refresh_on_unknown_kid() -> None:
    """Cached within the TTL; an unknown kid refetches once per min_refresh."""
    ehr = FakeEhr()
    cache = ehr.cache()
    assert cache.key(URL, "a") == {"kid": "a", "kty": "EC"}
    assert cache.key(URL, "a") is not None
    assert ehr.fetches == 1
    ehr.keys.append({"kid": "b", "kty": "EC"})
    assert cache.key(URL, "b") is None  # within min_refresh of the first fetch: not refetched
    ehr.now += 6
    assert cache.key(URL, "b") is not None
    assert ehr.fetches == 2
    ehr.now += 61
    cache.key(URL, "a")
    assert ehr.fetches == 3, "stale after the TTL"


def test_outage_keeps_cached_keys() -> None:
    """An EHR outage after a good fetch keeps the old keys; with none cached it is unavailable."""
    ehr = FakeEhr()
    cache = ehr.cache()
    cache.key(URL, "a")
    ehr.down = True
    ehr.now += 120
    assert cache.key(URL, "a") is not None
    fresh = ehr.cache()
    with pytest.raises(JwksUnavailable):
        fresh.key(URL, "a")
    with pytest.raises(JwksUnavailable):
        fresh.key(URL, "a")  # not retried within min_refresh, still unavailable
    assert ehr.fetches == 3


def test_keys_not_for_signing_are_ignored() -> None:
    """An encryption key (use=enc) in the set is never a verification key."""
    ehr = FakeEhr()
    ehr.keys = [{"kid": "e", "kty": "RSA", "use": "enc"}]
    assert ehr.cache().key(URL, "e") is None


def test_fetch_refuses_redirects_and_non_jwks(key_server: KeyServer) -> None:
    """Only a 200 JWK Set is a key set."""
    key_server.documents["/not-jwks"] = b'{"keys": "no"}'
    with pytest.raises(JwksUnavailable):
        fetch_jwks(key_server.url("/not-jwks"), 2)
    with pytest.raises(JwksUnavailable):
        fetch_jwks(key_server.url("/missing"), 2)


def test_key_set_down_is_401_with_reason(
    make_app: Callable[..., Flask], keys: Keys, key_server: KeyServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A missing key set refuses the token and the log says the key set is unavailable."""
    del key_server.documents["/ehr/jwks"]
    response = (
        make_app()
        .test_client()
        .post("/cds-services/twitching-red-flags", json=hook_body(), headers=bearer(mint(keys.es384)))
    )
    assert response.status_code == 401
    assert "key set unavailable" in response.headers["WWW-Authenticate"]
    assert "HTTP 404" in caplog.text
