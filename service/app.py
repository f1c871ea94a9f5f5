"""Application factory: `create_app(config=None)`; gunicorn serves `service.app:create_app()`."""

from __future__ import annotations

import logging
from datetime import date
from pathlib import Path
from typing import Any

from flask import Flask

from service.api import catalogue, discovery, evaluate, fhir, health, hooks
from service.config import load_config
from service.engine.ruleset import load_ruleset
from service.evaluation import Evaluator
from service.fhir.questionnaire import build_questionnaire
from service.web import register_error_handlers

SERVICE_TITLE = "Twitching red flags"


def create_app(config: dict[str, Any] | None = None) -> Flask:
    """Build the app: load and check the rule set once, before the first request."""
    app = Flask(__name__)
    app.config.update(load_config(config))
    logging.basicConfig(level=app.config["LOG_LEVEL"])
    ruleset = load_ruleset(Path(app.config["RULES_DIR"]))  # RuleSetError: refuse to start
    canonical = app.config["CANONICAL_BASE"]
    app.extensions["evaluator"] = Evaluator(ruleset, canonical, SERVICE_TITLE)
    app.extensions["questionnaire"] = build_questionnaire(ruleset.reference.questionnaire, canonical)
    today = app.config.get("TODAY")
    app.extensions["today"] = (lambda: date.fromisoformat(today)) if today else date.today
    register_error_handlers(app)
    for module in (discovery, hooks, evaluate, fhir, catalogue, health):
        app.register_blueprint(module.bp)
    return app
