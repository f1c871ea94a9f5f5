"""Every file in fhir_examples/ is a test: valid FHIR, and exactly the cards its .expect.yaml names."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from fhir.resources.R4B.bundle import Bundle
from flask.testing import FlaskClient

from service.engine.ruleset import load_ruleset
from tests.conftest import EXAMPLES, ROOT, bundle_to_hook_request, card_rules, load_json, topic

EXAMPLE_FILES = sorted(EXAMPLES.rglob("*.json"))


def _expectation(path: Path) -> dict[str, Any]:
    expect = path.with_suffix(".expect.yaml")
    assert expect.exists(), f"{path.relative_to(ROOT)} has no expected cards ({expect.name})"
    data = yaml.safe_load(expect.read_text(encoding="utf-8"))
    assert isinstance(data, dict), f"{expect.name}: a mapping is expected"
    assert "cards" in data, f"{expect.name}: needs a cards list"
    return data


def _suggested_codes(card: dict[str, Any]) -> list[str]:
    return [s["actions"][0]["resource"]["code"]["coding"][0]["code"] for s in card.get("suggestions", [])]


def _check(cards: list[dict[str, Any]], expected: dict[str, Any], where: str) -> None:
    wanted = expected["cards"] or []
    for card in cards:
        # No card without the evidence that triggered it, and its source.
        evidence = card["detail"].split("**Why this card**\n", 1)
        if card["source"]["topic"]["code"] != "dataquality":
            assert len(evidence) == 2, f"{where}: {card['summary']!r} shows no evidence"
            assert evidence[1].startswith("- "), f"{where}: {card['summary']!r} lists no evidence"
            assert "Sources: " in card["detail"], f"{where}: {card['summary']!r} cites no source"
    assert card_rules(cards) == [topic(c["rule"]) for c in wanted], where
    ruleset = load_ruleset(ROOT / "rules")
    for card, want in zip(cards, wanted, strict=True):
        assert card["indicator"] == want["indicator"], f"{where}: {want['rule']} indicator"
        orders = ruleset.reference.orderables
        codes = [orders[o].code.code for o in want.get("suggests", [])]
        assert _suggested_codes(card) == codes, f"{where}: {want['rule']} suggestions"
        shown = re.sub(r"\\(.)", r"\1", card["detail"])  # as rendered: Markdown escapes removed
        for text in want.get("detail_mentions", []):
            assert text in shown, f"{where}: {want['rule']} detail lacks {text!r}"


def test_examples_exist_for_every_rule() -> None:
    """Each rule has at least one example that fires it and one near miss that must not."""
    ruleset = load_ruleset(ROOT / "rules")
    for rule in ruleset.rules:
        folder = EXAMPLES / rule.id
        fires = list(folder.glob("fires-*.json"))
        misses = list(folder.glob("near-miss-*.json"))
        assert fires, f"no fhir_examples/{rule.id}/fires-*.json"
        assert misses, f"no fhir_examples/{rule.id}/near-miss-*.json"
        for path in fires:
            names = [c["rule"] for c in _expectation(path)["cards"]]
            assert rule.id in names, f"{path.name} is meant to fire {rule.id}"
        for path in misses:
            names = [c["rule"] for c in _expectation(path)["cards"] or []]
            assert rule.id not in names, f"{path.name} must not fire {rule.id}"


@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=lambda p: str(p.relative_to(EXAMPLES)))
def test_example_is_valid_fhir(path: Path) -> None:
    """The whole file, every resource in it, validates as FHIR R4 (R4B models, strict)."""
    Bundle.model_validate(load_json(path), strict=True)


@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=lambda p: str(p.relative_to(EXAMPLES)))
def test_example_cards_via_evaluate(client: FlaskClient, path: Path) -> None:
    """POST /evaluate gives exactly the expected cards."""
    response = client.post("/evaluate", data=path.read_bytes(), content_type="application/fhir+json")
    assert response.status_code == 200, response.get_data(as_text=True)
    _check(response.get_json()["cards"], _expectation(path), f"{path.name} via /evaluate")


@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=lambda p: str(p.relative_to(EXAMPLES)))
def test_example_cards_via_hook(client: FlaskClient, path: Path) -> None:
    """The same data as a patient-view call with prefetch gives the same cards."""
    request = bundle_to_hook_request(load_json(path))
    response = client.post("/cds-services/twitching-red-flags", json=request)
    assert response.status_code == 200, response.get_data(as_text=True)
    _check(response.get_json()["cards"], _expectation(path), f"{path.name} via patient-view")
