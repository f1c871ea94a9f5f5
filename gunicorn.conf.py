"""gunicorn settings: `gunicorn -c gunicorn.conf.py` is how `make run`, the Dockerfile and the tests serve.

Settings come from TWITCH_CDS_* variables (service/config.py): BIND, WORKERS, THREADS. The app is
loaded once in the master (preload, with WARM_UP) and forked, so each worker is ready the moment
it starts and shares the loaded rule set and models copy-on-write. Prometheus multiprocess mode
gets its directory here, before anything imports prometheus_client.
"""

from __future__ import annotations

import gc
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from service.config import load_config
from service.cpus import cpu_limit

_settings = load_config()


# Set before the app (and prometheus_client) is imported by preload: every worker writes its
# samples under this directory and GET /metrics sums them.
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="twitch-cds-metrics-")
_METRICS_DIR = Path(os.environ["PROMETHEUS_MULTIPROC_DIR"])
# Made here, not only in on_starting: preload imports the app, and the warm-up writes its samples,
# before on_starting runs (Kubernetes sets /tmp/metrics on an empty /tmp volume).
_METRICS_DIR.mkdir(parents=True, exist_ok=True)
# Warm the validators and rule engine in the master before forking (service/warmup.py).
os.environ.setdefault("TWITCH_CDS_WARM_UP", "1")

wsgi_app = "service.app:create_app()"
bind = [str(_settings["BIND"])]
# The work is CPU-bound (JSON, pydantic, rules): one process per CPU; WORKERS overrides.
workers = int(_settings["WORKERS"]) or cpu_limit()  # the cgroup quota, v1 or v2
# sync workers measured fastest on this CPU-bound path (docs/deploy.md); behind a load balancer
# that keeps connections open, gthread (THREADS > 1) stops one idle keep-alive from holding a worker.
threads = int(_settings["THREADS"])
# gunicorn's sync and gthread workers, answering the requests gunicorn itself refuses (oversized or
# malformed header lines, a bad request line) with an OperationOutcome (service/gunicorn_workers.py).
worker_class = "service.gunicorn_workers." + ("ThreadWorker" if threads > 1 else "SyncWorker")
preload_app = True
# A hook call is answered in milliseconds; 30 s means a stuck worker, which is killed and replaced.
timeout = 30
graceful_timeout = 20
keepalive = 5
# The heartbeat file lives in memory, so a read-only root filesystem (Kubernetes) is fine.
worker_tmp_dir = "/dev/shm" if Path("/dev/shm").is_dir() else None  # noqa: S108 (gunicorn's advice)
accesslog = "-"
errorlog = "-"
loglevel = str(_settings["LOG_LEVEL"]).lower()
logger_class = "service.gunicorn_log.JsonAccessLogger"
# Plain http behind the TLS-terminating proxy or ingress; its forwarded headers are trusted.
forwarded_allow_ips = os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1")


def on_starting(server: Any) -> None:
    """Start with an empty metrics directory: files of an earlier run would be summed in."""
    for path in _METRICS_DIR.glob("*.db"):
        path.unlink()
    _METRICS_DIR.mkdir(parents=True, exist_ok=True)


# Objects a request creates between two collections of the youngest generation (default 700).
# A 1 MB body is ~100,000 live objects while its request runs: at 700 the collector ran ~25 times
# per call and each survivor pushed it towards full collections, which also scan every model the
# validation memo keeps (measured in one process, 1,000-Observation call with a full memo: 15 ms
# of collection per call at 700, none at 50,000). The app makes few reference cycles.
GC_THRESHOLDS = (50_000, 20, 20)


def when_ready(server: Any) -> None:
    """Freeze what preload built before the workers fork, and collect less often.

    The rule set, models and validators live for the whole process: frozen, the cyclic garbage
    collector stops re-scanning them during requests (measured: 0.26 -> 0.07 ms of collection per
    realistic call), and the workers keep sharing their pages instead of copying them when the
    collector touches them.
    """
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def post_worker_init(worker: Any) -> None:
    """Start this worker's audit-spool writer: threads do not survive fork, so each worker starts its own.

    It also adopts the spool files of workers that died with records the database had not taken.
    """
    from service.store import start_background

    start_background(worker.wsgi)


def worker_exit(server: Any, worker: Any) -> None:
    """In the exiting worker: write its audit backlog for up to 2 s; the rest stays for the next one."""
    from service.store import stop_background

    stop_background(getattr(worker, "wsgi", None))


def child_exit(server: Any, worker: Any) -> None:
    """Drop a dead worker's live gauges (its counters stay in the totals, as Prometheus expects)."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server: Any) -> None:
    """Remove the metrics directory this configuration created."""
    if _METRICS_DIR.name.startswith("twitch-cds-metrics-"):
        shutil.rmtree(_METRICS_DIR, ignore_errors=True)
