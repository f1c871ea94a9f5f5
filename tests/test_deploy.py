"""Deployment: the gunicorn command the image runs, /readyz, /metrics across workers, Kubernetes manifests."""

from __future__ import annotations

import json
import os
import re
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from flask import Flask

from service.app import create_app
from service.config import DEFAULTS
from service.store.db import Database
from tests.conftest import EXAMPLE_DAY, EXAMPLES, ROOT, load_json

K8S = ROOT / "deploy" / "k8s"
K8S_VERSION = "1.31"
SERVICE_URL = "/cds-services/twitching-red-flags"


def _dockerfile_cmd() -> list[str]:
    lines = [line for line in (ROOT / "Dockerfile").read_text().splitlines() if line.startswith("CMD ")]
    assert len(lines) == 1, "exactly one CMD"
    command: list[str] = json.loads(lines[0].removeprefix("CMD "))
    return command


# --- the image ------------------------------------------------------------------------------


def test_dockerfile_runs_the_gunicorn_configuration() -> None:
    """CMD is the exec form of `gunicorn -c gunicorn.conf.py`, the command the live test below runs."""
    assert _dockerfile_cmd() == ["gunicorn", "-c", "gunicorn.conf.py"]
    makefile = (ROOT / "Makefile").read_text()
    assert "$(BIN)/gunicorn -c gunicorn.conf.py" in makefile  # make run: the same configuration


def test_dockerfile_is_small_non_root_and_checks_health() -> None:
    """Two stages, a numeric non-root user, a HEALTHCHECK, and the files the service reads at run time."""
    text = (ROOT / "Dockerfile").read_text()
    assert len(re.findall(r"^FROM ", text, re.M)) == 2
    user = re.findall(r"^USER (\S+)", text, re.M)
    assert user
    assert user[-1] not in ("root", "0")
    assert "HEALTHCHECK" in text
    assert _healthcheck_cmd() == ["python", "-m", "service.healthcheck"]  # GET /healthz on BIND's port
    assert "--require-hashes -r requirements.txt" in text  # the locked runtime versions
    for needed in ("rules", "openapi.yaml", "gunicorn.conf.py", "fhir_examples", "requirements.txt"):
        assert needed in text
    ignored = (ROOT / ".dockerignore").read_text().split()
    kept = {"rules", "openapi.yaml", "gunicorn.conf.py", "fhir_examples", "service", "requirements.txt"}
    assert not kept & set(ignored)
    for variable in re.findall(r"TWITCH_CDS_([A-Z_]+)=", text):
        assert variable in DEFAULTS, f"the Dockerfile sets an unknown setting {variable}"


# --- readiness ------------------------------------------------------------------------------


def test_readyz_is_ready_with_rules_and_database(client: Any) -> None:
    """200 with the rule count when the database answers."""
    answer = client.get("/readyz")
    assert answer.status_code == 200
    assert answer.json["status"] == "ready"
    assert answer.json["rules"] > 0


def test_readyz_is_503_when_the_database_is_unreachable(app: Flask, monkeypatch: pytest.MonkeyPatch) -> None:
    """An OperationOutcome (transient) while the database cannot be reached; ready again after."""

    def unreachable(self: Database) -> Any:
        raise sqlite3.OperationalError("unable to open database file")

    monkeypatch.setattr(Database, "_connection", unreachable)
    client = app.test_client()
    answer = client.get("/readyz")
    assert answer.status_code == 503
    assert answer.mimetype == "application/fhir+json"
    outcome = answer.get_json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"][0]["code"] == "transient"
    assert client.get("/healthz").status_code == 200  # alive all the same: no restart
    monkeypatch.undo()
    assert client.get("/readyz").status_code == 200


# --- the hot path reads only the latest lab result ------------------------------------------


