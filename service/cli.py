"""The command line: send a file to a running service, validate FHIR offline, list the examples.

Exit status: 0 success (send: no card or only info cards; validate: valid), 1 send: a warning
card, or validate: the file has problems, 2 send: a critical card, 3 usage error or a file that
cannot be read or parsed, 4 the service cannot be reached, 5 the service answered an error.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import textwrap
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, TextIO

import pydantic
import requests
from fhir.resources.R4B import get_fhir_model_class
from fhir.resources.R4B.resource import Resource

from service.cdshooks.bundles import hook_request_for_bundle
from service.errors import Issue, ServiceError

EXIT_OK = 0
EXIT_WARNING = 1
EXIT_INVALID = 1
EXIT_CRITICAL = 2
EXIT_USAGE = 3
EXIT_UNREACHABLE = 4
EXIT_SERVICE_ERROR = 5
INDICATOR_EXIT = {"info": EXIT_OK, "warning": EXIT_WARNING, "critical": EXIT_CRITICAL}
DEFAULT_URL = "http://127.0.0.1:8080"
EPILOG = """exit status:
  0  success: send answered no card or only info cards; validate found no problem
  1  send: the highest card is a warning; validate: the file has problems (listed)
  2  send: a critical card
  3  usage error, or a file that cannot be read or is not JSON
  4  the service cannot be reached (refused, timed out, bad URL)
  5  the service answered an error (its OperationOutcome is printed)
"""


class CliError(Exception):
    """A failure reported as one line on stderr with an exit status (never a traceback)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class _Parser(argparse.ArgumentParser):
    """argparse exits 2 on a usage error; 2 means a critical card here, so usage errors are 3."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


# --- reading files ----------------------------------------------------------------------------


def read_json(path: Path) -> Any:
    """The file parsed as JSON, or CliError (exit 3) saying precisely what is wrong."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise CliError(f"{path}: no such file", EXIT_USAGE) from exc
    except IsADirectoryError as exc:
        raise CliError(f"{path}: is a directory, not a JSON file", EXIT_USAGE) from exc
    except UnicodeDecodeError as exc:
        raise CliError(f"{path}: not UTF-8 text (byte {exc.start})", EXIT_USAGE) from exc
    except OSError as exc:
        raise CliError(f"{path}: cannot be read ({exc.strerror})", EXIT_USAGE) from exc
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise CliError(
            f"{path}: not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}", EXIT_USAGE
        ) from exc


# --- tables -----------------------------------------------------------------------------------


