"""gunicorn workers whose own error answers (a request it cannot parse) are OperationOutcome JSON.

gunicorn answers a malformed request itself, before the app sees it (an oversized header line,
too many headers, a bad request line), with an HTML page. These workers keep gunicorn's choice
of status and its access log, and replace only the bytes it writes with the OperationOutcome
every other error of this service is.

They also hand the app a request body that is read in one call of gunicorn's reader: gunicorn's
own `Body.read` copies the body 1 KB at a time (bench/body_read.py measures the difference).
"""

from __future__ import annotations

from typing import Any

import orjson
from gunicorn.http.body import Body
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


class OneReadBody:
    """wsgi.input over gunicorn's Body whose read(n) is one call of its reader, not n/1024 calls."""

    def __init__(self, body: Body) -> None:
        self._body = body

    def read(self, size: int | None = None) -> bytes:
        """Up to `size` bytes (all when None or negative); the same bytes Body.read gives."""
        body = self._body
        wanted = body.getsize(size)
        if wanted == 0:
            return b""
        if body.buf.tell():
            return bytes(body.read(wanted))  # a readline left bytes in gunicorn's buffer: its own path
        # The reader (length, chunked or until EOF) stops at the body's end and keeps its own state,
        # so gunicorn still drains whatever the app leaves unread before the next request.
        return bytes(body.reader.read(wanted))

    def readline(self, size: int | None = None) -> bytes:
        """gunicorn's own readline."""
        return bytes(self._body.readline(size))

    def readlines(self, size: int | None = None) -> list[bytes]:
        """gunicorn's own readlines."""
        return list(self._body.readlines(size))

    def __iter__(self) -> Any:
        return iter(self._body)


def one_read_body(app: Any) -> Any:
    """Wrap a WSGI app so that its wsgi.input, when gunicorn's Body, reads in one call."""

    def wrapped(environ: dict[str, Any], start_response: Any) -> Any:
        body = environ.get("wsgi.input")
        if isinstance(body, Body):
            environ["wsgi.input"] = OneReadBody(body)
        return app(environ, start_response)

    wrapped.reads_in_one_call = True  # type: ignore[attr-defined]
    return wrapped


class _OutcomeErrors:
    """Mixin: gunicorn's handle_error, writing through _OutcomeSocket; the body read in one call."""

    def load_wsgi(self) -> None:
        """gunicorn's app, its request body read in one call."""
        super().load_wsgi()  # type: ignore[misc]
        app = self.wsgi  # type: ignore[has-type]
        # Wrapped inside the Flask app, so that `worker.wsgi` stays the app the worker hooks
        # in gunicorn.conf.py read (the audit spool's writer is found through it).
        if hasattr(app, "wsgi_app") and not getattr(app.wsgi_app, "reads_in_one_call", False):
            app.wsgi_app = one_read_body(app.wsgi_app)
        elif not hasattr(app, "wsgi_app"):
            self.wsgi = one_read_body(app)

    def handle_error(self, req: Any, client: Any, addr: Any, exc: BaseException) -> None:
        """gunicorn decides the status and logs; the body is an OperationOutcome."""
        super().handle_error(req, _OutcomeSocket(client, exc), addr, exc)  # type: ignore[misc]


class SyncWorker(_OutcomeErrors, _SyncWorker):  # type: ignore[misc]
    """gunicorn's sync worker (THREADS=1) with OperationOutcome error answers."""


class ThreadWorker(_OutcomeErrors, _ThreadWorker):  # type: ignore[misc]
    """gunicorn's gthread worker (THREADS > 1) with OperationOutcome error answers."""
