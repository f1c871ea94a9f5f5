"""Trusted CDS clients (JWT issuers) from configuration, checked once at start-up."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import orjson

# Only asymmetric signatures: an HMAC secret would have to be shared with every EHR, and a
# symmetric algorithm is how the public key gets misused as a secret (CVE class "alg confusion").
DEFAULT_ALGORITHMS = frozenset({"ES384", "RS384"})
ALLOWED_ALGORITHMS = frozenset({"ES384", "RS384", "ES256", "RS256"})
ISSUER_KEYS = frozenset({"iss", "jwks_url", "jku", "algorithms", "subjects"})


class ConfigError(ValueError):
    """A security setting that would leave the service unsafe: the service refuses to start."""


@dataclass(frozen=True)
class Issuer:
    """One trusted CDS client: where its keys are, which algorithms and subjects it may use."""

    iss: str
    jwks_url: str | None
    jku: frozenset[str]
    algorithms: frozenset[str]
    subjects: frozenset[str]  # empty: any sub (the claim is optional in CDS Hooks 2.0)

    def key_url(self, jku: str | None) -> str | None:
        """The JWKS URL to use for a token's `jku` header, or None when it is not allow-listed."""
        if jku is None:
            return self.jwks_url
        return jku if jku in self.jku or jku == self.jwks_url else None


def _is_loopback(host: str | None) -> bool:
    if host == "localhost":
        return True
    try:
        return host is not None and ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_key_url(url: Any, where: str) -> str:
    """A JWKS URL must be https (plain http only on loopback, for tests and local tools)."""
    if not isinstance(url, str) or not url:
        raise ConfigError(f"{where}: a URL string is required")
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return url
    if parts.scheme == "http" and _is_loopback(parts.hostname):
        return url
    raise ConfigError(f"{where}: {url!r} must be an https URL (http only on loopback)")


def _strings(value: Any, where: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) and v for v in value):
        return list(value)
    raise ConfigError(f"{where}: expected a string or a list of strings")


def _issuer(raw: Any, where: str) -> Issuer:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: each issuer is an object with iss and jwks_url and/or jku")
    unknown = set(raw) - ISSUER_KEYS
    if unknown:
        raise ConfigError(f"{where}: unknown keys {sorted(unknown)} (allowed: {sorted(ISSUER_KEYS)})")
    iss = raw.get("iss")
    if not isinstance(iss, str) or not iss:
        raise ConfigError(f"{where}.iss: the issuer (the JWT's iss claim) is required")
    jwks_url = check_key_url(raw["jwks_url"], f"{where}.jwks_url") if raw.get("jwks_url") else None
    jku = frozenset(check_key_url(u, f"{where}.jku") for u in _strings(raw.get("jku"), f"{where}.jku"))
    if jwks_url is None and not jku:
        raise ConfigError(f"{where}: give jwks_url, an allow-listed jku, or both")
    algorithms = frozenset(_strings(raw.get("algorithms"), f"{where}.algorithms")) or DEFAULT_ALGORITHMS
    refused = algorithms - ALLOWED_ALGORITHMS
    if refused:
        raise ConfigError(
            f"{where}.algorithms: {sorted(refused)} not accepted; only {sorted(ALLOWED_ALGORITHMS)}"
        )
    subjects = frozenset(_strings(raw.get("subjects"), f"{where}.subjects"))
    return Issuer(iss, jwks_url, jku, algorithms, subjects)


def parse_issuers(raw: Any) -> dict[str, Issuer]:
    """ISSUERS as a list (or its JSON text) -> issuers by `iss`; any flaw is a ConfigError."""
    if isinstance(raw, str | bytes):
        try:
            raw = orjson.loads(raw or b"[]")
        except orjson.JSONDecodeError as exc:
            raise ConfigError(f"ISSUERS is not valid JSON: {exc}") from exc
    if not isinstance(raw, list):
        raise ConfigError("ISSUERS must be a JSON list of issuer objects")
    issuers: dict[str, Issuer] = {}
    for i, entry in enumerate(raw):
        issuer = _issuer(entry, f"ISSUERS[{i}]")
        if issuer.iss in issuers:
            raise ConfigError(f"ISSUERS[{i}]: issuer {issuer.iss!r} is listed twice")
        issuers[issuer.iss] = issuer
    return issuers
