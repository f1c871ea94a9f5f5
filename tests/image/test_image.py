"""The container image, built and run as deploy/k8s/ runs it, on a real Docker engine (`make image-test`).

The engine is the machine's, or Debian's dockerd started here without iptables or a bridge (so
nothing leaves loopback: builds and containers use the host network, and the service binds
127.0.0.1 only). Where `python:3.11-slim` cannot be pulled, tests/image/standin-base.sh makes a
stand-in from Debian's packages. The container gets the Deployment's env (ConfigMap, Secret and
its own), user, read-only root with tmpfs where the pod has emptyDir volumes, CPU and memory
limits, and its probes; the Secret's placeholders and the ConfigMap's hospital URLs are replaced
by this machine's PostgreSQL, Redis and a loopback key server, and nothing else is changed.
Measured figures go to test-artifacts/image.json.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
import yaml

from service.config import DEFAULTS
from tests.conftest import EXAMPLE_DAY, ROOT
from tests.trust.conftest import POSTGRES_URL, REDIS_URL, KeyServer, bearer, hook_body, mint, rsa_key

pytestmark = pytest.mark.image

HERE = Path(__file__).resolve().parent
IMAGE = "twitch-cds:image-test"
SERVICE = "/cds-services/twitching-red-flags"
ARTIFACTS = ROOT / "test-artifacts"
DEFAULT_CANONICAL = str(DEFAULTS["CANONICAL_BASE"][0])
FIGURES: dict[str, Any] = {}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Engine:
    """A Docker engine: the environment its client needs, and whether this test started it."""

    env: dict[str, str]
    started: bool

    def run(
        self, *args: str, timeout: float = 120, check: bool = True, **kw: Any
    ) -> subprocess.CompletedProcess[str]:
        """`docker ARGS`, its output as text."""
        env = {**self.env, **kw.pop("env", {})}
        return subprocess.run(
            ["docker", *args], env=env, capture_output=True, text=True, timeout=timeout, check=check, **kw
        )


def _answers(env: dict[str, str]) -> bool:
    try:
        return subprocess.run(["docker", "info"], env=env, capture_output=True, timeout=20).returncode == 0
    except subprocess.TimeoutExpired:
        return False


@pytest.fixture(scope="session")
def engine() -> Iterator[Engine]:
    """The running engine, or Debian's dockerd started on its own socket and stopped afterwards."""
    if not shutil.which("docker"):
        pytest.skip("no docker client: apt-get install docker.io (make image-deps does, as root)")
    env = dict(os.environ)
    if _answers(env):
        yield Engine(env, started=False)
        return
    dockerd = shutil.which("dockerd")
    if not dockerd or os.geteuid() != 0:
        pytest.skip(
            "no Docker engine runs and none can be started here (needs root and dockerd from docker.io)"
        )
    state = Path(tempfile.mkdtemp(prefix="twitch-cds-dockerd-"))
    socket_path = state / "docker.sock"
    env["DOCKER_HOST"] = f"unix://{socket_path}"
    log = (state / "dockerd.log").open("wb")
    # No iptables and no bridge: containers get no network of their own, only the host's loopback.
    daemon = subprocess.Popen(
        [
            dockerd,
            "--iptables=false",
            "--bridge=none",
            f"--host=unix://{socket_path}",
            f"--exec-root={state / 'exec'}",
            f"--pidfile={state / 'dockerd.pid'}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        while not _answers(env):
            if daemon.poll() is not None or time.monotonic() > deadline:
                tail = (state / "dockerd.log").read_text(errors="replace")[-2000:]
                pytest.skip(f"dockerd could not be started here: {tail}")
            time.sleep(0.5)
        yield Engine(env, started=True)
    finally:
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(timeout=60)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait()
        log.close()
        # dockerd leaves its exec root's netns/default bind-mounted: unmount before removing.
        for line in Path("/proc/mounts").read_text().splitlines():
            point = line.split()[1]
            if point.startswith(f"{state}/"):
                subprocess.run(["umount", point], check=False)
        shutil.rmtree(state)


def _base_image() -> str:
    """The image the Dockerfile builds FROM (both stages use the same)."""
    bases: set[str] = set(re.findall(r"^FROM (\S+)", (ROOT / "Dockerfile").read_text(), re.M))
    assert len(bases) == 1, bases
    return bases.pop()


@pytest.fixture(scope="session")
def base(engine: Engine) -> str:
    """The Dockerfile's base: present, pulled, or the Debian stand-in (cached between runs)."""
    name = _base_image()
    inspect = engine.run(
        "image", "inspect", "-f", '{{index .Config.Labels "org.twitch-cds.standin"}}', name, check=False
    )
    if inspect.returncode == 0 and not inspect.stdout.strip():
        FIGURES["base"] = f"{name} (the real image)"
        return name
    if inspect.returncode != 0:
        pulled = engine.run("pull", name, check=False, timeout=600)
        if pulled.returncode == 0:
            FIGURES["base"] = f"{name} (pulled)"
            return name
        FIGURES["pull"] = pulled.stderr.strip()[-300:]
    assert shutil.which("debootstrap"), (
        f"{name} cannot be pulled and debootstrap is missing (make image-deps)"
    )
    started = time.monotonic()
    made = subprocess.run(
        [str(HERE / "standin-base.sh"), name], env=engine.env, capture_output=True, text=True, timeout=1800
    )
    assert made.returncode == 0, made.stdout + made.stderr
    FIGURES["base"] = f"{name}: stand-in from Debian bookworm's python3.11 ({made.stdout.strip()})"
    FIGURES["base_seconds"] = round(time.monotonic() - started, 1)
    return name


@pytest.fixture(scope="session")
def image(engine: Engine, base: str) -> Iterator[str]:
    """The project's Dockerfile, built as it is (host network: the engine has no bridge)."""
    started = time.monotonic()
    built = engine.run("build", "--network", "host", "-t", IMAGE, str(ROOT), check=False, timeout=1800)
    assert built.returncode == 0, (built.stdout + built.stderr)[-4000:]
    FIGURES["build_seconds"] = round(time.monotonic() - started, 1)
    FIGURES["image_mb"] = round(int(engine.run("image", "inspect", "-f", "{{.Size}}", IMAGE).stdout) / 1e6)
    yield IMAGE
    engine.run("rmi", IMAGE, check=False)


# --- the pod, as deploy/k8s/ describes it -----------------------------------------------------


def _k8s() -> dict[str, Any]:
    documents = {}
    for path in sorted((ROOT / "deploy" / "k8s").glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            if document and document.get("kind") != "Kustomization":
                documents[document["kind"]] = document
    return documents


@dataclass
class Pod:
    """A running container configured as the Deployment's pod; `base` is its loopback URL."""

    engine: Engine
    name: str
    base: str
    container: dict[str, Any]
    ready_seconds: float
    key: Any
    jku: str
    audience_base: str
    cpus: str
    started_at: float

    def logs(self) -> str:
        """Everything the container printed so far."""
        done = self.engine.run("logs", self.name, check=False)
        return done.stdout + done.stderr

    def exec(self, *command: str) -> subprocess.CompletedProcess[str]:
        """A command in the container, as its user."""
        return self.engine.run("exec", self.name, *command, check=False, timeout=60)


def _get(url: str, headers: dict[str, str] | None = None, body: bytes | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return int(answer.status), answer.read()
    except urllib.error.HTTPError as error:
        return int(error.code), error.read()


def _probe(url: str) -> bool:
    """A Kubernetes httpGet probe: success is a status from 200 to 399."""
    try:
        return 200 <= _get(url)[0] < 400
    except OSError:
        return False


def _resources_to_docker(resources: dict[str, Any]) -> list[str]:
    limits = resources["limits"]
    memory = re.fullmatch(r"(\d+)Mi", limits["memory"])
    assert memory, limits["memory"]
    return ["--cpus", str(limits["cpu"]), "--memory", f"{memory.group(1)}m"]


def _start_pod(engine: Engine, image: str, cpus: str | None = None) -> Pod:
    """docker run with the Deployment's env, user, sandbox, volumes and limits; waits as its probes do."""
    k8s = _k8s()
    pod = k8s["Deployment"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    port = _free_port()
    env: dict[str, str] = {**k8s["ConfigMap"]["data"]}
    # The Secret's placeholders name hosts that do not exist here: this machine's services instead.
    schema = f"twitch_cds_image_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(POSTGRES_URL, autocommit=True, connect_timeout=3) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    secret = {
        "TWITCH_CDS_DATABASE_URL": f"{POSTGRES_URL}?options=-csearch_path%3D{schema}",
        "TWITCH_CDS_REDIS_URL": REDIS_URL,
        "TWITCH_CDS_PATIENT_HASH_SECRET": secrets.token_urlsafe(32),
    }
    assert set(secret) == set(k8s["Secret"]["stringData"])
    env.update(secret)
    # The ConfigMap's issuer is the hospital's Epic: a loopback key server stands in for its JWKS.
    key = rsa_key("epic-image-test", with_alg=False)
    keys = KeyServer()
    name = f"twitch-cds-image-test-{uuid.uuid4().hex[:8]}"
    _CLEANUP.append((name, keys, schema))  # removed by the pod fixture, however this start ends
    issuer = json.loads(env["TWITCH_CDS_ISSUERS"])[0]
    jku = keys.publish("/jwks", key.jwk)
    env["TWITCH_CDS_ISSUERS"] = json.dumps([{**issuer, "jku": [jku]}])
    env["TWITCH_CDS_FHIR_SERVER_ALLOWLIST"] = "[]"  # prefetch is complete: nothing to fetch, nowhere to go
    env["TWITCH_CDS_REDIS_PREFIX"] = f"twitch-cds-image-{uuid.uuid4().hex[:8]}:"
    env["TWITCH_CDS_TODAY"] = EXAMPLE_DAY  # the examples' answers are dated for this day
    # Loopback only: the host network is shared, so the pod's 0.0.0.0:8080 becomes 127.0.0.1:<free>.
    env["TWITCH_CDS_BIND"] = f"127.0.0.1:{port}"
    env.update({e["name"]: e["value"] for e in container["env"]})
    security = pod["securityContext"]
    command = ["run", "--detach", "--name", name, "--network", "host"]
    command += ["--user", f"{security['runAsUser']}:{security['runAsGroup']}"]
    command += ["--group-add", str(security["fsGroup"])]
    if container["securityContext"]["readOnlyRootFilesystem"]:
        command.append("--read-only")
    if container["securityContext"]["allowPrivilegeEscalation"] is False:
        command += ["--security-opt", "no-new-privileges"]
    command += [f"--cap-drop={c}" for c in container["securityContext"]["capabilities"]["drop"]]
    volumes = {v["name"]: v for v in pod["volumes"]}
    for mount in container["volumeMounts"]:  # each emptyDir: a tmpfs of its size limit, mode 0777
        size = volumes[mount["name"]]["emptyDir"]["sizeLimit"]
        command += [
            "--mount",
            f"type=tmpfs,destination={mount['mountPath']},tmpfs-size={size[:-2]}m,tmpfs-mode=0777",
        ]
    limits = dict(container["resources"])
    if cpus is not None:
        limits = {"limits": {**limits["limits"], "cpu": cpus}}
    command += _resources_to_docker(limits)
    for variable in env:
        command += ["--env", variable]  # the value comes from the client's environment (JSON has newlines)
    command.append(image)
    started = time.monotonic()
    engine.run(*command, env=env)
    base = f"http://127.0.0.1:{port}"
    # startupProbe: /healthz every periodSeconds, up to failureThreshold times; then readiness.
    startup = container["startupProbe"]
    for _ in range(startup["failureThreshold"] * startup["periodSeconds"] * 10):
        if _probe(base + startup["httpGet"]["path"]) and _probe(
            base + container["readinessProbe"]["httpGet"]["path"]
        ):
            break
        state = engine.run("inspect", "-f", "{{.State.Status}}", name, check=False).stdout.strip()
        assert state == "running", (
            f"the container stopped: {engine.run('logs', name, check=False).stderr[-4000:]}"
        )
        time.sleep(0.1)
    else:
        pytest.fail(f"not ready within the startup probe's budget: {engine.run('logs', name).stderr[-4000:]}")
    ready = time.monotonic() - started
    audience = env["TWITCH_CDS_PUBLIC_BASE_URL"]
    return Pod(
        engine, name, base, container, ready, key, jku, audience, str(limits["limits"]["cpu"]), started
    )


_CLEANUP: list[tuple[str, KeyServer, str]] = []


@pytest.fixture(scope="module")
def pod(engine: Engine, image: str) -> Iterator[Pod]:
    """The pod of deploy/k8s/deployment.yaml, running (removed afterwards, its schema dropped)."""
    for url, what in ((POSTGRES_URL, "PostgreSQL"), (REDIS_URL, "Redis")):
        try:
            if what == "Redis":
                redis.Redis.from_url(url, socket_connect_timeout=1).ping()
            else:
                psycopg.connect(url, connect_timeout=2).close()
        except (redis.RedisError, psycopg.Error) as error:
            pytest.skip(f"{what} is not reachable at {url} ({type(error).__name__}): the pod needs it")
    try:
        started = _start_pod(engine, image)
        FIGURES["ready_seconds"] = round(started.ready_seconds, 2)
        yield started
    finally:
        _clean_up(engine)


def _clean_up(engine: Engine) -> None:
    while _CLEANUP:
        name, keys, schema = _CLEANUP.pop()
        engine.run("rm", "--force", name, check=False)
        keys.close()
        with psycopg.connect(POSTGRES_URL, autocommit=True, connect_timeout=3) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


# --- what a pod must do ------------------------------------------------------------------------


def test_the_image_is_non_root_with_the_dockerfiles_command(engine: Engine, image: str) -> None:
    """uid 10001, gunicorn -c gunicorn.conf.py, a HEALTHCHECK; its size is recorded."""
    config = json.loads(engine.run("image", "inspect", "-f", "{{json .Config}}", image).stdout)
    assert config["User"] == "10001"
    assert config["Cmd"] == ["gunicorn", "-c", "gunicorn.conf.py"]
    assert config["Healthcheck"]["Test"] == ["CMD", "python", "-m", "service.healthcheck"]


def test_probes_answer_and_the_sandbox_holds(pod: Pod) -> None:
    """/healthz and /readyz answer; the process runs as 10001 on a read-only root; no traceback."""
    status, body = _get(pod.base + "/healthz")
    assert status == 200
    assert json.loads(body)["rules"] > 0
    status, body = _get(pod.base + "/readyz")
    assert status == 200
    assert json.loads(body)["database"] == "ok"
    assert pod.exec("id", "-u").stdout.strip() == "10001"
    refused = pod.exec("touch", "/app/written")
    assert refused.returncode != 0
    assert "Read-only file system" in refused.stderr
    assert pod.exec("ls", "/tmp/metrics").returncode == 0  # PROMETHEUS_MULTIPROC_DIR on the empty /tmp
    assert "Traceback" not in pod.logs()


def test_a_signed_hook_call_returns_cards(pod: Pod) -> None:
    """A patient-view call with an RS384 JWT (as Epic signs) gets the critical card; unsigned gets 401."""
    # The answers follow the Questionnaire this deployment publishes, under its CANONICAL_BASE.
    canonical = _k8s()["ConfigMap"]["data"]["TWITCH_CDS_CANONICAL_BASE"]
    status, published = _get(pod.base + "/fhir/Questionnaire/twitching-assessment")
    assert status == 200
    assert json.loads(published)["url"].startswith(canonical + "/")
    body = json.dumps(hook_body()).replace(DEFAULT_CANONICAL, canonical).encode()
    json_type = {"Content-Type": "application/json"}
    status, _ = _get(pod.base + SERVICE, json_type, body)
    assert status == 401  # production: authentication is on
    iss = json.loads(_k8s()["ConfigMap"]["data"]["TWITCH_CDS_ISSUERS"])[0]["iss"]
    token = mint(pod.key, iss=iss, aud=pod.audience_base + SERVICE, headers={"jku": pod.jku})
    status, answer = _get(pod.base + SERVICE, {**json_type, **bearer(token)}, body)
    assert status == 200, pod.logs()[-3000:]
    cards = json.loads(answer)["cards"]
    assert any(c["indicator"] == "critical" for c in cards), cards
    FIGURES["hook_call"] = f"{status}, {len(cards)} cards"


def test_metrics_count_the_calls_across_workers(pod: Pod) -> None:
    """/metrics, summed over the workers from /tmp/metrics, shows the hook call."""
    status, text = _get(pod.base + "/metrics")
    assert status == 200
    metrics = text.decode()
    assert 'twitch_cds_hook_duration_seconds_count{hook="patient-view"} 1.0' in metrics
    assert (
        'twitch_cds_http_requests_total{method="POST",route="/cds-services/<service_id>",status="401"} 1.0'
        in metrics
    )


def test_one_worker_per_cpu_of_the_limit(pod: Pod) -> None:
    """TWITCH_CDS_WORKERS=0 and a 2-CPU limit: two workers (cgroup v1 or v2, whichever this host has)."""
    booted = re.findall(r"Booting worker with pid", pod.logs())
    assert len(booted) == min(int(pod.cpus), len(os.sched_getaffinity(0)))


def test_a_one_cpu_limit_starts_one_worker(engine: Engine, image: str, pod: Pod) -> None:
    """The same pod with a 1-CPU limit boots one worker (the quota is read on cgroup v1 too)."""
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("one CPU here: a 1-CPU limit would not change the worker count")
    small = _start_pod(engine, image, cpus="1")
    version = small.exec(
        "sh", "-c", "test -e /sys/fs/cgroup/cgroup.controllers && echo v2 || echo v1"
    ).stdout.strip()
    FIGURES["cgroup"] = version
    assert len(re.findall(r"Booting worker with pid", small.logs())) == 1
    engine.run("rm", "--force", small.name, check=False)


def test_the_healthcheck_turns_healthy(pod: Pod) -> None:
    """The image's own HEALTHCHECK (on TWITCH_CDS_BIND's port, not 8080) reports healthy."""
    interval = 30 + 10  # the Dockerfile's interval, and the first check's own time
    deadline = time.monotonic() + interval + 30
    while True:
        health = json.loads(pod.engine.run("inspect", "-f", "{{json .State.Health}}", pod.name).stdout)
        if health["Status"] == "healthy":
            break
        assert health["Status"] == "starting", health
        assert time.monotonic() < deadline, health
        time.sleep(1)
    FIGURES["healthy_after_start_seconds"] = round(time.monotonic() - pod.started_at, 1)
    assert health["Log"][-1]["ExitCode"] == 0


def test_sigterm_after_prestop_shuts_down_gracefully(pod: Pod) -> None:
    """preStop's sleep, then SIGTERM: gunicorn drains and exits 0 within terminationGracePeriodSeconds."""
    grace = _k8s()["Deployment"]["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    pre_stop = pod.container["lifecycle"]["preStop"]["exec"]["command"]
    assert pod.exec(*pre_stop).returncode == 0
    started = time.monotonic()
    pod.engine.run("stop", "--time", str(grace), pod.name, timeout=grace + 30)
    stopped = time.monotonic() - started
    state = json.loads(pod.engine.run("inspect", "-f", "{{json .State}}", pod.name).stdout)
    logs = pod.logs()
    assert state["ExitCode"] == 0, logs[-3000:]
    assert stopped < grace
    assert "Handling signal: term" in logs
    assert "Shutting down: Master" in logs
    FIGURES["sigterm_to_exit_seconds"] = round(stopped, 2)


@pytest.fixture(scope="module", autouse=True)
def _figures() -> Iterator[None]:
    """Write what was measured to test-artifacts/image.json."""
    yield
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "image.json").write_text(json.dumps(FIGURES, indent=2) + "\n")
