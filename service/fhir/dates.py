"""FHIR dates as the rules count them: the day, whether the value is a model's datetime or raw JSON."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any


def fhir_date(value: Any) -> date | None:
    """The calendar day of a FHIR date/dateTime/instant; partial dates count from their first day."""
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    if isinstance(value, str) and len(value) >= 4:
        parts = [*value[:10].split("-"), "01", "01"][:3]  # "2024" and "2024-05" are partial dates
        try:
            return date(int(parts[0]), int(parts[1]), int(parts[2]))
        except ValueError:
            return None
    return None
