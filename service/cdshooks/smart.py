"""The SMART app's settings, the card link that launches it, and its cards request (docs/smart-app.md)."""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import urlsplit

import orjson
from marshmallow import RAISE, Schema, ValidationError, fields, validate

from service.cdshooks.envelope import FHIR_ID, HookRequest
from service.cdshooks.fetch import (
    Base,
    FetchConfigError,
    FetchSettings,
    FhirFetcher,
    parse_allowlist,
    require_https,
)
from service.cdshooks.messages import issues_from_messages
from service.cdshooks.prefetch import KEY_TYPES, REQUIRED_KEYS
from service.errors import BadRequest
from service.facts.model import PatientFacts

LAUNCH_PATH = "/smart/launch"
APP_PATH = "/smart/app"
# An access token is opaque; real ones (JWTs with claims) run to a few kB. Anything longer is
# not a token, and the whole cards request stays far below the app-wide body limit.
MAX_TOKEN_CHARS = 8192
MAX_URL_CHARS = 2048
# SMART scopes: v1 `patient/Observation.read`, v2 `patient/Observation.rs`, wildcards, ?queries.
SCOPE = re.compile(r"^(patient|user)/([A-Za-z]+|\*)\.([a-z*]+)(\?.*)?$")


class SmartConfigError(FetchConfigError):
    """A SMART_* setting that would leave the app unsafe or unusable: the service refuses to start."""


def _origins(raw: Any) -> tuple[str, ...]:
    if isinstance(raw, str):
        try:
            raw = orjson.loads(raw or "[]")
        except orjson.JSONDecodeError as exc:
            raise SmartConfigError(f"SMART_CONNECT_ORIGINS is not valid JSON: {exc}") from exc
    if not isinstance(raw, list) or not all(isinstance(o, str) for o in raw):
        raise SmartConfigError("SMART_CONNECT_ORIGINS must be a JSON list of origins")
    origins = []
    for origin in raw:
        parts = urlsplit(origin)
        # An origin only: a path or query here would not restrict anything and hides a mistake.
        if parts.scheme != "https" or not parts.hostname or parts.path not in ("", "/") or parts.query:
            raise SmartConfigError(f"SMART_CONNECT_ORIGINS: {origin!r} is not an https origin")
        origins.append(f"{parts.scheme}://{parts.netloc}")
    return tuple(origins)


@dataclass(frozen=True)
class SmartSettings:
    """The SMART app's settings, checked once when the app starts; None of it is a secret."""

    client_id: str
    issuers: tuple[Base, ...]
    scopes: str
    public_base_url: str
    connect_origins: tuple[str, ...]

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> SmartSettings | None:
        """None when SMART_CLIENT_ID is empty (no app, no card link); SmartConfigError when unusable."""
        client_id = str(config.get("SMART_CLIENT_ID") or "").strip()
        if not client_id:
            return None
        development = str(config.get("ENV", "production")) == "development"
        try:
            issuers = parse_allowlist(config["SMART_ALLOWED_ISSUERS"], "SMART_ALLOWED_ISSUERS")
            require_https(issuers, development, "SMART_ALLOWED_ISSUERS")
        except FetchConfigError as exc:
            raise SmartConfigError(str(exc)) from exc
        if not issuers:
            raise SmartConfigError(
                "SMART_CLIENT_ID is set but SMART_ALLOWED_ISSUERS is empty: no EHR could launch the app"
            )
        base = str(config.get("PUBLIC_BASE_URL") or "").rstrip("/")
        if urlsplit(base).scheme not in ("http", "https"):
            raise SmartConfigError(
                "SMART_CLIENT_ID is set but PUBLIC_BASE_URL is not an absolute URL: a card link must be"
            )
        scopes = " ".join(str(config.get("SMART_SCOPES") or "").split())
        if "launch" not in scopes.split():
            raise SmartConfigError("SMART_SCOPES must include 'launch' (the app is launched by the EHR)")
        return cls(client_id, issuers, scopes, base, _origins(config.get("SMART_CONNECT_ORIGINS", "[]")))

    @property
    def launch_url(self) -> str:
        """The launch URL the EHR registers and the cards link."""
        return self.public_base_url + LAUNCH_PATH

    @property
    def redirect_uri(self) -> str:
        """The redirect URI the EHR registers."""
        return self.public_base_url + APP_PATH

    def issuer_refusal(self, iss: str) -> str | None:
        """Why the app will not launch from `iss`, or None when it may."""
        try:
            base = Base.parse(iss)
        except ValueError as exc:
            return f"the launch names an unusable FHIR server ({exc})"
        if not any(entry.contains(base) for entry in self.issuers):
            return f"{base.origin}{base.path} is not on this service's SMART_ALLOWED_ISSUERS"
        return None

    def connect_sources(self) -> tuple[str, ...]:
        """The origins the app's page may fetch from: the allowed FHIR servers and any extra origins."""
        return tuple(dict.fromkeys([*(b.origin for b in self.issuers), *self.connect_origins]))

    def allows(self, resource_type: str, op: str) -> bool:
        """Whether SMART_SCOPES asks for `op` (r: read, s: search) on `resource_type`."""
        for scope in self.scopes.split():
            match = SCOPE.match(scope)
            if not match or match.group(2) not in (resource_type, "*"):
                continue
            permission = match.group(3)
            if permission in ("*", "read") or (re.fullmatch("c?r?u?d?s?", permission) and op in permission):
                return True
        return False

    def fetch_keys(self) -> tuple[str, ...]:
        """The prefetch keys the cards request reads with the app's token: the required ones, and
        each other one whose search SMART_SCOPES asks for (the rest stay unknown, as if not sent)."""
        optional = [k for k in KEY_TYPES if k not in REQUIRED_KEYS and self.allows(KEY_TYPES[k], "s")]
        return (*REQUIRED_KEYS, *optional)

    def fetcher(self, fetch: FetchSettings, templates: Mapping[str, str]) -> FhirFetcher:
        """The fallback fetcher for the cards request: FHIR_* limits, SMART_ALLOWED_ISSUERS as its allow-list.

        The issuers are allowed implicitly, for this request only: the operator listed them as EHRs
        the app works with (https outside loopback development, like FHIR_SERVER_ALLOWLIST), and the
        token it sends them is the one the EHR gave the user's browser for exactly that server.
        """
        keys = self.fetch_keys()
        return FhirFetcher(replace(fetch, allowlist=self.issuers), {k: templates[k] for k in keys})


