"""Application factory: `create_app(config=None)`; gunicorn serves `service.app:create_app()`."""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Any

from flask import Flask

from service.api import apidocs, catalogue, discovery, evaluate, feedback, fhir, health, hooks, smart, ui
from service.api.smart_cards import bp as smart_cards_bp
from service.cdshooks.fetch import FetchSettings, FhirFetcher
from service.cdshooks.pipeline import HookPipeline
from service.cdshooks.prefetch import prefetch_templates
from service.cdshooks.services import build_services
from service.cdshooks.smart import SmartSettings
from service.config import load_config
from service.engine.ruleset import load_ruleset
from service.evaluation import Evaluator
from service.fhir.questionnaire import build_questionnaire
from service.logs import configure_logging
from service.metrics import install_metrics
from service.security import install_guard
from service.store import install_stores
from service.warmup import warm_up
from service.web import register_error_handlers

SERVICE_TITLE = "Twitching red flags"


def create_app(config: dict[str, Any] | None = None) -> Flask:
    """Build the app: load and check the rule set once, before the first request."""
    app = Flask(__name__)
    app.config.update(load_config(config))
    configure_logging(app.config["LOG_LEVEL"])  # JSON lines with the request id
    lab_map = app.config.get("LAB_CODE_MAP")
    # RuleSetError: a flawed rule set, reference table or local lab-code map refuses to start.
    ruleset = load_ruleset(Path(app.config["RULES_DIR"]), Path(lab_map) if lab_map else None)
    canonical = app.config["CANONICAL_BASE"]
    # SmartConfigError: a SMART app without allowed issuers or an absolute PUBLIC_BASE_URL refuses to start.
    smart_settings = SmartSettings.from_config(app.config)
    app.extensions["smart"] = smart_settings
    app.extensions["evaluator"] = Evaluator(
        ruleset,
        canonical,
        SERVICE_TITLE,
        max_depth=int(app.config["MAX_JSON_DEPTH"]),
        memo_entries=int(app.config["VALIDATION_MEMO_ENTRIES"]),
        memo_bytes=int(app.config["VALIDATION_MEMO_BYTES"]),
        app_launch_url=smart_settings.launch_url if smart_settings else None,
    )
    app.extensions["questionnaire"] = build_questionnaire(ruleset.reference.questionnaire, canonical)
    # FetchConfigError: an unsafe or unusable FHIR_* setting refuses to start, like a flawed rule set.
    fetch_settings, templates = FetchSettings.from_config(app.config), prefetch_templates(ruleset.reference)
    app.extensions["fhir_fetcher"] = FhirFetcher(fetch_settings, templates)
    if smart_settings is not None:
        # POST /smart/cards reads the record with the app's token from SMART_ALLOWED_ISSUERS only.
        app.extensions["smart_fetcher"] = smart_settings.fetcher(fetch_settings, templates)
    # One service per hook: SERVICE_ID (patient-view), SERVICE_ID-order-select, SERVICE_ID-order-sign.
    app.extensions["cds_services"] = build_services(
        str(app.config["SERVICE_ID"]), templates, smart_settings.launch_url if smart_settings else None
    )
    today = app.config.get("TODAY")
    app.extensions["today"] = (lambda: date.fromisoformat(today)) if today else date.today
    register_error_handlers(app)
    install_metrics(app)  # first, so its timer starts before the guard's checks
    install_guard(app)  # ConfigError: unsafe security settings refuse to start
    install_stores(app)  # opens and migrates the feedback and audit database
    for module in (discovery, hooks, evaluate, fhir, catalogue, health, feedback, ui, apidocs, smart):
        app.register_blueprint(module.bp)
    app.register_blueprint(smart_cards_bp)  # POST /smart/cards: its own blueprint, not a public page
    pipeline = HookPipeline(app.extensions["evaluator"], app.extensions["cds_services"])
    app.extensions["hook_pipeline"] = pipeline
    if int(app.config["WARM_UP"]):
        # Under gunicorn --preload this runs once in the master; the workers inherit it on fork.
        warm_up(pipeline, canonical)
    return app
