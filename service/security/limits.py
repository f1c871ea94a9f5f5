"""Body shape limits that orjson does not enforce at a configurable level."""

from __future__ import annotations

from typing import Any

from flask import current_app

from service.errors import BadRequest


def json_depth_exceeds(value: Any, limit: int) -> bool:
    """True when objects and arrays nest deeper than `limit` (iterative: no recursion to exhaust)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children: Any = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False


def check_json_depth(body: Any) -> None:
    """400 when a parsed body nests deeper than MAX_JSON_DEPTH."""
    limit = int(current_app.config.get("MAX_JSON_DEPTH", 64))
    if json_depth_exceeds(body, limit):
        raise BadRequest.single(f"the JSON body nests deeper than {limit} levels", None)
