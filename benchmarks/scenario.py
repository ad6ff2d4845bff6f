"""Does the budget hold while the device changes? A schedule of real slowdowns, served by a static and
an adaptive Detector on the same budget.

    python benchmarks/scenario.py --models DIR --budgets 30,60

Phases (``--phase-seconds`` each): full speed; this process's CPU cut to half its cores by a cgroup
CPU quota (root needed); full speed with competing busy processes (one per core); full speed again.
For each budget, a static Detector (``adapt=False``: chosen once at full speed) and an adaptive one
serve frames through the whole schedule; an *oracle* knows, for each phase, the most accurate artifact
whose p90 fits the budget under that phase's conditions (measured before the runs).

Per phase and detector: the share of frames within budget; the same after *settling* (the first frame
from which on at least 99% of the phase's frames are within budget; its time and frame count are
reported as the settle time — never settled is ``null``); switches made; and the time-weighted
expected AP served, against the oracle's. Output: a printed table, ``scenario.json`` and
``scenario.png`` (per-frame latency over time, coloured by served artifact, with the budget line)
in ``--out``. Method: ``benchmarks/README.md``. Timings are this machine's; say when it was busy.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import multiprocessing
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.cpu_quota import CpuQuota, cpu_quota  # noqa: E402
from edgedet._atomic import atomic_write_text  # noqa: E402
from edgedet.cpu import cgroup_cpu_limit, usable_cores  # noqa: E402

log = logging.getLogger("benchmarks.scenario")
RESULTS_ROOT = Path(__file__).resolve().parent / "results"
SETTLED_SHARE = 0.99


@dataclass(frozen=True)
class Phase:
    """One condition of the schedule: a CPU quota in cores (None: none) and competing busy processes."""

    name: str
    quota_cores: float | None = None
    competitors: int = 0


def default_schedule(cores: int) -> list[Phase]:
    return [Phase("full speed"), Phase("CPU quota: half", quota_cores=max(0.5, cores / 2)),
            Phase("competing processes", competitors=cores), Phase("full speed again")]


@dataclass
class Frame:
    t: float  # seconds since the schedule started
    phase: int
    latency_ms: float
    artifact: str


@dataclass
class PhaseReport:
    phase: str
    frames: int
    within_budget: float
    within_budget_settled: float | None
    settle_s: float | None
    settle_frames: int | None
    switches: int
    reloads: int
    expected_ap: float
    oracle_ap: float | None
    oracle_artifact: str | None


@dataclass
class RunReport:
    budget_ms: float
    detector: str  # "static" or "adaptive"
    started_on: str
    phases: list[PhaseReport] = field(default_factory=list)
    frames: list[Frame] = field(default_factory=list)
    switch_log: list[dict] = field(default_factory=list)
    reload_log: list[dict] = field(default_factory=list)  # reloads with another thread count (adaptive)
    bounds: list[tuple[float, float]] = field(default_factory=list)  # each phase's (start, end) s
    applied_quota: list[float | None] = field(default_factory=list)  # the cgroup limit read in each phase


# ------------------------------------------------------------------------------------ conditions


def _busy() -> None:
    while True:
        pass


@contextlib.contextmanager
def condition(phase: Phase, quota: CpuQuota) -> Iterator[None]:
    """Apply ``phase`` to this process (quota) and the machine (competitors) for the duration."""
    quota.set(phase.quota_cores)
    workers = [multiprocessing.Process(target=_busy, daemon=True) for _ in range(phase.competitors)]
    for w in workers:
        w.start()
    try:
        # The competitors start outside this process's group: move them back to the root group.
        for w in workers:
            with contextlib.suppress(OSError):
                (quota.directory.parent / "cgroup.procs").write_text(str(w.pid))
        yield
    finally:
        for w in workers:
            w.terminate()
        for w in workers:
            w.join()
        quota.set(None)


# ------------------------------------------------------------------------------------ running


def serve_schedule(detector: Any, frame: np.ndarray, schedule: Sequence[Phase], seconds: float,
                   quota: CpuQuota) -> tuple[list[Frame], list[tuple[float, float]], list[float | None]]:
    """Serve frames back to back through every phase: the frames, each phase's (start, end), and the
    CPU limit this process really had in each (read back from its cgroup)."""
    frames: list[Frame] = []
    bounds, applied = [], []
    origin = time.perf_counter()
    for index, phase in enumerate(schedule):
        with condition(phase, quota):
            applied.append(cgroup_cpu_limit())
            start = time.perf_counter()
            while time.perf_counter() - start < seconds:
                served = detector.serve(frame)
                frames.append(Frame(time.perf_counter() - origin, index, served.latency_ms, served.artifact.name))
            bounds.append((start - origin, time.perf_counter() - origin))
    return frames, bounds, applied


def oracle(models: Path, frame: np.ndarray, schedule: Sequence[Phase], budgets: Sequence[float],
           quota: CpuQuota, *, calls: int = 30, **options: Any) -> tuple[dict[int, dict[str, float]], dict[str, tuple]]:
    """Each artifact's p90 under each phase, ``{phase index: {artifact: p90 ms}}``, and each artifact's
    accuracy rank as the Detector ranks it (the oracle serves the best-ranked one that fits).

    Each phase loads every artifact afresh inside its condition, so it runs with the threads that
    phase allows (as an adaptive Detector reloads when its CPU quota changes)."""
    from edgedet import Detector
    from edgedet.detector import accuracy_ranks, find_artifacts

    artifacts = find_artifacts(models)
    ranks = dict(zip((a.name for a in artifacts), accuracy_ranks([a.manifest for a in artifacts])))
    slowest_budget = max(budgets)
    table: dict[int, dict[str, float]] = {}
    for index, phase in enumerate(schedule):
        with condition(phase, quota):
            table[index] = {}
            for artifact in artifacts:
                m = artifact.manifest
                try:
                    pipeline = Detector(variant=m.variant, models=models, backend=m.backend, precision=m.precision,
                                        profile_cache=False, **options).pipeline
                except Exception as exc:  # noqa: BLE001 - an artifact this machine cannot run is not a candidate
                    log.warning("oracle: cannot load %s: %s", artifact.name, exc)
                    continue
                samples: list[float] = []
                for _ in range(calls + 2):
                    t0 = time.perf_counter()
                    pipeline([frame])
                    samples.append((time.perf_counter() - t0) * 1000)
                    if samples[0] > 4 * slowest_budget:  # hopeless here: one call says so
                        break
                table[index][artifact.name] = float(np.percentile(samples[2:] or samples, 90))  # 2 warm-up calls
                del pipeline
    return table, ranks


def settle(within: np.ndarray) -> int | None:
    """The first index from which on at least 99% of the frames are within budget (None: never)."""
    if within.size == 0:
        return None
    suffix = np.cumsum(within[::-1])[::-1] / np.arange(within.size, 0, -1)
    ok = np.flatnonzero(suffix >= SETTLED_SHARE)
    return int(ok[0]) if ok.size else None


def report_run(run: RunReport, schedule: Sequence[Phase], oracle_table: dict[int, dict[str, float]],
               ranks: dict[str, tuple]) -> None:
    """Fill ``run.phases`` from its frames."""
    for index, phase in enumerate(schedule):
        mine = [f for f in run.frames if f.phase == index]
        start, end = run.bounds[index]
        latency = np.array([f.latency_ms for f in mine])
        within = latency <= run.budget_ms
        first = settle(within)
        durations = np.diff([start] + [f.t for f in mine])
        # A rank starts with the expected AP the Detector ranks by (measured, or published at that size).
        ap = float(np.sum([ranks[f.artifact][0] * d for f, d in zip(mine, durations)]) / max(durations.sum(), 1e-9))
        fitting = {a: p90 for a, p90 in oracle_table[index].items() if p90 <= run.budget_ms}
        best = max(fitting, key=lambda a: (ranks[a], -fitting[a])) if fitting else None
        run.phases.append(PhaseReport(
            phase=phase.name, frames=len(mine), within_budget=round(float(within.mean()), 4) if mine else 0.0,
            within_budget_settled=None if first is None else round(float(within[first:].mean()), 4),
            settle_s=None if first is None else round((mine[first].t - start) if first else 0.0, 3),
            settle_frames=first,
            switches=sum(1 for s in run.switch_log if start <= s["t"] < end),
            reloads=sum(1 for s in run.reload_log if start <= s["t"] < end),
            expected_ap=round(ap, 4), oracle_ap=None if best is None else ranks[best][0], oracle_artifact=best))


def run_detector(kind: str, budget: float, models: Path, frame: np.ndarray, schedule: Sequence[Phase],
                 seconds: float, quota: CpuQuota, profile_cache: Path, **options: Any) -> RunReport:
    from edgedet import Detector

    origin_holder: dict[str, float] = {}
    switches: list[dict] = []

    def on_switch(switch: Any) -> None:
        switches.append({"t": time.perf_counter() - origin_holder.get("origin", 0.0), **asdict(switch)})

    detector = Detector(budget, models=models, adapt=(kind == "adaptive"), on_switch=on_switch,
                        on_miss="smallest", profile_cache=profile_cache, **options)
    try:
        detector.wait_ready(timeout=120)  # the schedule starts from the steady state
        run = RunReport(budget, kind, detector.artifact.name)
        origin_holder["origin"] = time.perf_counter()
        run.frames, run.bounds, run.applied_quota = serve_schedule(detector, frame, schedule, seconds, quota)
        run.switch_log = switches
        clock_offset = time.monotonic() - time.perf_counter()  # reloads carry the policy's (monotonic) clock
        run.reload_log = [{"t": r.at - clock_offset - origin_holder["origin"], **asdict(r)} for r in detector.reloads]
    finally:
        detector.close()
    return run


# ------------------------------------------------------------------------------------ output


def format_table(runs: Sequence[RunReport]) -> str:
    header = ("budget", "detector", "phase", "frames", "in budget", "after settle", "settle s", "switches",
              "reloads", "exp. AP", "oracle AP", "oracle")
    rows = [header]
    for run in runs:
        for p in run.phases:
            rows.append((f"{run.budget_ms:g}", run.detector, p.phase, str(p.frames), f"{100 * p.within_budget:.1f}%",
                         "-" if p.within_budget_settled is None else f"{100 * p.within_budget_settled:.1f}%",
                         "never" if p.settle_s is None else f"{p.settle_s:.2f}", str(p.switches), str(p.reloads),
                         f"{p.expected_ap:.3f}", "-" if p.oracle_ap is None else f"{p.oracle_ap:.3f}",
                         p.oracle_artifact or "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows)


def plot(runs: Sequence[RunReport], schedule: Sequence[Phase], ranks: dict[str, tuple], path: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed: no scenario plot (pip install 'edgedet[bench]')")
        return None
    fig, axes = plt.subplots(len(runs), 1, figsize=(11, 2.6 * len(runs)), sharex=True, squeeze=False)
    names = sorted({f.artifact for r in runs for f in r.frames}, key=lambda name: ranks[name])
    colours = {n: plt.cm.viridis(i / max(1, len(names) - 1)) for i, n in enumerate(names)}
    for ax, run in zip(axes[:, 0], runs):
        for name in names:
            mine = [f for f in run.frames if f.artifact == name]
            if mine:
                ax.scatter([f.t for f in mine], [f.latency_ms for f in mine], s=3, color=colours[name], label=name)
        ax.axhline(run.budget_ms, color="red", linestyle="--", linewidth=1)
        for (start, _), phase in zip(run.bounds, schedule):
            ax.axvline(start, color="grey", linewidth=0.5)
            ax.text(start, ax.get_ylim()[1], f" {phase.name}", fontsize=7, va="top")
        ax.set_yscale("log")
        ax.set_ylabel("e2e ms")
        ax.set_title(f"{run.detector} detector, budget {run.budget_ms:g} ms", fontsize=9)
        ax.legend(fontsize=6, markerscale=3, loc="upper right")
    axes[-1, 0].set_xlabel("seconds")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ------------------------------------------------------------------------------------ CLI


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    from edgedet.cli_args import frame_size_arg

    p = argparse.ArgumentParser(
        prog="python benchmarks/scenario.py",
        description="Serve frames through a schedule of real slowdowns (cgroup CPU quota, competing "
                    "processes) with a static and an adaptive Detector, and report how well the budget held.")
    p.add_argument("--models", type=Path, required=True, help="directory of exported artifacts (edgedet-convert --out)")
    p.add_argument("--budgets", default="30,60", help="end-to-end budgets in ms, comma-separated (default: %(default)s)")
    p.add_argument("--phase-seconds", type=float, default=10.0, help="seconds per phase (default: %(default)s)")
    p.add_argument("--frame-size", type=frame_size_arg, default=(1280, 720), metavar="WxH",
                   help="frames served (default: 1280x720)")
    p.add_argument("--out", type=Path, help="results directory (default: benchmarks/results/scenario-<UTC time>)")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    budgets = [float(b) for b in args.budgets.split(",") if b.strip()]
    if not budgets or min(budgets) <= 0:
        print("error: --budgets must list positive milliseconds, e.g. 30,60", file=sys.stderr)
        return 2
    if os.geteuid() != 0:
        print("error: the CPU-quota phase needs root (a cgroup); run with sudo", file=sys.stderr)
        return 2
    out = args.out or RESULTS_ROOT / time.strftime("scenario-%Y%m%dT%H%M%SZ", time.gmtime())
    out.mkdir(parents=True, exist_ok=True)
    from edgedet.data import SyntheticConfig, render

    frame = render(0, SyntheticConfig(image_size=args.frame_size, seed=11))[0]
    schedule = default_schedule(usable_cores())
    options = {"frame_size": args.frame_size}
    load = os.getloadavg()[0]
    runs: list[RunReport] = []
    with cpu_quota(None, name="edgedet-scenario") as quota:
        quota.add(os.getpid())
        log.info("oracle: timing every artifact under each phase")
        table, ranks = oracle(args.models, frame, schedule, budgets, quota, **options)
        for budget in budgets:
            for kind in ("static", "adaptive"):
                log.info("budget %g ms, %s detector", budget, kind)
                run = run_detector(kind, budget, args.models, frame, schedule, args.phase_seconds, quota,
                                   out / "profiles.json", **options)
                report_run(run, schedule, table, ranks)
                runs.append(run)
    text = format_table(runs)
    print(text)
    busy = f"1-min load average {load:.2f} on {usable_cores()} usable cores at the start"
    print(busy)
    results = {"schedule": [asdict(p) for p in schedule], "phase_seconds": args.phase_seconds,
               "frame_size": list(args.frame_size), "load": busy, "oracle_p90_ms": table,
               "runs": [asdict(r) for r in runs]}
    atomic_write_text(out / "scenario.json", json.dumps(results, indent=1) + "\n")
    plot(runs, schedule, ranks, out / "scenario.png")
    log.info("results in %s", out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
