"""Latency on *this* device: measurement, the device fingerprint, and the on-disk profile cache.

Latency is a property of architecture × device × runtime × precision × threads, not of weights,
so a profile is keyed by exactly those (plus the frame size, since letterboxing cost depends on
it) and reused across starts: the second start of a Detector on the same device measures nothing,
and retrained weights of the same architecture measure nothing either.

The architecture is :func:`architecture_fingerprint`: a hash of the manifest's structural fields
(variant, classes, input/output specs without quantization constants, anchors, backend,
precision, float layers, exporter options and toolchain versions), not of the model file. A
fleet of identical devices profiles once: ``python -m edgedet.profiling export FILE`` on one,
``python -m edgedet.profiling import FILE`` on the others (:func:`export_profiles`,
:func:`import_profiles`); a file from another device fingerprint or runtime version is refused.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import platform
import time
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from edgedet._atomic import atomic_write_text
from edgedet.cpu import resolve_threads
from edgedet.manifest import Manifest

log = logging.getLogger(__name__)

Clock = Callable[[], float]
#: 2: keyed by architecture fingerprint (1 was keyed by the model file's sha256).
CACHE_VERSION = 2
PROFILE_FORMAT = "edgedet-profiles"


class ProfileImportError(ValueError):
    """A profile file cannot be used on this device (other device, other runtime, not a profile)."""


class TooSlow(Exception):
    """Raised by :func:`measure` when the first warm-up call already rules the artifact out."""

    def __init__(self, first_ms: float, limit_ms: float, *, cached: bool = False) -> None:
        super().__init__(f"first call {first_ms:.1f} ms > {limit_ms:.1f} ms")
        self.first_ms, self.limit_ms, self.cached = first_ms, limit_ms, cached


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
            max_seconds: float | None = None, reject_above_ms: float | None = None,
            over_ms: float | None = None, percentile: float = 90) -> LatencyStats:
    """Time ``fn()`` ``runs`` times after ``warmup`` untimed calls.

    ``clock`` is injectable so selection logic can be tested deterministically; ``max_seconds``
    stops early (after at least 3 runs) so a far-over-budget model does not take minutes;
    ``reject_above_ms`` raises :class:`TooSlow` when the first warm-up call (timed) exceeds it:
    a first call is slower than the steady state, never faster by that margin. ``over_ms`` stops
    as soon as enough runs exceed it that the ``percentile`` of all ``runs`` would exceed it too
    (3 of 20 for p90): the verdict "over" is certain, more runs would only refine by how much; a
    first warm-up call over ``over_ms`` also ends the warm-up.
    """
    # with n runs, the p-th percentile lies at or above the k-th smallest, k = floor(p/100 (n-1))
    decisive = runs - math.floor(percentile / 100 * (runs - 1))
    for i in range(warmup):
        t0 = clock()
        fn()
        first_ms = (clock() - t0) * 1000.0
        if i == 0 and reject_above_ms is not None and first_ms > reject_above_ms:
            raise TooSlow(first_ms, reject_above_ms)
        if i == 0 and over_ms is not None and first_ms > over_ms:
            break  # likely over: let the timed runs judge (3 over decide) rather than warm up more
    samples = []
    started = clock()
    for _ in range(runs):
        t0 = clock()
        fn()
        samples.append((clock() - t0) * 1000.0)
        if max_seconds is not None and len(samples) >= 3 and clock() - started > max_seconds:
            break
        if over_ms is not None and sum(x > over_ms for x in samples) >= decisive:
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


def _structure(q: Any) -> Any:
    """A tensor's quantization reduced to its layout: *whether* it is quantized, not the scale and
    zero point, which calibration (and so the weights) decides."""
    return None if q is None else "quantized"


def architecture_fingerprint(manifest: Manifest) -> str:
    """What decides an artifact's latency, without its weights: a hash of the manifest's structural
    fields. Two exports of the same variant, size, backend, precision, quantization layout and
    exporter toolchain share it whatever their weights or calibration.

    From the manifest rather than the model file: it is runtime-neutral (one rule for ONNX,
    OpenVINO and TFLite, read without the runtime), costs no read of a large file (the cached
    start stays fast), and the manifest is by design where everything that shapes the artifact is
    written (``options``, ``float_layers``, ``tools``). The toolchain versions are in, so a new
    exporter that could emit a different graph profiles anew.
    """
    m = manifest
    parts = {
        "variant": m.variant, "family": m.family, "phi": m.phi, "num_classes": m.num_classes,
        "input": {"shape": list(m.input.shape), "layout": m.input.layout, "dtype": m.input.dtype,
                  "quantization": _structure(m.input.quantization)},
        "outputs": sorted([o.role, list(o.shape), o.dtype, _structure(o.quantization)] for o in m.outputs),
        "anchors": [m.anchors.min_level, m.anchors.max_level, m.anchors.num_scales,
                    [list(r) for r in m.anchors.aspect_ratios], m.anchors.image_size],
        "backend": m.backend, "precision": m.precision, "float_layers": sorted(m.float_layers),
        "options": dict(sorted(m.options.items())), "tools": dict(sorted(m.tools.items())),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]


def profile_key(*, architecture: str, backend: str, runtime_version: str, threads: int | None,
                frame_size: tuple[int, int], device: str = "cpu", fingerprint: dict | None = None) -> str:
    """A stable key for one (architecture, runtime, threads, frame size, device) measurement;
    ``architecture`` is :func:`architecture_fingerprint` of the artifact's manifest."""
    parts = {"device": fingerprint or device_fingerprint(), "target": device, "architecture": architecture,
             # None runs on every usable core: key by that count, so a new CPU quota re-measures
             "backend": backend, "runtime": runtime_version, "threads": resolve_threads(threads),
             "frame": list(frame_size)}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]


