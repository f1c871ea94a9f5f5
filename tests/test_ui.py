"""The viewer's files, the example index, /openapi.yaml and /docs (Flask test client)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from flask import Flask
from flask.testing import FlaskClient

from service.api.ui import ASSETS, CONTENT_SECURITY_POLICY, STATIC_DIR
from service.app import create_app
from service.ui.apidocs import build_page, markdown_html
from service.ui.examples import ExampleIndex, load_examples
from tests.conftest import EXAMPLE_DAY, EXAMPLES, ROOT

SPEC_PATH = ROOT / "openapi.yaml"


def test_the_viewer_page_and_its_files(client: FlaskClient) -> None:
    """GET / and every file it links are served with their type and a strict policy."""
    page = client.get("/")
    assert page.status_code == 200
    assert page.mimetype == "text/html"
    html = page.get_data(as_text=True)
    linked = set(re.findall(r'(?:src|href)="(/ui/[^"]+)"', html))
    assert {"/ui/app.js", "/ui/style.css", "/ui/favicon.svg"} <= linked
    for url in linked:
        response = client.get(url)
        assert response.status_code == 200, url
        assert response.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
    assert client.get("/ui/app.js").mimetype == "text/javascript"
    assert client.get("/ui/style.css").mimetype == "text/css"
    assert page.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
    assert page.headers["X-Content-Type-Options"] == "nosniff"


def test_no_inline_script_or_style() -> None:
    """The policy forbids inline code, so no file may carry any (scripts load as modules)."""
    smart_pages = sorted((ROOT / "service" / "ui" / "templates" / "smart").glob("*.html"))
    for path in [*STATIC_DIR.iterdir(), *smart_pages]:
        if path.is_dir():
            continue  # vendor/: third-party code, pinned by its checksum (tests/test_smart.py)
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".html":
            assert not re.search(r"<script(?![^>]*\bsrc=)", text), f"{path.name}: inline <script>"
            assert "<style" not in text, f"{path.name}: inline style"
            assert " style=" not in text, f"{path.name}: inline style"
            assert not re.search(r"\son[a-z]+=", text), f"{path.name}: inline event handler"
        if path.suffix == ".js":
            for unsafe in (
                ".innerHTML",
                "outerHTML =",
                "insertAdjacentHTML",
                "document.write",
                "eval(",
                "new Function",
            ):
                assert unsafe not in text, f"{path.name}: {unsafe}"
            # Everything is served locally: no string in a script names another host.
            assert not re.search(r"[\"'`]https?://", text), f"{path.name}: an external URL"
    template = (ROOT / "service" / "ui" / "templates" / "docs.html").read_text(encoding="utf-8")
    assert "<script" not in template
    assert " style=" not in template


def test_every_module_the_scripts_import_is_served(client: FlaskClient) -> None:
    """`import ... from "./x.js"` in a module names a file /ui/ serves."""
    for name in [n for n in ASSETS if n.endswith(".js")]:
        text = (STATIC_DIR / name).read_text(encoding="utf-8")
        for imported in re.findall(r'from "\./([^"]+)"', text):
            assert client.get(f"/ui/{imported}").status_code == 200, f"{name} imports {imported}"


@pytest.mark.parametrize(
    "url",
    [
        "/ui/index.html",  # the page is served at / only
        "/ui/nope.js",
        "/ui/..%2fapi%2fui.py",
        "/ui/%2e%2e/app.py",
        "/ui/../app.py",
        "/ui/static/app.js",
        "/examples/motor-neuron-red-flags/..%2f..%2fopenapi.json",
        "/examples/..%2frules/set.json",
        "/examples/motor-neuron-red-flags/fires-weakness.expect.yaml",
        "/examples/motor-neuron-red-flags/fires-weakness.expect.json",
        "/examples/%2e%2e/openapi.json",
        "/examples/motor-neuron-red-flags/nope.json",
        "/examples/Motor-Neuron-Red-Flags/fires-weakness.json",
    ],
)
def test_nothing_outside_the_lists_is_served(client: FlaskClient, url: str) -> None:
    """Traversal attempts and unknown names are 404 OperationOutcomes."""
    response = client.get(url)
    assert response.status_code == 404, url
    assert response.get_json()["resourceType"] == "OperationOutcome"


def test_the_example_index(client: FlaskClient) -> None:
    """GET /examples lists every example JSON with its expectation, and each URL serves the file."""
    listed = client.get("/examples").get_json()["examples"]
    files = sorted(EXAMPLES.glob("*/*.json"))
    assert len(listed) == len(files) > 50
    weakness = next(
        e for e in listed if (e["rule"], e["name"]) == ("motor-neuron-red-flags", "fires-weakness")
    )
    assert weakness["kind"] == "fires"
    assert weakness["expectedCards"] == [{"rule": "motor-neuron-red-flags", "indicator": "critical"}]
    assert "weakness: yes" in weakness["description"]
    assert {e["kind"] for e in listed} == {"fires", "near-miss"}
    for entry in listed[:: max(1, len(listed) // 10)]:
        response = client.get(entry["url"])
        assert response.status_code == 200
        assert response.mimetype == "application/fhir+json"
        path = EXAMPLES / entry["rule"] / f"{entry['name']}.json"
        assert response.get_data() == path.read_bytes()


def test_examples_index_ignores_odd_names(tmp_path: Path) -> None:
    """Only lower-case, hyphenated names are indexed; a missing or broken expectation is tolerated."""
    (tmp_path / "rule-a").mkdir()
    (tmp_path / "rule-a" / "fires-one.json").write_text("{}", encoding="utf-8")
    (tmp_path / "rule-a" / "near-miss-two.json").write_text("{}", encoding="utf-8")
    (tmp_path / "rule-a" / "near-miss-two.expect.yaml").write_text("cards: [", encoding="utf-8")
    (tmp_path / "rule-a" / "Odd Name.json").write_text("{}", encoding="utf-8")
    (tmp_path / ".hidden").mkdir()
    (tmp_path / ".hidden" / "fires-x.json").write_text("{}", encoding="utf-8")
    found = [(e.rule, e.name, e.kind, e.description) for e in load_examples(tmp_path)]
    assert found == [("rule-a", "fires-one", "fires", ""), ("rule-a", "near-miss-two", "near-miss", "")]
    assert ExampleIndex(tmp_path / "absent").examples == []


def test_an_installation_without_examples_or_spec(tmp_path: Path) -> None:
    """No fhir_examples/ and no openapi.yaml: an empty list and clear 404s, the service still runs."""
    app = create_app(
        {
            "TODAY": EXAMPLE_DAY,
            "EXAMPLES_DIR": str(tmp_path / "none"),
            "OPENAPI_PATH": str(tmp_path / "x.yaml"),
        }
    )
    client = app.test_client()
    assert client.get("/examples").get_json() == {"examples": []}
    for url in ("/openapi.yaml", "/docs"):
        response = client.get(url)
        assert response.status_code == 404
        assert "openapi.yaml" in response.get_json()["issue"][0]["diagnostics"]
    assert client.get("/healthz").status_code == 200


def test_the_spec_is_served_as_written(client: FlaskClient) -> None:
    """GET /openapi.yaml is the checkout's file, byte for byte, as application/yaml."""
    response = client.get("/openapi.yaml")
    assert response.status_code == 200
    assert response.mimetype == "application/yaml"
    assert response.get_data() == SPEC_PATH.read_bytes()


