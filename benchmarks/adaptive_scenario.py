"""Scenario benchmark for adaptive serving (issue 13): the device slows down and recovers, throttled
by a cgroup v1 CPU quota, and a static and an adaptive Detector serve frames through it.

    sudo python benchmarks/adaptive_scenario.py --models exports/ --quota 0.4 --phase-s 8 --out scenario.jsonl

Phases: ``idle`` (no quota), ``throttled`` (``cpu.cfs_quota_us`` = quota × period: the process
gets that fraction of one CPU), ``recovered`` (no quota). The budget defaults to 1.2 × the profiled
latency of the artifact the detector serves when idle, so that artifact fits idle and misses
throttled. Each frame is a JSON line (detector, phase, time, artifact served, latency); the
summary gives per phase the p90 latency and the share of frames within budget.

Needs root and a cgroup v1 ``cpu`` hierarchy at ``/sys/fs/cgroup/cpu``; the process moves itself
into a child cgroup and back, and removes it, even on Ctrl-C.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from edgedet.adaptive import AdaptiveConfig
from edgedet.detector import Detector

log = logging.getLogger("adaptive_scenario")
CPU_ROOT = Path("/sys/fs/cgroup/cpu")
PHASES = ("idle", "throttled", "recovered")


class CpuQuota:
    """A cgroup v1 ``cpu`` child holding this process; :meth:`limit` sets its quota."""

    def __init__(self, root: Path = CPU_ROOT) -> None:
        self.root, self.path = root, root / f"edgedet-scenario-{os.getpid()}"

    def __enter__(self) -> "CpuQuota":
        self.path.mkdir()
        (self.path / "cgroup.procs").write_text(str(os.getpid()))  # every thread of the process
        return self

    def limit(self, fraction: float | None) -> None:
        """``fraction`` of one CPU (None: no limit)."""
        period = int((self.path / "cpu.cfs_period_us").read_text())
        quota = -1 if fraction is None else max(1000, int(fraction * period))
        (self.path / "cpu.cfs_quota_us").write_text(str(quota))

    def __exit__(self, *exc) -> None:
        (self.root / "cgroup.procs").write_text(str(os.getpid()))
        self.path.rmdir()


def frames(size: tuple[int, int]) -> Iterator[np.ndarray]:
    rng = np.random.default_rng(0)
    pool = [rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8) for _ in range(4)]
    while True:
        yield from pool


def run(detector: Detector, name: str, quota: CpuQuota, fraction: float, phase_s: float, size, out) -> dict:
    summary = {}
    source = frames(size)
    for phase in PHASES:
        quota.limit(fraction if phase == "throttled" else None)
        latencies, served = [], []
        end = time.monotonic() + phase_s
        while time.monotonic() < end:
            result = detector.serve(next(source))
            latencies.append(result.latency_ms)
            served.append(result.artifact.name)
            out.write(json.dumps({"detector": name, "phase": phase, "t": time.time(), "artifact": result.artifact.name,
                                  "latency_ms": round(result.latency_ms, 2)}) + "\n")
        within = float(np.mean(np.asarray(latencies) <= detector.budget_ms))
        summary[phase] = {"frames": len(latencies), "p90_ms": round(float(np.percentile(latencies, 90)), 1),
                          "within_budget": round(within, 3), "served": sorted(set(served))}
    quota.limit(None)
    return summary


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", required=True, type=Path)
    parser.add_argument("--budget-ms", type=float, default=None, help="default: 1.2 x the idle choice's profile")
    parser.add_argument("--quota", type=float, default=0.4, help="CPU fraction while throttled (default 0.4)")
    parser.add_argument("--phase-s", type=float, default=8.0, help="seconds per phase (default 8)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--frame-size", type=int, nargs=2, default=(640, 480), metavar=("W", "H"))
    parser.add_argument("--out", type=Path, default=Path("scenario.jsonl"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    options = dict(models=args.models, threads=args.threads, frame_size=tuple(args.frame_size),
                   profile_cache=args.out.with_suffix(".profiles.json"))
    with CpuQuota() as quota, args.out.open("w") as out:
        budget = args.budget_ms
        if budget is None:
            probe = Detector(1e6, adapt=False, **options)
            rows = {row.artifact: row.latency_ms for row in probe.profile if row.latency_ms is not None}
            budget = 1.2 * max(rows.values())
            del probe
        results = {}
        for name, adapt in (("static", False), ("adaptive", AdaptiveConfig(dwell_s=1.0))):
            detector = Detector(budget, adapt=adapt, **options)
            results[name] = run(detector, name, quota, args.quota, args.phase_s, tuple(args.frame_size), out)
            results[name]["switches"] = [s.reason for s in detector.switches]
            detector.close()
    print(json.dumps({"budget_ms": round(budget, 1), "quota": args.quota, **results}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