def _potassium(rid: str, day: str, value: Any, status: str = "final") -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": rid,
        "status": status,
        "code": {"coding": [{"system": "http://loinc.org", "code": "2823-3"}]},
        "subject": {"reference": "Patient/p1"},
        "effectiveDateTime": f"{day}T08:00:00Z",
        "valueQuantity": {
            "value": value,
            "unit": "mmol/L",
            "system": "http://unitsofmeasure.org",
            "code": "mmol/L",
        },
    }


def _answers() -> list[dict[str, Any]]:
    bundle = load_json(EXAMPLES / "motor-neuron-red-flags" / "fires-weakness.json")
    responses = [
        e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "QuestionnaireResponse"
    ]
    for response in responses:
        response["subject"] = {"reference": "Patient/p1"}
    return [{"resource": r} for r in responses]


def _hook_call(observations: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "hook": "patient-view",
        "hookInstance": "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea",
        "context": {"userId": "Practitioner/1", "patientId": "p1"},
        "prefetch": {
            "patient": {"resourceType": "Patient", "id": "p1", "gender": "female", "birthDate": "1970-01-01"},
            "observations": {
                "resourceType": "Bundle",
                "type": "searchset",
                "entry": [{"resource": o} for o in observations],
            },
            "questionnaireResponses": {"resourceType": "Bundle", "type": "searchset", "entry": _answers()},
        },
    }


def _data_card(cards: list[dict[str, Any]]) -> str:
    found = [c for c in cards if c["source"]["topic"]["code"] == "dataquality"]
    return str(found[0]["detail"]) if found else ""


def test_an_invalid_latest_result_is_reported_and_the_next_one_used(client: Any) -> None:
    """The newest potassium is invalid: listed on the data card, and the one before it judged."""
    observations = [
        _potassium("old", "2026-10-01", 2.9),
        _potassium("newest", "2026-11-20", [3.1]),  # an array: invalid FHIR JSON
        _potassium("older", "2026-11-01", 2.8),
    ]
    cards = client.post(SERVICE_URL, json=_hook_call(observations)).json["cards"]
    detail = _data_card(cards)
    assert "prefetch.observations.entry[1].resource.valueQuantity.value" in detail
    assert "entry[0]" not in detail
    assert "entry[2]" not in detail
    shown = json.dumps(cards)
    assert "Observation/older" in shown
    assert 'Observation/old"' not in shown


def test_older_results_are_not_validated_on_the_hook(client: Any) -> None:
    """An invalid result older than a usable one cannot change a card: it is not modelled or listed."""
    observations = [_potassium("broken-old", "2020-01-01", [2.0]), _potassium("latest", "2026-11-20", 2.9)]
    cards = client.post(SERVICE_URL, json=_hook_call(observations)).json["cards"]
    assert _data_card(cards) == ""
    assert "Observation/latest" in json.dumps(cards)


def test_an_unusable_latest_result_falls_back_and_keeps_its_warning(client: Any) -> None:
    """A newest result in a unit not converted here is reported, and the previous result is judged."""
    odd = _potassium("odd-unit", "2026-11-20", 3.0)
    odd["valueQuantity"].update(unit="furlongs", code="furlongs")
    observations = [_potassium("previous", "2026-11-01", 2.9), odd]
    cards = client.post(SERVICE_URL, json=_hook_call(observations)).json["cards"]
    assert "entry[1].resource.valueQuantity" in _data_card(cards)
    assert "Observation/previous" in json.dumps(cards)


def test_evaluate_still_lists_every_invalid_result(client: Any) -> None:
    """/evaluate validates every result it is sent (its callers want every problem)."""
    call = _hook_call(
        [_potassium("broken-old", "2020-01-01", [2.0]), _potassium("latest", "2026-11-20", 2.9)]
    )
    bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [{"resource": call["prefetch"]["patient"]}] + call["prefetch"]["observations"]["entry"],
    }
    answer = client.post("/evaluate", json=bundle)
    assert answer.status_code == 422
    assert "Bundle.entry[1].resource.valueQuantity.value" in answer.get_data(as_text=True)


