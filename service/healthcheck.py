"""The image's HEALTHCHECK: GET /healthz where gunicorn listens (TWITCH_CDS_BIND); exit 0 when it answers 200.

`python -m service.healthcheck` reads the same setting gunicorn.conf.py binds to, so a container
started with another TWITCH_CDS_BIND is still checked on its own port. Standard library only: it
runs every 30 seconds in the container.
"""

from __future__ import annotations

import sys
import urllib.request

from service.config import load_config

TIMEOUT_SECONDS = 2.0


def healthz_url(bind: str) -> str:
    """The loopback URL of /healthz for a gunicorn bind address (`host:port`, `[v6]:port`)."""
    host, colon, port = bind.rpartition(":")
    if not colon or not port.isdigit():
        raise ValueError(f"TWITCH_CDS_BIND {bind!r} is not host:port")
    host = host.strip("[]")
    if host in ("", "0.0.0.0"):  # noqa: S104 (a wildcard bind is reached on loopback)
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}/healthz"


def main() -> int:
    """Exit 0 when /healthz answers 200 within the timeout, 1 (with the reason on stderr) otherwise."""
    try:
        url = healthz_url(str(load_config()["BIND"]))
        with urllib.request.urlopen(url, timeout=TIMEOUT_SECONDS) as answer:  # noqa: S310 (http to loopback)
            if answer.status == 200:
                return 0
            print(f"unhealthy: {url} answered {answer.status}", file=sys.stderr)
    except (OSError, ValueError) as error:
        print(f"unhealthy: {error}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
