"""The CDS Hooks 2.0 feedback body (and Epic's variant), validated with marshmallow at the edge."""

from __future__ import annotations

from datetime import UTC
from typing import Any

from marshmallow import (
    EXCLUDE,
    INCLUDE,
    Schema,
    ValidationError,
    fields,
    pre_load,
    validate,
    validates_schema,
)

from service.cdshooks.messages import issues_from_messages
from service.errors import BadRequest
from service.store.feedback import FeedbackEntry

OUTCOMES = ("accepted", "overridden")
MAX_ENTRIES = 1000  # Epic may batch; far more than one clinician's session produces
MAX_ID = 128


class CodingSchema(Schema):
    """A FHIR Coding as CDS Hooks uses it (system and code; display optional)."""

    class Meta:
        unknown = INCLUDE

    system = fields.String(validate=validate.Length(min=1, max=1024))
    code = fields.String(required=True, validate=validate.Length(min=1, max=256))
    display = fields.String(validate=validate.Length(max=1024))


class OverrideReasonSchema(Schema):
    """overrideReason: the coded reason the clinician picked and an optional comment."""

    class Meta:
        unknown = INCLUDE  # Epic adds com.epic.cdshooks.feedback.overrideReason.* members

    reason = fields.Nested(CodingSchema)
    # A bare Coding is taken as the reason too (a client echoing the card's overrideReasons).
    system = fields.String(validate=validate.Length(min=1, max=1024))
    code = fields.String(validate=validate.Length(min=1, max=256))
    display = fields.String(validate=validate.Length(max=1024))
    userComment = fields.String(validate=validate.Length(max=4000))  # noqa: N815
    extension = fields.Dict(keys=fields.String())


class AcceptedSuggestionSchema(Schema):
    """acceptedSuggestions[]: the suggestion uuid the clinician accepted."""

    class Meta:
        unknown = INCLUDE

    id = fields.String(required=True, validate=validate.Length(min=1, max=MAX_ID))


class FeedbackEntrySchema(Schema):
    """One feedback[] entry: the card, the outcome, what was accepted or why it was overridden."""

    class Meta:
        unknown = INCLUDE

    card = fields.String(required=True, validate=validate.Length(min=1, max=MAX_ID))
    outcome = fields.String(required=True, validate=validate.OneOf(OUTCOMES))
    outcomeTimestamp = fields.AwareDateTime(required=True, default_timezone=UTC)  # noqa: N815
    acceptedSuggestions = fields.List(  # noqa: N815
        fields.Nested(AcceptedSuggestionSchema), validate=validate.Length(max=100)
    )
    overrideReason = fields.Nested(OverrideReasonSchema)  # noqa: N815
    # Epic's examples: plural, one object or a list of them.
    overrideReasons = fields.List(  # noqa: N815
        fields.Nested(OverrideReasonSchema), validate=validate.Length(max=20)
    )
    extension = fields.Dict(keys=fields.String())

    @pre_load
    def _plural_as_list(self, data: Any, **_: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("overrideReasons"), dict):
            return {**data, "overrideReasons": [data["overrideReasons"]]}
        return data

    @validates_schema
    def _outcome_fits(self, data: dict[str, Any], **_: Any) -> None:
        if data.get("outcome") == "accepted" and (data.get("overrideReason") or data.get("overrideReasons")):
            raise ValidationError({"overrideReason": ["an accepted card has no override reason"]})
        if data.get("outcome") == "overridden" and data.get("acceptedSuggestions"):
            raise ValidationError({"acceptedSuggestions": ["an overridden card has no accepted suggestions"]})


class FeedbackSchema(Schema):
    """The whole body: a non-empty feedback array."""

    class Meta:
        unknown = EXCLUDE  # forward compatible, like the hook request

    feedback = fields.List(
        fields.Nested(FeedbackEntrySchema),
        required=True,
        validate=validate.Length(min=1, max=MAX_ENTRIES),
    )


def _reasons(entry: dict[str, Any]) -> tuple[list[dict[str, str]], str | None]:
    given = [entry["overrideReason"]] if entry.get("overrideReason") else []
    given += entry.get("overrideReasons") or []
    codings: list[dict[str, str]] = []
    comments: list[str] = []
    for reason in given:
        coding = reason.get("reason") or (reason if reason.get("code") else None)
        if coding:
            codings.append({k: coding[k] for k in ("system", "code", "display") if coding.get(k)})
        if reason.get("userComment"):
            comments.append(reason["userComment"])
    return codings, "\n".join(comments) or None


_SCHEMA = FeedbackSchema()


def parse_feedback(body: Any) -> list[FeedbackEntry]:
    """Validate the body; every problem becomes an issue with its path (400)."""
    if not isinstance(body, dict):
        raise BadRequest.single("the feedback body must be a JSON object with a feedback array", None)
    try:
        data = _SCHEMA.load(body)
    except ValidationError as exc:
        raise BadRequest(issues_from_messages(exc.messages)) from exc
    entries = []
    for loaded, raw in zip(data["feedback"], body["feedback"], strict=True):
        codings, comment = _reasons(loaded)
        entries.append(
            FeedbackEntry(
                card=loaded["card"],
                outcome=loaded["outcome"],
                outcome_timestamp=loaded["outcomeTimestamp"],
                accepted_suggestions=[s["id"] for s in loaded.get("acceptedSuggestions") or ()],
                override_reasons=codings,
                user_comment=comment,
                raw=raw,
            )
        )
    return entries