# --- gunicorn with the image's command, two workers, metrics summed -------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def _serve(work: Path, **env_overrides: str) -> Iterator[tuple[str, Path]]:
    """The Dockerfile's CMD (its gunicorn from this virtualenv) on a free loopback port, until ready."""
    port = _free_port()
    command = _dockerfile_cmd()
    command[0] = str(Path(sys.executable).with_name(command[0]))
    log = work / "gunicorn.log"
    env = {
        **os.environ,
        "TWITCH_CDS_BIND": f"127.0.0.1:{port}",
        "TWITCH_CDS_WORKERS": "2",
        "TWITCH_CDS_INSTANCE_DIR": str(work / "instance"),
        "TWITCH_CDS_TODAY": EXAMPLE_DAY,
        "TWITCH_CDS_RATE_LIMIT_PER_MINUTE": "100000",
    }
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)  # gunicorn.conf.py makes its own unless told
    env.update(env_overrides)
    with log.open("wb") as out:
        server = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 30
            while True:
                assert server.poll() is None, log.read_text()
                try:
                    with urllib.request.urlopen(f"{base}/readyz", timeout=1) as answer:
                        if answer.status == 200:
                            break
                except OSError:
                    pass
                assert time.monotonic() < deadline, "gunicorn not ready in 30 s\n" + log.read_text()
                time.sleep(0.05)
            yield base, log
        finally:
            server.terminate()
            server.wait(timeout=30)


@pytest.fixture(scope="module")
def gunicorn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """The Dockerfile's CMD, two workers, development settings."""
    with _serve(tmp_path_factory.mktemp("gunicorn")) as served:
        yield served