def table(headers: Sequence[str], rows: Sequence[Sequence[str | list[str]]], widths: Sequence[int]) -> str:
    """A plain-text table; a cell may be a list of lines, every cell is wrapped to its width."""
    lines = ["  ".join(h.upper().ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    for row in rows:
        cells = []
        for cell, width in zip(row, widths, strict=True):
            parts = cell if isinstance(cell, list) else [cell]
            wrapped = [
                w for part in parts for w in (textwrap.wrap(part, width, break_on_hyphens=False) or [""])
            ]
            cells.append(wrapped or [""])
        height = max(len(c) for c in cells)
        for i in range(height):
            line = "  ".join(
                (c[i] if i < len(c) else "").ljust(w) for c, w in zip(cells, widths, strict=True)
            )
            lines.append(line.rstrip())
    return "\n".join(lines)


def _widths(fixed: Sequence[int], flexible: Sequence[float]) -> list[int]:
    """Column widths: fixed ones, then shares of what the terminal has left (at least 20 each)."""
    total = shutil.get_terminal_size((110, 24)).columns
    left = max(total - sum(fixed) - 2 * (len(fixed) + len(flexible) - 1), 20 * len(flexible))
    return [*fixed, *(max(20, int(left * share)) for share in flexible)]


# --- send -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """Where a file goes and how."""

    url: str
    body: dict[str, Any]
    content_type: str


def _http(method: str, url: str, timeout: float, token: str | None, **kwargs: Any) -> requests.Response:
    headers = {"Accept": "application/json, application/fhir+json", **kwargs.pop("headers", {})}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    try:
        return requests.request(method, url, headers=headers, timeout=timeout, **kwargs)
    except requests.exceptions.InvalidURL as exc:
        raise CliError(f"{url}: not a usable URL ({exc})", EXIT_USAGE) from exc
    except requests.exceptions.MissingSchema as exc:
        raise CliError(f"{url}: not a URL; use e.g. {DEFAULT_URL}", EXIT_USAGE) from exc
    except requests.exceptions.Timeout as exc:
        raise CliError(f"{method} {url}: no answer within {timeout:g} s", EXIT_UNREACHABLE) from exc
    except requests.exceptions.ConnectionError as exc:
        raise CliError(
            f"{method} {url}: cannot connect; is the service running there? (make run)", EXIT_UNREACHABLE
        ) from exc
    except requests.exceptions.RequestException as exc:
        raise CliError(f"{method} {url}: {type(exc).__name__}", EXIT_UNREACHABLE) from exc


def _service_error(response: requests.Response, what: str) -> CliError:
    """The service's error answer as one readable message (exit 5)."""
    lines = [f"{what}: HTTP {response.status_code} {response.reason}"]
    try:
        body = response.json()
    except ValueError:
        body = None
    issues = body.get("issue") if isinstance(body, dict) else None
    if isinstance(issues, list) and issues:
        for issue in issues:
            where = ", ".join(issue.get("expression") or []) if isinstance(issue, dict) else ""
            text = issue.get("diagnostics", "") if isinstance(issue, dict) else str(issue)
            lines.append(f"  - {where}: {text}" if where else f"  - {text}")
    elif response.headers.get("WWW-Authenticate"):
        lines.append(f"  - {response.headers['WWW-Authenticate']} (pass --token)")
    elif response.text.strip():
        lines.append("  " + response.text.strip()[:500])
    return CliError("\n".join(lines), EXIT_SERVICE_ERROR)


def _discovered(
    base: str, hook: str, service_id: str | None, timeout: float, token: str | None
) -> dict[str, Any]:
    """The discovery entry for `hook` (the one with `service_id` when several answer it)."""
    url = f"{base}/cds-services"
    response = _http("GET", url, timeout, token)
    if not response.ok:
        raise _service_error(response, f"GET {url}")
    try:
        services = response.json().get("services") or []
    except (ValueError, AttributeError) as exc:
        raise CliError(f"GET {url}: the answer is not a discovery document", EXIT_SERVICE_ERROR) from exc
    matching = [s for s in services if isinstance(s, dict) and s.get("hook") == hook]
    chosen = next((s for s in matching if s.get("id") == service_id), matching[0] if matching else None)
    if chosen is None:
        offered = ", ".join(sorted({str(s.get("hook")) for s in services if isinstance(s, dict)})) or "none"
        raise CliError(f"{base} offers no {hook!r} hook (it offers: {offered})", EXIT_SERVICE_ERROR)
    if service_id is not None and chosen.get("id") != service_id:
        print(f"note: {service_id!r} does not answer {hook!r}; sent to {chosen.get('id')!r}", file=sys.stderr)
    return chosen


def plan_send(
    data: Any, base: str, hook: str | None, service_id: str | None, timeout: float, token: str | None
) -> Target:
    """Decide the endpoint: a hook request goes to the CDS service, a Bundle to /evaluate or a hook."""
    if not isinstance(data, dict):
        raise CliError("the file holds no JSON object: expected a FHIR Bundle or a hook request", EXIT_USAGE)
    if isinstance(data.get("hook"), str):
        if hook and hook != data["hook"]:
            print(f"note: hook {data['hook']!r} replaced by {hook!r} (--hook)", file=sys.stderr)
            data = {**data, "hook": hook}
        if service_id is None:
            # Each hook has its own service id: discovery says which one answers this hook.
            service_id = str(_discovered(base, data["hook"], None, timeout, token)["id"])
        return Target(f"{base}/cds-services/{service_id}", data, "application/json")
    if data.get("resourceType") != "Bundle":
        found = data.get("resourceType", "no resourceType")
        raise CliError(f"expected a FHIR Bundle or a hook request (with hook), got {found!r}", EXIT_USAGE)
    if hook:
        service = _discovered(base, hook, service_id, timeout, token)
        return Target(
            f"{base}/cds-services/{service['id']}",
            hook_request_for_bundle(data, str(service["hook"]), service.get("prefetch") or {}),
            "application/json",
        )
    return Target(f"{base}/evaluate", data, "application/fhir+json")


def cards_table(cards: list[dict[str, Any]]) -> str:
    """The cards as indicator, summary and suggestion labels."""
    rows = [
        (
            str(card.get("indicator", "?")),
            str(card.get("summary", "")),
            [str(s.get("label", "")) for s in card.get("suggestions") or ()] or ["-"],
        )
        for card in cards
    ]
    return table(("indicator", "summary", "suggestions"), rows, _widths([9], [0.55, 0.45]))


def highest(cards: list[dict[str, Any]]) -> int:
    """The exit status of the most urgent card (0 when there is none)."""
    return max((INDICATOR_EXIT.get(str(c.get("indicator")), EXIT_OK) for c in cards), default=EXIT_OK)


def cmd_send(args: argparse.Namespace, out: TextIO) -> int:
    """POST the file; print the cards as a table (or the raw answer with --json)."""
    data = read_json(Path(args.file))
    base = args.url.rstrip("/")
    target = plan_send(data, base, args.hook, args.service, args.timeout, args.token)
    response = _http(
        "POST",
        target.url,
        args.timeout,
        args.token,
        data=json.dumps(target.body).encode(),
        headers={"Content-Type": target.content_type},
    )
    if not response.ok:
        raise _service_error(response, f"POST {target.url}")
    try:
        cards = response.json()["cards"]
    except (ValueError, KeyError, TypeError) as exc:
        raise CliError(f"POST {target.url}: the answer has no cards array", EXIT_SERVICE_ERROR) from exc
    if args.json:
        out.write(json.dumps(response.json(), indent=2) + "\n")
        return highest(cards)
    count = f"{len(cards)} card{'s' if len(cards) != 1 else ''}"
    out.write(f"POST {target.url}: HTTP {response.status_code}, {count}\n")
    if cards:
        out.write("\n" + cards_table(cards) + "\n")
    return highest(cards)


# --- validate ---------------------------------------------------------------------------------


def validate_resource(raw: Any, path: str) -> list[Issue]:
    """One resource against its FHIR R4 (R4B models) definition, problems with FHIRPath-style paths."""
    from service.fhir.intake import MODELS, Located, fhirpath, validate

    if not isinstance(raw, dict) or not isinstance(raw.get("resourceType"), str):
        return [Issue("not a FHIR resource: a JSON object with resourceType is expected", path)]
    kind = raw["resourceType"]
    if kind in MODELS:
        # The service's own checks for what the rules read (answer JSON types, status codes).
        return validate(Located(raw, path))[1]
    try:
        model = get_fhir_model_class(kind)
    except (KeyError, ValueError):
        model = None
    # get_fhir_model_class also knows data types (Coding, ...), which are no resourceType.
    if model is None or not issubclass(model, Resource):
        return [Issue(f"unknown resourceType {kind!r}", f"{path}.resourceType")]
    try:
        model.model_validate(raw, strict=True)
    except pydantic.ValidationError as exc:
        return [Issue(f"{kind}: {e['msg']}", fhirpath(path, e["loc"])) for e in exc.errors(include_url=False)]
    return []


def _entries(bundle: dict[str, Any], path: str) -> Iterator[tuple[Any, str]]:
    entries = bundle.get("entry")
    for i, entry in enumerate(entries if isinstance(entries, list) else ()):
        if isinstance(entry, dict) and "resource" in entry:
            yield entry["resource"], f"{path}.entry[{i}].resource"


def _envelope(check: Any, *args: Any) -> list[Issue]:
    """The issues a service envelope check raises (it stops at its first fatal problem)."""
    try:
        check(*args)
    except ServiceError as exc:
        return list(exc.issues)
    return []


def validate_document(data: Any) -> tuple[str, int, list[Issue]]:
    """What the file is, how many resources were checked, and every problem found."""
    from service.api.evaluate import _bundle_resources  # the /evaluate envelope check
    from service.cdshooks.envelope import parse_hook_request
    from service.cdshooks.services import SERVICE_HOOKS

    if isinstance(data, dict) and "hook" in data and "resourceType" not in data:
        issues = _envelope(parse_hook_request, data, SERVICE_HOOKS)
        raw_prefetch = data.get("prefetch")
        prefetch: dict[str, Any] = raw_prefetch if isinstance(raw_prefetch, dict) else {}
        checked = 0
        for key, value in prefetch.items():
            if value is None:
                continue
            path = f"prefetch.{key}"
            if isinstance(value, dict) and value.get("resourceType") == "Bundle":
                for resource, where in _entries(value, path):
                    issues += validate_resource(resource, where)
                    checked += 1
            else:
                issues += validate_resource(value, path)
                checked += 1
        return f"CDS Hooks request ({data.get('hook')})", checked, issues
    if isinstance(data, dict) and data.get("resourceType") == "Bundle":
        kind = data.get("type")
        # The /evaluate check looks `type` up in a set, which an object or array cannot be (a 500
        # there, reported): such a value is passed on as its JSON text, so it is reported instead.
        shown = kind if kind is None or isinstance(kind, str) else json.dumps(kind)
        issues = _envelope(_bundle_resources, {**data, "type": shown})
        checked = 0
        for resource, where in _entries(data, "Bundle"):
            issues += validate_resource(resource, where)
            checked += 1
        return "FHIR R4 Bundle", checked, issues
    if isinstance(data, dict) and isinstance(data.get("resourceType"), str):
        kind = data["resourceType"]
        return f"FHIR R4 {kind}", 1, validate_resource(data, kind)
    return (
        "JSON",
        0,
        [Issue("expected a FHIR resource (with resourceType) or a CDS Hooks request (with hook)")],
    )


def cmd_validate(args: argparse.Namespace, out: TextIO) -> int:
    """Validate offline; list every problem with its path."""
    what, checked, issues = validate_document(read_json(Path(args.file)))
    resources = f"{checked} resource{'s' if checked != 1 else ''} checked"
    if not issues:
        out.write(f"{args.file}: valid {what}, {resources}\n")
        return EXIT_OK
    out.write(f"{args.file}: {len(issues)} problem{'s' if len(issues) != 1 else ''} in {what}, {resources}\n")
    for issue in issues:
        out.write(f"  {issue.expression or '(document)'}: {issue.diagnostics}\n")
    return EXIT_INVALID


# --- examples ---------------------------------------------------------------------------------


def cmd_examples(args: argparse.Namespace, out: TextIO) -> int:
    """List fhir_examples/: rule, fires or near miss, file, description."""
    from service.ui.examples import DEFAULT_EXAMPLES_DIR, load_examples

    folder = Path(args.dir) if args.dir else DEFAULT_EXAMPLES_DIR
    if not folder.is_dir():
        raise CliError(f"{folder}: no examples folder (pass --dir)", EXIT_USAGE)
    examples = load_examples(folder)
    if args.json:
        listing = [{**e.to_json(), "file": str(e.path)} for e in examples]
        out.write(json.dumps(listing, indent=2) + "\n")
        return EXIT_OK
    rows = [(e.rule, e.kind, f"{e.name}.json", e.description or "-") for e in examples]
    # Rule and file names stay whole on one line; the description takes what the terminal has left.
    rule_width = max((len(e.rule) for e in examples), default=4)
    file_width = min(max((len(e.name) + 5 for e in examples), default=4), 48)
    widths = _widths([rule_width, 9, file_width], [1.0])
    out.write(table(("rule", "kind", "file", "description"), rows, widths) + "\n")
    out.write(f"\n{len(examples)} examples in {folder} (files are RULE/FILE)\n")
    return EXIT_OK


# --- entry point ------------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    """The argument parser (also the --help text)."""
    top = _Parser(
        prog="twitch-cds",
        description="Client for the twitch-cds CDS Hooks service.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = top.add_subparsers(dest="command", required=True, parser_class=_Parser)
    send = commands.add_parser(
        "send",
        help="post a Bundle or hook request to a running service and print the cards",
        description="Post a FHIR Bundle (to /evaluate, or as a hook request with --hook) or a CDS"
        " Hooks request (to /cds-services/SERVICE) and print the cards.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    send.add_argument("file", metavar="FILE", help="a FHIR Bundle or a CDS Hooks request (JSON)")
    send.add_argument("--url", default=DEFAULT_URL, help=f"the service's base URL (default {DEFAULT_URL})")
    send.add_argument(
        "--hook",
        help="send as this hook (e.g. patient-view): a Bundle becomes a hook request with every"
        " prefetch key discovery lists; a hook request gets this hook",
    )
    send.add_argument(
        "--service",
        help="CDS service id to post to (default: the one discovery lists for the hook)",
    )
    send.add_argument(
        "--timeout", type=float, default=30.0, help="seconds to wait for the answer (default 30)"
    )
    send.add_argument(
        "--token",
        default=os.environ.get("TWITCH_CDS_TOKEN"),
        help="bearer JWT for a service that authenticates (default $TWITCH_CDS_TOKEN)",
    )
    send.add_argument("--json", action="store_true", help="print the service's answer as JSON")
    send.set_defaults(run=cmd_send)
    check = commands.add_parser(
        "validate",
        help="validate a FHIR file offline (a Bundle: every entry; a hook request: every prefetch resource)",
        description="Validate a FHIR R4 resource, Bundle or CDS Hooks request offline; every problem"
        " is listed with its FHIRPath-style path.",
    )
    check.add_argument("file", metavar="FILE")
    check.set_defaults(run=cmd_validate)
    listing = commands.add_parser("examples", help="list fhir_examples/ with what each example shows")
    listing.add_argument("--dir", help="the examples folder (default: fhir_examples/ of the checkout)")
    listing.add_argument("--json", action="store_true", help="print the list as JSON")
    listing.set_defaults(run=cmd_examples)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; errors are one message on stderr and an exit status, never a traceback."""
    args = parser().parse_args(argv)
    try:
        status: int = args.run(args, sys.stdout)
    except CliError as exc:
        print(f"twitch-cds: {exc}", file=sys.stderr)
        return exc.status
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader (e.g. `| head`) stopped early: not an error; silence the flush at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    return status
