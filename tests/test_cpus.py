"""Worker count: the CPUs a container may use, from its cgroup quota on cgroup v1 as on v2."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from service.cpus import cgroup_quotas, cpu_limit
from tests.conftest import ROOT

HOST_CPUS = len(os.sched_getaffinity(0))


def _proc(tmp_path: Path, cgroup: str, mounts: list[str]) -> Path:
    """A /proc/self with the given cgroup and mountinfo text (the cgroup files are under tmp_path)."""
    proc = tmp_path / "proc"
    proc.mkdir()
    (proc / "cgroup").write_text(cgroup)
    (proc / "mountinfo").write_text("\n".join(mounts) + "\n")
    return proc


def _write(directory: Path, **files: str) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (directory / name.replace("__", ".")).write_text(text + "\n")


def test_cgroup_v1_quota_inside_a_container(tmp_path: Path) -> None:
    """Docker or Kubernetes on cgroup v1: the container's own cgroup is the mount's root."""
    cpu = tmp_path / "cpu"
    _write(cpu, cpu__cfs_quota_us="100000", cpu__cfs_period_us="100000")
    proc = _proc(
        tmp_path,
        "4:cpu,cpuacct:/kubepods/pod1/abc\n0::/\n",
        [f"32 31 0:29 /kubepods/pod1/abc {cpu} ro,nosuid - cgroup cgroup rw,cpu,cpuacct"],
    )
    assert list(cgroup_quotas(proc)) == [1.0]
    assert cpu_limit(proc) == 1


def test_cgroup_v1_quota_on_a_parent_limits_the_child(tmp_path: Path) -> None:
    """A host process in a nested cgroup: the tightest quota on the way up counts; -1 is no limit."""
    mount = tmp_path / "cpu"
    _write(mount, cpu__cfs_quota_us="-1", cpu__cfs_period_us="100000")
    _write(mount / "slice", cpu__cfs_quota_us="150000", cpu__cfs_period_us="100000")
    _write(mount / "slice" / "job", cpu__cfs_quota_us="-1", cpu__cfs_period_us="100000")
    proc = _proc(tmp_path, "2:cpu:/slice/job\n", [f"32 31 0:29 / {mount} rw - cgroup cgroup rw,cpu"])
    assert list(cgroup_quotas(proc)) == [1.5]
    assert cpu_limit(proc) == min(HOST_CPUS, 2)


def test_cgroup_v2_quota(tmp_path: Path) -> None:
    """cgroup v2: cpu.max `quota period`; `max` is no limit."""
    mount = tmp_path / "unified"
    _write(mount, cpu__max="max 100000")
    _write(mount / "pod", cpu__max="50000 100000")
    proc = _proc(tmp_path, "0::/pod\n", [f"30 1 0:26 / {mount} rw - cgroup2 cgroup2 rw"])
    assert list(cgroup_quotas(proc)) == [0.5]
    assert cpu_limit(proc) == 1  # at least one worker


def test_no_cgroup_means_the_affinity_mask(tmp_path: Path) -> None:
    """No quota anywhere (or no /proc): one worker per CPU the scheduler allows."""
    mount = tmp_path / "cpu"
    _write(mount, cpu__cfs_quota_us="-1", cpu__cfs_period_us="100000")
    proc = _proc(tmp_path, "1:cpu:/\n", [f"32 31 0:29 / {mount} rw - cgroup cgroup rw,cpu"])
    assert cpu_limit(proc) == HOST_CPUS
    assert cpu_limit(tmp_path / "absent") == HOST_CPUS


def _v1_cpu_mount() -> Path | None:
    """This machine's cgroup v1 cpu hierarchy, when it has one."""
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        tail = right.split()
        if len(tail) >= 3 and tail[0] == "cgroup" and "cpu" in tail[2].split(","):
            return Path(left.split()[4])
    return None


@pytest.fixture
def one_cpu_cgroup() -> Iterator[Path]:
    """A real cgroup v1 with a 1-CPU quota (root only), removed afterwards."""
    mount = _v1_cpu_mount()
    if mount is None or not os.access(mount, os.W_OK):
        pytest.skip("needs a writable cgroup v1 cpu hierarchy (root on a cgroup v1 machine)")
    if HOST_CPUS < 2:
        pytest.skip("one CPU: a 1-CPU quota would not change the worker count")
    group = mount / f"twitch-cds-test-{uuid.uuid4().hex[:8]}"
    group.mkdir()
    try:
        (group / "cpu.cfs_period_us").write_text("100000")
        (group / "cpu.cfs_quota_us").write_text("100000")
        yield group
    finally:
        for _ in range(50):  # the child has exited; the kernel empties cgroup.procs shortly after
            try:
                group.rmdir()
                break
            except OSError:
                time.sleep(0.1)


def test_gunicorn_conf_starts_one_worker_under_a_real_v1_quota(one_cpu_cgroup: Path, tmp_path: Path) -> None:
    """gunicorn.conf.py, run as gunicorn runs it, in a real cgroup v1 limited to 1 CPU: one worker."""
    probe = "import runpy; print(runpy.run_path('gunicorn.conf.py')['workers'])"
    env = {**os.environ, "TWITCH_CDS_WORKERS": "0", "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics")}
    # The shell joins the cgroup, then becomes Python: the process reads its own membership.
    join = f'echo $$ > "{one_cpu_cgroup}/cgroup.procs" && exec "$0" -c "$1"'
    inside = subprocess.run(["sh", "-c", join, sys.executable, probe], **_run(env))
    assert inside.stdout.strip() == "1", inside.stderr
    outside = subprocess.run([sys.executable, "-c", probe], **_run(env))
    assert outside.stdout.strip() == str(HOST_CPUS)


def _run(env: dict[str, str]) -> dict[str, Any]:
    return {"cwd": ROOT, "env": env, "capture_output": True, "text": True, "timeout": 60, "check": True}