def test_starts_with_the_manifests_metrics_dir_on_an_empty_tmp(tmp_path: Path) -> None:
    """deploy/k8s sets PROMETHEUS_MULTIPROC_DIR=/tmp/metrics on an empty /tmp: it is made before preload."""
    deployment = next(d for _, d in _manifests() if d["kind"] == "Deployment")
    env = {e["name"]: e["value"] for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    empty_tmp = tmp_path / "tmp"
    empty_tmp.mkdir()
    metrics = empty_tmp / Path(env["PROMETHEUS_MULTIPROC_DIR"]).relative_to("/tmp")
    with _serve(tmp_path, PROMETHEUS_MULTIPROC_DIR=str(metrics), TWITCH_CDS_WORKERS="1") as (base, _):
        text = urllib.request.urlopen(f"{base}/metrics", timeout=5).read().decode()
    assert 'route="/readyz"' in text
    assert list(metrics.glob("*.db"))  # the workers wrote their samples there


def _healthcheck_cmd() -> list[str]:
    """The exec form of the Dockerfile's HEALTHCHECK CMD."""
    text = (ROOT / "Dockerfile").read_text()
    found = re.search(r"^HEALTHCHECK [^\n]*\\\n\s*CMD (\[[^\n]*\])$", text, re.M)
    assert found, "a HEALTHCHECK in exec form"
    command: list[str] = json.loads(found.group(1))
    return command


def test_healthcheck_follows_the_bind_address(gunicorn: tuple[str, Path]) -> None:
    """The image's HEALTHCHECK checks the port TWITCH_CDS_BIND names, not a fixed 8080."""
    base, _ = gunicorn
    command = _healthcheck_cmd()
    assert command[0] == "python"
    command[0] = sys.executable
    bind = base.removeprefix("http://")
    healthy = subprocess.run(
        command, cwd=ROOT, env={**os.environ, "TWITCH_CDS_BIND": bind}, capture_output=True, timeout=30
    )
    assert healthy.returncode == 0, healthy.stderr
    # Bound on every address, checked on loopback.
    wildcard = {**os.environ, "TWITCH_CDS_BIND": "0.0.0.0:" + bind.rsplit(":", 1)[1]}
    assert subprocess.run(command, cwd=ROOT, env=wildcard, capture_output=True, timeout=30).returncode == 0
    nothing = {**os.environ, "TWITCH_CDS_BIND": f"127.0.0.1:{_free_port()}"}
    refused = subprocess.run(command, cwd=ROOT, env=nothing, capture_output=True, text=True, timeout=30)
    assert refused.returncode == 1
    assert "unhealthy" in refused.stderr


def _post(url: str, body: bytes) -> int:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as error:
        return int(error.code)


def _samples(text: str, name: str) -> dict[str, float]:
    return {
        m.group(1): float(m.group(2)) for m in re.finditer(rf"^{name}(\{{[^}}]*\}}) ([0-9.e+]+)$", text, re.M)
    }


def test_metrics_sum_hook_calls_across_workers(gunicorn: tuple[str, Path]) -> None:
    """Hook calls spread over two workers all show in /metrics, which holds no patient data."""
    base, log = gunicorn
    example = EXAMPLES / "motor-neuron-red-flags" / "fires-weakness.json"
    bundle = load_json(example)
    resources = [e["resource"] for e in bundle["entry"]]
    patient = next(r for r in resources if r["resourceType"] == "Patient")
    call = {
        "hook": "patient-view",
        "hookInstance": "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea",
        "context": {"userId": "Practitioner/1", "patientId": patient["id"]},
        "prefetch": {
            "patient": patient,
            "observations": {"resourceType": "Bundle", "type": "searchset", "entry": []},
            "questionnaireResponses": {
                "resourceType": "Bundle",
                "type": "searchset",
                "entry": [{"resource": r} for r in resources if r["resourceType"] == "QuestionnaireResponse"],
            },
        },
    }
    body = json.dumps(call).encode()
    calls = 40
    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(lambda _: _post(base + SERVICE_URL, body), range(calls)))
    assert statuses == [200] * calls
    with urllib.request.urlopen(f"{base}/metrics", timeout=5) as answer:
        assert answer.headers["Content-Type"].startswith("text/plain")
        text = answer.read().decode()
    requests = _samples(text, "twitch_cds_http_requests_total")
    assert requests['{method="POST",route="/cds-services/<service_id>",status="200"}'] == calls
    hooks = _samples(text, "twitch_cds_hook_duration_seconds_count")
    assert hooks['{hook="patient-view"}'] == calls
    cards = _samples(text, "twitch_cds_cards_total")
    assert cards['{indicator="critical",rule="motor-neuron-red-flags"}'] == calls
    assert patient["id"] not in text
    # Both workers answered (each pid writes its own file) and the sums above span them.
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    access = [entry for entry in lines if entry["logger"] == "gunicorn.access"]
    assert sum(1 for entry in access if entry["path"] == SERVICE_URL) == calls
    assert all(set(entry) >= {"method", "path", "status", "ms", "request_id"} for entry in access)


