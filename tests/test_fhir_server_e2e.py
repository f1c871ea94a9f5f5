"""End to end against a real FHIR server: Medplum's FHIR router on loopback (tests/fhir_server/).

The server holds the six Synthea records (loaded as their transaction Bundles, so the server
resolves their urn:uuid references) and every fhir_examples patient. Each test makes the same
hook call twice, once with prefetch as an EHR would fill it and once with only fhirServer and a
token, and the two answers must carry the same cards (topic, indicator, suggested codes).
"""

from __future__ import annotations

import copy
import hashlib
import os
import select
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
import requests
import yaml
from flask.testing import FlaskClient

from service.app import create_app
from service.cdshooks.fetch import FetchSettings, FhirFetcher
from service.cdshooks.prefetch import KEY_TYPES, prefetch_templates
from service.config import load_config
from service.engine.ruleset import load_ruleset
from tests.conftest import (
    EXAMPLE_DAY,
    EXAMPLES,
    ROOT,
    bundle_to_hook_request,
    card_rules,
    hook_url,
    load_json,
    server_only,
    shared,
    topic,
)
from tests.conftest import (
    card_signature as signature,
)

SERVER_DIR = ROOT / "tests" / "fhir_server"
# Its npm packages are installed outside the checkout, one folder per lock file: third-party
# trees never sit among the project's files (where a scan of the tests would read them as ours).
RUN_DIR = (
    Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    / "twitch-cds"
    / f"fhir-server-{hashlib.sha256((SERVER_DIR / 'package-lock.json').read_bytes()).hexdigest()[:16]}"
)
HOOK = "/cds-services/twitching-red-flags"
TOKEN = "e2e-token-5d1c"
QR_BENIGN = EXAMPLES / "motor-neuron-red-flags" / "near-miss-no-weakness.json"
QR_RED_FLAG = EXAMPLES / "motor-neuron-red-flags" / "fires-weakness.json"


@dataclass
class Patient:
    """One patient on the server: its id there and its resources as the server holds them."""

    id: str
    resources: list[dict[str, Any]]


@dataclass
class Medplum:
    """A running server and the patients loaded into it (by Synthea record name or example path)."""

    base: str
    patients: dict[str, Patient]

    def put(self, resource: dict[str, Any]) -> None:
        """Create or replace one resource."""
        url = f"{self.base}/{resource['resourceType']}/{resource['id']}"
        response = requests.put(url, json=resource, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
        assert response.status_code in (200, 201), response.text

    def delete(self, resource: dict[str, Any]) -> None:
        """Remove one resource if it is there."""
        url = f"{self.base}/{resource['resourceType']}/{resource['id']}"
        response = requests.delete(url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
        assert response.status_code in (200, 204, 404), response.text


def _start(node: str) -> tuple[subprocess.Popen[str], str]:
    process = subprocess.Popen(
        [node, "server.mjs", "--token", TOKEN],
        cwd=RUN_DIR,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], 60)
    line = process.stdout.readline() if ready else ""
    if not line:
        process.kill()
        _, err = process.communicate(timeout=10)
        pytest.fail(f"the Medplum FHIR server did not start: {err[-2000:]}")
    return process, str(orjson.loads(line)["base"])


def _transaction(base: str, bundle: dict[str, Any]) -> dict[str, Any]:
    response = requests.post(base, json=bundle, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60)
    assert response.status_code == 200, response.text[:2000]
    answer: dict[str, Any] = response.json()
    statuses = [e["response"]["status"] for e in answer["entry"]]
    assert all(s.startswith("2") for s in statuses), statuses
    return answer


def _rewrite_references(value: Any, mapping: dict[str, str]) -> Any:
    if isinstance(value, dict):
        return {
            k: mapping.get(v, v)
            if k == "reference" and isinstance(v, str)
            else _rewrite_references(v, mapping)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_rewrite_references(v, mapping) for v in value]
    return value


def _load_synthea(base: str, path: Path) -> Patient:
    """POST the record as it is; the server assigns ids and resolves its urn:uuid references."""
    bundle = load_json(path)
    answer = _transaction(base, bundle)
    # Location is Type/id[/_history/v]; the response entries follow the request entries.
    mapping = {
        e["fullUrl"]: "/".join(a["response"]["location"].split("/")[:2])
        for e, a in zip(bundle["entry"], answer["entry"], strict=True)
    }
    resources = []
    for entry in bundle["entry"]:
        resource = _rewrite_references(entry["resource"], mapping)
        resource["id"] = mapping[entry["fullUrl"]].split("/")[1]
        resources.append(resource)
    patient = next(r for r in resources if r["resourceType"] == "Patient")
    return Patient(patient["id"], resources)


def _load_example(base: str, path: Path) -> Patient:
    """PUT the example with ids made unique to it (examples reuse ids such as qr-1)."""
    prefix = hashlib.sha256(str(path.relative_to(EXAMPLES)).encode()).hexdigest()[:8]
    resources = [e["resource"] for e in load_json(path)["entry"]]
    mapping = {f"{r['resourceType']}/{r['id']}": f"{r['resourceType']}/{prefix}-{r['id']}" for r in resources}
    renamed = []
    for resource in resources:
        resource = _rewrite_references(resource, mapping)
        resource["id"] = f"{prefix}-{resource['id']}"
        renamed.append(resource)
    entries = [
        {"resource": r, "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"}}
        for r in renamed
    ]
    _transaction(base, {"resourceType": "Bundle", "type": "transaction", "entry": entries})
    patient = next(r for r in renamed if r["resourceType"] == "Patient")
    return Patient(patient["id"], renamed)


