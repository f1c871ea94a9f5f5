"""Units: UCUM parsing and conversion by a real UCUM implementation (ucumvert, into pint).

The only hand-written part is `normalise`, a small, documented clean-up of the spellings real
laboratory feeds send (case, micro signs, spaces, `mIU` for `m[IU]`, the eGFR body-surface
annotation) before the string is handed to the UCUM parser. Conversion between mass and substance
concentration uses the analyte's molar mass, and equivalents use its charge; both come from the
reference data, not from here.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

# UCUM atoms a clinical-chemistry result uses, keyed by their lower-case spelling. UCUM is
# case-sensitive; feeds often are not ("MG/DL", "mmol/l"), so a token that fails as written is
# rebuilt from these, with an optional lower-case prefix in front.
_ATOMS = {
    "g": "g", "mol": "mol", "l": "L", "eq": "eq", "u": "U", "kat": "kat", "[iu]": "[IU]",
    "iu": "[IU]", "m2": "m2", "min": "min", "h": "h", "s": "s", "%": "%",
}  # fmt: skip
_PREFIXES = {"k": "k", "d": "d", "c": "c", "m": "m", "u": "u", "n": "n", "p": "p", "f": "f"}
# The eGFR denominator as feeds write it: "/1.73 m2", "/1.73m2", "/1.73m^2", "/{1.73_m2}".
_BSA = re.compile(r"/\s*\{?\s*1\.73\s*[_ ]?\s*m\s*(\^?2|²)\s*\}?", re.IGNORECASE)


class UnitError(ValueError):
    """A unit string that is not UCUM even after normalisation, or that does not convert."""


@dataclass(frozen=True)
class Chemistry:
    """What converting one analyte's units needs beyond UCUM: molar mass and ionic charge."""

    molar_mass: float | None = None  # g/mol, for mass <-> substance concentration
    charge: int = 1  # equivalents per mole (UCUM's eq is one mole of charge-agnostic entities)


_registry: Any = None
_registry_lock = threading.Lock()


def registry() -> Any:
    """The process's one UCUM registry (built once: it takes about a second)."""
    global _registry
    with _registry_lock:
        if _registry is None:
            from ucumvert import PintUcumRegistry  # heavy import, paid once at start-up

            _registry = PintUcumRegistry()
    return _registry


def _token(token: str) -> str:
    """One unit token (between / and .) in UCUM case; unchanged when it is already fine."""
    low = token.lower()
    if low in _ATOMS:
        return _ATOMS[low]
    if low[:1] in _PREFIXES and low[1:] in _ATOMS:
        return _PREFIXES[low[0]] + _ATOMS[low[1:]]
    return token


def normalise(spelling: str, aliases: dict[str, str] | None = None) -> str:
    """A feed's unit spelling as UCUM: analyte aliases (lower-case keys), then case, micro sign, spaces."""
    text = spelling.strip()
    if aliases and text.lower() in aliases:
        return aliases[text.lower()]
    text = text.replace("µ", "u").replace("μ", "u")  # micro sign and Greek mu
    text = _BSA.sub("/{1.73_m2}", text)
    text = re.sub(r"\s+", "", text)
    if aliases and text.lower() in aliases:
        return aliases[text.lower()]
    parts = re.split(r"([/.])", text)
    return "".join(p if p in "/." or p.startswith("{") else _token(p) for p in parts)


@lru_cache(maxsize=4096)
def _parse(ucum: str) -> Any:
    try:
        quantity = registry().from_ucum(ucum)
    except Exception as exc:  # ucumvert raises its own and lark's errors
        raise UnitError(f"{ucum!r} is not a UCUM unit") from exc
    return quantity


def validate_ucum(ucum: str) -> None:
    """Raise UnitError unless `ucum` parses as UCUM exactly as written."""
    _parse(ucum)


@lru_cache(maxsize=4096)
def factor(source: str, target: str, chemistry: Chemistry = Chemistry()) -> float:
    """The number a value in `source` (UCUM) is multiplied by to be in `target` (UCUM)."""
    quantity = _parse(source)
    goal = _parse(target)
    value = quantity
    if any(t.endswith("eq") for t in re.split(r"[/.]", source)):
        value = value / chemistry.charge  # mEq of a divalent ion is half as many mmol
    try:
        return float(value.to(goal.units).magnitude / goal.magnitude)
    except Exception as mismatch:
        if chemistry.molar_mass is None:
            raise UnitError(f"{source!r} does not convert to {target!r}") from mismatch
    molar = _parse("g/mol") * chemistry.molar_mass
    for bridged in (value * molar, value / molar):
        try:
            return float(bridged.to(goal.units).magnitude / goal.magnitude)
        except Exception:  # noqa: S112 - the other direction may be the right one
            continue
    raise UnitError(f"{source!r} does not convert to {target!r}")