class CardsRequestSchema(Schema):
    """POST /smart/cards: the launch's FHIR server, its patient and the app's access token."""

    class Meta:
        unknown = RAISE  # nothing else is read, so anything else is a mistake worth naming

    fhirServer = fields.String(required=True, validate=validate.Length(min=1, max=MAX_URL_CHARS))  # noqa: N815
    patient = fields.String(required=True, validate=validate.Regexp(FHIR_ID))
    access_token = fields.String(required=True, validate=validate.Length(min=1, max=MAX_TOKEN_CHARS))


@dataclass(frozen=True)
class CardsRequest:
    """A validated cards request; the token is kept out of repr so it never reaches a log line."""

    fhir_server: str
    patient_id: str
    access_token: str = field(repr=False)

    def hook_request(self) -> HookRequest:
        """The patient-view call it stands for: no prefetch, so the pipeline reads the whole record
        from fhirServer with the token (the fallback fetch and its budget, size and paging rules)."""
        return HookRequest(
            hook="patient-view",
            hook_instance=str(uuid.uuid4()),
            patient_id=self.patient_id,
            user_id="",  # no CDS client names a user here; nothing after the envelope reads it
            prefetch={},
            draft_orders=[],
            fhir_server=self.fhir_server,
            has_authorization=True,
            access_token=self.access_token,
        )


_CARDS_SCHEMA = CardsRequestSchema()


def parse_cards_request(body: Any) -> CardsRequest:
    """Validate the body; every problem becomes an issue with its path (400), none quoting the token."""
    if not isinstance(body, dict):
        raise BadRequest.single("the request body must be a JSON object", None)
    try:
        data = _CARDS_SCHEMA.load(body)
    except ValidationError as exc:
        raise BadRequest(issues_from_messages(exc.messages)) from exc
    return CardsRequest(data["fhirServer"], data["patient"], data["access_token"])


@dataclass(frozen=True)
class AppLink:
    """What a card needs to link the SMART app: where it launches and which questions it records."""

    launch_url: str
    questionnaire_url: str
    link_ids: Sequence[str]  # every question of the published Questionnaire, in order

    def link(self, label: str, facts: PatientFacts) -> dict[str, Any]:
        """A CDS Hooks 2.0 smart link; appContext (a string) names the questions still unanswered."""
        unanswered = [link_id for link_id in self.link_ids if facts.get(link_id) is None]
        context = {"questionnaire": self.questionnaire_url, "unanswered": unanswered}
        return {
            "label": label,
            "url": self.launch_url,
            "type": "smart",
            "appContext": orjson.dumps(context).decode(),
        }
