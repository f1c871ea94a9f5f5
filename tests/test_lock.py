"""The lock files: every dependency of pyproject.toml pinned, within its range, every file hashed."""

from __future__ import annotations

import re
import tomllib

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.conftest import ROOT

RUNTIME = ROOT / "requirements.txt"
DEV = ROOT / "requirements-dev.txt"


def _pins(text: str) -> dict[str, str]:
    """name -> version of each `name==version \\` line, after checking each carries hashes."""
    pins: dict[str, str] = {}
    for block in re.split(r"\n(?=[A-Za-z0-9])", text):
        first = block.splitlines()[0]
        if first.startswith("#") or not first.strip():
            continue
        name, _, version = first.partition("==")
        version = version.split()[0]
        assert "--hash=sha256:" in block, f"{name} is pinned without a hash"
        pins[canonicalize_name(name)] = version
    return pins


def _pyproject() -> dict[str, list[Requirement]]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return {
        "runtime": [Requirement(r) for r in project["dependencies"]],
        "dev": [Requirement(r) for r in project["optional-dependencies"]["dev"]],
    }


def test_every_dependency_is_pinned_within_its_range() -> None:
    """Runtime needs are in requirements.txt, runtime and dev needs in requirements-dev.txt."""
    runtime, dev = _pins(RUNTIME.read_text()), _pins(DEV.read_text())
    wanted = _pyproject()
    for requirement in wanted["runtime"]:
        for pins in (runtime, dev):
            version = pins.get(canonicalize_name(requirement.name))
            assert version, f"{requirement.name} is not locked: run make lock"
            assert requirement.specifier.contains(version), f"{requirement} but locked {version}: make lock"
    for requirement in wanted["dev"]:
        version = dev.get(canonicalize_name(requirement.name))
        assert version, f"{requirement.name} is not locked: run make lock"
        assert requirement.specifier.contains(version), f"{requirement} but locked {version}: make lock"
    # The image runs the versions the tests ran.
    assert {name: dev[name] for name in runtime} == runtime
    # The build backend is locked too (installed with --no-build-isolation).
    assert "setuptools" in runtime
    assert "setuptools" in dev


def test_the_lock_is_what_make_and_the_image_install() -> None:
    """make installs requirements-dev.txt and the image requirements.txt, both hash-checked."""
    makefile = (ROOT / "Makefile").read_text()
    assert "pip install --quiet --require-hashes -r requirements-dev.txt" in makefile
    assert "--no-deps --no-build-isolation -e ." in makefile
    assert "\nlock:" in makefile
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "--require-hashes -r requirements.txt" in dockerfile
    assert "--no-deps --no-build-isolation ." in dockerfile
    for lock in (RUNTIME, DEV):
        header = lock.read_text()
        assert "pip-compile" in header
        assert "--generate-hashes" in header
        assert "file://" not in header  # no path of the machine that locked it
