"""What refusing duplicate JSON keys costs: parse time with and without the check, on real bodies.

Bodies: bench/run.py's realistic patient-view call (82 Observations of a Synthea record and a
red-flag QuestionnaireResponse, ~78 KB when compact) and the whole Synthea record as /evaluate
receives it (~270 KB), each compact and pretty-printed. Run: .venv/bin/python bench/duplicate_keys.py
"""

from __future__ import annotations

import sys
import timeit
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.run import _scenarios
from service.web import parse_json

REPEAT = 7


def best_ms(fn: object, body: bytes, number: int) -> float:
    """Best of REPEAT runs, per call, in milliseconds."""
    timer = timeit.Timer(lambda: fn(body))  # type: ignore[operator]
    return min(timer.repeat(REPEAT, number)) / number * 1000


def main() -> None:
    """Print one row per body: size, orjson alone, with the duplicate check, the difference."""
    scenarios = _scenarios()
    # Compact orjson output (as a JavaScript client's JSON.stringify writes it, too) takes the
    # check's shortest path (a memcmp); pretty-printed text takes the colon count.
    bodies = {
        "realistic patient-view": orjson.dumps(scenarios[0].body),
        "realistic patient-view, pretty-printed": orjson.dumps(scenarios[0].body, option=orjson.OPT_INDENT_2),
        "whole Synthea record (/evaluate)": orjson.dumps(scenarios[-1].body),
        "whole Synthea record, pretty-printed": orjson.dumps(scenarios[-1].body, option=orjson.OPT_INDENT_2),
    }
    print("| body | bytes | orjson.loads ms | parse_json (orjson + duplicate check) ms | added ms |")
    print("|---|---|---|---|---|")
    for name, body in bodies.items():
        number = max(50, 2_000_000 // len(body))
        plain = best_ms(orjson.loads, body, number)
        checked = best_ms(parse_json, body, number)
        print(f"| {name} | {len(body):,} | {plain:.3f} | {checked:.3f} | {checked - plain:+.3f} |")


if __name__ == "__main__":
    main()
