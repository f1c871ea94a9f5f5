"""The command line (`python -m service`, console script `twitch-cds`) against a real service on loopback."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from service.cli import main
from tests.conftest import EXAMPLES, HOOK_URLS, ROOT, bundle_to_hook_request, load_json
from tests.live import LiveServer, live_app, serve

WEAKNESS = EXAMPLES / "motor-neuron-red-flags" / "fires-weakness.json"
SARAH = EXAMPLES / "case-studies" / "fires-sarah-l5-s1.json"
SERVICE_URL_PATH = "/cds-services/twitching-red-flags"


@pytest.fixture(scope="module")
def live() -> Iterator[LiveServer]:
    """The service on 127.0.0.1."""
    with serve(live_app()) as server:
        yield server


def run(*args: str) -> subprocess.CompletedProcess[str]:
    """`python -m service ARGS` as a user runs it: a real process, its exit status and output."""
    return subprocess.run(
        [sys.executable, "-m", "service", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "COLUMNS": "120"},
        check=False,
    )


def write(tmp_path: Path, name: str, data: Any) -> str:
    """Write data as JSON (or text as is) and return the path."""
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data), encoding="utf-8")
    return str(path)


def free_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# --- send -----------------------------------------------------------------------------------


def test_send_a_bundle_prints_the_cards_and_exits_with_the_highest_indicator(live: LiveServer) -> None:
    """A critical card: exit 2, the table names the indicator, summary and suggestions."""
    result = run("send", str(WEAKNESS), "--url", live.url)
    assert result.returncode == 2, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"POST {live.url}/evaluate: HTTP 200, 1 card"
    assert lines[2].split() == ["INDICATOR", "SUMMARY", "SUGGESTIONS"]
    assert lines[4].startswith("critical   Twitching with motor red flags")
    assert "Order: Referral to neurology (urgent)" in result.stdout
    assert "Order: EMG with nerve conduction studies" in result.stdout


def test_send_exit_status_follows_the_cards(live: LiveServer, capsys: pytest.CaptureFixture[str]) -> None:
    """Warning: 1; only info cards or none: 0."""
    assert main(["send", str(SARAH), "--url", live.url]) == 1
    benign = next((EXAMPLES / "likely-benign").glob("fires-*.json"))
    assert main(["send", str(benign), "--url", live.url]) == 0
    out = capsys.readouterr().out
    assert "warning" in out
    assert "info" in out


def test_send_as_a_hook(live: LiveServer, capsys: pytest.CaptureFixture[str]) -> None:
    """--hook turns the Bundle into a hook request for the CDS service; same cards as /evaluate."""
    assert main(["send", str(SARAH), "--url", live.url, "--hook", "patient-view", "--json"]) == 1
    via_hook = json.loads(capsys.readouterr().out)["cards"]
    assert main(["send", str(SARAH), "--url", live.url, "--json"]) == 1
    via_evaluate = json.loads(capsys.readouterr().out)["cards"]
    assert [c["summary"] for c in via_hook] == [c["summary"] for c in via_evaluate]
    assert main(["send", str(SARAH), "--url", live.url, "--hook", "patient-view"]) == 1
    assert capsys.readouterr().out.startswith(f"POST {live.url}{SERVICE_URL_PATH}: HTTP 200, 3 cards")


def test_send_a_hook_request(live: LiveServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A JSON with `hook` goes as it is to the service discovery lists for that hook."""
    request = write(tmp_path, "request.json", bundle_to_hook_request(load_json(WEAKNESS)))
    assert main(["send", request, "--url", live.url + "/"]) == 2
    assert capsys.readouterr().out.startswith(f"POST {live.url}{SERVICE_URL_PATH}: HTTP 200, 1 card")


