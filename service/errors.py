"""The service's one exception tree, rendered as FHIR OperationOutcome bodies."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

# Error bodies quote what the caller sent only this far: a 6 MB value is not sent back whole.
ECHO_LIMIT = 200
# Backstops for whatever an issue's text or path took from a request without echo() (a key
# name in a path, a pydantic message): well above any message or path the service writes itself.
DIAGNOSTICS_LIMIT = 2000
EXPRESSION_LIMIT = 500


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text)} characters)"


def clip(text: str, limit: int = ECHO_LIMIT) -> str:
    """User text shown as it is (a path, a method), cut at `limit` characters with its full length."""
    return _cut(text, limit)


def echo(value: object, limit: int = ECHO_LIMIT) -> str:
    """User input quoted for an error message: repr, cut at `limit` characters with its full length."""
    if isinstance(value, str) and len(value) > limit:
        return f"{value[:limit]!r}… ({len(value)} characters)"
    return _cut(repr(value), limit)


@dataclass(frozen=True)
class Issue:
    """One OperationOutcome.issue: what went wrong and where (FHIRPath-style expression)."""

    diagnostics: str
    expression: str | None = None
    severity: str = "error"
    code: str = "invalid"

    def __post_init__(self) -> None:
        # Bounded at the source, so OperationOutcome bodies, data cards and logs all stay small.
        object.__setattr__(self, "diagnostics", _cut(self.diagnostics, DIAGNOSTICS_LIMIT))
        if self.expression is not None:
            object.__setattr__(self, "expression", _cut(self.expression, EXPRESSION_LIMIT))

    def to_fhir(self) -> dict[str, Any]:
        """Render as an OperationOutcome.issue element (no empty values)."""
        body: dict[str, Any] = {
            "severity": self.severity,
            "code": self.code,
            "diagnostics": self.diagnostics,
        }
        if self.expression:
            body["expression"] = [self.expression]
        return body


def operation_outcome(issues: list[Issue]) -> dict[str, Any]:
    """Build an OperationOutcome resource from issues."""
    return {"resourceType": "OperationOutcome", "issue": [i.to_fhir() for i in issues]}


@dataclass
class ServiceError(Exception):
    """Base of every error the service answers with; subclasses fix status and issue code."""

    issues: list[Issue] = field(default_factory=list)
    status: ClassVar[int] = 500
    issue_code: ClassVar[str] = "exception"

    @classmethod
    def single(cls, diagnostics: str, expression: str | None = None) -> ServiceError:
        """Build the error from one problem."""
        return cls([Issue(diagnostics, expression, code=cls.issue_code)])

    def __str__(self) -> str:
        return "; ".join(i.diagnostics for i in self.issues)


class BadRequest(ServiceError):
    """Malformed JSON or a CDS Hooks envelope that breaks the spec (400)."""

    status = 400
    issue_code = "invalid"


class Forbidden(ServiceError):
    """A request this service refuses on principle, e.g. a SMART launch from an EHR not allow-listed (403)."""

    status = 403
    issue_code = "forbidden"


class NotFound(ServiceError):
    """Unknown service or resource (404)."""

    status = 404
    issue_code = "not-found"


class MethodNotAllowed(ServiceError):
    """The route exists but not for this HTTP method (405)."""

    status = 405
    issue_code = "not-supported"


class MissingData(ServiceError):
    """Data the rules need is neither in prefetch nor obtainable (412, per CDS Hooks)."""

    status = 412
    issue_code = "not-found"


class PayloadTooLarge(ServiceError):
    """Body over the configured limit (413)."""

    status = 413
    issue_code = "too-costly"


class UnsupportedMediaType(ServiceError):
    """Body not sent as application/json or application/fhir+json (415)."""

    status = 415
    issue_code = "not-supported"


class InvalidFhir(ServiceError):
    """A FHIR payload that is well-formed JSON but not valid FHIR R4 (422)."""

    status = 422
    issue_code = "invalid"


class InternalError(ServiceError):
    """A genuine bug: reported without details that could hold patient data (500)."""

    status = 500
    issue_code = "exception"


class TooManyRequests(ServiceError):
    """A caller over its rate limit (429, with Retry-After)."""

    status = 429
    issue_code = "throttled"


class ServiceUnavailable(ServiceError):
    """A store the service needs to answer safely is unreachable (503)."""

    status = 503
    issue_code = "transient"