class ProfileCache:
    """Measurements persisted as one JSON file; a corrupt or older-version file is discarded with a
    warning. ``info`` of an entry carries ``runtime_backend`` and ``runtime_version``, which
    :func:`import_profiles` checks."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._entries = self._load()

    def _load(self) -> dict[str, dict]:
        if not self.path.exists():
            return {}
        try:
            data = json.loads(self.path.read_text())
            if isinstance(data, dict) and isinstance(data.get("version"), int) and data["version"] < CACHE_VERSION:
                log.warning("discarding profile cache %s of version %d (this edgedet keys profiles by "
                            "architecture, version %d); latencies will be re-measured",
                            self.path, data["version"], CACHE_VERSION)
                return {}
            return _parse_profiles(data)
        except Exception as exc:  # any damage means: measure again
            log.warning("discarding unreadable profile cache %s (%s); latencies will be re-measured",
                        self.path, exc)
            return {}

    def entries(self) -> dict[str, dict]:
        """Every stored entry by key (a copy)."""
        return dict(self._entries)

    def merge(self, entries: dict[str, dict]) -> None:
        """Add (or replace) ``entries`` and save."""
        self._entries.update(entries)
        self._save()

    def _save(self) -> None:
        payload = {"format": PROFILE_FORMAT, "version": CACHE_VERSION, "device": device_fingerprint(),
                   "profiles": self._entries}
        atomic_write_text(self.path, json.dumps(payload, indent=1, sort_keys=True))

    def get(self, key: str) -> LatencyStats | None:
        entry = self._entries.get(key)
        return LatencyStats(**entry["latency"]) if entry else None

    def put(self, key: str, stats: LatencyStats, info: dict | None = None) -> None:
        self._entries[key] = {"latency": asdict(stats), "info": info or {}, "measured": time.time()}
        self._save()

    def __len__(self) -> int:
        return len(self._entries)


def _parse_profiles(data: Any) -> dict[str, dict]:
    """The ``profiles`` of a cache or profile file, every entry checked (or ValueError)."""
    if not isinstance(data, dict) or data.get("version") != CACHE_VERSION or not isinstance(data.get("profiles"), dict):
        raise ValueError("unexpected layout or version")
    for entry in data["profiles"].values():
        LatencyStats(**entry["latency"])  # every entry must parse, or none is trusted
    return data["profiles"]


def export_profiles(cache: str | Path, out: str | Path) -> int:
    """Write this device's profiles from the cache file ``cache`` to ``out``; return how many."""
    entries = ProfileCache(cache).entries()
    payload = {"format": PROFILE_FORMAT, "version": CACHE_VERSION, "device": device_fingerprint(),
               "profiles": entries}
    atomic_write_text(Path(out), json.dumps(payload, indent=1, sort_keys=True))
    log.info("exported %d profiles from %s to %s", len(entries), cache, out)
    return len(entries)


