"""A real HTTP server on loopback for tests that need one (CLI, browser, schemathesis)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from flask import Flask
from werkzeug.serving import make_server

from service.app import create_app
from tests.conftest import EXAMPLE_DAY

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def live_app(**overrides: Any) -> Flask:
    """The app as `make run` serves it, with the examples' fixed date and no rate limit in the way."""
    # The browser and the fuzzer send hundreds of requests a minute from one address.
    config = {"TODAY": EXAMPLE_DAY, "RATE_LIMIT_PER_MINUTE": 1_000_000, **overrides}
    return create_app(config)


@dataclass
class LiveServer:
    """A werkzeug server in a thread; `url` is its base, e.g. http://127.0.0.1:41234."""

    url: str
    requests: list[tuple[str, str]] = field(default_factory=list)


@contextmanager
def serve(app: Flask | WsgiApp) -> Iterator[LiveServer]:
    """Serve app on 127.0.0.1 on a free port until the block ends (threaded, like gunicorn's workers)."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, name="live-server", daemon=True)
    thread.start()
    try:
        yield LiveServer(f"http://127.0.0.1:{server.server_port}")
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
