"""A flawed rule set refuses to start, with a message that says which file and what is wrong."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from service.app import create_app
from service.engine.ruleset import RuleSetError, load_ruleset
from tests.conftest import ROOT


@pytest.fixture
def rules_copy(tmp_path: Path) -> Path:
    """A private copy of rules/ to break."""
    target = tmp_path / "rules"
    shutil.copytree(ROOT / "rules", target)
    return target


def _edit(path: Path, change: Callable[[dict[str, Any]], None]) -> None:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    change(data)
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")


CASES: list[tuple[str, str, Callable[[dict[str, Any]], None], str]] = [
    (
        "set/persistent-twitching.yaml",
        "app link that is not a label",
        lambda r: r.update(app_link=["Record"]),
        "app_link must be a link label",
    ),
    (
        "set/persistent-twitching.yaml",
        "unknown fact",
        lambda r: r["when"]["all"].append("twitchiness"),
        "unknown fact 'twitchiness'",
    ),
    (
        "set/persistent-twitching.yaml",
        "missing source",
        lambda r: r.pop("sources"),
        "cites at least one source",
    ),
    (
        "set/persistent-twitching.yaml",
        "unknown source",
        lambda r: r.update(sources=["seed-999"]),
        "unknown sources ['seed-999']",
    ),
    (
        "set/persistent-twitching.yaml",
        "duplicate id",
        lambda r: r.update(id="motor-neuron-red-flags"),
        "duplicate rule id 'motor-neuron-red-flags'",
    ),
    (
        "set/persistent-twitching.yaml",
        "logic not in When/Then/Source form",
        lambda r: r.update(logic="Fires on long twitching."),
        "When … Then … Source",
    ),
    (
        "set/persistent-twitching.yaml",
        "summary too long",
        lambda r: r.update(summary="x" * 140),
        "summary has 140 characters",
    ),
    (
        "set/persistent-twitching.yaml",
        "unknown order",
        lambda r: r["suggestions"].append({"order": "pet-scan", "reason": "x"}),
        "unknown order 'pet-scan'",
    ),
    (
        "set/persistent-twitching.yaml",
        "wrong comparison for the fact kind",
        lambda r: r["when"]["all"].append({"fact": "sides", "above": 3}),
        "cannot be tested with 'above'",
    ),
    (
        "set/persistent-twitching.yaml",
        "a number test against text",
        lambda r: r["when"]["all"].append({"fact": "duration-days", "above": "two weeks"}),
        "duration-days': above takes a number, not 'two weeks'",
    ),
    (
        "set/persistent-twitching.yaml",
        "a number fact equal to text",
        lambda r: r["when"]["all"].append({"fact": "duration-days", "equals": "14"}),
        "duration-days': equals takes a number, not '14'",
    ),
    (
        "set/persistent-twitching.yaml",
        "unknown analyte",
        lambda r: r["when"]["all"].append({"lab": "unobtainium", "is": "low"}),
        "unknown analyte 'unobtainium'",
    ),
    (
        "reference/orders.yaml",
        "unknown code system",
        lambda r: r["cbc"]["code"].update(system="http://example.org/made-up"),
        "unknown code system 'http://example.org/made-up'",
    ),
    (
        "reference/questionnaire.yaml",
        "a body area without a region",
        lambda q: _item(q, "body-areas")["options"].append("back"),
        "body-areas option(s) ['back'] have no region",
    ),
    (
        "reference/body-regions.yaml",
        "counts_for_spreading not a boolean",
        lambda b: b["areas"]["eyelid"].update(counts_for_spreading="no"),
        "counts_for_spreading is true or false",
    ),
    (
        "reference/findings.yaml",
        "a coded fact without a label",
        lambda f: f["ckd-diagnosed"].pop("label"),
        "findings ckd-diagnosed: neither a question nor a derived fact, so it needs a label",
    ),
    (
        "reference/measurements.yaml",
        "a measurement code that differs from its question's",
        lambda m: m["sleep-hours"]["code"].update(code="12345-6"),
        "differs from the question's code 93832-4",
    ),
    (
        "reference/override-reasons.yaml",
        "duplicate override reason",
        lambda r: r.append({"code": "patient-declined", "display": "Declined again"}),  # type: ignore[attr-defined]
        "override-reasons.yaml: duplicate codes",
    ),
    (
        "reference/medications.yaml",
        "a drug class setting an undeclared fact",
        lambda m: m["classes"]["statin"]["facts"].append("medication-lowers-sodium"),
        "facts ['medication-lowers-sodium'] are not declared",
    ),
    (
        "reference/medications.yaml",
        "a drug code without a source",
        lambda m: m["ingredients"]["furosemide"]["codes"][0].pop("source"),
        "code 4603 needs a known source",
    ),
    (
        "reference/medications.yaml",
        "one name for two ingredients",
        lambda m: m["ingredients"]["bumetanide"]["names"].append("furosemide"),
        "name 'furosemide' is also",
    ),
    (
        "set/possible-myelopathy.yaml",
        "an urgent order on a card that does not say urgent",
        lambda r: r.update(advice="Refer to neurology.", summary="Gait problems: refer to neurology"),
        "neurology-referral is ordered 'urgent' but the card's words do not say so",
    ),
    (
        "set/cauda-equina.yaml",
        "a stat order on a card that does not say immediate or emergency",
        lambda r: r.update(advice="Refer today.", summary="Possible cauda equina syndrome: MRI today"),
        "mri-lumbar-spine is ordered 'stat'",
    ),
    (
        "set/spreading-twitching.yaml",
        "a summary word that names no priority",
        lambda r: r.update(summary="Spreading twitching: prompt neurology appointment"),
        "summary says 'prompt', which names no priority",
    ),
    (
        "set/motor-neuron-red-flags.yaml",
        "replaced by an unknown rule",
        lambda r: r.update(replaced_by=["known-mnd"]),
        "replaced_by names unknown rules ['known-mnd']",
    ),
]


def _item(questionnaire: dict[str, Any], link_id: str) -> dict[str, Any]:
    return next(i for g in questionnaire["groups"] for i in g["items"] if i["linkId"] == link_id)


@pytest.mark.parametrize(("file", "name", "change", "message"), CASES, ids=[c[1] for c in CASES])
def test_flawed_rule_set_refuses_to_start(
    rules_copy: Path,
    file: str,
    name: str,
    change: Callable[[dict[str, Any]], None],
    message: str,
) -> None:
    """create_app raises RuleSetError naming the problem."""
    _edit(rules_copy / file, change)
    with pytest.raises(RuleSetError, match=None) as info:
        create_app({"RULES_DIR": str(rules_copy)})
    assert message in str(info.value), f"{name}: {info.value}"


def test_the_shipped_rule_set_loads() -> None:
    """The real rule set passes every check, and every rule cites a source."""
    ruleset = load_ruleset(ROOT / "rules")
    assert len(ruleset.rules) >= 20
    assert all(rule.sources for rule in ruleset.rules)
