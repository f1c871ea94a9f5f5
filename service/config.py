"""Settings: embedded defaults, overridden by TWITCH_CDS_* environment variables or create_app(config)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parent.parent

# Each setting: default and a one-line meaning; README's configuration table mirrors this.
DEFAULTS: dict[str, tuple[Any, str]] = {
    "MAX_CONTENT_LENGTH": (8 * 1024 * 1024, "Largest request body in bytes; larger gets 413."),
    "RULES_DIR": (str(PROJECT_ROOT / "rules"), "Folder of the rule set and its reference data."),
    "CANONICAL_BASE": (
        "https://twitch-cds.example.org/fhir",
        "Base of canonical URLs (Questionnaire, local code systems); set it to your own domain.",
    ),
    "SERVICE_ID": ("twitching-red-flags", "The CDS service id in discovery and the hook URL."),
    "LOG_LEVEL": ("INFO", "Python log level."),
    "TODAY": ("", "Evaluate as of this ISO date instead of today (reproducible tests and demos)."),
}

ENV_PREFIX = "TWITCH_CDS_"


def load_config(overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Merge defaults, environment and explicit overrides (in that order of precedence)."""
    config: dict[str, Any] = {key: default for key, (default, _) in DEFAULTS.items()}
    for key, (default, _) in DEFAULTS.items():
        raw = os.environ.get(ENV_PREFIX + key)
        if raw is not None:
            config[key] = type(default)(raw) if isinstance(default, int) else raw
    config.update(overrides or {})
    return config
