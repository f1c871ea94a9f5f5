"""marshmallow's nested error messages as OperationOutcome issues, one per problem, with its path."""

from __future__ import annotations

from typing import Any

from service.errors import ECHO_LIMIT, Issue


def issues_from_messages(messages: Any, path: str = "") -> list[Issue]:
    """Flatten marshmallow's {field: [message]} tree into issues whose expression is the path."""
    if isinstance(messages, dict):
        out: list[Issue] = []
        for key, value in messages.items():
            # A key is the caller's (a prefetch key, say): quoted in a path only up to the limit.
            name = key if isinstance(key, int) or len(str(key)) <= ECHO_LIMIT else f"{str(key)[:ECHO_LIMIT]}…"
            child = f"{path}[{name}]" if isinstance(key, int) else f"{path}.{name}" if path else str(name)
            out.extend(issues_from_messages(value, child))
        return out
    if isinstance(messages, list) and all(isinstance(m, str) for m in messages):
        return [Issue(f"{path}: {m}", path or None, code="structure") for m in messages]
    if isinstance(messages, list):
        return [i for m in messages for i in issues_from_messages(m, path)]
    return [Issue(f"{path}: {messages}", path or None, code="structure")]
