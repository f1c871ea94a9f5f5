"""The CDS Hooks 2.0 request envelope, validated once with marshmallow at the edge."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from marshmallow import (
    EXCLUDE,
    INCLUDE,
    Schema,
    ValidationError,
    fields,
    validate,
    validates_schema,
)

from service.cdshooks.messages import issues_from_messages
from service.errors import BadRequest, Issue, echo

FHIR_ID = r"^[A-Za-z0-9\-\.]{1,64}$"
USER_REF = r"^(Practitioner|PractitionerRole|Patient|RelatedPerson)/[A-Za-z0-9\-\.]{1,64}$"
SUPPORTED_HOOKS = ("patient-view", "order-select", "order-sign")


class FhirAuthorizationSchema(Schema):
    """fhirAuthorization: the OAuth 2.0 bearer token a CDS client passes for its fhirServer."""

    class Meta:
        unknown = INCLUDE

    access_token = fields.String(required=True, validate=validate.Length(min=1))
    token_type = fields.String(required=True, validate=validate.OneOf(["Bearer"]))
    expires_in = fields.Integer(required=True, strict=True, validate=validate.Range(min=0))
    scope = fields.String(required=True, validate=validate.Length(min=1))
    subject = fields.String(required=True, validate=validate.Length(min=1))
    patient = fields.String(validate=validate.Regexp(FHIR_ID))


class ContextSchema(Schema):
    """The hook context; each hook adds its own fields (checked in HookRequestSchema)."""

    class Meta:
        unknown = INCLUDE

    userId = fields.String(required=True, validate=validate.Regexp(USER_REF))  # noqa: N815
    patientId = fields.String(required=True, validate=validate.Regexp(FHIR_ID))  # noqa: N815
    encounterId = fields.String(validate=validate.Regexp(FHIR_ID))  # noqa: N815
    selections = fields.List(fields.String())
    draftOrders = fields.Dict()  # noqa: N815


class HookRequestSchema(Schema):
    """The whole hook request body."""

    class Meta:
        unknown = EXCLUDE  # forward compatible: unknown top-level members are ignored

    hook = fields.String(required=True, validate=validate.Length(min=1))
    hookInstance = fields.UUID(required=True)  # noqa: N815
    fhirServer = fields.Url(  # noqa: N815
        require_tld=False,
        schemes={"http", "https"},
        # RFC 3986: a URI is ASCII (an IRI such as https://Ï must be sent percent-encoded).
        validate=validate.Regexp(r"^[\x21-\x7e]+$", error="must be an ASCII URI (RFC 3986)"),
    )
    fhirAuthorization = fields.Nested(FhirAuthorizationSchema, allow_none=True)  # noqa: N815
    context = fields.Nested(ContextSchema, required=True)
    # Keys and values are not deserialised one by one: JSON keys are always strings, any value is
    # accepted here (_hook_context checks each is a resource or null), and per-entry fields cost
    # a third of the envelope's time.
    prefetch = fields.Dict()
    extension = fields.Dict()

    @validates_schema
    def _hook_context(self, data: dict[str, Any], **_: Any) -> None:
        hook = data.get("hook")
        context = data.get("context") or {}
        if hook in ("order-select", "order-sign"):
            drafts = context.get("draftOrders")
            if not isinstance(drafts, dict) or drafts.get("resourceType") != "Bundle":
                raise ValidationError(
                    {"context": {"draftOrders": [f"{hook} requires draftOrders, a FHIR Bundle"]}}
                )
        for key, value in (data.get("prefetch") or {}).items():
            if value is not None and not (isinstance(value, dict) and "resourceType" in value):
                raise ValidationError(
                    {"prefetch": {key: ["must be a FHIR resource (with resourceType) or null"]}}
                )


@dataclass(frozen=True)
class HookRequest:
    """A validated hook call, as plain data."""

    hook: str
    hook_instance: str
    patient_id: str
    user_id: str
    prefetch: dict[str, Any]
    draft_orders: list[dict[str, Any]]
    fhir_server: str | None
    has_authorization: bool
    # The bearer token for fhir_server only; kept out of repr so it never reaches a log line.
    access_token: str | None = field(default=None, repr=False)


_SCHEMA = HookRequestSchema()


def _draft_orders(bundle: Any) -> list[dict[str, Any]]:
    """The draft resources of context.draftOrders; 400 naming each malformed field the rules read.

    A draft is incomplete by nature (a MedicationRequest without intent is tolerated), so only the
    fields read here are checked: each entry's resource, its resourceType, status and code.
    """
    if not isinstance(bundle, dict):
        return []
    entries = bundle.get("entry") or []
    base = "context.draftOrders.entry"
    if not isinstance(entries, list):
        raise BadRequest.single("context.draftOrders.entry must be an array", base)
    problems: list[Issue] = []
    drafts = []
    for i, entry in enumerate(entries):
        where = f"{base}[{i}]"
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if not isinstance(resource, dict):
            problems.append(Issue(f"{where}: an entry needs a resource object", f"{where}.resource"))
            continue
        where += ".resource"
        if not isinstance(resource.get("resourceType"), str):
            problems.append(Issue(f"{where}: resourceType must be a string", f"{where}.resourceType"))
        if "status" in resource and not isinstance(resource["status"], str):
            problems.append(Issue(f"{where}: status must be a code (a string)", f"{where}.status"))
        code = resource.get("code")
        if code is not None:
            codings = code.get("coding") if isinstance(code, dict) else None
            if not isinstance(code, dict) or not isinstance(codings if codings is not None else [], list):
                problems.append(Issue(f"{where}: code must be a CodeableConcept", f"{where}.code"))
            else:
                for j, coding in enumerate(codings or ()):
                    fine = isinstance(coding, dict) and all(
                        isinstance(coding.get(k, ""), str) for k in ("system", "code")
                    )
                    if not fine:
                        path = f"{where}.code.coding[{j}]"
                        problems.append(Issue(f"{path}: a Coding with string system and code", path))
        drafts.append(resource)
    if problems:
        raise BadRequest(problems)
    return drafts


def parse_hook_request(
    body: Any, service_hooks: tuple[str, ...], elsewhere: Mapping[str, str] | None = None
) -> HookRequest:
    """Validate the envelope; every problem becomes an issue with its path (400).

    `elsewhere` maps each hook another service of this deployment answers to that service's URL.
    """
    if not isinstance(body, dict):
        raise BadRequest.single("the request body must be a JSON object", None)
    try:
        data = _SCHEMA.load(body)
    except ValidationError as exc:
        raise BadRequest(issues_from_messages(exc.messages)) from exc
    if data["hook"] not in service_hooks:
        answers = f"this service answers {', '.join(service_hooks)}, not {echo(data['hook'])}"
        where = (elsewhere or {}).get(data["hook"])
        hint = f"; send {data['hook']} to {where}" if where else ""
        raise BadRequest.single(answers + hint, "hook")
    context = data["context"]
    drafts = _draft_orders(context.get("draftOrders"))
    return HookRequest(
        hook=data["hook"],
        hook_instance=str(data["hookInstance"]),
        patient_id=context["patientId"],
        user_id=context["userId"],
        prefetch=data.get("prefetch") or {},
        draft_orders=drafts,
        fhir_server=data.get("fhirServer"),
        has_authorization=data.get("fhirAuthorization") is not None,
        access_token=(data.get("fhirAuthorization") or {}).get("access_token"),
    )
