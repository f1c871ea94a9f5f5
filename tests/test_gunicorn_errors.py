"""Requests gunicorn refuses itself (before the app sees them) are answered with an OperationOutcome too.

gunicorn is started as the image runs it (tests/test_deploy.py's `_serve`), one worker, on a free
127.0.0.1 port; the malformed requests are written on a raw socket, as a broken or hostile client
would send them.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from urllib.parse import urlsplit

import orjson
import pytest

from tests.test_deploy import _serve as serve_gunicorn


@pytest.fixture(scope="module", params=["1", "2"], ids=["sync", "gthread"])
def gunicorn(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """gunicorn with one worker: sync (THREADS=1, the default) or gthread (THREADS=2)."""
    work = tmp_path_factory.mktemp("gunicorn-errors")
    with serve_gunicorn(work, TWITCH_CDS_WORKERS="1", TWITCH_CDS_THREADS=request.param) as (base, _):
        yield base


def exchange(base: str, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    """Write `raw` on a fresh connection; read the whole answer (gunicorn closes after an error)."""
    url = urlsplit(base)
    with socket.create_connection((url.hostname or "127.0.0.1", url.port or 80), timeout=10) as sock:
        # gunicorn may stop reading once it has seen enough; its answer is still queued.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(raw)
        chunks = []
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            chunks.append(chunk)
    answer = b"".join(chunks)
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, v in (h.split(":", 1) for h in header_lines)}
    return int(status_line.split(" ")[1]), headers, body


CASES = {
    "100 KB header line": (
        b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n",
        431,
        "too-costly",
    ),
    "too many headers": (
        b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        + b"".join(b"X-H%d: v\r\n" % i for i in range(150))
        + b"\r\n",
        431,
        "too-costly",
    ),
    "bad request line": (b"GET\r\nHost: 127.0.0.1\r\n\r\n", 400, "invalid"),
    "request line too long": (
        b"GET /" + b"b" * 10_000 + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
        400,
        "invalid",
    ),
    "invalid header name": (
        b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nBad[Name]: v\r\n\r\n",
        400,
        "invalid",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_gunicorns_own_refusals_are_operation_outcomes(gunicorn: str, case: str) -> None:
    """Status as gunicorn decides it; the body an OperationOutcome (application/fhir+json), quoting little."""
    raw, status, code = CASES[case]
    got, headers, body = exchange(gunicorn, raw)
    assert got == status, body[:500]
    assert headers["content-type"] == "application/fhir+json"
    assert int(headers["content-length"]) == len(body)
    assert headers["connection"] == "close"
    outcome = orjson.loads(body)
    assert outcome["resourceType"] == "OperationOutcome"
    (issue,) = outcome["issue"]
    assert (issue["severity"], issue["code"]) == ("error", code)
    assert issue["diagnostics"].startswith("the request could not be read (")
    assert len(body) < 1024  # the 10 KB request line is quoted 200 characters at most
    assert b"<html" not in body


def test_a_good_request_is_untouched(gunicorn: str) -> None:
    """A request gunicorn parses still reaches the app: /healthz answers 200 JSON."""
    got, headers, body = exchange(
        gunicorn, b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    assert got == 200
    assert headers["content-type"] == "application/json"
    assert orjson.loads(body)


def _hook_body() -> bytes:
    from tests.conftest import EXAMPLES, bundle_to_hook_request, load_json

    call = bundle_to_hook_request(
        load_json(EXAMPLES / "lab-high-potassium" / "fires-severe-hyperkalaemia.json")
    )
    return orjson.dumps(call)


def _post(path: str, body: bytes, chunked: bool = False) -> bytes:
    head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    if not chunked:
        return (head + f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    pieces = [body[i : i + 1000] for i in range(0, len(body), 1000)]
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"
    return (head + "Transfer-Encoding: chunked\r\n\r\n").encode() + chunks


def _answer(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One whole HTTP answer from a kept-alive connection (its Content-Length decides the end)."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, v in (h.split(":", 1) for h in lines)}
    while len(body) < int(headers["content-length"]):
        body += sock.recv(65536)
    return int(status_line.split(" ")[1]), headers, body


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_body_read_in_one_call_is_the_whole_body(gunicorn: str, chunked: bool) -> None:
    """Through the workers' one-call body read: the same cards, chunked or not, and keep-alive intact."""
    url = urlsplit(gunicorn)
    with socket.create_connection((url.hostname or "127.0.0.1", url.port or 80), timeout=10) as sock:
        sock.sendall(_post("/cds-services/twitching-red-flags", _hook_body(), chunked))
        status, headers, body = _answer(sock)
        assert status == 200, body[:300]
        assert orjson.loads(body)["cards"][0]["indicator"] == "critical"
        if headers.get("connection", "").lower() == "close":
            return  # the sync worker closes after each request; gthread keeps the connection
        # The next request on the connection is read only if the first body was consumed exactly.
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert _answer(sock)[0] == 200


def test_a_body_past_the_limit_is_still_413(gunicorn: str) -> None:
    """The one-call read does not bypass MAX_CONTENT_LENGTH: 413 before the body is read."""
    raw = (
        b"POST /cds-services/twitching-red-flags HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: application/json\r\nContent-Length: 50000000\r\n\r\n{"
    )
    status, _, body = exchange(gunicorn, raw)
    assert status == 413
    assert orjson.loads(body)["resourceType"] == "OperationOutcome"
