"""Reading raw (not yet validated) JSON safely: values there may be of any type and any depth."""

from __future__ import annotations

from typing import Any


def scalar_text(value: Any) -> str:
    """A JSON scalar as str() writes it; an object or array only by its kind.

    Parts of a request nobody validates are not depth-checked, and str() of a value nested a
    thousand levels deep overflows the interpreter's recursion limit: containers are never
    stringified here.
    """
    if isinstance(value, dict):
        return "<object>"
    if isinstance(value, list):
        return "<array>"
    return str(value)
