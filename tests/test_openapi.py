"""openapi.yaml is valid OpenAPI 3.1, lists exactly the Flask routes, and describes the real responses."""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from flask import Flask
from flask.testing import FlaskClient
from jsonschema import Draft202012Validator
from openapi_spec_validator import OpenAPIV31SpecValidator, validate
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012
from werkzeug.test import TestResponse

from service.app import create_app
from service.cdshooks.services import SERVICE_HOOKS
from tests.conftest import EXAMPLE_DAY, EXAMPLES, ROOT, bundle_to_hook_request, load_json

SPEC_PATH = ROOT / "openapi.yaml"
SPEC_URI = "urn:twitch-cds:openapi"
HTTP_METHODS = frozenset({"get", "put", "post", "delete", "options", "head", "patch", "trace"})
IGNORED_METHODS = frozenset({"HEAD", "OPTIONS"})  # Flask answers these by itself
HOOK = "/cds-services/{service_id}"
SERVICE_URL = "/cds-services/twitching-red-flags"
EXAMPLE_FILES = sorted(EXAMPLES.rglob("*.json"))
FIRES_FILES = [p for p in EXAMPLE_FILES if p.name.startswith("fires-")]


@pytest.fixture(scope="module")
def spec() -> dict[str, Any]:
    """The parsed openapi.yaml."""
    data = yaml.safe_load(SPEC_PATH.read_text(encoding="utf-8"))
    assert isinstance(data, dict), "openapi.yaml must hold one mapping"
    return data


@pytest.fixture(scope="module")
def registry(spec: dict[str, Any]) -> Registry[Any]:
    """The whole spec as one JSON Schema 2020-12 resource, so `#/components/...` refs resolve."""
    resource: Resource[Any] = Resource.from_contents(spec, default_specification=DRAFT202012)
    registry: Registry[Any] = Registry().with_resource(SPEC_URI, resource)
    return registry


def _escape(token: str) -> str:
    """A JSON Pointer reference token (RFC 6901)."""
    return token.replace("~", "~0").replace("/", "~1")


def _resolve(spec: dict[str, Any], pointer: str) -> Any:
    """The value at a local `#/...` reference."""
    assert pointer.startswith("#/"), f"only local references are used, not {pointer!r}"
    node: Any = spec
    for token in pointer[2:].split("/"):
        node = node[token.replace("~1", "/").replace("~0", "~")]
    return node


def _validator(registry: Registry[Any], pointer: str) -> Draft202012Validator:
    return Draft202012Validator(
        {"$ref": SPEC_URI + pointer},
        registry=registry,
        format_checker=Draft202012Validator.FORMAT_CHECKER,
    )


def _assert_valid(registry: Registry[Any], pointer: str, instance: Any, where: str) -> None:
    errors = sorted(_validator(registry, pointer).iter_errors(instance), key=lambda e: e.json_path)
    assert not errors, f"{where} does not match {pointer}:\n" + "\n".join(
        f"  {e.json_path}: {e.message}" for e in errors[:20]
    )


def _check_against(
    spec: dict[str, Any], registry: Registry[Any], response: TestResponse, pointer: str, where: str
) -> None:
    """The body matches the schema of the response object at `pointer`, for its media type."""
    declared = _resolve(spec, pointer)
    if "$ref" in declared:
        pointer = declared["$ref"]
        declared = _resolve(spec, pointer)
    content = declared.get("content", {})
    mimetype = response.mimetype or "no media type"
    assert mimetype in content, f"{where} answered {mimetype}; the spec declares {sorted(content)}"
    schema_pointer = f"{pointer}/content/{_escape(mimetype)}/schema"
    _assert_valid(registry, schema_pointer, response.get_json(), where)


def check(
    spec: dict[str, Any],
    registry: Registry[Any],
    response: TestResponse,
    path: str,
    method: str,
    label: str = "",
) -> Any:
    """The response's status is declared for the operation and its body matches that schema."""
    where = f"{method.upper()} {path} -> {response.status_code}{f' ({label})' if label else ''}"
    responses = spec["paths"][path][method]["responses"]
    status = str(response.status_code)
    assert status in responses, f"{where}: status not declared (declared {sorted(responses)})"
    pointer = f"#/paths/{_escape(path)}/{method}/responses/{status}"
    _check_against(spec, registry, response, pointer, where)
    return response.get_json()


