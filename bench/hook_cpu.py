"""CPU per hook call in-process (Flask test client): the realistic body, cold and warm validation memo.

No server, no network, no JWT: this isolates the service's own work on the hook path (envelope,
selection, checks, facts, rules, cards, audit) from gunicorn and the machine's load. Cold clears the
validation memo before every call (a patient the worker has not seen); warm re-sends one body.

    python -m bench.hook_cpu [--calls 300]
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import orjson

from bench.run import _scenarios
from service.app import create_app

HOOK = "/cds-services/twitching-red-flags"


def _cpu_per_call(client: Any, body: bytes, calls: int, clear: Any) -> float:
    """Median-of-three CPU µs per call."""
    runs = []
    for _ in range(3):
        start = time.process_time()
        for _ in range(calls):
            if clear is not None:
                clear()
            response = client.post(HOOK, data=body, content_type="application/json")
            assert response.status_code == 200, response.get_data(as_text=True)
        runs.append((time.process_time() - start) / calls * 1e6)
    return sorted(runs)[1]


def main() -> None:
    """Print CPU µs per call for the realistic and whole-chart bodies, cold and warm."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=300)
    args = parser.parse_args()
    app = create_app({"TESTING": True, "TODAY": "2026-11-22", "RATE_LIMIT_PER_MINUTE": 10**9})
    client = app.test_client()
    memo = app.extensions["evaluator"].validator.memo
    for scenario in _scenarios():
        if "ES384" in scenario.name or "every resource new" in scenario.name or scenario.path != HOOK:
            continue
        body = orjson.dumps(scenario.body).replace(b"@@N@@", b"x")
        for _ in range(20):  # warm the interpreter's caches and the memo
            client.post(scenario.path, data=body, content_type="application/json")
        warm = _cpu_per_call(client, body, args.calls, None)
        cold = _cpu_per_call(client, body, args.calls // 3, memo.clear if memo is not None else None)
        print(
            f"{scenario.name[:60]:60} {len(body) / 1024:6.0f} KiB  cold {cold:7.0f} µs  warm {warm:7.0f} µs"
        )


if __name__ == "__main__":
    main()
