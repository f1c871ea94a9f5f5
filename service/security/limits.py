"""Body shape limits that orjson does not enforce at a configurable level."""

from __future__ import annotations

from typing import Any

from flask import current_app

from service.errors import BadRequest


def json_depth_exceeds(value: Any, limit: int) -> bool:
    """True when objects and arrays nest deeper than `limit` (iterative: no recursion to exhaust)."""
    # Level by level with exact type checks: orjson yields only dict and list containers, and a
    # comprehension per node is about 2.5x faster than a stack of (node, depth) tuples on a 1 MB body.
    level: list[Any] = [value] if type(value) is dict or type(value) is list else []
    depth = 0
    while level:
        depth += 1
        if depth > limit:
            return True
        below: list[Any] = []
        for node in level:
            below.extend(
                [
                    c
                    for c in (node.values() if type(node) is dict else node)
                    if type(c) is dict or type(c) is list
                ]
            )
        level = below
    return False


def check_json_depth(body: Any, limit: int | None = None, without: str | None = None) -> None:
    """400 when a parsed body nests deeper than `limit` (default MAX_JSON_DEPTH).

    `without` names a top-level member left out: its contents are checked where they are read.
    """
    if limit is None:
        limit = int(current_app.config.get("MAX_JSON_DEPTH", 64))
    if without is not None and isinstance(body, dict):
        body = {key: value for key, value in body.items() if key != without}
    if json_depth_exceeds(body, limit):
        raise BadRequest.single(f"the JSON body nests deeper than {limit} levels", None)