def test_metrics_are_per_process_without_gunicorn() -> None:
    """Without PROMETHEUS_MULTIPROC_DIR (tests, python -m service) the process's own registry is served."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        pytest.skip("this process runs in multiprocess mode")
    client = create_app({"TESTING": True}).test_client()
    client.get("/healthz")
    text = client.get("/metrics").get_data(as_text=True)
    assert 'twitch_cds_http_requests_total{method="GET",route="/healthz",status="200"}' in text


# --- Kubernetes -----------------------------------------------------------------------------


def _manifests() -> list[tuple[Path, dict[str, Any]]]:
    found = []
    for path in sorted(K8S.glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            if document and document.get("kind") != "Kustomization":
                found.append((path, document))
    return found


def test_manifests_validate_against_the_kubernetes_schemas() -> None:
    """Every manifest is valid for Kubernetes (strict: no unknown fields), offline."""
    kinds = set()
    for path, document in _manifests():
        try:
            kubernetes_validate.validate(document, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as error:
            pytest.fail(f"{path.name}: {error.message} at {list(error.path)}")
        kinds.add(document["kind"])
    assert kinds == {"ConfigMap", "Secret", "Deployment", "Service", "HorizontalPodAutoscaler"}
    listed = yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"]
    assert sorted(listed) == sorted(p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


def test_deployment_probes_limits_and_sandbox() -> None:
    """Probes on /healthz and /readyz, requests and limits, non-root, read-only root, emptyDir scratch."""
    deployment = next(d for _, d in _manifests() if d["kind"] == "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["ports"][0]["containerPort"] == 8080
    assert {"cpu", "memory"} <= set(container["resources"]["requests"])
    assert {"cpu", "memory"} <= set(container["resources"]["limits"])
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    env = {e["name"]: e.get("value") for e in container.get("env", ())}
    assert "emptyDir" in volumes[mounts[env["TWITCH_CDS_INSTANCE_DIR"]]]
    assert "emptyDir" in volumes[mounts["/tmp"]]  # Prometheus multiprocess files
    assert env["PROMETHEUS_MULTIPROC_DIR"].startswith("/tmp/")


def _quantity(text: str) -> int:
    units = {"Ki": 1024, "Mi": 1024**2, "Gi": 1024**3}
    for suffix, factor in units.items():
        if text.endswith(suffix):
            return int(text.removesuffix(suffix)) * factor
    return int(text)


def test_the_instance_volume_holds_every_workers_audit_spool() -> None:
    """sizeLimit >= AUDIT_SPOOL_MAX_BYTES x (workers + 2): an adopted and a dead worker's file too."""
    by_kind = {d["kind"]: d for _, d in _manifests()}
    pod = by_kind["Deployment"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    settings = by_kind["ConfigMap"]["data"]
    spool = int(settings.get("TWITCH_CDS_AUDIT_SPOOL_MAX_BYTES", DEFAULTS["AUDIT_SPOOL_MAX_BYTES"][0]))
    workers = int(settings["TWITCH_CDS_WORKERS"]) or int(container["resources"]["limits"]["cpu"])
    env = {e["name"]: e.get("value") for e in container.get("env", ())}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volume = next(v for v in pod["volumes"] if v["name"] == mounts[env["TWITCH_CDS_INSTANCE_DIR"]])
    assert _quantity(volume["emptyDir"]["sizeLimit"]) >= spool * (workers + 2)


def test_configmap_and_secret_hold_known_settings() -> None:
    """Settings in the ConfigMap, credentials only in the Secret, every name a real setting."""
    by_kind = {d["kind"]: d for _, d in _manifests()}
    settings = set(by_kind["ConfigMap"]["data"])
    secrets = set(by_kind["Secret"]["stringData"])
    assert secrets == {"TWITCH_CDS_DATABASE_URL", "TWITCH_CDS_REDIS_URL", "TWITCH_CDS_PATIENT_HASH_SECRET"}
    assert not settings & secrets
    for name in settings | secrets:
        if name.startswith("TWITCH_CDS_"):
            assert name.removeprefix("TWITCH_CDS_") in DEFAULTS, name
    json.loads(by_kind["ConfigMap"]["data"]["TWITCH_CDS_ISSUERS"])
    assert by_kind["ConfigMap"]["data"]["TWITCH_CDS_ENV"] == "production"


def test_the_warm_up_call_is_valid_and_complete(app: Flask) -> None:
    """The start-up dummy call touches every model and is valid FHIR (no data-quality card)."""
    from service.warmup import dummy_request

    body = dummy_request(app.extensions["evaluator"], app.config["CANONICAL_BASE"])
    cards = app.test_client().post(SERVICE_URL, json=body).get_json()["cards"]
    assert _data_card(cards) == ""
    assert {"patient", "observations", "questionnaireResponses", "conditions", "serviceRequests"} == set(
        body["prefetch"]
    )
