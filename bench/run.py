"""Latency benchmark: the service as deployed by gunicorn on loopback, wrk as the load, the field beside it.

The machines are shared and noisy, so a trivial baseline (GET /healthz: routing and JSON, no
rules, no authentication) is measured for 2 s right before every row, and each row is reported
as a ratio to it. The service runs as deployed, `gunicorn -c gunicorn.conf.py`, in the
development configuration (embedded defaults) and in the production one (ENV=production), where
every hook call and /evaluate carries a fresh JWT (RS384, as Epic signs, unless the scenario says
ES384; a pool of pre-signed tokens with distinct jti, rotated by wrk's Lua script; the key set is
served by a loopback http.server), its jti goes through the Redis replay cache, the rate limiter
counts it, and the audit trail records it. The field (bench/variants.py, bench/floor.py) is served
by the same gunicorn configuration with the same bodies.

The realistic call is sent again and again, as an EHR re-sends one patient's record on every chart
open: the validation memo serves its resources after the first call. The "every resource new"
row rewrites the id of every Observation, medicine and QuestionnaireResponse on each request (the
Patient's stays: the context names it), so the memo never helps with them: that is the cost of a
record the worker has not seen.
PUBLIC_BASE_URL is the https URL a TLS-terminating proxy would expose; gunicorn itself listens on
plain http on 127.0.0.1, as it would behind that proxy. The rate limit is raised: one issuer sends
all the load. Needs wrk, Redis (--redis-url) and the Synthea records in ../shared.

    python bench/run.py [--config both] [--seconds 5] [--connections 8] [--workers 2] [--runs 1]
                        [--only REGEX] [--no-field]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import http.server
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import redis
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from service.cdshooks.bundles import hook_request_for_bundle
from service.cdshooks.prefetch import prefetch_templates
from service.engine.reference import load_reference

ROOT = Path(__file__).resolve().parent.parent
SYNTHEA = ROOT.parent / "shared" / "fhir" / "synthea"
# An adult, alive, with the most Observations: every rule is evaluated (a child gets one card).
RECORD = "Angelic_Mueller_29d755a6-32fa-482e-8fdd-081300209df8.json"
RED_FLAG_EXAMPLE = ROOT / "fhir_examples" / "motor-neuron-red-flags" / "fires-weakness.json"
HOST = "127.0.0.1"
ISSUER = "https://ehr.bench.invalid"
PUBLIC_BASE_URL = "https://cds.bench.invalid"
HOOK_PATH = "/cds-services/twitching-red-flags"
# Most hook calls a second the two cores could conceivably answer: sizes the token pools.
MAX_RATE = 3200
# GET /healthz measured right before each row, the row's own baseline.
ADJACENT_SECONDS = 2
# In the "every resource new" body each resource id carries this mark, replaced per request.
MARK = "@@N@@"

LUA = """
local counter = 0
function setup(thread)
  thread:set("id", counter)
  counter = counter + 1
