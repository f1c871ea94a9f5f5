"""Shared fixtures: the app built by the factory, its client, and the ../shared material."""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from flask import Flask
from flask.testing import FlaskClient

from service.app import create_app
from service.cdshooks.bundles import hook_request_for_bundle
from service.cdshooks.prefetch import prefetch_templates
from service.engine.reference import load_reference

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
EXAMPLES = ROOT / "fhir_examples"
# The examples are dated around this day; a fixed clock keeps look-backs reproducible.
EXAMPLE_DAY = "2026-11-22"
# One CDS service per hook, each at its own id (the default SERVICE_ID answers patient-view).
HOOK_URLS = {
    "patient-view": "/cds-services/twitching-red-flags",
    "order-select": "/cds-services/twitching-red-flags-order-select",
    "order-sign": "/cds-services/twitching-red-flags-order-sign",
}


def hook_url(hook: str) -> str:
    """The path of the service that answers this hook (patient-view's for a hook none answers)."""
    return HOOK_URLS.get(hook, HOOK_URLS["patient-view"])


@pytest.fixture(autouse=True, scope="session")
def _instance_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Every app built by the tests keeps its SQLite file and dev secret in a temporary folder."""
    key = "TWITCH_CDS_INSTANCE_DIR"
    before = os.environ.get(key)
    os.environ[key] = str(tmp_path_factory.mktemp("instance"))
    yield
    if before is None:
        del os.environ[key]
    else:
        os.environ[key] = before


@pytest.fixture
def app() -> Flask:
    """The application with embedded defaults and a fixed evaluation date."""
    return create_app({"TESTING": True, "TODAY": EXAMPLE_DAY})


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    """A test client for the app."""
    return app.test_client()


def shared(*parts: str) -> Path:
    """A path under ../shared, or skip the test with the reason when it is absent."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"../shared is not beside the checkout ({path} missing)")
    return path


def load_json(path: Path) -> Any:
    """Parse a JSON file."""
    return orjson.loads(path.read_bytes())


@functools.cache
def discovery_templates() -> dict[str, str]:
    """The prefetch templates discovery advertises."""
    return prefetch_templates(load_reference(ROOT / "rules" / "reference"))


def bundle_to_hook_request(bundle: dict[str, Any]) -> dict[str, Any]:
    """Turn a one-patient Bundle into the patient-view call an EHR would send with full prefetch."""
    return hook_request_for_bundle(
        bundle, "patient-view", discovery_templates(), hook_instance="d1577c69-dfbe-44ad-ba6d-3e05e953b2ea"
    )


def server_only(call: dict[str, Any], fhir_server: str, token: str) -> dict[str, Any]:
    """The same hook call with no prefetch: only fhirServer and a bearer token for it."""
    return {
        **call,
        "prefetch": {},
        "fhirServer": fhir_server,
        "fhirAuthorization": {
            "access_token": token,
            "token_type": "Bearer",
            "expires_in": 300,
            "scope": "patient/*.read",
            "subject": "twitch-cds",
        },
    }


def card_rules(cards: list[dict[str, Any]]) -> list[str]:
    """The topic code (stable rule id without hyphens) of each card, in order."""
    return [c["source"]["topic"]["code"] for c in cards]


def card_signature(cards: list[dict[str, Any]]) -> list[tuple[str, str, list[str]]]:
    """What must match between two answers: topic, indicator, suggested codes (uuids differ)."""
    return [
        (
            c["source"]["topic"]["code"],
            c["indicator"],
            [
                a["resource"]["code"]["coding"][0]["code"]
                for s in c.get("suggestions", [])
                for a in s["actions"]
            ],
        )
        for c in cards
    ]


def topic(rule_id: str) -> str:
    """The topic code a rule id becomes on a card."""
    return rule_id.replace("-", "")
