"""Latency benchmark: gunicorn on loopback, wrk as the load, every figure also as a ratio to a baseline.

The machines are shared and noisy, so the baseline (GET /healthz: routing and JSON, no rules) is
measured in the same run and each scenario is reported against it. Loopback only.

    python bench/run.py [--seconds 5] [--connections 8]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SYNTHEA = ROOT.parent / "shared" / "fhir" / "synthea"
RED_FLAG_EXAMPLE = ROOT / "fhir_examples" / "motor-neuron-red-flags" / "fires-weakness.json"
HOST = "127.0.0.1"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _searchset(resources: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": len(resources),
        "entry": [{"resource": r, "search": {"mode": "match"}} for r in resources],
    }


def _bodies(workdir: Path) -> dict[str, Path]:
    """Request bodies: a realistic patient-view, the same with 1,000 Observations, a whole record."""
    record_path = max(SYNTHEA.glob("*.json"), key=lambda p: p.stat().st_size)
    record = json.loads(record_path.read_text())
    resources = [e["resource"] for e in record["entry"]]
    patient = next(r for r in resources if r["resourceType"] == "Patient")
    observations = [r for r in resources if r["resourceType"] == "Observation"]
    for obs in observations:
        obs["subject"] = {"reference": f"Patient/{patient['id']}"}
    response = next(
        e["resource"]
        for e in json.loads(RED_FLAG_EXAMPLE.read_text())["entry"]
        if e["resource"]["resourceType"] == "QuestionnaireResponse"
    )
    response["subject"] = {"reference": f"Patient/{patient['id']}"}

    def call(obs: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "hook": "patient-view",
            "hookInstance": "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea",
            "context": {"userId": "Practitioner/bench", "patientId": patient["id"]},
            "prefetch": {
                "patient": patient,
                "observations": _searchset(obs),
                "questionnaireResponses": _searchset([response]),
            },
        }

    many = []
    while len(many) < 1000:
        for obs in observations:
            clone = copy.deepcopy(obs)
            clone["id"] = f"{obs['id']}-{len(many)}"
            many.append(clone)
            if len(many) == 1000:
                break
    bodies = {
        f"patient-view ({len(observations)} Observations + red-flag QR)": call(observations),
        "patient-view (1,000 Observations)": call(many),
        f"/evaluate (whole Synthea record, {len(resources)} resources)": record,
    }
    out = {}
    for i, (name, body) in enumerate(bodies.items()):
        path = workdir / f"body{i}.json"
        path.write_text(json.dumps(body))
        out[name] = path
    return out


def _wrk(url: str, seconds: int, connections: int, body: Path | None, workdir: Path) -> dict[str, float]:
    script = workdir / "post.lua"
    if body is not None:
        script.write_text(
            'wrk.method = "POST"\n'
            'wrk.headers["Content-Type"] = "application/json"\n'
            f'local f = io.open("{body}", "rb")\nwrk.body = f:read("*a")\nf:close()\n'
        )
    command = ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", url]
    if body is not None:
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


def _worker_rss_mb(master_pid: int) -> list[float]:
    children = subprocess.run(
        ["pgrep", "-P", str(master_pid)], capture_output=True, text=True, check=False
    ).stdout.split()
    sizes = []
    for pid in children:
        status = Path(f"/proc/{pid}/status").read_text()
        match = re.search(r"VmRSS:\s+(\d+) kB", status)
        if match:
            sizes.append(int(match.group(1)) / 1024)
    return sizes


def main() -> int:
    """Start the service, load it, print the table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("wrk is not installed: apt-get install wrk", file=sys.stderr)
        return 2
    if not SYNTHEA.exists():
        print(f"{SYNTHEA} is missing: the benchmark uses the shared Synthea records", file=sys.stderr)
        return 2
    port = _free_port()
    gunicorn = Path(sys.executable).with_name("gunicorn")
    started = time.perf_counter()
    server = subprocess.Popen(
        [str(gunicorn), "--bind", f"{HOST}:{port}", "--workers", str(args.workers),
         "--log-level", "warning", "service.app:create_app()"],
        cwd=ROOT,
        env={**os.environ, "TWITCH_CDS_LOG_LEVEL": "WARNING"},
    )  # fmt: skip
    base = f"http://{HOST}:{port}"
    try:
        for _ in range(200):
            try:
                urllib.request.urlopen(f"{base}/healthz", timeout=1)  # noqa: S310 (loopback)
                break
            except OSError:
                time.sleep(0.05)
        ready = time.perf_counter() - started
        with tempfile.TemporaryDirectory() as tmp:
            workdir = Path(tmp)
            bodies = _bodies(workdir)
            baseline = _wrk(f"{base}/healthz", args.seconds, args.connections, None, workdir)
            rows = [("baseline GET /healthz", baseline)]
            for name, body in bodies.items():
                path = "/evaluate" if name.startswith("/evaluate") else "/cds-services/twitching-red-flags"
                rows.append((name, _wrk(base + path, args.seconds, args.connections, body, workdir)))
        print(f"gunicorn {args.workers} workers, wrk {args.connections} connections, {args.seconds}s each")
        print(f"ready to serve {ready:.2f}s after start")
        print(f"{'scenario':<58} {'req/s':>8} {'ratio':>6} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6}")
        for name, r in rows:
            print(
                f"{name:<58} {r['rps']:>8.0f} {r['rps'] / baseline['rps']:>6.2f}"
                f" {r['p50']:>8.2f} {r['p99']:>8.2f} {int(r['errors']):>6}"
            )
        sizes = _worker_rss_mb(server.pid)
        print("worker memory (RSS): " + ", ".join(f"{s:.0f} MB" for s in sizes))
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
