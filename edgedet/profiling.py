"""Latency on *this* device: measurement, the device fingerprint, and the on-disk profile cache.

Latency is a property of architecture × device × runtime × precision × threads, not of weights,
so a profile is keyed by exactly those (plus the frame size, since letterboxing cost depends on
it) and reused across starts: the second start of a Detector on the same device measures nothing.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import time
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable

import numpy as np

from edgedet._atomic import atomic_write_text

log = logging.getLogger(__name__)

Clock = Callable[[], float]
CACHE_VERSION = 1


@dataclass(frozen=True)
class LatencyStats:
    """Latency percentiles in milliseconds over ``runs`` timed calls (warm-up excluded)."""

    p50: float
    p90: float
    p99: float
    mean: float
    min: float
    runs: int

    def percentile_ms(self, percentile: float) -> float:
        """The stored percentile closest to ``percentile`` (50, 90 or 99)."""
        return {50: self.p50, 90: self.p90, 99: self.p99}[min((50, 90, 99), key=lambda p: abs(p - percentile))]

    @classmethod
    def from_samples(cls, samples_ms: list[float] | np.ndarray) -> "LatencyStats":
        s = np.asarray(samples_ms, dtype=np.float64)
        if s.size == 0:
            raise ValueError("no latency samples")
        p50, p90, p99 = np.percentile(s, [50, 90, 99])
        return cls(float(p50), float(p90), float(p99), float(s.mean()), float(s.min()), int(s.size))


def measure(fn: Callable[[], object], *, warmup: int = 3, runs: int = 20, clock: Clock = time.perf_counter,
            max_seconds: float | None = None) -> LatencyStats:
    """Time ``fn()`` ``runs`` times after ``warmup`` untimed calls.

    ``clock`` is injectable so selection logic can be tested deterministically; ``max_seconds``
    stops early (after at least 3 runs) so a far-over-budget model does not take minutes.
    """
    for _ in range(warmup):
        fn()
    samples = []
    started = clock()
    for _ in range(runs):
        t0 = clock()
        fn()
        samples.append((clock() - t0) * 1000.0)
        if max_seconds is not None and len(samples) >= 3 and clock() - started > max_seconds:
            break
    return LatencyStats.from_samples(samples)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


@lru_cache(maxsize=1)
def device_fingerprint() -> dict[str, str | int]:
    """What makes latencies comparable: CPU model, core count, OS and architecture."""
    return {"cpu": _cpu_model(), "cores": os.cpu_count() or 0, "os": platform.system(),
            "arch": platform.machine(), "python": platform.python_version()}


def profile_key(*, artifact_sha256: str, backend: str, runtime_version: str, threads: int | None,
                frame_size: tuple[int, int], device: str = "cpu", fingerprint: dict | None = None) -> str:
    """A stable key for one (artifact, runtime, threads, frame size, device) measurement."""
    parts = {"device": fingerprint or device_fingerprint(), "target": device, "artifact": artifact_sha256,
             "backend": backend, "runtime": runtime_version, "threads": threads or 0,
             "frame": list(frame_size)}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]


class ProfileCache:
    """Measurements persisted as one JSON file; a corrupt file is discarded with a warning."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._entries = self._load()

    def _load(self) -> dict[str, dict]:
        if not self.path.exists():
            return {}
        try:
            data = json.loads(self.path.read_text())
            if data.get("version") != CACHE_VERSION or not isinstance(data.get("profiles"), dict):
                raise ValueError("unexpected layout or version")
            for entry in data["profiles"].values():
                LatencyStats(**entry["latency"])  # every entry must parse, or none is trusted
            return data["profiles"]
        except Exception as exc:  # any damage means: measure again
            log.warning("discarding unreadable profile cache %s (%s); latencies will be re-measured",
                        self.path, exc)
            return {}

    def get(self, key: str) -> LatencyStats | None:
        entry = self._entries.get(key)
        return LatencyStats(**entry["latency"]) if entry else None

    def put(self, key: str, stats: LatencyStats, info: dict | None = None) -> None:
        self._entries[key] = {"latency": asdict(stats), "info": info or {}, "measured": time.time()}
        payload = {"version": CACHE_VERSION, "device": device_fingerprint(), "profiles": self._entries}
        atomic_write_text(self.path, json.dumps(payload, indent=1, sort_keys=True))

    def __len__(self) -> int:
        return len(self._entries)