@pytest.fixture(scope="session")
def node() -> str:
    """The node binary, the server copied to RUN_DIR with its packages (npm ci when they are missing)."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("node and npm are needed to run the Medplum FHIR server of tests/fhir_server")
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    for name in ("package.json", "package-lock.json", "server.mjs"):
        shutil.copyfile(SERVER_DIR / name, RUN_DIR / name)  # every session: edits to server.mjs count
    if not (RUN_DIR / "node_modules" / "@medplum" / "fhir-router").is_dir():
        installed = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund"],
            cwd=RUN_DIR,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        if installed.returncode != 0:
            pytest.fail(f"npm ci failed in tests/fhir_server:\n{installed.stderr[-3000:]}")
    return node


@contextmanager
def _serving(node: str) -> Iterator[str]:
    process, base = _start(node)
    try:
        yield base
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# Two servers: the in-memory search scans every resource of a type (about 1 ms per Observation),
# so the example patients get a server of their own instead of sharing Synthea's 400 Observations.
@pytest.fixture(scope="module")
def synthea(node: str) -> Iterator[Medplum]:
    """A server holding the six Synthea records, loaded as their transaction Bundles."""
    records = sorted(shared("fhir", "synthea").glob("*.json"))
    with _serving(node) as base:
        yield Medplum(base, {p.name.rsplit("_", 1)[0]: _load_synthea(base, p) for p in records})


@pytest.fixture(scope="module")
def examples(node: str) -> Iterator[Medplum]:
    """A server holding every fhir_examples patient."""
    with _serving(node) as base:
        paths = sorted(EXAMPLES.glob("*/*.json"))
        yield Medplum(base, {str(p.relative_to(EXAMPLES)): _load_example(base, p) for p in paths})


def _client(medplum: Medplum, **config: Any) -> FlaskClient:
    settings: dict[str, Any] = {
        "TESTING": True,
        "TODAY": EXAMPLE_DAY,
        "ENV": "development",
        "FHIR_SERVER_ALLOWLIST": [medplum.base],
        # Generous: these tests compare answers; test_fhir_fallback.py times the budget.
        "FHIR_FETCH_BUDGET_SECONDS": 15.0,
    }
    settings.update(config)
    return create_app(settings).test_client()


def _with_prefetch(patient: Patient) -> dict[str, Any]:
    """The call an EHR that fills every template sends."""
    return bundle_to_hook_request({"entry": [{"resource": r} for r in patient.resources]})


def _server_only(patient: Patient, base: str, token: str = TOKEN) -> dict[str, Any]:
    """The same call with no prefetch: fhirServer and a token only."""
    return server_only(_with_prefetch(patient), base, token)


def _cards(client: FlaskClient, call: dict[str, Any]) -> list[dict[str, Any]]:
    response = client.post(hook_url(call["hook"]), json=call)
    assert response.status_code == 200, response.get_data(as_text=True)[:2000]
    return list(response.get_json()["cards"])


def _assessment(patient: Patient, example: Path) -> dict[str, Any]:
    """The example's QuestionnaireResponse, given to this patient (one per patient: a fixed id)."""
    response: dict[str, Any] = next(
        copy.deepcopy(e["resource"])
        for e in load_json(example)["entry"]
        if e["resource"]["resourceType"] == "QuestionnaireResponse"
    )
    response["id"] = f"twitch-{patient.id}"[:64]
    response["subject"] = {"reference": f"Patient/{patient.id}"}
    return response


