"""The rule catalogue: served as JSON, and docs/rules.md generated from it and kept current."""

from __future__ import annotations

from flask.testing import FlaskClient

from service.engine.catalogue import catalogue_markdown
from service.engine.ruleset import load_ruleset
from tests.conftest import ROOT


def test_catalogue_lists_every_rule_with_sources(client: FlaskClient) -> None:
    """Each rule: id, version, logic in When/Then/Source form, facts read, sources."""
    body = client.get("/rules").get_json()
    ruleset = load_ruleset(ROOT / "rules")
    assert [r["id"] for r in body["rules"]] == [r.id for r in ruleset.rules]
    for rule in body["rules"]:
        assert rule["version"]
        assert rule["logic"].startswith("When ")
        assert " Then " in rule["logic"]
        assert rule["sources"]
        assert all(s["label"] for s in rule["sources"])
        assert rule["facts"]
    persistent = next(r for r in body["rules"] if r["id"] == "persistent-twitching")
    assert {"order": "basic-metabolic-panel", "label": "Basic metabolic panel",
            "system": "http://loinc.org", "code": "24321-2"} in persistent["suggestions"]  # fmt: skip


def test_docs_table_is_current() -> None:
    """docs/rules.md is regenerated whenever a rule changes (python -m service.engine.catalogue)."""
    expected = catalogue_markdown(load_ruleset(ROOT / "rules"))
    actual = (ROOT / "docs" / "rules.md").read_text(encoding="utf-8")
    assert actual == expected, (
        "docs/rules.md is stale: run python -m service.engine.catalogue > docs/rules.md"
    )


def test_card_source_labels_are_cut_only_where_they_read_whole() -> None:
    """Up to the first ": ", never inside parentheses; a consumer article by its title."""
    from service.cdshooks.cards import short_label

    assert short_label("NICE NG42 §1.1: Motor neurone disease") == "NICE NG42 §1.1"
    terms = "NICE NG127, Terms used in this guideline (refer immediately: within a few hours)"
    assert short_label(terms) == terms
    assert (
        short_label("Seed 000: Thigh muscle twitching", article=True)
        == "consumer article “Thigh muscle twitching”"
    )