def import_profiles(source: str | Path, cache: str | Path, *,
                    runtime_versions: Callable[[str], str | None] | None = None) -> int:
    """Merge the profile file ``source`` (from :func:`export_profiles` on an identical device) into the
    cache file ``cache``; return how many entries were imported.

    Refused with :class:`ProfileImportError` when the file is not a profile file, was measured on
    another device fingerprint, or an entry's runtime version differs from the one installed here
    (``runtime_versions(backend)`` gives it; None for a runtime not installed: those entries are
    skipped, they could never be looked up).
    """
    try:
        data = json.loads(Path(source).read_text())
        if data.get("format") != PROFILE_FORMAT:
            raise ValueError(f"format is {data.get('format')!r}, not {PROFILE_FORMAT!r}")
        if data.get("version") != CACHE_VERSION:
            raise ValueError(f"version {data.get('version')!r}; this edgedet reads version {CACHE_VERSION}: "
                             "export it again with this edgedet")
        entries = _parse_profiles(data)
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
        raise ProfileImportError(f"{source} is not a usable edgedet profile file: {exc}") from exc
    here = device_fingerprint()
    theirs = data.get("device")
    if theirs != here:
        differ = sorted(k for k in set(here) | set(theirs or {}) if (theirs or {}).get(k) != here.get(k))
        raise ProfileImportError(
            f"{source} was profiled on another device ({', '.join(f'{k}: {(theirs or {}).get(k)!r}' for k in differ)}; "
            f"this device has {', '.join(f'{k}: {here.get(k)!r}' for k in differ)}); latencies do not "
            "transfer between devices: profile this one (start a Detector) and export from it")
    versions = runtime_versions or _installed_runtime
    accepted, mismatched, skipped = {}, [], 0
    for key, entry in entries.items():
        info = entry.get("info") or {}
        backend, version = info.get("runtime_backend"), info.get("runtime_version")
        if not backend or not version:
            raise ProfileImportError(f"{source}: entry {key} does not say its runtime; export it again "
                                     "with this edgedet")
        installed = versions(backend)
        if installed is None:
            skipped += 1
        elif installed != version:
            mismatched.append(f"{info.get('artifact', key)}: {backend} {version} (installed here: {installed})")
        else:
            accepted[key] = entry
    if mismatched:
        raise ProfileImportError(f"{source} was profiled with other runtime versions: " + "; ".join(mismatched[:5])
                                 + ("..." if len(mismatched) > 5 else "")
                                 + ". Install the same runtime versions as the profiled device, or profile this one")
    ProfileCache(cache).merge(accepted)
    log.info("imported %d profiles from %s into %s%s", len(accepted), source, cache,
             f" ({skipped} of runtimes not installed here skipped)" if skipped else "")
    return len(accepted)


def _installed_runtime(backend: str) -> str | None:
    from edgedet.backends import BackendError, runtime_version

    try:
        return runtime_version(backend)
    except BackendError:
        return None


def default_cache_path() -> Path:
    """The Detector's default profile cache: ``profiles.json`` in :func:`edgedet.hub.cache_dir`."""
    from edgedet.hub import cache_dir

    return cache_dir() / "profiles.json"


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m edgedet.profiling export|import FILE [--cache PATH]``."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m edgedet.profiling",
                                     description="Share device latency profiles across a fleet of identical devices.")
    parser.add_argument("action", choices=("export", "import"))
    parser.add_argument("file", type=Path, help="the profile file to write (export) or read (import)")
    parser.add_argument("--cache", type=Path, default=None, help="the profile cache (default: "
                        "profiles.json in the edgedet cache)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cache = args.cache or default_cache_path()
    try:
        if args.action == "export":
            count = export_profiles(cache, args.file)
        else:
            count = import_profiles(args.file, cache)
    except ProfileImportError as exc:
        log.error("%s", exc)
        return 2
    if count == 0:
        log.warning("no profiles %s (cache %s)", "to export" if args.action == "export" else "imported", cache)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