@pytest.mark.parametrize(
    "example", [None, QR_BENIGN, QR_RED_FLAG], ids=["no-assessment", "benign", "red-flag"]
)
def test_synthea_records_give_the_same_cards(
    synthea: Medplum, client: FlaskClient, example: Path | None
) -> None:
    """Each Synthea record, with no, a benign or a red-flag assessment: prefetch == fetch."""
    fetching = _client(synthea)
    for name, record in synthea.patients.items():
        patient = Patient(record.id, list(record.resources))
        assessment = _assessment(patient, example or QR_BENIGN)
        if example is None:
            synthea.delete(assessment)  # another test may have given this patient one
        else:
            synthea.put(assessment)
            patient.resources.append(assessment)
        expected = _cards(client, _with_prefetch(patient))
        fetched = _cards(fetching, _server_only(patient, synthea.base))
        assert signature(fetched) == signature(expected), name
        if example is None:
            assert fetched == [], name
        elif example == QR_RED_FLAG and card_rules(expected) != [topic("under-16")]:
            assert fetched[0]["indicator"] == "critical", name


def test_every_example_gives_the_same_cards(examples: Medplum, client: FlaskClient) -> None:
    """Every fhir_examples patient (labs, coded findings, orders, answers): prefetch == fetch."""
    fetching = _client(examples)
    differing = []
    for name, patient in examples.patients.items():
        expected = signature(_cards(client, _with_prefetch(patient)))
        fetched = signature(_cards(fetching, _server_only(patient, examples.base)))
        declared = yaml.safe_load((EXAMPLES / name).with_suffix(".expect.yaml").read_text()).get(
            "when_fetched"
        )
        if declared is not None:
            # The example says why a fetch sees less than its prefetch, and what the fetch then gives.
            assert [topic(r) for r in declared["cards"]] == [t for t, _, _ in fetched], name
            continue
        if fetched != expected:
            differing.append(f"{name}: prefetch {expected} != fetched {fetched}")
    assert differing == []
    assert len(examples.patients) >= 100


def test_paging_through_the_real_server(synthea: Medplum, client: FlaskClient) -> None:
    """Three results a page: the fetch follows Medplum's next links and still gives the same cards."""
    record = synthea.patients["Angelic_Mueller"]
    assessment = _assessment(record, QR_BENIGN)
    synthea.put(assessment)
    patient = Patient(record.id, [*record.resources, assessment])
    expected = _cards(client, _with_prefetch(patient))
    assert card_rules(expected) == [topic("lab-abnormal-kidney-function")]
    paging = _client(synthea, FHIR_FETCH_PAGE_SIZE=3)
    assert signature(_cards(paging, _server_only(patient, synthea.base))) == signature(expected)


def test_page_cap_on_the_real_server(examples: Medplum) -> None:
    """One result a page, one page allowed: the cards come with the warning that data may be missing."""
    capped = _client(examples, FHIR_FETCH_PAGE_SIZE=1, FHIR_FETCH_MAX_PAGES=1)
    patient = examples.patients["lab-low-potassium/fires-low-potassium-full-panel.json"]
    cards = _cards(capped, _server_only(patient, examples.base))
    assert card_rules(cards)[-1] == "dataquality"
    assert "stopped at FHIR\\_FETCH\\_MAX\\_PAGES (1)" in cards[-1]["detail"]  # Markdown-escaped


def test_order_sign_with_fetched_data(examples: Medplum, client: FlaskClient) -> None:
    """order-sign with a drafted EMG: fetched data and the draft give the prefetch call's cards."""
    patient = examples.patients["motor-neuron-red-flags/fires-weakness.json"]
    emg = {
        "resourceType": "ServiceRequest",
        "id": "draft-emg",
        "status": "draft",
        "intent": "order",
        "subject": {"reference": f"Patient/{patient.id}"},
        "code": {"coding": [{"system": "http://www.ama-assn.org/go/cpt", "code": "95886"}]},
    }
    calls = [_with_prefetch(patient), _server_only(patient, examples.base)]
    for call in calls:
        call["hook"] = "order-sign"
        call["context"]["draftOrders"] = {
            "resourceType": "Bundle",
            "type": "collection",
            "entry": [{"resource": emg}],
        }
    expected, fetched = _cards(client, calls[0]), _cards(_client(examples), calls[1])
    assert signature(fetched) == signature(expected)
    assert signature(fetched) == [(topic("motor-neuron-red-flags"), "critical", ["308474002"])]


