"""The fhir_examples/ index: one entry per example file, with its rule, kind and expected cards."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from service.config import PROJECT_ROOT

DEFAULT_EXAMPLES_DIR = PROJECT_ROOT / "fhir_examples"
# Folder and file names are matched against this before anything is read: no dots, no slashes,
# so a name from a URL can never step outside the examples folder.
SAFE_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,127}$")
KINDS = (("fires-", "fires"), ("near-miss-", "near-miss"))


@dataclass(frozen=True)
class Example:
    """One example Bundle and what its .expect.yaml says about it."""

    rule: str
    name: str
    kind: str
    description: str
    expected: list[dict[str, str]]
    path: Path

    def to_json(self) -> dict[str, Any]:
        """The entry as GET /examples lists it."""
        return {
            "rule": self.rule,
            "name": self.name,
            "kind": self.kind,
            "description": self.description,
            "expectedCards": self.expected,
            "url": f"/examples/{self.rule}/{self.name}.json",
        }


def _kind(name: str) -> str:
    return next((kind for prefix, kind in KINDS if name.startswith(prefix)), "other")


def _expectation(json_path: Path) -> tuple[str, list[dict[str, str]]]:
    """The description and expected (rule, indicator) pairs; empty when the file is absent or odd."""
    expect = json_path.with_suffix(".expect.yaml")
    if not expect.is_file():
        return "", []
    try:
        data = yaml.safe_load(expect.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        # An unreadable expectation only loses the description; tests/test_examples.py flags it.
        return "", []
    if not isinstance(data, dict):
        return "", []
    description = " ".join(str(data.get("description") or "").split())
    cards = [
        {"rule": str(c.get("rule", "")), "indicator": str(c.get("indicator", ""))}
        for c in data.get("cards") or ()
        if isinstance(c, dict)
    ]
    return description, cards


def load_examples(folder: Path) -> list[Example]:
    """Every `<rule>/<name>.json` under folder with safe names, sorted by rule then name."""
    if not folder.is_dir():
        return []
    found: list[Example] = []
    for path in sorted(folder.glob("*/*.json")):
        rule, name = path.parent.name, path.stem
        if not (SAFE_NAME.match(rule) and SAFE_NAME.match(name)) or not path.is_file():
            continue
        description, expected = _expectation(path)
        found.append(Example(rule, name, _kind(name), description, expected, path))
    return found


class ExampleIndex:
    """The examples read once; files are served only by looking their names up here."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.examples = load_examples(folder)
        self._by_key = {(e.rule, e.name): e for e in self.examples}

    def find(self, rule: str, name: str) -> Example | None:
        """The example with this rule folder and file stem, or None (never a path built from input)."""
        return self._by_key.get((rule, name))
