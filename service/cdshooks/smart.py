"""The SMART app's settings and the card link that launches it (docs/smart-app.md)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import orjson

from service.cdshooks.fetch import Base, FetchConfigError, parse_allowlist, require_https
from service.facts.model import PatientFacts

LAUNCH_PATH = "/smart/launch"
APP_PATH = "/smart/app"


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