end
function init(args)
  tokens = {}
  for line in io.lines("%(dir)s/tokens-" .. id .. ".txt") do tokens[#tokens + 1] = line end
  local f = io.open("%(body)s", "rb")
  body = f:read("*a")
  f:close()
  i = 0
end
function request()
  i = i + 1
  -- Past the end of the pool a token is replayed and refused (401): it shows up as errors.
  local token = tokens[i] or tokens[#tokens]
  -- Plain find and replace: the mark is in the body only when every request must be new.
  local sent = body:gsub("%(mark)s", id .. "-" .. i)
  return wrk.format("POST", "%(path)s",
    {["Content-Type"] = "application/json", ["Authorization"] = "Bearer " .. token}, sent)
end
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class Scenario:
    """One row of the table: what is posted where, signed how."""

    name: str
    path: str
    body: dict[str, Any]
    alg: str = "RS384"


def _matches(resource: dict[str, Any], name: str, tokens: set[str]) -> bool:
    """A FHIR server's answer to one search parameter of the templates (code: token, status)."""
    if name == "code":
        codings = (resource.get("code") or {}).get("coding") or ()
        return any(c.get("code") in tokens or f"{c.get('system')}|{c.get('code')}" in tokens for c in codings)
    if name == "status":
        return resource.get("status") in tokens
    raise ValueError(f"the benchmark cannot answer the search parameter {name}")


def _prefetch(resources: list[dict[str, Any]], templates: dict[str, str], filtered: bool) -> dict[str, Any]:
    """Each discovery template answered from the record: as a FHIR server would (`filtered`), or
    with every resource of the template's type (an EHR that ignores the search parameters)."""
    patient = next(r for r in resources if r["resourceType"] == "Patient")
    prefetch: dict[str, Any] = {}
    for key, template in templates.items():
        kind, _, query = template.partition("?")
        if not query:
            prefetch[key] = patient
            continue
        found = [r for r in resources if r["resourceType"] == kind]
        for param in query.split("&"):
            name, _, value = param.partition("=")
            if filtered and name != "patient":
                found = [r for r in found if _matches(r, name, set(value.split(",")))]
        searchset: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset", "total": len(found)}
        if found:
            searchset["entry"] = [{"resource": r, "search": {"mode": "match"}} for r in found]
        prefetch[key] = searchset
    return prefetch


def _scenarios() -> list[Scenario]:
    """Realistic patient-view (also ES384, also all new), whole chart, 1,000 Observations, /evaluate.

    Realistic: each discovery template answered from one Synthea record as a FHIR server answers
    it (the Observations and Conditions whose codes the template lists, the medications and
    requests of the statuses it lists), plus a red-flag QuestionnaireResponse. Whole chart: every
    Observation, Condition and medication of the record, as an EHR that ignores the parameters
    sends them.
    """
    record = json.loads((SYNTHEA / RECORD).read_text())
    resources = [e["resource"] for e in record["entry"]]
    patient = next(r for r in resources if r["resourceType"] == "Patient")
    for resource in resources:
        if "subject" in resource or "patient" in resource:
            resource["subject" if "subject" in resource else "patient"] = {
                "reference": f"Patient/{patient['id']}"
            }
    response = next(
        e["resource"]
        for e in json.loads(RED_FLAG_EXAMPLE.read_text())["entry"]
        if e["resource"]["resourceType"] == "QuestionnaireResponse"
    )
    response["subject"] = {"reference": f"Patient/{patient['id']}"}
    observations = [r for r in resources if r["resourceType"] == "Observation"]

    templates = prefetch_templates(load_reference(ROOT / "rules" / "reference"))

    def call(chart: list[dict[str, Any]], answers: dict[str, Any], filtered: bool = True) -> dict[str, Any]:
        request = hook_request_for_bundle({"entry": [{"resource": patient}]}, "patient-view", templates)
        request["context"]["userId"] = "Practitioner/bench"
        request["prefetch"] = _prefetch([*chart, answers], templates, filtered)
        return request

    def marked(resource: dict[str, Any]) -> dict[str, Any]:
        return {**resource, "id": f"{resource['id']}-{MARK}"}

    many = []
    while len(many) < 1000:
        for obs in observations:
            clone = copy.deepcopy(obs)
            clone["id"] = f"{obs['id']}-{len(many)}"
            many.append(clone)
            if len(many) == 1000:
                break
    realistic = call(resources, response)
    found = realistic["prefetch"]["observations"]["total"]
    name = f"patient-view, realistic ({found} Observations + red-flag QR, {_kib(realistic)} KiB)"
    chart = call(resources, response, filtered=False)
    every_new = call([patient, *(marked(r) for r in resources if r is not patient)], marked(response))
    thousand = call([patient, *many], response, filtered=False)
    return [
        Scenario(name, HOOK_PATH, realistic),
        Scenario(f"{name}, ES384", HOOK_PATH, realistic, alg="ES384"),
        Scenario(f"{name}, every resource new", HOOK_PATH, every_new),
        Scenario(f"patient-view, whole chart (unfiltered, {_kib(chart)} KiB)", HOOK_PATH, chart),
        Scenario(f"patient-view, 1,000 Observations ({_kib(thousand)} KiB)", HOOK_PATH, thousand),
        Scenario(f"/evaluate (whole Synthea record, {len(resources)} resources)", "/evaluate", record),
    ]


def _kib(body: dict[str, Any]) -> int:
    return round(len(json.dumps(body, separators=(",", ":"))) / 1024)


class Keys:
    """An RS384 and an ES384 key whose JWK Set is served on loopback, and the tokens they sign."""

    def __init__(self) -> None:
        suffix = secrets.token_hex(4)
        self.private: dict[str, Any] = {
            "RS384": rsa.generate_private_key(public_exponent=65537, key_size=2048),
            "ES384": ec.generate_private_key(ec.SECP384R1()),
        }
        self.kid = {alg: f"bench-{alg.lower()}-{suffix}" for alg in self.private}
        published = [
            {**dict(RSAAlgorithm.to_jwk(self.private["RS384"].public_key(), as_dict=True)), "alg": "RS384"},
            {**dict(ECAlgorithm.to_jwk(self.private["ES384"].public_key(), as_dict=True)), "alg": "ES384"},
        ]
        body = json.dumps(
            {"keys": [{**jwk, "kid": self.kid[jwk["alg"]], "use": "sig"} for jwk in published]}
        ).encode()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer((HOST, 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.jwks_url = f"http://{HOST}:{self.server.server_port}/jwks.json"

    def token(self, audience: str, alg: str) -> str:
        """A fresh token: distinct jti, five minutes of life."""
        now = int(time.time())
        claims = {"iss": ISSUER, "sub": "bench", "aud": audience, "iat": now, "exp": now + 300}
        claims["jti"] = str(uuid.uuid4())
        return jwt.encode(claims, self.private[alg], algorithm=alg, headers={"kid": self.kid[alg]})

    def pool(self, audience: str, alg: str, count: int, workdir: Path, threads: int) -> None:
        """Write `count` tokens split over one file per wrk thread (a jti is never sent twice)."""
        for t in range(threads):
            lines = [self.token(audience, alg) for _ in range(count // threads)]
            (workdir / f"tokens-{t}.txt").write_text("\n".join(lines) + "\n")


def _wrk(url: str, seconds: int, connections: int, script: Path | None) -> dict[str, float]:
    command = ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", url]
    if script is not None:
        command[1:1] = ["-s", str(script)]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout

    def latency(label: str) -> float:
        match = re.search(rf"^\s+{label}%\s+([\d.]+)(us|ms|s)", out, re.M)
        if not match:
            return float("nan")
        scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[match.group(2)]
        return float(match.group(1)) * scale

    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    errors = int(non2xx.group(1)) if non2xx else 0
    if socket_errors:
        errors += sum(int(g) for g in socket_errors.groups())
    return {"rps": rps, "p50": latency("50"), "p99": latency("99"), "errors": errors}


def _worker_memory_mb(master_pid: int) -> list[tuple[float, float]]:
    """(RSS, PSS) of each worker: PSS shares the preloaded pages among the processes holding them."""
    children = subprocess.run(
        ["pgrep", "-P", str(master_pid)], capture_output=True, text=True, check=False
    ).stdout.split()
    sizes = []
    for pid in children:
        try:
            rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
        except OSError:
            continue
        rss = re.search(r"^Rss:\s+(\d+) kB", rollup, re.M)
        pss = re.search(r"^Pss:\s+(\d+) kB", rollup, re.M)
        if rss and pss:
            sizes.append((int(rss.group(1)) / 1024, int(pss.group(1)) / 1024))
    return sizes


def _environment(
    args: argparse.Namespace, port: int, keys: Keys, workdir: Path, config: str = "production"
) -> dict[str, str]:
    if config == "development":
        # The embedded defaults: no JWT, no Redis, audit in SQLite under the instance folder.
        return {
            **{k: v for k, v in os.environ.items() if not k.startswith("TWITCH_CDS_")},
            "TWITCH_CDS_BIND": f"{HOST}:{port}",
            "TWITCH_CDS_WORKERS": str(args.workers),
            "TWITCH_CDS_THREADS": str(args.threads),
            "TWITCH_CDS_INSTANCE_DIR": str(workdir / "instance"),
            "TWITCH_CDS_RATE_LIMIT_PER_MINUTE": str(10**9),
            "PROMETHEUS_MULTIPROC_DIR": str(workdir / "metrics"),
        }
    issuers = [{"iss": ISSUER, "jwks_url": keys.jwks_url, "algorithms": ["RS384", "ES384"]}]
    return {
        **os.environ,
        "TWITCH_CDS_ENV": "production",
        "TWITCH_CDS_BIND": f"{HOST}:{port}",
        "TWITCH_CDS_WORKERS": str(args.workers),
        "TWITCH_CDS_THREADS": str(args.threads),
        "TWITCH_CDS_ISSUERS": json.dumps(issuers),
        "TWITCH_CDS_PUBLIC_BASE_URL": PUBLIC_BASE_URL,
        "TWITCH_CDS_REDIS_URL": args.redis_url,
        "TWITCH_CDS_REDIS_PREFIX": f"twitch-cds-bench-{secrets.token_hex(4)}:",
        "TWITCH_CDS_PATIENT_HASH_SECRET": secrets.token_hex(32),
        "TWITCH_CDS_DATABASE_URL": args.database_url,
        "TWITCH_CDS_INSTANCE_DIR": str(workdir / "instance"),
        "TWITCH_CDS_RATE_LIMIT_PER_MINUTE": str(10**9),
        "PROMETHEUS_MULTIPROC_DIR": str(workdir / "metrics"),
    }


def _wait_ready(base: str, server: subprocess.Popen[bytes], started: float) -> float:
    while time.perf_counter() - started < 30:
        if server.poll() is not None:
            raise RuntimeError("gunicorn exited during start-up; see its log above")
        try:
            with urllib.request.urlopen(f"{base}/readyz", timeout=1) as answer:  # noqa: S310 (loopback)
                if answer.status == 200:
                    return time.perf_counter() - started
        except OSError:
            time.sleep(0.02)
    raise RuntimeError("not ready within 30 s")


@contextlib.contextmanager
def _gunicorn(
    args: argparse.Namespace,
    keys: Keys,
    workdir: Path,
    app_uri: str | None = None,
    config: str = "production",
    **extra: str,
) -> Iterator[tuple[str, subprocess.Popen[bytes], float]]:
    """`gunicorn -c gunicorn.conf.py [app]` on a free loopback port: (base URL, process, ready s)."""
    port = _free_port()
    base = f"http://{HOST}:{port}"
    log_path = workdir / f"gunicorn-{port}.log"
    command = [str(Path(sys.executable).with_name("gunicorn")), "-c", "gunicorn.conf.py"]
    with log_path.open("wb") as log:
        started = time.perf_counter()
        server = subprocess.Popen(
            [*command, *([app_uri] if app_uri else [])],
            cwd=ROOT,
            env={**_environment(args, port, keys, workdir, config), **extra},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            try:
                ready = _wait_ready(base, server, started)
            except RuntimeError:
                sys.stderr.write(log_path.read_text()[-4000:])
                raise
            yield base, server, ready
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=20)


def _load(
    args: argparse.Namespace, keys: Keys, base: str, scenario: Scenario, folder: Path, signed: bool
) -> dict[str, float]:
    """wrk posting the scenario's body, each request with its own token when `signed`."""
    folder.mkdir()
    (folder / "body.json").write_text(json.dumps(scenario.body))
    # Unsigned (development: no caller is checked) one token a thread is enough; signing a full
    # pool costs ~1 ms a token, 16,000 a row.
    count = MAX_RATE * args.seconds if signed else 2
    keys.pool(PUBLIC_BASE_URL + scenario.path, scenario.alg, count, folder, threads=2)
    script = folder / "post.lua"
    script.write_text(
        LUA % {"dir": folder, "body": folder / "body.json", "path": scenario.path, "mark": MARK}
    )
    return _wrk(base + scenario.path, args.seconds, args.connections, script)


def _cpu_seconds(master_pid: int) -> float:
    """User + system CPU of gunicorn's workers so far (the children of its master), from /proc."""
    total = 0
    tick = os.sysconf("SC_CLK_TCK")
    for child in Path(f"/proc/{master_pid}/task/{master_pid}/children").read_text().split():
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return total / tick


def _rows(
    args: argparse.Namespace,
    keys: Keys,
    base: str,
    server: subprocess.Popen[bytes],
    scenarios: list[Scenario],
    workdir: Path,
    label: str = "",
    healthz: str = "",
    signed: bool = True,
) -> list[tuple[str, dict[str, float]]]:
    """wrk on each scenario against one running server, with the workers' CPU per call.

    Each row is preceded by `ADJACENT_SECONDS` of GET `healthz` (the service's, idle while the
    field runs) and its ratio is to that: the machine's speed drifts by a third within a run, and
    a baseline measured minutes apart would carry the drift into the ratio.
    """
    rows = []
    for i, scenario in enumerate(scenarios):
        adjacent = _wrk(healthz or f"{base}/healthz", ADJACENT_SECONDS, args.connections, None)
        folder = workdir / f"{label}s{i}-{secrets.token_hex(2)}"
        result = _with_cpu(args, server, lambda s=scenario, f=folder: _load(args, keys, base, s, f, signed))
        result["base_rps"] = adjacent["rps"]
        rows.append((f"{label}{scenario.name}", result))
    return rows


def _with_cpu(
    args: argparse.Namespace, server: subprocess.Popen[bytes], load: Callable[[], dict[str, float]]
) -> dict[str, float]:
    """`load`'s wrk result with the workers' CPU µs per call over it."""
    before = _cpu_seconds(server.pid)
    result = load()
    calls = result["rps"] * args.seconds
    result["cpu_us"] = (_cpu_seconds(server.pid) - before) / calls * 1e6 if calls else float("nan")
    return result


def _baseline(args: argparse.Namespace, base: str, server: subprocess.Popen[bytes]) -> dict[str, float]:
    """GET /healthz under the same load, with the workers' CPU per call."""
    return _with_cpu(args, server, lambda: _wrk(f"{base}/healthz", args.seconds, args.connections, None))


def _print_table(title: str, rows: list[tuple[str, dict[str, float]]]) -> None:
    overall = (rows[0][1]["rps"] + rows[-1][1]["rps"]) / 2
    print(title)
    print(f"ratio: req/s over those of GET /healthz in the {ADJACENT_SECONDS} s just before the row")
    print(
        f"{'scenario':<76} {'req/s':>8} {'ratio':>6} {'p50 ms':>8} {'p99 ms':>8} {'CPU µs':>8} {'errors':>6}"
    )
    for name, r in rows:
        cpu = r.get("cpu_us")
        print(
            f"{name[:76]:<76} {r['rps']:>8.0f} {r['rps'] / r.get('base_rps', overall):>6.2f}"
            f" {r['p50']:>8.2f} {r['p99']:>8.2f} {'' if cpu is None else f'{cpu:.0f}':>8}"
            f" {int(r['errors']):>6}"
        )


def _field(
    args: argparse.Namespace,
    keys: Keys,
    workdir: Path,
    hooks: list[Scenario],
    config: str,
    healthz: str,
) -> list[tuple[str, dict[str, float]]]:
    """The same bodies through the field (bench/variants.py), same gunicorn config and caller check.

    The floor is the service's domain work without its edge (guard, metrics, audit, logs); the
    naive design validates every resource whole with fhir.resources. In production both verify
    the RS384 JWT and its jti in Redis as the service does, and bench/floor.py adds what
    authentication and one insert cost with no FHIR and no rules at all.
    """
    pem = keys.private["RS384"].public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    auth = (
        {"FLOOR_PUBLIC_KEY_PEM": pem.decode(), "FLOOR_AUDIENCE": PUBLIC_BASE_URL + HOOK_PATH}
        if config == "production"
        else {}
    )
    rows: list[tuple[str, dict[str, float]]] = []
    for label, uri in (
        ("floor (domain work only): ", "bench.variants:create_floor_app()"),
        ("naive (fhir.resources on all): ", "bench.variants:create_naive_app()"),
    ):
        with _gunicorn(args, keys, workdir, uri, config=config, **auth) as (base, server, _):
            rows += _rows(args, keys, base, server, hooks, workdir, label, healthz, config == "production")
    if config == "production" and hooks:
        floor = Scenario("auth only: RS384 + Redis + SQLite insert, no FHIR/rules", HOOK_PATH, hooks[0].body)
        with _gunicorn(args, keys, workdir, "bench.floor:create_floor_app()", **auth) as (base, server, _):
            rows += _rows(args, keys, base, server, [floor], workdir, healthz=healthz)
    return rows


def _run_config(args: argparse.Namespace, keys: Keys, scenarios: list[Scenario], config: str) -> None:
    """One configuration: the service, then the field (bench/variants.py; bench/floor.py)."""
    hooks = [s for s in scenarios if s.path == HOOK_PATH and s.alg == "RS384"]
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        (workdir / "metrics").mkdir()
        with _gunicorn(args, keys, workdir, config=config) as (base, server, ready):
            rows = [("baseline GET /healthz (no auth)", _baseline(args, base, server))]
            service = scenarios if config == "production" else [s for s in scenarios if s.alg == "RS384"]
            rows += _rows(args, keys, base, server, service, workdir, signed=config == "production")
            memory = _worker_memory_mb(server.pid)
            if not args.no_field:
                # The service stays up, idle, so each field row has its /healthz beside it.
                rows += _field(args, keys, workdir, hooks, config, f"{base}/healthz")
            rows.append(("baseline again, at the end", _baseline(args, base, server)))
    kind = f"gthread x{args.threads}" if args.threads > 1 else "sync"
    if config == "production":
        setup = (
            "ENV=production (RS384 JWT per call unless marked, Redis replay cache, audit in"
            f" {'PostgreSQL' if args.database_url else 'SQLite'})"
        )
    else:
        setup = "ENV=development (embedded defaults: no JWT, no Redis, audit in SQLite)"
    _print_table(
        f"gunicorn -c gunicorn.conf.py, {setup}, {args.workers} {kind} workers; wrk 2 threads,"
        f" {args.connections} connections, {args.seconds}s each; {os.cpu_count()} CPUs;"
        f" ready (GET /readyz 200) {ready:.2f}s after start",
        rows,
    )
    print(
        "worker memory after the run: "
        + ", ".join(f"RSS {rss:.0f} MB (PSS {pss:.0f} MB)" for rss, pss in memory)
    )


def _run_once(args: argparse.Namespace, keys: Keys, scenarios: list[Scenario]) -> None:
    configs = ("development", "production") if args.config == "both" else (args.config,)
    for config in configs:
        _run_config(args, keys, scenarios, config)


def main() -> int:
    """Start the service as deployed, load it, print the table."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="threads per worker (>1: gthread)")
    parser.add_argument("--runs", type=int, default=1, help="repeat the whole measurement")
    parser.add_argument("--config", choices=("development", "production", "both"), default="both")
    parser.add_argument("--only", default="", help="a regular expression: only the scenarios it finds")
    parser.add_argument("--no-field", action="store_true", help="the service only: no floor, no naive")
    parser.add_argument(
        "--redis-url", default=os.environ.get("TWITCH_CDS_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
    )
    parser.add_argument(
        "--database-url", default="", help="postgresql://...; empty: SQLite in a temporary folder"
    )
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("wrk is not installed: apt-get install wrk", file=sys.stderr)
        return 2
    if not (SYNTHEA / RECORD).exists():
        print(
            f"{SYNTHEA / RECORD} is missing: the benchmark uses the shared Synthea records", file=sys.stderr
        )
        return 2
    try:
        redis.Redis.from_url(args.redis_url, socket_connect_timeout=2).ping()
    except redis.RedisError as exc:
        print(f"Redis at {args.redis_url} is unreachable ({exc}); production mode needs it", file=sys.stderr)
        return 2
    keys = Keys()
    scenarios = [s for s in _scenarios() if re.search(args.only, s.name)]
    try:
        for run in range(args.runs):
            if args.runs > 1:
                print(f"--- run {run + 1} of {args.runs}")
            _run_once(args, keys, scenarios)
    finally:
        keys.server.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