def _operations(spec: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            if method in HTTP_METHODS:
                yield path, method, operation


def _flask_path(rule: str) -> str:
    """`/cds-services/<service_id>` (or `<string:service_id>`) -> `/cds-services/{service_id}`."""
    return re.sub(r"<(?:[^<>:]+:)?([^<>]+)>", r"{\1}", rule)


def _routes(app: Flask) -> dict[tuple[str, str], set[str]]:
    """(path, method) of every route but static, with the names of its path variables."""
    out: dict[tuple[str, str], set[str]] = {}
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        for method in (rule.methods or set()) - IGNORED_METHODS:
            out[(_flask_path(rule.rule), method.lower())] = set(rule.arguments)
    return out


# --- the document itself -------------------------------------------------------------------


def test_spec_is_valid_openapi_31(spec: dict[str, Any]) -> None:
    """openapi.yaml parses and is a valid OpenAPI 3.1 document."""
    assert str(spec["openapi"]).startswith("3.1."), "the spec must be OpenAPI 3.1"
    validate(spec, cls=OpenAPIV31SpecValidator)
    assert spec["info"]["version"] == "0.1.0"


def test_paths_and_methods_match_the_flask_routes(app: Flask, spec: dict[str, Any]) -> None:
    """Every route is documented and every documented operation is a route."""
    routes = _routes(app)
    documented = {(path, method) for path, method, _ in _operations(spec)}
    assert documented == set(routes), (
        f"only in the spec: {sorted(documented - set(routes))};"
        f" only in Flask: {sorted(set(routes) - documented)}"
    )
    for (path, method), arguments in routes.items():
        item = spec["paths"][path]
        params = [*item.get("parameters", []), *item[method].get("parameters", [])]
        in_path = {p["name"] for p in params if p.get("in") == "path"}
        assert in_path == arguments, f"{method.upper()} {path}: path parameters {in_path} != {arguments}"


def test_every_error_is_an_operation_outcome(spec: dict[str, Any]) -> None:
    """Each operation declares 500, and every 4xx/5xx is an OperationOutcome as application/fhir+json."""
    for path, method, operation in _operations(spec):
        assert "500" in operation["responses"], f"{method.upper()} {path} must declare 500"
        if "requestBody" in operation:
            assert {"400", "413", "415"} <= set(operation["responses"]), f"{method.upper()} {path}"
            media = set(operation["requestBody"]["content"])
            assert media == {"application/json", "application/fhir+json"}, f"{method.upper()} {path}"
    errors = [
        (f"{m.upper()} {p} {s}", r)
        for p, m, op in _operations(spec)
        for s, r in op["responses"].items()
        if int(s) >= 400
    ]
    errors.append(("405", {"$ref": "#/components/responses/MethodNotAllowed"}))
    for where, response in errors:
        declared = _resolve(spec, response["$ref"]) if "$ref" in response else response
        content = dict(declared["content"])
        if " /smart/" in where:
            # The SMART app's pages are opened by a browser: it gets the refusal as a page too.
            content.pop("text/html", None)
        assert set(content) == {"application/fhir+json"}, where
        schema = content["application/fhir+json"]["schema"]
        assert schema == {"$ref": "#/components/schemas/OperationOutcome"}, where


def test_hooks_in_the_spec_are_the_hooks_served(spec: dict[str, Any]) -> None:
    """The hook enums name exactly the hooks the service answers (others are 400)."""
    schemas = spec["components"]["schemas"]
    assert schemas["HookRequest"]["properties"]["hook"]["enum"] == list(SERVICE_HOOKS)
    assert schemas["Service"]["properties"]["hook"]["enum"] == list(SERVICE_HOOKS)


def _examples(spec: dict[str, Any], node: Any, pointer: str = "#") -> Iterator[tuple[str, str, Any]]:
    """(where, schema pointer, example value) of every example beside a schema."""
    if isinstance(node, dict):
        if "schema" in node:
            schema_pointer = f"{pointer}/schema"
            if "example" in node:
                yield f"{pointer}/example", schema_pointer, node["example"]
            for name, example in (node.get("examples") or {}).items():
                # an Example Object, inline or a reference to components/examples
                resolved = _resolve(spec, example["$ref"]) if "$ref" in example else example
                yield f"{pointer}/examples/{name}", schema_pointer, resolved["value"]
        for key, value in node.items():
            yield from _examples(spec, value, f"{pointer}/{_escape(str(key))}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _examples(spec, value, f"{pointer}/{i}")


def test_examples_match_their_schemas(spec: dict[str, Any], registry: Registry[Any]) -> None:
    """Every example in the spec is valid against the schema it illustrates."""
    found = list(_examples(spec, spec))
    assert len(found) >= 10, "the spec should carry examples"
    for where, schema_pointer, example in found:
        _assert_valid(registry, schema_pointer, example, where)


def _request_example(spec: dict[str, Any], path: str) -> Any:
    media = spec["paths"][path]["post"]["requestBody"]["content"]["application/json"]
    if "example" in media:
        return media["example"]
    first = next(iter(media["examples"].values()))
    return _resolve(spec, first["$ref"])["value"] if "$ref" in first else first["value"]


def test_request_examples_are_accepted(
    spec: dict[str, Any], registry: Registry[Any], client: FlaskClient
) -> None:
    """The request examples work: the service answers them with cards."""
    body = _request_example(spec, HOOK)
    check(spec, registry, client.post(SERVICE_URL, json=body), HOOK, "post")
    cards = check(spec, registry, client.post("/evaluate", json=_request_example(spec, "/evaluate")),
                  "/evaluate", "post")  # fmt: skip
    assert cards["cards"], "the /evaluate example should fire a card"


# --- real responses against the schemas ----------------------------------------------------


def test_discovery_matches(spec: dict[str, Any], registry: Registry[Any], client: FlaskClient) -> None:
    """GET /cds-services."""
    body = check(spec, registry, client.get("/cds-services"), "/cds-services", "get")
    assert body["services"]


def test_cards_from_evaluate_match(
    spec: dict[str, Any], registry: Registry[Any], client: FlaskClient
) -> None:
    """POST /evaluate with every fires- example: at least one card, each matching Card."""
    assert FIRES_FILES, "fhir_examples/ should hold fires- examples"
    for path in FIRES_FILES:
        response = client.post("/evaluate", json=load_json(path))
        body = check(spec, registry, response, "/evaluate", "post", path.name)
        assert body["cards"], f"{path.name}: a fires- example should answer at least one card"


def test_cards_from_the_hook_match(
    spec: dict[str, Any], registry: Registry[Any], client: FlaskClient
) -> None:
    """POST /cds-services/{service_id} with every example as full prefetch (one app, many calls)."""
    for path in EXAMPLE_FILES:
        request = bundle_to_hook_request(load_json(path))
        check(spec, registry, client.post(SERVICE_URL, json=request), HOOK, "post", path.name)


def test_data_quality_card_matches(
    spec: dict[str, Any], registry: Registry[Any], client: FlaskClient
) -> None:
    """A resource the rules cannot use yields the data card, which has no suggestions."""
    request = bundle_to_hook_request(load_json(EXAMPLE_FILES[0]))
    bad = {"resourceType": "Observation", "status": "bogus",
           "code": {"coding": [{"system": "http://loinc.org", "code": "2823-3"}]}}  # fmt: skip
    request["prefetch"]["observations"]["entry"] = [{"resource": bad}]
    body = check(spec, registry, client.post(SERVICE_URL, json=request), HOOK, "post")
    topics = [card["source"]["topic"]["code"] for card in body["cards"]]
    assert "dataquality" in topics


def test_catalogue_matches(spec: dict[str, Any], registry: Registry[Any], client: FlaskClient) -> None:
    """GET /rules."""
    check(spec, registry, client.get("/rules"), "/rules", "get")


def test_health_matches(spec: dict[str, Any], registry: Registry[Any], client: FlaskClient) -> None:
    """GET /healthz."""
    check(spec, registry, client.get("/healthz"), "/healthz", "get")


def test_questionnaire_matches(spec: dict[str, Any], registry: Registry[Any], client: FlaskClient) -> None:
    """GET /fhir/Questionnaire/{questionnaire_id}: the resource, and 404 for another id."""
    path = "/fhir/Questionnaire/{questionnaire_id}"
    body = check(spec, registry, client.get("/fhir/Questionnaire/twitching-assessment"), path, "get")
    assert body["id"] == "twitching-assessment"
    check(spec, registry, client.get("/fhir/Questionnaire/nope"), path, "get")


# --- errors --------------------------------------------------------------------------------


def _assert_status(response: TestResponse, status: int) -> TestResponse:
    assert response.status_code == status, response.get_data(as_text=True)
    return response


def test_errors_of_the_hook_match(spec: dict[str, Any], registry: Registry[Any], client: FlaskClient) -> None:
    """400, 404, 412, 415 and 422 from POST /cds-services/{service_id}."""
    request = bundle_to_hook_request(load_json(EXAMPLE_FILES[0]))
    invalid_patient = copy.deepcopy(request)
    invalid_patient["prefetch"]["patient"]["gender"] = 5
    no_prefetch = {key: request[key] for key in ("hook", "hookInstance", "context")}
    calls = [
        (400, client.post(SERVICE_URL, data=b"{not json", content_type="application/json")),
        (400, client.post(SERVICE_URL, json={**request, "hookInstance": "not-a-uuid"})),
        (404, client.post("/cds-services/nope", json=request)),
        (412, client.post(SERVICE_URL, json=no_prefetch)),
        (415, client.post(SERVICE_URL, data="a=b", content_type="application/x-www-form-urlencoded")),
        (422, client.post(SERVICE_URL, json=invalid_patient)),
    ]
    for status, response in calls:
        check(spec, registry, _assert_status(response, status), HOOK, "post")


def test_errors_of_evaluate_match(spec: dict[str, Any], registry: Registry[Any], client: FlaskClient) -> None:
    """400, 415 and 422 from POST /evaluate, fhir+json accepted."""
    empty = b'{"resourceType": "Bundle", "type": "collection", "entry": []}'
    calls = [
        (400, client.post("/evaluate", json="Bundle")),
        (415, client.post("/evaluate", data="{}", content_type="text/plain")),
        (422, client.post("/evaluate", data=empty, content_type="application/fhir+json")),
    ]
    for status, response in calls:
        check(spec, registry, _assert_status(response, status), "/evaluate", "post")


def test_errors_of_smart_cards_match(spec: dict[str, Any], registry: Registry[Any]) -> None:
    """400, 403, 404, 413 and 415 from POST /smart/cards (its refusals need no FHIR server)."""
    smart = {
        "TODAY": EXAMPLE_DAY,
        "SMART_CLIENT_ID": "app",
        "SMART_ALLOWED_ISSUERS": '["http://127.0.0.1:9/fhir"]',
        "PUBLIC_BASE_URL": "http://127.0.0.1:8080",
    }
    client = create_app(smart).test_client()
    elsewhere = {"fhirServer": "https://elsewhere.test/fhir", "patient": "p", "access_token": "t"}
    calls = [
        (400, client.post("/smart/cards", json={**elsewhere, "patient": "not an id"})),
        (403, client.post("/smart/cards", json=elsewhere)),
        (404, create_app({"TODAY": EXAMPLE_DAY}).test_client().post("/smart/cards", json=elsewhere)),
        (413, client.post("/smart/cards", json={**elsewhere, "access_token": "t" * 20_000})),
        (415, client.post("/smart/cards", data="{}", content_type="text/plain")),
    ]
    for status, response in calls:
        check(spec, registry, _assert_status(response, status), "/smart/cards", "post")


def test_body_over_the_limit_matches(spec: dict[str, Any], registry: Registry[Any]) -> None:
    """413 from both POST operations."""
    client = create_app({"TODAY": EXAMPLE_DAY, "MAX_CONTENT_LENGTH": 1000}).test_client()
    big = b'{"x": "' + b"a" * 2000 + b'"}'
    for url, path in ((SERVICE_URL, HOOK), ("/evaluate", "/evaluate")):
        response = client.post(url, data=big, content_type="application/json")
        check(spec, registry, _assert_status(response, 413), path, "post")


def test_internal_error_matches(
    spec: dict[str, Any], registry: Registry[Any], app: Flask, client: FlaskClient,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """500 (a test double makes the engine raise)."""

    def broken(*_: Any, **__: Any) -> None:
        raise RuntimeError("test double")

    monkeypatch.setattr(app.extensions["evaluator"], "run", broken)
    response = client.post("/evaluate", json=load_json(EXAMPLE_FILES[0]))
    check(spec, registry, _assert_status(response, 500), "/evaluate", "post")


def test_unknown_path_and_wrong_method_match(
    spec: dict[str, Any], registry: Registry[Any], client: FlaskClient
) -> None:
    """404 on an unknown path and 405 (with Allow) match the shared response components."""
    not_found = _assert_status(client.get("/no/such/page"), 404)
    _check_against(spec, registry, not_found, "#/components/responses/NotFound", "GET /no/such/page")
    for response in (client.get(SERVICE_URL), client.delete("/cds-services")):
        _assert_status(response, 405)
        assert response.headers["Allow"]
        pointer = "#/components/responses/MethodNotAllowed"
        _check_against(spec, registry, response, pointer, "405")
    assert "Allow" in spec["components"]["responses"]["MethodNotAllowed"]["headers"]
