"""CDS Hooks client JWTs: signature from a trusted issuer's JWKS and claims (the guard checks jti reuse)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import jwt
from jwt.algorithms import AllowedPublicKeys

from service.security.issuers import ALLOWED_ALGORITHMS, Issuer
from service.security.jwks import JwksCache, JwksUnavailable

REQUIRED_CLAIMS = ["iss", "aud", "exp", "iat", "jti"]
MAX_TOKEN_LENGTH = 16 * 1024  # real CDS client JWTs are well under 2 KB
MAX_LOGGED_VALUE = 200


class AuthError(Exception):
    """A token the service refuses: `description` goes to the client, `reason` to the log."""

    def __init__(self, description: str, reason: str | None = None) -> None:
        super().__init__(description)
        self.description = description
        self.reason = reason or description


@dataclass(frozen=True)
class Caller:
    """Who a verified token says called: kept with the audit record."""

    issuer: str
    subject: str | None
    tenant: str | None
    jti: str
    kid: str
    algorithm: str
    jti_ttl: int  # seconds the jti must be remembered: until the token expires, plus the leeway

    @property
    def jti_key(self) -> str:
        """The key a jti is remembered under: one issuer cannot burn another's jti."""
        return f"{self.issuer}\n{self.jti}"


def shown(value: Any) -> str:
    """A caller-chosen header or claim value, made safe and short for a log line."""
    return repr(value)[:MAX_LOGGED_VALUE]


# PyJWT's own messages are fixed strings, but they are mapped anyway so that no message that
# could quote the token reaches the client or the log.
_JWT_ERRORS: tuple[tuple[type[jwt.PyJWTError], str], ...] = (
    (jwt.ExpiredSignatureError, "token expired"),
    (jwt.ImmatureSignatureError, "token not yet valid (nbf or iat in the future)"),
    (jwt.InvalidAudienceError, "audience does not match this endpoint"),
    (jwt.InvalidIssuerError, "issuer does not match"),
    (jwt.InvalidSignatureError, "signature verification failed"),
    (jwt.MissingRequiredClaimError, "a required claim is missing"),
    (jwt.InvalidIssuedAtError, "iat is not a number"),
    (jwt.InvalidKeyError, "the key does not fit the algorithm"),
    (jwt.DecodeError, "malformed token"),
)