def test_the_api_page_lists_every_operation(client: FlaskClient, app: Flask) -> None:
    """GET /docs names every path and method of the spec, every schema, and loads nothing external."""
    spec: dict[str, Any] = yaml.safe_load(SPEC_PATH.read_text(encoding="utf-8"))
    response = client.get("/docs")
    assert response.status_code == 200
    assert response.mimetype == "text/html"
    html = response.get_data(as_text=True)
    for path, item in spec["paths"].items():
        for method in item:
            if method in ("get", "post", "put", "delete", "patch"):
                escaped = path.replace("&", "&amp;")
                assert f"{method.upper()}</span> <code>{escaped}</code>" in html, f"{method} {path}"
    for name in spec["components"]["schemas"]:
        assert f'id="schema-{name}"' in html
    assets = re.findall(r'(?:src|href)="([^"#]+)"', html)
    assert all(a.startswith("/") for a in assets), assets
    assert response.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY


def test_the_api_page_escapes_the_spec() -> None:
    """Text from the spec is escaped by the template (the page model carries it raw)."""
    spec = {
        "info": {"title": "<script>x</script>", "version": "1"},
        "paths": {"/a": {"get": {"summary": "<b>s</b>", "responses": {"200": {"description": "ok"}}}}},
    }
    page = build_page(spec)
    assert page.sections[0].operations[0].summary == "<b>s</b>"
    app = create_app({"TODAY": EXAMPLE_DAY})
    with app.test_request_context():
        from flask import render_template

        html = render_template("templates/docs.html", page=page)
    assert "<script>x" not in html
    assert "&lt;script&gt;x" in html
    assert "<b>s</b>" not in html


def test_spec_markdown_is_rendered_from_escaped_text() -> None:
    """Descriptions: paragraphs, lists, `code` and **bold**; any HTML in them stays text."""
    html = markdown_html("<b>x</b> `a<i>` **c**\nnext\n\n- one\n  more\n- **two**")
    assert html == (
        "<p>&lt;b&gt;x&lt;/b&gt; <code>a&lt;i&gt;</code> <strong>c</strong> next</p>"
        "<ul><li>one more</li><li><strong>two</strong></li></ul>"
    )
