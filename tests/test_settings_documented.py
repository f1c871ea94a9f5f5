"""Every setting in service/config.py has its row in README's configuration table."""

from __future__ import annotations

from service.config import DEFAULTS
from tests.conftest import ROOT


def test_every_setting_is_in_the_readme_table() -> None:
    """A setting nobody can find is a setting nobody sets right."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    table = readme.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    missing = [key for key in DEFAULTS if f"| `{key}` |" not in table]
    assert not missing, f"README's configuration table lacks {missing}"
