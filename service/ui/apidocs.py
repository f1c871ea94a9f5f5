"""A readable API page built from openapi.yaml: operations grouped by tag, then the schemas."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import yaml
from markupsafe import Markup, escape

HTTP_METHODS = ("get", "put", "post", "delete", "patch", "options", "head", "trace")


@dataclass
class Parameter:
    """A path, query or header parameter."""

    name: str
    where: str
    required: bool
    type: str
    description: str


@dataclass
class Body:
    """A request or response body in one media type."""

    media_type: str
    schema: str
    example: str


@dataclass
class Reply:
    """One documented response status."""

    status: str
    description: str
    bodies: list[Body]
    headers: list[str]


@dataclass
class Operation:
    """One method on one path."""

    method: str
    path: str
    anchor: str
    summary: str
    description: str
    parameters: list[Parameter]
    bodies: list[Body]
    replies: list[Reply]


@dataclass
class Section:
    """The operations of one tag."""

    name: str
    description: str
    operations: list[Operation] = field(default_factory=list)


@dataclass
class ApiPage:
    """Everything the docs template shows."""

    title: str
    version: str
    summary: str
    description: str
    sections: list[Section]
    schemas: list[tuple[str, str]]

    @property
    def schema_names(self) -> set[str]:
        """Names of the component schemas, so references become links."""
        return {name for name, _ in self.schemas}


def _resolve(spec: dict[str, Any], node: Any) -> Any:
    """Follow one local `$ref` (the spec uses only `#/components/...` references)."""
    if isinstance(node, dict) and isinstance(node.get("$ref"), str) and node["$ref"].startswith("#/"):
        target: Any = spec
        for token in node["$ref"][2:].split("/"):
            target = target.get(token.replace("~1", "/").replace("~0", "~"), {})
        return target
    return node


def _schema_name(schema: Any) -> str:
    """`Card` for a component reference, else a short type description."""
    if not isinstance(schema, dict):
        return ""
    ref = schema.get("$ref")
    if isinstance(ref, str):
        return ref.rsplit("/", 1)[-1]
    kind = schema.get("type", "object" if "properties" in schema else "")
    if kind == "array":
        return f"array of {_schema_name(schema.get('items')) or 'items'}"
    extras = [f"{k} {schema[k]}" for k in ("format", "pattern", "minLength", "enum") if k in schema]
    return " ".join([str(kind), *extras]).strip()


def _dump(value: Any) -> str:
    return yaml.safe_dump(value, sort_keys=False, allow_unicode=True, width=100).strip()


def _bodies(spec: dict[str, Any], content: Any) -> list[Body]:
    out = []
    for media_type, media in (content or {}).items():
        example = media.get("example")
        if example is None and media.get("examples"):
            first = _resolve(spec, next(iter(media["examples"].values())))
            example = first.get("value") if isinstance(first, dict) else None
        out.append(
            Body(media_type, _schema_name(media.get("schema")), "" if example is None else _dump(example))
        )
    return out


def _operation(spec: dict[str, Any], path: str, method: str, item: dict[str, Any]) -> Operation:
    operation = item[method]
    params = [_resolve(spec, p) for p in [*item.get("parameters", []), *operation.get("parameters", [])]]
    replies = []
    for status, reply in operation.get("responses", {}).items():
        reply = _resolve(spec, reply)
        replies.append(
            Reply(
                str(status),
                str(reply.get("description", "")),
                _bodies(spec, reply.get("content")),
                sorted(reply.get("headers", {})),
            )
        )
    body = _resolve(spec, operation.get("requestBody", {}))
    return Operation(
        method=method.upper(),
        path=path,
        anchor=str(operation.get("operationId") or f"{method}-{path}"),
        summary=str(operation.get("summary", "")),
        description=str(operation.get("description", "")).strip(),
        parameters=[
            Parameter(
                str(p.get("name")),
                str(p.get("in")),
                bool(p.get("required")),
                _schema_name(p.get("schema")),
                str(p.get("description", "")),
            )
            for p in params
        ],
        bodies=_bodies(spec, body.get("content")),
        replies=replies,
    )


def build_page(spec: dict[str, Any]) -> ApiPage:
    """The page model: one section per tag in the order the spec lists them, untagged last."""
    info = spec.get("info", {})
    sections = {t["name"]: Section(t["name"], str(t.get("description", ""))) for t in spec.get("tags", [])}
    for path, item in spec.get("paths", {}).items():
        for method in HTTP_METHODS:
            if method in item:
                tags = item[method].get("tags") or ["Other"]
                section = sections.setdefault(tags[0], Section(tags[0], ""))
                section.operations.append(_operation(spec, path, method, item))
    schemas = [
        (name, _dump(schema)) for name, schema in spec.get("components", {}).get("schemas", {}).items()
    ]
    return ApiPage(
        title=str(info.get("title", "API")),
        version=str(info.get("version", "")),
        summary=str(info.get("summary", "")),
        description=str(info.get("description", "")).strip(),
        sections=[s for s in sections.values() if s.operations],
        schemas=schemas,
    )


def _inline(text: str) -> str:
    # The text is escaped first, so the only markup in the result is the tags added here.
    html = str(escape(text))
    html = re.sub(r"`([^`]+)`", r"<code>\1</code>", html)
    return re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", html)


def markdown_html(text: str) -> Markup:
    """The spec's CommonMark subset as HTML: paragraphs, `- ` lists, `code` and **bold**."""
    blocks = []
    for block in re.split(r"\n\s*\n", text.strip()):
        lines = [line for line in block.splitlines() if line.strip()]
        if lines and lines[0].lstrip().startswith("- "):
            items: list[str] = []
            for line in lines:
                if line.lstrip().startswith("- "):
                    items.append(line.lstrip()[2:])
                elif items:
                    items[-1] += " " + line.strip()
            blocks.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in items) + "</ul>")
        elif lines:
            blocks.append(f"<p>{_inline(' '.join(line.strip() for line in lines))}</p>")
    return Markup("".join(blocks))  # noqa: S704 (built from escaped text only)