class TokenVerifier:
    """Verifies one bearer token for one endpoint URL."""

    def __init__(
        self,
        issuers: dict[str, Issuer],
        jwks: JwksCache,
        leeway: int,
        max_lifetime: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.issuers = issuers
        self.jwks = jwks
        self.leeway = leeway
        self.max_lifetime = max_lifetime
        self._clock = clock
        self._keys: dict[tuple[str, str, str], tuple[dict[str, Any], AllowedPublicKeys]] = {}
        self._keys_lock = threading.Lock()

    def verify(self, token: str, audience: str) -> Caller:
        """The caller, or AuthError saying why not (the token itself is never quoted).

        Whether the jti was used before is the guard's check, made once the token holds and
        together with the rate count (one Redis round trip), so a forged token never burns a jti.
        """
        if len(token) > MAX_TOKEN_LENGTH:
            raise AuthError("malformed token", "token longer than any CDS client sends")
        header, claims = self._unverified(token)
        alg = header.get("alg")
        # Checked before any key lookup: `none` and HMAC never reach a verifier.
        if alg not in ALLOWED_ALGORITHMS:
            raise AuthError("algorithm not accepted", f"alg {shown(alg)} is not an accepted algorithm")
        iss = claims.get("iss")
        issuer = self.issuers.get(iss) if isinstance(iss, str) else None
        if issuer is None:
            raise AuthError("untrusted issuer", f"iss {shown(claims.get('iss'))} is not configured")
        if alg not in issuer.algorithms:
            raise AuthError("algorithm not accepted", f"alg {alg} is not allowed for {issuer.iss}")
        key = self._key(issuer, header, alg)
        try:
            payload = jwt.decode(
                token,
                key=key,
                algorithms=[alg],
                audience=audience,
                issuer=issuer.iss,
                leeway=self.leeway,
                options={"require": REQUIRED_CLAIMS, "verify_sub": False, "verify_jti": False},
            )
        except jwt.PyJWTError as exc:
            description = next((d for kind, d in _JWT_ERRORS if isinstance(exc, kind)), "invalid token")
            reason = description
            if isinstance(exc, jwt.InvalidAudienceError):
                reason = f"{description} (expected {audience})"
            elif isinstance(exc, jwt.MissingRequiredClaimError):
                reason = f"{description}: {exc.claim}"
            raise AuthError(description, f"{reason}; iss {issuer.iss}") from None
        return self._accept(issuer, header, alg, payload)

    def _unverified(self, token: str) -> tuple[dict[str, Any], dict[str, Any]]:
        # The issuer must be read before the signature can be checked (it names the key set);
        # nothing read here is trusted until jwt.decode below has verified it.
        try:
            # One parse gives both parts (get_unverified_header + decode would parse it twice).
            unverified = jwt.api_jwt.decode_complete(token, options={"verify_signature": False})
            header, claims = unverified["header"], unverified["payload"]
        except jwt.PyJWTError:
            raise AuthError("malformed token", "the token does not parse as a JWS") from None
        if not isinstance(header, dict) or not isinstance(claims, dict):
            raise AuthError("malformed token", "header or payload is not a JSON object")
        return header, claims

    def _key(self, issuer: Issuer, header: dict[str, Any], alg: str) -> AllowedPublicKeys:
        jku = header.get("jku")
        if jku is not None and not isinstance(jku, str):
            raise AuthError("key set not allowed", "jku is not a string")
        url = issuer.key_url(jku)
        if url is None:
            # Never fetched: a jku outside the allow-list is an attacker's key set.
            raise AuthError("key set not allowed", f"jku {shown(jku)} is not allow-listed for {issuer.iss}")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise AuthError("unknown key", "the header has no kid")
        try:
            jwk = self.jwks.key(url, kid)
        except JwksUnavailable as exc:
            raise AuthError("key set unavailable", f"JWKS {url} unavailable: {exc}") from None
        if jwk is None:
            raise AuthError("unknown key", f"kid {shown(kid)} is not in {url}")
        if jwk.get("alg") not in (None, alg):
            raise AuthError("algorithm not accepted", f"kid {shown(kid)} is for {shown(jwk.get('alg'))}")
        with self._keys_lock:
            cached = self._keys.get((url, kid, alg))
        # Reused only while the JWKS still publishes the same key under this kid.
        if cached is not None and cached[0] == jwk:
            return cached[1]
        try:
            key = cast(AllowedPublicKeys, jwt.PyJWK(jwk, algorithm=alg).key)
        except (jwt.PyJWTError, ValueError, TypeError, KeyError):
            reason = f"kid {shown(kid)} is not an {alg} key"
            raise AuthError("the key does not fit the algorithm", reason) from None
        with self._keys_lock:
            self._keys[(url, kid, alg)] = (jwk, key)
        return key

    def _accept(self, issuer: Issuer, header: dict[str, Any], alg: str, payload: dict[str, Any]) -> Caller:
        # PyJWT has checked that exp and iat are numbers (or numeric strings).
        jti, exp, iat = payload["jti"], int(payload["exp"]), int(payload["iat"])
        if not isinstance(jti, str) or not jti:
            raise AuthError("invalid token", f"jti is not a non-empty string; iss {issuer.iss}")
        if exp - iat > self.max_lifetime:
            raise AuthError("token lifetime too long", f"exp - iat = {exp - iat}s; iss {issuer.iss}")
        subject = payload.get("sub")
        if subject is not None and not isinstance(subject, str):
            raise AuthError("invalid token", f"sub is not a string; iss {issuer.iss}")
        if issuer.subjects and subject not in issuer.subjects:
            raise AuthError("untrusted subject", f"sub {shown(subject)} not allowed for {issuer.iss}")
        tenant = payload.get("tenant")
        return Caller(
            issuer=issuer.iss,
            subject=subject,
            tenant=tenant if isinstance(tenant, str) else None,
            jti=jti,
            kid=header["kid"],
            algorithm=alg,
            jti_ttl=int(exp - self._clock()) + self.leeway + 1,
        )
