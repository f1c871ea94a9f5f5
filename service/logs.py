"""Structured JSON logs: one object per line, with the request id; never request bodies or tokens."""

from __future__ import annotations

import logging
import sys
import traceback
from datetime import UTC, datetime
from typing import IO, Any

import orjson
from flask import g, has_request_context

_HANDLER_NAME = "twitch-cds-json"


class JsonFormatter(logging.Formatter):
    """Time, level, logger, message and request id; the exception as its type and frames only."""

    def format(self, record: logging.LogRecord) -> str:
        """One JSON object."""
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = getattr(record, "request_id", None)
        if request_id is None and has_request_context():
            request_id = g.get("request_id")
        if request_id:
            entry["request_id"] = request_id
        if record.exc_info and record.exc_info[0] is not None:
            # The exception's message may quote request data: only its type and frames are kept.
            entry["exception"] = record.exc_info[0].__name__
            entry["stack"] = "".join(traceback.format_tb(record.exc_info[2]))
        return orjson.dumps(entry).decode()


def json_handler(stream: IO[str] | None = None) -> logging.Handler:
    """A stream handler writing JSON lines."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    handler.set_name(_HANDLER_NAME)
    return handler


def configure_logging(level: str) -> None:
    """JSON lines on stderr from the root logger, once per process; a host's own handlers are kept."""
    root = logging.getLogger()
    root.setLevel(level)
    if root.handlers:
        # Someone else (pytest's capture, an embedding server) owns the output: leave it.
        return
    root.addHandler(json_handler())
