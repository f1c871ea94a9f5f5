"""HTTP edge helpers: strict JSON bodies in, orjson out, OperationOutcome for every error."""

from __future__ import annotations

import json
import logging
import traceback
from typing import Any

import orjson
import werkzeug.exceptions
from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException

from service.errors import (
    BadRequest,
    InternalError,
    Issue,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    ServiceError,
    UnsupportedMediaType,
    clip,
    echo,
    operation_outcome,
)
from service.security.limits import check_json_depth

FHIR_JSON = "application/fhir+json"
ACCEPTED_TYPES = ("application/json", FHIR_JSON)
log = logging.getLogger("twitch_cds")


def json_response(body: Any, status: int = 200, mimetype: str = "application/json") -> Response:
    """Serialise once with orjson."""
    return Response(orjson.dumps(body), status=status, mimetype=mimetype)


class _Pairs(dict[str, Any]):
    """An object as the slow path reads it, remembering the keys it held more than once."""

    duplicates: list[str]


def _pairs(pairs: list[tuple[str, Any]]) -> _Pairs:
    obj = _Pairs(pairs)
    seen: set[str] = set()
    duplicates: dict[str, None] = {}  # in order of first repetition, each once
    for key, _ in pairs:
        if key in seen:
            duplicates[key] = None
        seen.add(key)
    obj.duplicates = list(duplicates)
    return obj


def _duplicate_paths(value: Any, root: str) -> list[str]:
    """The path of every key held twice in one object (iterative: the text may nest ~1000 deep)."""
    found: list[str] = []
    stack = [(value, root)]
    while stack:
        node, path = stack.pop()
        if isinstance(node, _Pairs):
            found += [f"{path}.{k}" if path else k for k in node.duplicates]
            stack += [(v, f"{path}.{k}" if path else k) for k, v in reversed(node.items())]
        elif isinstance(node, list):
            stack += [(v, f"{path}[{i}]") for i, v in reversed(list(enumerate(node)))]
    return found


def _kept_every_key(data: bytes, body: Any) -> bool:
    """Whether the parse kept every key of the text, told by counting colons in C.

    Outside strings a colon follows each key, once. orjson keeps one pair of a duplicated key, so
    the parse serialised again has fewer colons: that key's and any in the value dropped. Nothing
    else changes the count, except a colon written as a \\u003a escape (serialised as ":"), so
    a text with any \\u003X escape (one search), or nested past orjson.dumps's 254 levels, takes
    the slow path.
    """
    try:
        again = orjson.dumps(body)
    except orjson.JSONEncodeError:
        return False
    if again == data:
        return True  # compact JSON as orjson writes it (one memcmp): nothing was dropped
    if b"\\u003" in data:
        return False
    return data.count(b":") == again.count(b":")


def parse_json(data: bytes) -> Any:
    """Parse with orjson; 400 naming each duplicate key's path (FHIR JSON forbids them; orjson keeps one)."""
    try:
        body = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise BadRequest.single(f"the body is not valid JSON: {exc}") from exc
    if _kept_every_key(data, body):
        return body  # the common case; its cost is measured by bench/duplicate_keys.py
    # Rare: read again keeping every pair, to name where each duplicate is.
    try:
        pairs = json.loads(data, object_pairs_hook=_pairs)
    except RecursionError as exc:
        raise BadRequest.single("the JSON body nests too deeply to be read", None) from exc
    root = pairs.get("resourceType") if isinstance(pairs, dict) else None
    paths = _duplicate_paths(pairs, root if isinstance(root, str) and root.isalnum() else "")
    if not paths:
        return body
    raise BadRequest(
        [Issue(f"{p}: the key appears more than once in its object (JSON forbids it)", p) for p in paths]
    )


def read_json_body(check_depth: bool = True) -> Any:
    """The request body as JSON: 415 for another content type, 413 when too large, 400 when malformed.

    Without `check_depth` the caller checks nesting itself, on the parts it reads.
    """
    mimetype = request.mimetype
    if mimetype not in ACCEPTED_TYPES:
        raise UnsupportedMediaType.single(
            f"send the body as application/json or application/fhir+json, not {echo(mimetype or 'no type')}"
        )
    data = request.get_data(cache=False)  # raises 413 past MAX_CONTENT_LENGTH
    if not data:
        raise BadRequest.single("the request body is empty; a JSON object is expected")
    body = parse_json(data)
    if check_depth:
        check_json_depth(body)  # 400 past MAX_JSON_DEPTH
    return body


_HTTP_ERRORS: dict[int, type[ServiceError]] = {
    400: BadRequest,
    404: NotFound,
    405: MethodNotAllowed,
    413: PayloadTooLarge,
    415: UnsupportedMediaType,
}


def _render(error: ServiceError) -> Response:
    return json_response(operation_outcome(error.issues), error.status, FHIR_JSON)


def _service_error(error: ServiceError) -> Response:
    return _render(error)


def _http_error(error: HTTPException) -> Response:
    status = error.code or 500
    kind = _HTTP_ERRORS.get(status, InternalError if status >= 500 else BadRequest)
    messages = {
        404: f"no such endpoint: {clip(request.path)}",
        405: f"{clip(request.method)} is not allowed on {clip(request.path)}",
        413: "the request body is larger than this service accepts",
    }
    rendered = _render(kind.single(messages.get(status, error.description or error.name)))
    rendered.status_code = status
    if isinstance(error, werkzeug.exceptions.MethodNotAllowed) and error.valid_methods:
        rendered.headers["Allow"] = ", ".join(error.valid_methods)
    return rendered


def _unexpected(error: Exception) -> Response:
    # A genuine bug: the traceback goes to the log (it holds code paths, not request data);
    # the client gets an OperationOutcome that names no patient data.
    # The exception's message may quote request data, so only its type and frames are logged.
    log.error(
        "unhandled %s on %s %s\n%s",
        type(error).__name__,
        request.method,
        request.url_rule or "unknown route",
        "".join(traceback.format_tb(error.__traceback__)),
    )
    return _render(InternalError.single("internal error; it has been logged"))


def register_error_handlers(app: Flask) -> None:
    """One handler for the exception tree, HTTP errors and bugs: all OperationOutcome."""
    app.register_error_handler(ServiceError, _service_error)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _unexpected)
