"""gunicorn workers whose own error answers (a request it cannot parse) are OperationOutcome JSON.

gunicorn answers a malformed request itself, before the app sees it (an oversized header line,
too many headers, a bad request line), with an HTML page. These workers keep gunicorn's choice
of status and its access log, and replace only the bytes it writes with the OperationOutcome
every other error of this service is.
"""

from __future__ import annotations

from typing import Any

import orjson
from gunicorn.workers.gthread import ThreadWorker as _ThreadWorker
from gunicorn.workers.sync import SyncWorker as _SyncWorker

from service.errors import ECHO_LIMIT, Issue, operation_outcome

# The issue code for each status gunicorn answers itself (workers/base.py handle_error).
ISSUE_CODES = {400: "invalid", 403: "forbidden", 431: "too-costly", 500: "exception", 501: "not-supported"}
FHIR_JSON = "application/fhir+json"


def outcome_answer(status: int, reason: str, exc: BaseException) -> bytes:
    """The whole HTTP answer: gunicorn's status line, an OperationOutcome body, then close."""
    if status >= 500 and status != 501:
        text = "internal error; it has been logged"  # never the exception: it may quote the request
    else:
        # gunicorn's message quotes the offending line or header: at most ECHO_LIMIT characters of it.
        detail = str(exc)
        if len(detail) > ECHO_LIMIT:
            detail = f"{detail[:ECHO_LIMIT]}… ({len(detail)} characters)"
        text = f"the request could not be read ({reason}): {detail}"
    issue = Issue(text, None, code=ISSUE_CODES.get(status, "invalid"))
    body = orjson.dumps(operation_outcome([issue]))
    head = (
        f"HTTP/1.1 {status} {reason}\r\n"
        "Connection: close\r\n"
        f"Content-Type: {FHIR_JSON}\r\n"
        f"Content-Length: {len(body)}\r\n"
        "X-Content-Type-Options: nosniff\r\n"
        "\r\n"
    )
    return head.encode("latin-1") + body


class _OutcomeSocket:
    """The client socket as gunicorn's error writer sees it: its HTML answer becomes an OperationOutcome."""

    def __init__(self, sock: Any, exc: BaseException) -> None:
        self._sock = sock
        self._exc = exc

    def sendall(self, data: bytes) -> None:
        """Rewrite gunicorn's `HTTP/1.1 <status> <reason>` answer; pass anything else through."""
        line = data.split(b"\r\n", 1)[0].decode("latin-1")
        parts = line.split(" ", 2)
        if len(parts) == 3 and parts[0].startswith("HTTP/") and parts[1].isdigit():
            data = outcome_answer(int(parts[1]), parts[2], self._exc)
        self._sock.sendall(data)

    def __getattr__(self, name: str) -> Any:
        # gettimeout, setblocking, ...: the real socket's.
        return getattr(self._sock, name)


class _OutcomeErrors:
    """Mixin: gunicorn's handle_error, writing through _OutcomeSocket."""

    def handle_error(self, req: Any, client: Any, addr: Any, exc: BaseException) -> None:
        """gunicorn decides the status and logs; the body is an OperationOutcome."""
        super().handle_error(req, _OutcomeSocket(client, exc), addr, exc)  # type: ignore[misc]


class SyncWorker(_OutcomeErrors, _SyncWorker):  # type: ignore[misc]
    """gunicorn's sync worker (THREADS=1) with OperationOutcome error answers."""


class ThreadWorker(_OutcomeErrors, _ThreadWorker):  # type: ignore[misc]
    """gunicorn's gthread worker (THREADS > 1) with OperationOutcome error answers."""
