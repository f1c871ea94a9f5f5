"""CPUs this process may use: the affinity mask, lowered by any cgroup CPU quota (v1 or v2).

gunicorn.conf.py starts one worker per CPU. A container's CPU limit is not in the affinity mask but
in a cgroup quota: `cpu.max` on cgroup v2, `cpu.cfs_quota_us` / `cpu.cfs_period_us` on cgroup v1
(still the default on many Kubernetes nodes). The process's own cgroup is found from
/proc/self/cgroup and /proc/self/mountinfo, and every cgroup from it up to the mount's root is read,
because a parent's quota limits its children too.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from pathlib import Path

PROC_SELF = Path("/proc/self")


def cpu_limit(proc: Path = PROC_SELF) -> int:
    """CPUs this process may use: the affinity mask or the smallest cgroup quota, at least 1."""
    cpus = len(os.sched_getaffinity(0))
    for quota in cgroup_quotas(proc):
        cpus = min(cpus, max(1, math.ceil(quota)))
    return cpus


def cgroup_quotas(proc: Path = PROC_SELF) -> Iterator[float]:
    """Each CPU quota, in CPUs, set on this process's cgroups or their ancestors (v1 and v2)."""
    try:
        memberships = _memberships((proc / "cgroup").read_text())
        mountinfo = (proc / "mountinfo").read_text()
    except OSError:
        return  # not Linux, or /proc not mounted: the affinity mask is the limit
    for root, point, version in _cgroup_mounts(mountinfo):
        own = memberships.get(version)
        if own is None:
            continue
        # The mount shows the cgroup tree from `root` down (a container sees only its own part).
        relative = own[len(root) :] if own.startswith(root) else ""
        directory = Path(point) / relative.strip("/")
        while True:
            quota = _quota(directory, version)
            if quota is not None:
                yield quota
            if directory == Path(point):
                break
            directory = directory.parent


def _memberships(text: str) -> dict[str, str]:
    """/proc/self/cgroup: the path of this process's cgroup v2 ("2") and v1 cpu controller ("1")."""
    found: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hierarchy, controllers, path = parts
        if hierarchy == "0" and controllers == "":
            found["2"] = path
        elif "cpu" in controllers.split(","):
            found["1"] = path
    return found


def _cgroup_mounts(mountinfo: str) -> Iterator[tuple[str, str, str]]:
    """(root, mount point, "1" or "2") of each cgroup2 mount and each cgroup v1 mount with cpu."""
    for line in mountinfo.splitlines():
        # id parent major:minor root mount-point options [optional...] - fstype source super-options
        left, _, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if len(fields) < 5 or len(tail) < 3:
            continue
        root, point = fields[3], fields[4].replace("\\040", " ")
        if tail[0] == "cgroup2":
            yield root, point, "2"
        elif tail[0] == "cgroup" and "cpu" in tail[2].split(","):
            yield root, point, "1"


def _quota(directory: Path, version: str) -> float | None:
    """The CPU quota set on one cgroup directory, in CPUs; None when unlimited or unreadable."""
    try:
        if version == "2":
            quota, period = (directory / "cpu.max").read_text().split()
        else:
            quota = (directory / "cpu.cfs_quota_us").read_text().strip()
            period = (directory / "cpu.cfs_period_us").read_text().strip()
        if quota in ("max", "-1"):
            return None
        return int(quota) / int(period)
    except (OSError, ValueError, ZeroDivisionError):
        return None
