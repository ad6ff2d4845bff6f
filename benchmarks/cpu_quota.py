"""A real CPU quota: a child cgroup (v1 ``cpu`` controller, else v2 ``cpu.max``) that processes join,
whose limit can change while they run — how the scenario benchmark slows this machine down, and how
tests give a process fewer cores. Needs root; the group is removed afterwards."""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator

ROOT = Path("/sys/fs/cgroup")
PERIOD_US = 100_000


class CpuQuota:
    """One cgroup whose processes share ``cores`` worth of CPU time."""

    def __init__(self, directory: Path, v2: bool) -> None:
        self.directory, self.v2 = directory, v2

    def set(self, cores: float | None) -> None:
        """Limit to ``cores`` (None: unlimited). Takes effect at once for every member."""
        if self.v2:
            (self.directory / "cpu.max").write_text("max" if cores is None else f"{int(cores * PERIOD_US)} {PERIOD_US}")
        else:
            (self.directory / "cpu.cfs_period_us").write_text(str(PERIOD_US))
            (self.directory / "cpu.cfs_quota_us").write_text("-1" if cores is None else str(int(cores * PERIOD_US)))

    def add(self, pid: int) -> None:
        """Move process ``pid`` (all its threads) into this group."""
        (self.directory / "cgroup.procs").write_text(str(pid))

    def join_command(self) -> str:
        """Python code that moves the running process into this group (for a child's first line)."""
        return f"open({str(self.directory / 'cgroup.procs')!r}, 'w').write(str(__import__('os').getpid()))\n"


@contextlib.contextmanager
def cpu_quota(cores: float | None, name: str = "edgedet-quota") -> Iterator[CpuQuota]:
    """A fresh child cgroup limited to ``cores``; its members go back to the root group on exit."""
    if (ROOT / "cpu" / "cpu.cfs_quota_us").exists():
        parent, v2 = ROOT / "cpu", False
    elif (ROOT / "cgroup.controllers").exists():
        parent, v2 = ROOT, True
        (ROOT / "cgroup.subtree_control").write_text("+cpu")
    else:
        raise RuntimeError("no cgroup cpu controller under /sys/fs/cgroup: this test needs Linux cgroups (v1 or v2)")
    directory = parent / f"{name}-{os.getpid()}"
    directory.mkdir()
    quota = CpuQuota(directory, v2)
    try:
        quota.set(cores)
        yield quota
    finally:
        with contextlib.suppress(OSError):  # move any survivor out, so the group can be removed
            for pid in (directory / "cgroup.procs").read_text().split():
                (parent / "cgroup.procs").write_text(pid)
        directory.rmdir()
