"""gunicorn's access log as JSON lines (one object per request), for gunicorn.conf.py's logger_class."""

from __future__ import annotations

import traceback
from datetime import UTC, datetime
from typing import Any

import orjson
from gunicorn.glogging import Logger


class JsonAccessLogger(Logger):  # type: ignore[misc]
    """Access lines as JSON: no query string (it could name a patient), no request or response body."""

    def access(self, resp: Any, req: Any, environ: dict[str, Any], request_time: Any) -> None:
        """Write one JSON object per answered request."""
        if not self.cfg.accesslog:
            return
        request_id = next((v for k, v in resp.headers or () if k.lower() == "x-request-id"), None)
        entry = {
            "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "level": "INFO",
            "logger": "gunicorn.access",
            "method": environ.get("REQUEST_METHOD"),
            # orjson escapes whatever a client put in the path, so a line is always valid JSON.
            "path": environ.get("PATH_INFO"),
            "status": int(str(resp.status).split(" ", 1)[0]) if resp.status else None,
            "bytes": getattr(resp, "sent", None),
            "ms": round(request_time.total_seconds() * 1000, 2),
            "remote": environ.get("REMOTE_ADDR"),
            "request_id": request_id,
        }
        try:
            self.access_log.info(orjson.dumps(entry).decode())
        except Exception:
            self.error(traceback.format_exc())
