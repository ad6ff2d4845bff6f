"""How many CPU cores this process may really use: the thread count every runtime gets by default.

``os.cpu_count()`` counts the machine's cores, not this process's: a container or a systemd unit
limited by a CPU quota, or a process pinned with ``taskset``, gets fewer. Runtimes left to their own
defaults disagree too (LiteRT and OpenVINO's latency hint run one thread where onnxruntime takes every
core), so a default Detector would serve a smaller model than the device can run. Stdlib only.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


def usable_cores() -> int:
    """The cores this process may use: its CPU affinity, capped by its cgroup's CPU quota (v1 or v2),
    rounded up (a quota of 1.5 cores still runs two threads usefully); at least 1."""
    cores = _affinity()
    quota = cgroup_cpu_limit()
    if quota is not None:
        cores = min(cores, max(1, math.ceil(quota - 1e-9)))
    return max(1, cores)


def resolve_threads(threads: int | None) -> int:
    """``threads`` if given, else :func:`usable_cores` — what a backend should run with."""
    if threads is None:
        return usable_cores()
    if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
        raise ValueError(f"threads must be a positive integer or None (all usable cores), got {threads!r}")
    return threads


def cgroup_cpu_limit(pid: int | str = "self") -> float | None:
    """The CPU quota of ``pid``'s cgroup and all its ancestors, in cores (``quota / period``), or None
    when unlimited or unreadable."""
    limits = []
    for directory, v2 in _cgroup_dirs(pid):
        limit = _v2_limit(directory) if v2 else _v1_limit(directory)
        if limit is not None:
            limits.append(limit)
    return min(limits) if limits else None


def _affinity() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        return os.cpu_count() or 1


def _cgroup_dirs(pid: int | str) -> list[tuple[Path, bool]]:
    """The cgroup directories (with every ancestor up to the mount) that hold ``pid``'s CPU limits."""
    try:
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    except OSError:
        return []
    found = []
    for line in lines:
        hierarchy, controllers, path = line.split(":", 2)
        if hierarchy == "0" and controllers == "":  # v2 unified hierarchy
            mount, v2 = (CGROUP_ROOT / "unified") if (CGROUP_ROOT / "unified").is_dir() else CGROUP_ROOT, True
        elif "cpu" in controllers.split(","):
            mount, v2 = CGROUP_ROOT / "cpu", False
            if not mount.is_dir():
                mount = CGROUP_ROOT / controllers
        else:
            continue
        here = mount / path.lstrip("/")
        while True:  # a parent's quota limits its children too
            found.append((here, v2))
            if here == mount or mount not in here.parents:
                break
            here = here.parent
    return found


def _v1_limit(directory: Path) -> float | None:
    try:
        quota = int((directory / "cpu.cfs_quota_us").read_text())
        period = int((directory / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota / period if quota > 0 and period > 0 else None


def _v2_limit(directory: Path) -> float | None:
    try:
        quota, period = (directory / "cpu.max").read_text().split()
    except (OSError, ValueError):
        return None
    return None if quota == "max" else int(quota) / int(period)