@pytest.mark.parametrize("hook", ["order-select", "order-sign"])
def test_send_an_order_hook_request(
    live: LiveServer, tmp_path: Path, capsys: pytest.CaptureFixture[str], hook: str
) -> None:
    """An order hook's request goes to that hook's own service id; --hook on a Bundle does the same."""
    call = bundle_to_hook_request(load_json(WEAKNESS))
    call["hook"] = hook
    call["context"]["draftOrders"] = {"resourceType": "Bundle", "type": "collection", "entry": []}
    assert main(["send", write(tmp_path, "request.json", call), "--url", live.url]) == 2
    assert capsys.readouterr().out.startswith(f"POST {live.url}{HOOK_URLS[hook]}: HTTP 200, 1 card")
    assert main(["send", str(WEAKNESS), "--url", live.url, "--hook", hook]) == 2
    assert capsys.readouterr().out.startswith(f"POST {live.url}{HOOK_URLS[hook]}: HTTP 200, 1 card")


def test_send_to_a_named_service_that_answers_another_hook(
    live: LiveServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--service is obeyed; the service's 400 on `hook` is exit 5 with its message."""
    request = write(tmp_path, "request.json", bundle_to_hook_request(load_json(WEAKNESS)))
    assert main(["send", request, "--url", live.url, "--service", "twitching-red-flags-order-sign"]) == 5
    err = capsys.readouterr().err
    assert "HTTP 400" in err
    assert "send patient-view to /cds-services/twitching-red-flags" in err


def test_send_reports_the_services_problems(live: LiveServer, tmp_path: Path) -> None:
    """A 422 is exit 5 with each problem and its path on stderr, no traceback."""
    bundle = load_json(WEAKNESS)
    bundle["entry"][0]["resource"]["gender"] = 5
    result = run("send", write(tmp_path, "bad.json", bundle), "--url", live.url)
    assert result.returncode == 5
    assert "HTTP 422" in result.stderr
    assert "Bundle.entry[0].resource.gender: Patient:" in result.stderr
    assert "Traceback" not in result.stderr


def test_send_to_a_service_that_is_not_there(tmp_path: Path) -> None:
    """Refused connection: exit 4 and one clear line."""
    result = run("send", str(WEAKNESS), "--url", f"http://127.0.0.1:{free_port()}")
    assert result.returncode == 4
    assert "cannot connect" in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


def test_send_bad_files_and_urls(tmp_path: Path, live: LiveServer) -> None:
    """A missing file, non-JSON, a non-Bundle and a bad URL: exit 3, one line each."""
    cases = [
        (str(tmp_path / "absent.json"), live.url, "no such file"),
        (write(tmp_path, "text.json", "{not json"), live.url, "not JSON: Expecting property name"),
        (write(tmp_path, "patient.json", {"resourceType": "Patient"}), live.url, "expected a FHIR Bundle"),
        (str(WEAKNESS), "nowhere", "not a URL"),
    ]
    for path, url, message in cases:
        result = run("send", path, "--url", url)
        assert result.returncode == 3, (path, result.stderr)
        assert message in result.stderr, result.stderr
        assert "Traceback" not in result.stderr


def test_send_an_unknown_hook(live: LiveServer, capsys: pytest.CaptureFixture[str]) -> None:
    """A hook discovery does not list: exit 5, naming what is offered."""
    assert main(["send", str(WEAKNESS), "--url", live.url, "--hook", "encounter-start"]) == 5
    assert "offers no 'encounter-start' hook (it offers: " in capsys.readouterr().err


# --- validate -------------------------------------------------------------------------------


def test_validate_a_valid_example(capsys: pytest.CaptureFixture[str]) -> None:
    """Every resource of the Bundle checked; exit 0."""
    assert main(["validate", str(WEAKNESS)]) == 0
    assert capsys.readouterr().out == f"{WEAKNESS}: valid FHIR R4 Bundle, 2 resources checked\n"


def test_validate_lists_every_problem_with_its_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Patient, QuestionnaireResponse answer types, another resource type, the Bundle envelope."""
    bundle = load_json(WEAKNESS)
    bundle["type"] = {"not": "a code"}
    bundle["entry"][0]["resource"]["gender"] = 5
    answer = bundle["entry"][1]["resource"]["item"][0]["item"][0]["answer"][0]
    answer.clear()
    answer["valueInteger"] = "10"
    bundle["entry"].append({"resource": {"resourceType": "Encounter", "status": "finished"}})
    bundle["entry"].append({"resource": {"resourceType": "Nonsense"}})
    assert main(["validate", write(tmp_path, "bad.json", bundle)]) == 1
    out = capsys.readouterr().out
    assert "problems in FHIR R4 Bundle, 4 resources checked" in out
    for where in (
        "  Bundle.type: Bundle.type",
        "  Bundle.entry[0].resource.gender: Patient:",
        "  Bundle.entry[1].resource.item[0].item[0].answer[0].valueInteger: valueInteger must be",
        "  Bundle.entry[2].resource.class: Encounter:",
        "  Bundle.entry[3].resource.resourceType: unknown resourceType 'Nonsense'",
    ):
        assert where in out, out


def test_validate_a_hook_request(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The envelope and every prefetched resource, with prefetch paths."""
    request = bundle_to_hook_request(load_json(WEAKNESS))
    request["hookInstance"] = "not-a-uuid"
    request["prefetch"]["patient"]["birthDate"] = "14/03/1968"
    assert main(["validate", write(tmp_path, "request.json", request)]) == 1
    out = capsys.readouterr().out
    assert "in CDS Hooks request (patient-view)" in out
    assert "  hookInstance: hookInstance: Not a valid UUID." in out
    assert "  prefetch.patient.birthDate: Patient:" in out


def test_validate_one_resource_and_bad_input(tmp_path: Path) -> None:
    """A single resource is checked on its own; a non-JSON file is exit 3."""
    result = run("validate", write(tmp_path, "p.json", {"resourceType": "Patient", "gender": "male"}))
    assert (result.returncode, result.stdout.split(": ", 1)[1]) == (
        0,
        "valid FHIR R4 Patient, 1 resource checked\n",
    )
    result = run("validate", write(tmp_path, "x.json", "[1, 2"))
    assert result.returncode == 3
    assert "not JSON" in result.stderr


# --- examples and the command itself ----------------------------------------------------------


def test_examples_lists_rule_kind_and_description(capsys: pytest.CaptureFixture[str]) -> None:
    """One row per example; --json gives the same as GET /examples plus the file."""
    assert main(["examples"]) == 0
    out = capsys.readouterr().out
    count = len(list(EXAMPLES.glob("*/*.json")))
    assert out.splitlines()[0].split() == ["RULE", "KIND", "FILE", "DESCRIPTION"]
    assert f"{count} examples in {EXAMPLES}" in out
    assert any(
        line.startswith("motor-neuron-red-flags") and "fires-weakness.json" in line
        for line in out.splitlines()
    )
    assert main(["examples", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert len(listed) == count
    assert {"rule", "name", "kind", "description", "expectedCards", "file"} <= set(listed[0])


def test_usage_errors_exit_3_not_2() -> None:
    """2 means a critical card, so a usage error is 3; --help documents the statuses."""
    result = run()
    assert result.returncode == 3
    assert "usage: twitch-cds" in result.stderr
    assert run("send").returncode == 3
    help_text = run("--help")
    assert help_text.returncode == 0
    assert "2  send: a critical card" in help_text.stdout


def test_console_script_entry_point() -> None:
    """pyproject's [project.scripts] twitch-cds, once added, points at service.cli:main."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    scripts = project.get("scripts", {})
    if "twitch-cds" not in scripts:
        pytest.skip('pyproject.toml has no [project.scripts] twitch-cds = "service.cli:main" yet')
    assert scripts["twitch-cds"] == "service.cli:main"


def test_a_bundle_for_a_hook_another_service_answers_says_where_it_went(
    live: LiveServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """--hook order-sign with --service of patient-view: sent to order-sign's service, with a note."""
    code = main(
        ["send", str(WEAKNESS), "--url", live.url, "--hook", "order-sign", "--service", "twitching-red-flags"]
    )
    assert code == 2
    captured = capsys.readouterr()
    assert "'twitching-red-flags' does not answer 'order-sign'" in captured.err
    assert captured.out.startswith(f"POST {live.url}{HOOK_URLS['order-sign']}: HTTP 200")