def test_wrong_token_is_412(examples: Medplum) -> None:
    """The server refuses the token: 412 names each required key and the 401, never the token."""
    patient = examples.patients["motor-neuron-red-flags/fires-weakness.json"]
    call = _server_only(patient, examples.base, token="not-the-token")
    response = _client(examples).post(HOOK, json=call)
    assert response.status_code == 412
    issues = response.get_json()["issue"]
    assert [i["expression"] for i in issues] == [
        ["prefetch.patient"],
        ["prefetch.observations"],
        ["prefetch.questionnaireResponses"],
    ]
    assert all("refused the access token" in i["diagnostics"] and i["code"] == "login" for i in issues)
    assert "not-the-token" not in response.get_data(as_text=True)


def test_the_real_server_applies_the_template_filters(synthea: Medplum) -> None:
    """What Medplum answers to the templates: only the codes and statuses asked for."""
    templates = prefetch_templates(load_ruleset(ROOT / "rules").reference)
    settings = {**load_config(), "ENV": "development", "FHIR_SERVER_ALLOWLIST": [synthea.base]}
    fetcher = FhirFetcher(FetchSettings.from_config(settings), templates)
    record = synthea.patients["Hunter_Herman"]
    fetched = fetcher.fetch(synthea.base, TOKEN, record.id, list(KEY_TYPES), time.perf_counter() + 15)
    assert fetched.failures == {}
    assert fetched.values["patient"]["id"] == record.id
    asked = set(templates["observations"].split("code=", 1)[1].split(","))
    observations = [e["resource"] for e in fetched.values["observations"].get("entry", [])]
    on_record = [r for r in record.resources if r["resourceType"] == "Observation"]
    assert 0 < len(observations) < len(on_record)  # filtered by code on the server, not here
    for observation in observations:
        assert observation["subject"] == {"reference": f"Patient/{record.id}"}
        codings = observation["code"]["coding"]
        # Lab codes are asked for without their system, findings with it.
        assert ({f"{c['system']}|{c['code']}" for c in codings} | {c["code"] for c in codings}) & asked
    # An entered-in-error assessment is not what the status filter asks for: the server leaves it out.
    voided = _assessment(record, QR_BENIGN)
    voided["id"], voided["status"] = f"void-{record.id}"[:64], "entered-in-error"
    synthea.put(voided)
    try:
        again = fetcher.fetch(
            synthea.base, TOKEN, record.id, ["questionnaireResponses"], time.perf_counter() + 15
        )
    finally:
        synthea.delete(voided)
    ids = [e["resource"]["id"] for e in again.values["questionnaireResponses"].get("entry", [])]
    assert voided["id"] not in ids


def test_a_paged_prefetch_is_read_whole_from_the_server(examples: Medplum, client: FlaskClient) -> None:
    """Prefetch holds page 1 with a next link; the newest potassium is only on the server: it is used."""
    patient = examples.patients["lab-low-potassium/near-miss-at-lower-limit.json"]
    newest = {
        "resourceType": "Observation",
        "id": f"{patient.id}-k-newest",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "2823-3"}]},
        "subject": {"reference": f"Patient/{patient.id}"},
        "effectiveDateTime": "2026-11-21",
        "valueQuantity": {
            "value": 2.3,
            "unit": "mmol/L",
            "system": "http://unitsofmeasure.org",
            "code": "mmol/L",
        },
    }
    examples.put(newest)
    try:
        call = _with_prefetch(patient)  # page 1: without the newest result
        call["prefetch"]["observations"]["link"] = [
            {"relation": "next", "url": f"{examples.base}/Observation?patient={patient.id}&_offset=1"}
        ]
        with_server = {**server_only(call, examples.base, TOKEN), "prefetch": call["prefetch"]}
        cards = _cards(_client(examples), with_server)
        assert card_rules(cards)[0] == topic("lab-low-potassium")
        assert cards[0]["indicator"] == "critical"
        assert "Potassium: **2.3 mmol/L" in cards[0]["detail"]
        # Without a readable fhirServer the same page says it is incomplete and nothing reassures.
        alone = _cards(client, call)
        assert card_rules(alone) == ["dataquality"]
    finally:
        examples.delete(newest)
