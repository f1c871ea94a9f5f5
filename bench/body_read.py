"""What reading a request body costs: gunicorn's own Body against the workers' one-call read.

The body is bench/run.py's realistic patient-view call (~24 KB compact) and the whole Synthea
record as /evaluate receives it (~110 KB), fed to gunicorn's real reader classes in 8 KB pieces,
as its socket reader receives them, and read the way Flask reads a body (werkzeug's
LimitedStream). Both reads are timed in the same run; the ratio is what the one-call read costs
as a fraction of gunicorn's. Run: .venv/bin/python bench/body_read.py
"""

from __future__ import annotations

import sys
import timeit
from pathlib import Path
from typing import Any

import orjson
from gunicorn.http.body import Body, LengthReader
from gunicorn.http.unreader import IterUnreader
from werkzeug.wsgi import LimitedStream

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.run import _scenarios
from service.gunicorn_workers import OneReadBody

REPEAT = 7
CHUNK = 8192  # gunicorn's SocketUnreader receives at most this much per recv


def _body(data: bytes) -> Body:
    pieces = [data[i : i + CHUNK] for i in range(0, len(data), CHUNK)]
    return Body(LengthReader(IterUnreader(pieces), len(data)))


def read_gunicorn(data: bytes) -> bytes:
    """Flask's read of gunicorn's own Body."""
    return LimitedStream(_body(data), len(data)).read()  # type: ignore[arg-type]


def read_one_call(data: bytes) -> bytes:
    """Flask's read of the workers' OneReadBody."""
    return LimitedStream(OneReadBody(_body(data)), len(data)).read()  # type: ignore[arg-type]


def best_us(fn: Any, data: bytes, number: int) -> float:
    """Best of REPEAT runs, per call, in microseconds."""
    timer = timeit.Timer(lambda: fn(data))
    return min(timer.repeat(REPEAT, number)) / number * 1e6


def main() -> None:
    """Print both costs per body and their ratio."""
    bodies = {s.name: orjson.dumps(s.body) for s in _scenarios() if s.alg == "RS384"}
    print(f"{'body':<60}{'bytes':>9}{'gunicorn µs':>14}{'one call µs':>14}{'ratio':>8}")
    for name, data in bodies.items():
        assert read_gunicorn(data) == read_one_call(data) == data
        number = max(20, 2_000_000 // len(data))
        slow, fast = best_us(read_gunicorn, data, number), best_us(read_one_call, data, number)
        print(f"{name[:59]:<60}{len(data):>9}{slow:>14.1f}{fast:>14.1f}{fast / slow:>8.2f}")


if __name__ == "__main__":
    main()
