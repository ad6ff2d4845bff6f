"""``Detector``: choose the most accurate EfficientDet artifact that meets a latency budget *on this
device*, then turn frames into :class:`~edgedet.detections.Detections`.

Selection (docs/ARCHITECTURE.md): every artifact — a (variant, input size, backend, precision) —
has an expected accuracy (:func:`accuracy_ranks`: its measured mAP when the converter scored every
candidate on one evaluation set, else the published COCO AP of its variant adjusted for its input
size by :func:`edgedet.config.expected_coco_ap`). The detector serves the most accurate artifact
whose end-to-end latency (preprocess + inference + decode + NMS, after warm-up, on a frame of the
size the caller will send) is within budget. Within a family (D, Lite) latency is monotone in φ
and in input size for one runtime and precision, not across them (d1 at 384 px may beat d0 at
512), so the walk visits (variant, size) groups up in φ then size and skips, untimed, what is
bounded from below by an artifact that missed, and what ranks no higher than an artifact already
within budget. The D and Lite walks each end with their most accurate fitting artifact; the more
accurate of the two is served. Measurements are cached per device, runtime, threads, artifact
architecture (input size included) and frame size, so a second start measures nothing.

Profiling respects the caller's time: each (variant, size) is scouted by its int8 artifacts (the
likely fastest); the other precisions of the groups that fit are timed afterwards, most accurate
first, only while they can still win (fp16 only if no fp32 above it fits); an artifact whose first
warm-up call already takes more than ``REJECT_FACTOR`` × the budget is rejected untimed, and the
other precisions of a runtime whose int8 was rejected are skipped; timing stops once an artifact's
percentile is certain to be over budget.

Serving adapts (issue 13): with a budget, :class:`edgedet.adaptive.AdaptivePolicy` watches the
latency of the detector's own calls and steps to a faster artifact when the device slows down,
back up when it recovers; the neighbours are kept loaded and warm on a background thread, and a
switch swaps one reference under a lock (a call finishes on the pipeline it started with).
"""
from __future__ import annotations

import logging
import os
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal, NamedTuple, Sequence

import numpy as np

from edgedet.adaptive import AdaptiveConfig, AdaptivePolicy, Rung, Switch
from edgedet.config import expected_coco_ap, get_config
from edgedet.cpu import usable_cores
from edgedet.backends import BACKENDS, BackendError, available_backends, load_backend, runtime_version
from edgedet.detections import Detections
from edgedet.hub import cache_dir
from edgedet.manifest import MANIFEST_NAME, Manifest, ManifestError
from edgedet.pipeline import Pipeline  # re-exported: it was defined here
from edgedet.postprocess import DEFAULT_SCORE_THRESHOLD
from edgedet.preprocess import InputError, validate_frame
from edgedet.profiling import (Clock, LatencyStats, ProfileCache, TooSlow, architecture_fingerprint,
                               default_cache_path, measure, profile_key)

log = logging.getLogger(__name__)

#: Where models are looked for when ``models=`` is not given (overridden by ``EDGEDET_MODELS``).
MODELS_ENV = "EDGEDET_MODELS"
#: More accurate first: the order in which precisions of the same φ are preferred.
PRECISION_RANK = {"fp32": 0, "fp16": 1, "int8": 2}
#: Likely fastest first: the order in which the precisions of one φ are timed.
SPEED_ORDER = {"int8": 0, "fp16": 1, "fp32": 2}
#: An artifact whose first warm-up call exceeds this × the budget is rejected untimed (a first call
#: is slower than the steady state, but not by this much on the runtimes measured: see README).
REJECT_FACTOR = 3.0
#: An int8 artifact over this × the budget rules out the other precisions of its runtime: they
#: would have to run this much faster than int8 (int8 measured 1.3-3x faster than fp32 here).
INT8_HOPELESS_FACTOR = 1.5
#: When no budget forces a measurement, the runtime tried first.
BACKEND_PREFERENCE = ("onnxruntime", "openvino", "tflite", "torch")
TYPICAL_FRAME = (1280, 720)  # width, height: an HD camera
#: How often (seconds of the policy's clock) an adaptive Detector with ``threads=None`` re-reads the
#: cores it may use. A cgroup CPU quota can change under a running process (a container limit, a
#: thermal governor); threads above the quota burn it in bursts and then stall for the rest of
#: each quota period, so latency jumps by tens of ms on a fraction of the calls.
CORES_CHECK_S = 0.5


class BudgetError(RuntimeError):
    """No artifact meets the latency budget on this device."""


class NoArtifactsError(FileNotFoundError):
    """No usable artifact was found where the detector looked."""


def default_models_dir() -> Path:
    """``$EDGEDET_MODELS``, else ``<edgedet cache>/models`` (see :func:`edgedet.hub.cache_dir`)."""
    env = os.environ.get(MODELS_ENV)
    return Path(env).expanduser() if env else cache_dir() / "models"


@dataclass(frozen=True)
class Artifact:
    """A manifest and the directory holding its files."""

    manifest: Manifest
    directory: Path

    @property
    def name(self) -> str:
        return self.manifest.artifact_name

    @property
    def sha256(self) -> str:
        return self.manifest.files[self.manifest.model_file]

    @property
    def model_path(self) -> Path:
        return self.manifest.model_path(self.directory)


def find_artifacts(models: str | Path) -> list[Artifact]:
    """Every artifact under ``models`` (a directory searched recursively for ``manifest.json``).

    Unreadable manifests are skipped with a warning, so one bad copy does not hide the rest;
    hidden directories (the converter's staging) and ``*.failed`` ones are not looked in.
    """
    root = Path(models).expanduser()
    if not root.exists():
        return []
    if root.is_file():
        raise NoArtifactsError(f"{root} is a file; pass the directory of exported models "
                               "(edgedet-convert --out DIR) or give the bundle to Detector(models=...)")
    found = []
    for path in sorted(root.rglob(MANIFEST_NAME)):
        relative = path.relative_to(root).parts[:-1]
        # The converter stages builds in hidden directories and parks failed ones in *.failed.
        if any(part.startswith(".") or part.endswith(".failed") for part in relative):
            continue
        try:
            found.append(Artifact(Manifest.load(path), path.parent))
        except ManifestError as exc:
            log.warning("skipping %s: %s", path, exc)
    return found


@dataclass(frozen=True)
class Reload:
    """The served artifact reloaded with another thread count: the cores this process may use
    changed (CPU affinity or cgroup quota) while serving with ``threads=None``."""

    at: float  #: clock reading of the decision (the adaptive policy's clock)
    artifact: str
    threads_from: int
    threads_to: int

    @property
    def reason(self) -> str:
        return (f"usable cores changed from {self.threads_from} to {self.threads_to} (CPU affinity or cgroup "
                f"quota): {self.artifact} reloaded with {self.threads_to} threads")


class Served(NamedTuple):
    """One call's result and what served it (:meth:`Detector.serve`)."""

    detections: Detections
    artifact: Artifact  #: the artifact this call ran on
    latency_ms: float  #: the call's end-to-end latency


@dataclass
class ProfileRow:
    """One line of the selection table."""

    artifact: str
    variant: str
    phi: int
    backend: str
    precision: str
    latency_ms: float | None  # at the detector's percentile; None if not measured
    fits: bool | None
    source: str  # "measured", "cache", "skipped (<why>)", "rejected ...", "chosen by preference", or an error
    image_size: int | None = None  # the artifact's input side
    note: str = ""  # the manifest's options["note"], e.g. where INT8 cannot pay on this backend


class ProfileTable(list):
    """The rows of a selection; ``str()`` renders an aligned text table."""

    def __str__(self) -> str:
        header = ("artifact", "latency ms", "fits", "source")
        rows = [(r.artifact, "-" if r.latency_ms is None else f"{r.latency_ms:.1f}",
                 "-" if r.fits is None else ("yes" if r.fits else "no"), r.source) for r in self]
        if any(r.note for r in self):
            header, rows = (*header, "note"), [(*row, r.note) for row, r in zip(rows, self)]
        widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
        lines = ["  ".join(str(x).ljust(w) for x, w in zip(row, widths)) for row in (header, *rows)]
        return "\n".join(lines)


class Detector:
    """Serve the most accurate EfficientDet artifact whose end-to-end latency meets ``budget_ms`` on
    this device (variants, input sizes and precisions ranked by :func:`accuracy_ranks`).

    Args:
        budget_ms: end-to-end latency budget per frame (at ``percentile``). With ``variant`` only,
            no budget is needed and nothing is measured.
        variant: serve this variant (``"d2"``, ``"lite0"``...) instead of choosing by budget.
        models: directory of exported artifacts, or a bundle file (``python -m edgedet.bundle
            pack``), unpacked and verified into the cache once (default :func:`default_models_dir`).
        backend: ``"auto"`` (any of ``"onnxruntime"``, ``"openvino"``, ``"tflite"``) or one of
            them, or ``"torch"`` (the PyTorch reference: only when named; needs torch).
        precision: ``"auto"`` or one of ``"fp32"``, ``"fp16"``, ``"int8"``.
        threads: inference threads (None: every core this process may use, its affinity and cgroup
            CPU quota respected, on every runtime; an adaptive detector re-reads them while serving
            and reloads the served artifact when they change, see :attr:`reloads`).
        percentile: which latency percentile must meet the budget (50, 90 or 99).
        frame_size: (width, height) of the frames you will send; letterboxing cost depends on it.
        device: runtime device: ``"cpu"``; ``"cuda"``/``"tensorrt"`` for onnxruntime, ``"cuda"`` for torch;
            ``"gpu"``/``"npu"``/``"auto"`` for OpenVINO.
        on_miss: ``"error"`` raises :class:`BudgetError` when nothing fits; ``"smallest"`` serves the
            fastest artifact with a warning.
        refresh: re-measure even where the profile cache has figures.
        profile_cache: the latency cache file (default ``profiles.json`` in the edgedet cache,
            :func:`edgedet.hub.cache_dir`), or ``False`` to keep none.
        score_threshold, iou_threshold, max_detections: post-processing settings.
        rgb: frames are RGB instead of OpenCV's BGR.
        warmup, runs: untimed and timed calls per measurement.
        clock: the timer of the profiling measurements (injectable for tests).
        adapt: with a budget, step to a faster artifact when the device slows down and back when it
            recovers (True, the default, or an :class:`~edgedet.adaptive.AdaptiveConfig`); False
            pins the start-up choice.
        on_switch: called with each applied :class:`~edgedet.adaptive.Switch` (from the thread that
            completed it); every switch is also logged and appended to :attr:`switches`.
    """

    def __init__(self, budget_ms: float | None = None, *, variant: str | None = None,
                 models: str | Path | None = None, backend: str = "auto", precision: str = "auto",
                 threads: int | None = None, percentile: float = 90, frame_size: tuple[int, int] = TYPICAL_FRAME,
                 device: str = "cpu", on_miss: Literal["error", "smallest"] = "error", refresh: bool = False,
                 profile_cache: str | Path | Literal[False] | None = None, score_threshold: float = DEFAULT_SCORE_THRESHOLD,
                 iou_threshold: float = 0.5, max_detections: int = 100, rgb: bool = False, warmup: int = 3,
                 runs: int = 20, clock: Clock = time.perf_counter, adapt: bool | AdaptiveConfig = True,
                 on_switch: Callable[[Switch], None] | None = None) -> None:
        if budget_ms is None and variant is None:
            raise ValueError("give a latency budget (Detector(budget_ms=30)) or a variant (Detector(variant='d0'))")
        if budget_ms is not None and not (isinstance(budget_ms, (int, float)) and np.isfinite(budget_ms)
                                          and budget_ms > 0):
            raise ValueError(f"budget_ms must be a positive number of milliseconds, got {budget_ms!r}")
        if on_miss not in ("error", "smallest"):
            raise ValueError(f"on_miss must be 'error' or 'smallest', got {on_miss!r}")
        if percentile not in (50, 90, 99):
            raise ValueError(f"percentile must be 50, 90 or 99, got {percentile!r}")
        if precision != "auto" and precision not in PRECISION_RANK:
            raise ValueError(f"precision must be 'auto' or one of {sorted(PRECISION_RANK)}, got {precision!r}")
        width, height = frame_size
        if width <= 0 or height <= 0:
            raise ValueError(f"frame_size must be (width, height) in pixels, got {frame_size!r}")
        self._last = threading.local()  # last_served, per calling thread
        self.budget_ms, self.percentile, self.threads, self.device = budget_ms, percentile, threads, device
        self.frame_size = (int(width), int(height))
        self._post = dict(score_threshold=score_threshold, iou_threshold=iou_threshold,
                          max_detections=max_detections, rgb=rgb)
        self._timing = dict(warmup=warmup, runs=runs, clock=clock)
        self.models_dir = _models_dir(models)
        cache_path = (None if profile_cache is False else
                      Path(profile_cache) if profile_cache is not None else default_cache_path())
        self._cache = ProfileCache(cache_path) if cache_path is not None else None
        self._refresh = refresh
        self.profile = ProfileTable()
        #: Every applied switch, oldest first (see ``on_switch``).
        self.switches: list[Switch] = []
        #: Every reload with another thread count, oldest first (``threads=None`` only).
        self.reloads: list[Reload] = []
        self._cores_checked = -float("inf")
        self._reloading_to: int | None = None  # the thread count a pending reload loads with
        # What later loads run with: ``threads``, or once the usable cores were seen to change, the
        # count the serving thread read (not re-read on the loader thread).
        self._load_threads: int | None = threads
        self._on_switch = on_switch
        self._lock = threading.Lock()
        self._policy: AdaptivePolicy | None = None
        self._profiled: dict[str, tuple[Artifact, float]] = {}  # name -> (artifact, profiled ms)
        self._warm: dict[str, Future] = {}  # name -> Future[Pipeline]: loaded and warm, or loading
        self._executor: ThreadPoolExecutor | None = None
        self._loading = threading.Event()  # set while the background thread loads or warms a model
        self._measured_pipelines: dict[str, Pipeline] = {}  # loaded while profiling: reused as warm neighbours
        self._ranks: dict[str, tuple] = {}  # name -> accuracy rank of each candidate (accuracy_ranks)

        candidates = self._candidates(variant, backend, precision)
        if budget_ms is None:
            chosen = self._pick_without_budget(candidates)
            pipeline, latency = self._load(chosen), None
        else:
            chosen, pipeline, latency = self._select(candidates, on_miss)
        # The one reference a switch replaces: (artifact, pipeline, profiled ms).
        self._serving: tuple[Artifact, Pipeline, float | None] = (chosen, pipeline, latency)
        log.info("edgedet: serving %s (%s)%s", chosen.name, pipeline.backend.describe(),
                 "" if latency is None else f", p{percentile:g} {latency:.1f} ms within {budget_ms:g} ms")
        if budget_ms is not None and adapt:
            config = AdaptiveConfig(percentile=percentile) if adapt is True else adapt  # the profile's percentile
            self._start_adapting(config, chosen, pipeline)
        self._measured_pipelines = {}  # what adapting did not keep is released

    # ------------------------------------------------------------------------------- public

    @property
    def pipeline(self) -> Pipeline:
        """The loaded artifact with its pre/post-processing (its ``backend``, ``prepare()``...)."""
        return self._serving[1]

    @property
    def artifact(self) -> Artifact:
        """The artifact served now (it changes when serving adapts; :meth:`serve` says per call)."""
        return self._serving[0]

    @property
    def latency_ms(self) -> float | None:
        """The served artifact's profiled latency (None when chosen without a budget)."""
        return self._serving[2]

    @property
    def adaptive(self) -> bool:
        """Whether serving adapts to the device's speed (a budget, ``adapt=True``, and somewhere to step)."""
        return self._policy is not None

    @property
    def variant(self) -> str:
        return self.artifact.manifest.variant

    @property
    def backend(self) -> str:
        return self.artifact.manifest.backend

    @property
    def precision(self) -> str:
        return self.artifact.manifest.precision

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(self.artifact.manifest.labels)

    def __call__(self, frame: np.ndarray) -> Detections:
        """Detect objects in one H×W×3 uint8 frame (BGR unless ``rgb=True``)."""
        return self.serve(frame).detections

    def serve(self, frame: np.ndarray) -> Served:
        """Like calling the detector, and say which artifact served the call and how long it took."""
        started = time.perf_counter()
        if isinstance(frame, (list, tuple)):
            raise InputError("Detector(frame) takes one frame; use detector.detect_batch(frames) for several")
        artifact, pipeline, _ = self._serving  # one read: the call ends on the pipeline it started with
        detections = pipeline(validate_frame(frame))[0]
        latency_ms = (time.perf_counter() - started) * 1000.0
        self._observe(artifact, latency_ms)
        served = Served(detections, artifact, latency_ms)
        self._last.served = served
        return served

    @property
    def serving(self) -> tuple[Artifact, Pipeline]:
        """The artifact served now and its pipeline, read together (a switch replaces both at once).

        For callers that run a frame's steps themselves, on threads of their own (the camera loop's
        throughput mode: ``Pipeline.prepare``, ``backend.run``, ``Pipeline.decode``): a frame stays
        on the pipeline it started with, and its latency goes back through :meth:`observe`."""
        artifact, pipeline, _ = self._serving
        return artifact, pipeline

    def observe(self, artifact: Artifact, latency_ms: float) -> None:
        """Tell adaptive serving how long a frame that ``artifact`` served outside :meth:`serve`
        took: its own preprocess + inference + decode time, as :meth:`serve` measures its calls
        (not time it spent waiting between threads)."""
        self._observe(artifact, latency_ms)

    @property
    def last_served(self) -> Served | None:
        """This thread's last completed call: what served it (for callers that go through a wrapper,
        such as the camera loop's tracker, and so cannot call :meth:`serve` themselves)."""
        return getattr(self._last, "served", None)

    def detect(self, frame: np.ndarray) -> Detections:
        """Same as calling the detector."""
        return self(frame)

    def detect_batch(self, frames: Sequence[np.ndarray]) -> list[Detections]:
        """Detect in several frames (one inference call per artifact batch size)."""
        if len(frames) == 0:
            raise InputError("detect_batch() got no frames")
        results: list[Detections] = []
        start = 0
        while start < len(frames):
            artifact, pipeline, _ = self._serving  # per chunk: a switch takes effect between chunks
            batch = artifact.manifest.input.batch_size
            started = time.perf_counter()
            chunk = list(frames[start:start + batch])
            count = len(chunk)
            chunk += [chunk[-1]] * (batch - count)  # a fixed-batch artifact: pad the last chunk
            results.extend(pipeline(chunk)[:count])
            if batch == 1:  # the profile is of one frame per call
                self._observe(artifact, (time.perf_counter() - started) * 1000.0)
            start += count
        return results

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Block until the artifacts adaptive serving keeps warm are loaded (they load in the
        background after the start, a switch or a reload); True when they are, False on timeout.
        Serving never needs this (calls made meanwhile are served, just not observed); a benchmark
        or a test that wants the steady state does."""
        with self._lock:
            futures = list(self._warm.values())
        return not wait_futures(futures, timeout=timeout).not_done

    def close(self) -> None:
        """Stop adapting and release the background loader and the warm neighbours."""
        with self._lock:
            self._policy = None
            self._warm.clear()
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)

    def __enter__(self) -> "Detector":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        lat = "" if self.latency_ms is None else f", latency_ms={self.latency_ms:.1f}"
        return (f"Detector(variant={self.variant!r}, backend={self.backend!r}, "
                f"precision={self.precision!r}{lat})")

    # ------------------------------------------------------------------------------- selection

    def _candidates(self, variant: str | None, backend: str, precision: str) -> list[Artifact]:
        artifacts = find_artifacts(self.models_dir)
        how = ("make some with: edgedet-convert --variants lite0,d0 --formats onnx --precisions fp32,int8 "
               f"--out {self.models_dir}")
        if not artifacts:
            raise NoArtifactsError(f"no exported models found in {self.models_dir} (looked for */{MANIFEST_NAME}; "
                                   f"set models= or ${MODELS_ENV}); {how}")
        runtimes = available_backends()
        if backend != "auto":
            if backend not in BACKENDS:
                raise BackendError(f"unknown backend {backend!r}; choose 'auto' or one of {', '.join(BACKENDS)}")
            if not available_backends([backend]):
                raise BackendError(f"backend {backend!r} is not usable here (installed runtimes: {runtimes}); "
                                   f"install it: {_install_hint(backend)}")
            runtimes = [backend]
        kept = [a for a in artifacts
                if a.manifest.backend in runtimes
                and (precision == "auto" or a.manifest.precision == precision)
                and (variant is None or a.manifest.variant == variant)]
        if not kept:
            have = sorted({(a.manifest.variant, a.manifest.backend, a.manifest.precision) for a in artifacts})
            raise NoArtifactsError(
                f"none of the {len(artifacts)} artifacts in {self.models_dir} matches variant={variant or 'any'}, "
                f"backend={backend} (usable here: {runtimes}), precision={precision}; found: "
                + ", ".join("/".join(h) for h in have) + f"; {how}")
        return kept

    def _pick_without_budget(self, candidates: list[Artifact]) -> Artifact:
        def preference(a: Artifact):
            m = a.manifest
            return (PRECISION_RANK[m.precision], BACKEND_PREFERENCE.index(m.backend))

        chosen = min(candidates, key=preference)
        self.profile.append(ProfileRow(chosen.name, chosen.manifest.variant, chosen.manifest.phi,
                                       chosen.manifest.backend, chosen.manifest.precision, None, None,
                                       "chosen by preference (no budget)", image_size=chosen.manifest.image_size,
                                       note=chosen.manifest.options.get("note", "")))
        return chosen

    def _load(self, artifact: Artifact) -> Pipeline:
        artifact.manifest.verify_files(artifact.directory)  # never serve a file that is not the exported one
        options = {}
        if artifact.manifest.backend in ("onnxruntime", "openvino", "torch"):
            options["device"] = self.device.upper() if artifact.manifest.backend == "openvino" else self.device
        if artifact.manifest.backend == "openvino" and artifact.manifest.precision == "fp32":
            options["inference_precision"] = "f32"  # as verified at export; bf16 would be a silent change
        backend = load_backend(artifact.manifest.backend, artifact.model_path, threads=self._load_threads, **options)
        return Pipeline(artifact, backend, **self._post)

    def _frame(self) -> np.ndarray:
        width, height = self.frame_size
        rng = np.random.default_rng(0)
        return rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)

    def _reject_limit_ms(self) -> float | None:
        return None if self.budget_ms is None else REJECT_FACTOR * self.budget_ms

    def _latency(self, artifact: Artifact) -> tuple[LatencyStats, str, Pipeline | None]:
        """The artifact's end-to-end latency: from the cache, else measured (returns the pipeline).

        Raises :class:`TooSlow` when its first warm-up call (now, or as cached) is over
        ``REJECT_FACTOR`` × the budget.
        """
        m = artifact.manifest
        version = runtime_version(m.backend)
        key = profile_key(architecture=architecture_fingerprint(m), backend=m.backend, runtime_version=version,
                          threads=self.threads, frame_size=self.frame_size, device=self.device)
        limit = self._reject_limit_ms()
        if self._cache is not None and not self._refresh:
            cached = self._cache.get(key)
            # runs == 0: a cached rejection, which only says "slower than its first call"
            if cached is not None and cached.runs == 0 and limit is not None and cached.p90 > limit:
                raise TooSlow(cached.p90, limit, cached=True)
            if cached is not None and cached.runs > 0:
                return cached, "cache", None
        pipeline = self._load(artifact)
        frame = self._frame()
        info = {"artifact": artifact.name, "frame_size": list(self.frame_size), "threads": self.threads,
                "runtime_backend": m.backend, "runtime_version": version, "backend": pipeline.backend.describe()}
        # A model far over budget gets few runs: its verdict does not need a tight percentile.
        seconds = None if self.budget_ms is None else max(2.0, 4 * self._timing["runs"] * self.budget_ms / 1000)
        try:
            stats = measure(lambda: pipeline(frame), warmup=max(1, self._timing["warmup"]),
                            runs=self._timing["runs"], clock=self._timing["clock"], max_seconds=seconds,
                            reject_above_ms=limit, over_ms=self.budget_ms, percentile=self.percentile)
        except TooSlow as slow:
            if self._cache is not None:
                first = slow.first_ms
                self._cache.put(key, LatencyStats(first, first, first, first, first, 0), {**info, "rejected": True})
            raise
        if self._cache is not None:
            self._cache.put(key, stats, info)
        return stats, "measured", pipeline

    def _row(self, a: Artifact, latency: float | None, fits: bool | None, source: str) -> None:
        m = a.manifest
        self.profile.append(ProfileRow(a.name, m.variant, m.phi, m.backend, m.precision, latency, fits, source,
                                       image_size=m.image_size, note=m.options.get("note", "")))

    def _time_all(self, artifacts: list[Artifact], budget: float, hopeless: dict[str, str],
                  over: list[Artifact]) -> list[tuple[float, Artifact, Pipeline | None]]:
        """Latencies of ``artifacts`` (in the order given), rejecting and skipping what cannot fit.

        ``hopeless`` (backend -> why) is shared by the calls for one (variant, size): a rejected
        int8 skips the other precisions of its runtime. Every artifact judged over budget (measured
        over, rejected, or skipped as hopeless) is appended to ``over``. Returns ``(latency,
        artifact, pipeline or None)`` of each artifact actually timed (or cached).
        """
        measured = []
        for a in artifacts:
            m = a.manifest
            if m.backend in hopeless:
                self._row(a, None, False, f"skipped ({hopeless[m.backend]})")
                over.append(a)
                continue
            try:
                stats, source, pipeline = self._latency(a)
            except TooSlow as slow:
                log.info("%s: rejected, first call %.1f ms > %.1f ms (%g x budget)", a.name, slow.first_ms,
                         slow.limit_ms, REJECT_FACTOR)
                self._row(a, slow.first_ms, False, f"rejected {'(cache)' if slow.cached else 'after warm-up'}: "
                          f"first call > {REJECT_FACTOR:g}x budget")
                over.append(a)
                if m.precision == "int8":  # the others of this runtime are slower (fp16 need not beat fp32 on CPU)
                    hopeless[m.backend] = f"int8 of {m.backend} already {slow.first_ms / budget:.1f}x over budget"
                continue
            except (BackendError, ManifestError) as exc:
                log.warning("cannot use %s: %s", a.name, exc)
                self._row(a, None, None, f"error: {exc}")
                continue
            latency = stats.percentile_ms(self.percentile)
            fits = latency <= budget
            self._row(a, latency, fits, source)
            if not fits:
                over.append(a)
            if m.precision == "int8" and latency > INT8_HOPELESS_FACTOR * budget:
                hopeless[m.backend] = f"int8 of {m.backend} already {latency / budget:.1f}x over budget"
            log.info("%s: p%g %.1f ms (%s) %s budget %.1f ms", a.name, self.percentile, latency, source,
                     "within" if fits else "over", budget)
            measured.append((latency, a, pipeline))
        return measured

    def _select(self, candidates: list[Artifact], on_miss: str) -> tuple[Artifact, Pipeline, float]:
        budget = float(self.budget_ms)  # type: ignore[arg-type]
        self._ranks = dict(zip((a.name for a in candidates), accuracy_ranks([a.manifest for a in candidates])))
        by_family: dict[str, list[Artifact]] = {}
        for a in candidates:
            by_family.setdefault(a.manifest.family, []).append(a)

        best: list[tuple[tuple, Artifact, float, Pipeline | None]] = []
        measured_all: list[tuple[float, Artifact, Pipeline | None]] = []
        for family, artifacts in by_family.items():
            winner = self._walk(artifacts, budget, measured_all)
            if winner is not None:
                best.append(winner)
        self._profiled = {a.name: (a, latency) for latency, a, _ in measured_all}
        self._measured_pipelines = {a.name: p for _, a, p in measured_all if p is not None}

        if best:
            _, artifact, latency, pipeline = max(best, key=lambda t: t[0])
            return artifact, pipeline or self._load(artifact), latency
        if not measured_all:
            if any(row.fits is False for row in self.profile):
                latency, name = min((row.latency_ms or float("inf"), row.artifact) for row in self.profile
                                    if row.fits is False)
                raise BudgetError(f"no artifact meets the {budget:g} ms budget on this device: the fastest first "
                                  f"call, {name}, took {latency:.1f} ms (over {REJECT_FACTOR:g}x the budget)."
                                  " Export INT8 artifacts, a smaller variant (lite0) or input size "
                                  "(edgedet-convert --image-sizes), or raise the budget.\n" + str(self.profile))
            raise NoArtifactsError(f"none of the artifacts in {self.models_dir} could be loaded; see the log")
        latency, artifact, pipeline = min(measured_all, key=lambda t: t[0])
        message = (f"no artifact meets the {budget:g} ms budget (p{self.percentile:g}, end to end, frames "
                   f"{self.frame_size[0]}x{self.frame_size[1]}) on this device: the fastest, {artifact.name}, "
                   f"takes {latency:.1f} ms. What could help: export INT8 artifacts "
                   "(edgedet-convert --precisions int8), try another backend (backend='openvino' or 'tflite'), "
                   "a smaller variant (lite0) or input size (edgedet-convert --image-sizes), send smaller frames, "
                   "free the CPU of other work, or raise the budget.\n" + str(self.profile))
        if on_miss == "error":
            raise BudgetError(message)
        log.warning("%s\nServing the fastest, %s, as on_miss='smallest' asks.", message, artifact.name)
        return artifact, pipeline or self._load(artifact), latency

    def _walk(self, artifacts: list[Artifact], budget: float,
              measured_all: list) -> tuple[tuple, Artifact, float, Pipeline | None] | None:
        """One family's walk; returns its winner ``(rank, artifact, latency, pipeline)``: the most
        accurate artifact (:func:`accuracy_ranks`) within budget, timing as little as it can.

        The (variant, size) groups are visited up in φ, then input size. Latency is monotone
        only along both: with the same runtime and precision, a bigger φ or a bigger input is
        never faster, but d1 at 384 px may beat d0 at 512. So an artifact is skipped untimed when
        one of its runtime and precision with a φ and a size no larger has missed the budget
        ("walk stopped"), or when it ranks no higher than the best artifact found within budget
        ("cannot win"). Each group is scouted by its int8 artifacts (the likely fastest; all of
        them when int8 misses or is absent); the other precisions of groups that fit are timed at
        the end, most accurate first, only while they can still win.
        """
        def speed(a: Artifact) -> tuple:
            return SPEED_ORDER[a.manifest.precision], a.name

        missed: list[Artifact] = []  # judged over budget: what they bound from below cannot fit
        best: tuple[tuple, float, Artifact, Pipeline | None] | None = None  # (rank, latency, artifact, pipeline)
        pending: list[tuple[Artifact, dict[str, str]]] = []  # deferred precisions, with their group's hopeless

        def blocked_by(a: Artifact) -> Artifact | None:
            m = a.manifest
            return next((b for b in missed if (b.manifest.backend, b.manifest.precision) == (m.backend, m.precision)
                         and b.manifest.phi <= m.phi and b.manifest.image_size <= m.image_size), None)

        def why_not(a: Artifact) -> str | None:
            """Why ``a`` need not be timed, or None."""
            if best is not None and self._ranks[a.name] <= best[0]:
                winner = best[2].manifest
                same = (winner.variant, winner.image_size) == (a.manifest.variant, a.manifest.image_size)
                return f"cannot win: {f'an {winner.precision}' if same else _label(winner)} fits"
            blocker = blocked_by(a)
            return None if blocker is None else f"walk stopped: {blocker.name} missed"

        def consider(measured: list[tuple[float, Artifact, Pipeline | None]]) -> None:
            nonlocal best
            measured_all.extend(measured)
            for latency, a, pipeline in measured:
                # The most accurate within budget; of equally ranked ones (one artifact on two
                # runtimes), the fastest: the adaptive ladder drops a slower twin as dominated.
                if latency <= budget and (best is None or (self._ranks[a.name], -latency) > (best[0], -best[1])):
                    best = (self._ranks[a.name], latency, a, pipeline)

        groups: dict[tuple[int, int, str], list[Artifact]] = {}
        for a in artifacts:
            m = a.manifest
            groups.setdefault((m.phi, m.image_size, m.variant), []).append(a)
        for key in sorted(groups):
            todo = []
            for a in sorted(groups[key], key=speed):
                reason = why_not(a)
                if reason is None:
                    todo.append(a)
                else:
                    self._row(a, None, None, f"skipped ({reason})")
            if not todo:
                continue
            hopeless: dict[str, str] = {}
            scouts = [a for a in todo if a.manifest.precision == "int8"] or todo
            measured = self._time_all(scouts, budget, hopeless, missed)
            deferred = [a for a in todo if a not in scouts]
            if deferred and not any(latency <= budget for latency, _, _ in measured):
                measured += self._time_all(deferred, budget, hopeless, missed)  # int8 is not always the fastest
                deferred = []
            consider(measured)
            pending.extend((a, hopeless) for a in deferred)
        for a, hopeless in sorted(pending, key=lambda item: self._ranks[item[0].name], reverse=True):
            reason = why_not(a)
            if reason is not None:
                self._row(a, None, None, f"skipped ({reason})")
                continue
            consider(self._time_all([a], budget, hopeless, missed))
        if best is None:
            return None
        rank, latency, a, pipeline = best
        return rank, a, latency, pipeline

    # ------------------------------------------------------------------------------- adapting

    def _accuracy(self, artifact: Artifact) -> tuple:
        """The artifact's rank as selection ranked it (one rule for selection and the ladder)."""
        return self._ranks[artifact.name]

    def _start_adapting(self, config: AdaptiveConfig, chosen: Artifact, pipeline: Pipeline) -> None:
        rungs = [Rung(name, ms, self._accuracy(a)) for name, (a, ms) in self._profiled.items()]
        try:
            policy = AdaptivePolicy(rungs, float(self.budget_ms), chosen.name, config=config)  # type: ignore[arg-type]
        except ValueError:  # the served artifact is not on the ladder (dominated): serve it pinned
            log.info("edgedet: %s is slower than a more accurate artifact; serving it without adapting", chosen.name)
            return
        if len(policy.ladder) < 2:
            return  # one artifact: nowhere to step
        self._policy = policy
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="edgedet-prewarm")
        ready: Future = Future()
        ready.set_result(pipeline)
        self._warm[chosen.name] = ready
        log.info("edgedet: adaptive serving over %s", ", ".join(f"{r.name} ({r.profiled_ms:.1f} ms)"
                                                                 for r in policy.ladder))
        # The neighbours profiling left loaded are warm already; the others load in the background
        # (a cached start stays fast), and the calls made meanwhile are not observed.
        with self._lock:
            self._prewarm_neighbours()

    def _prewarm_neighbours(self) -> None:
        """Keep the serving artifact and its two neighbours loaded; drop the rest. Holds the lock."""
        assert self._policy is not None and self._executor is not None
        # In order of need: the serving one, then the step down (a slowdown needs it soonest), then up.
        keep = list(dict.fromkeys([self._policy.serving.name, self.artifact.name]
                                  + [r.name for r in self._policy.neighbours()]))
        for name in keep:
            if name not in self._warm:
                self._warm[name] = self._warm_pipeline(name)
        for name in set(self._warm) - set(keep):
            self._warm.pop(name).cancel()

    def _warm_pipeline(self, name: str) -> Future:
        """A loaded, warmed pipeline: the one profiling left loaded, else loaded in the background."""
        pipeline = self._measured_pipelines.get(name)
        if pipeline is not None:
            done: Future = Future()
            done.set_result(pipeline)
            return done
        artifact = self._profiled[name][0]

        def load() -> Pipeline:
            self._loading.set()
            try:
                loaded = self._load(artifact)
                frame = self._frame()
                for _ in range(2):  # the first calls allocate: pay for them here, not in a served call
                    loaded(frame)
            finally:
                self._loading.clear()  # one worker: no other load runs concurrently
            log.debug("edgedet: %s loaded and warm (%d threads)", name, loaded.backend.threads)
            return loaded

        return self._executor.submit(load)  # type: ignore[union-attr]

    def _observe(self, artifact: Artifact, latency_ms: float) -> None:
        policy = self._policy
        if policy is None:
            return
        if self.threads is None:
            self._follow_cores(policy.clock())
        if self._loading.is_set():
            return  # while we load a model ourselves, slow calls say nothing about the device
        with self._lock:
            switch = policy.observe(artifact.name, latency_ms)
            if switch is None:
                return
            target = self._warm.get(switch.target) or self._warm_pipeline(switch.target)
            self._warm[switch.target] = target
        log.warning("edgedet: stepping %s from %s to %s: %s", switch.direction, switch.source, switch.target,
                    switch.reason)
        # Swap now if the target is warm, else as soon as the background load finishes.
        target.add_done_callback(lambda future: self._apply(switch, future))

    def _follow_cores(self, now: float) -> None:
        """Reload the served artifact with as many threads as the cores this process may use now,
        when they changed (checked every :data:`CORES_CHECK_S`). The old pipeline serves until the
        new one is loaded and warm; the warm neighbours, loaded for the old count, are dropped."""
        if now - self._cores_checked < CORES_CHECK_S:
            return
        self._cores_checked = now
        cores = usable_cores()
        with self._lock:
            artifact, pipeline, _ = self._serving
            if (self._policy is None or artifact.manifest.backend == "torch"  # torch's threads are process-wide
                    or cores == pipeline.backend.threads or cores == self._reloading_to):
                return
            for name in list(self._warm):
                self._warm.pop(name).cancel()
            reload = Reload(now, artifact.name, pipeline.backend.threads, cores)
            self._reloading_to = self._load_threads = cores
            future = self._warm_pipeline(artifact.name)
            self._warm[artifact.name] = future
            self._prewarm_neighbours()  # queued behind the served artifact, at the new count
        log.warning("edgedet: %s", reload.reason)
        future.add_done_callback(lambda done: self._apply_reload(reload, done))

    def _apply_reload(self, reload: Reload, future: Future) -> None:
        """Serve the reloaded pipeline in ``future`` (unless a switch or a newer change superseded it)."""
        try:
            pipeline = future.result()
        except BaseException as exc:  # cancelled (superseded) or failed: keep serving what we serve
            with self._lock:
                if self._reloading_to == reload.threads_to:
                    self._reloading_to = None
            if not future.cancelled():
                log.error("edgedet: cannot reload %s with %d threads (%s)", reload.artifact, reload.threads_to, exc)
            return
        with self._lock:
            if self._reloading_to == reload.threads_to:
                self._reloading_to = None
            artifact, _, profiled_ms = self._serving
            if self._policy is None or artifact.name != reload.artifact:
                return  # closed, or a switch superseded it (the target loads with the new count)
            self._serving = (artifact, pipeline, profiled_ms)
            self.reloads.append(reload)
            self._policy.restart_window()
            self._prewarm_neighbours()
        log.info("edgedet: now serving %s with %d threads", reload.artifact, pipeline.backend.threads)

    def _apply(self, switch: Switch, future: Future) -> None:
        """Serve ``switch.target`` (its pipeline in ``future``): one reference swapped under the lock."""
        if self._policy is None:
            return  # closed
        try:
            pipeline = future.result()
        except BaseException as exc:  # cancelled or failed to load: keep serving what we serve
            log.error("edgedet: cannot switch to %s (%s); staying on %s", switch.target, exc, switch.source)
            with self._lock:
                if self._policy is not None and self._policy.serving.name == switch.target:
                    self._policy.reset(self.artifact.name)  # back to what is really served
                self._warm.pop(switch.target, None)
            return
        with self._lock:
            if self._policy is None or self._policy.serving.name != switch.target:
                return  # closed, or a later decision superseded this one
            artifact, profiled_ms = self._profiled[switch.target]
            self._serving = (artifact, pipeline, profiled_ms)
            self.switches.append(switch)
            self._prewarm_neighbours()
        log.info("edgedet: now serving %s", switch.target)
        if self._on_switch is not None:
            try:
                self._on_switch(switch)
            except Exception:  # a caller's callback must not break serving
                log.exception("edgedet: on_switch callback failed")


def _models_dir(models: str | Path | None) -> Path:
    """The directory to search: ``models``, or a bundle file unpacked (and verified) into the cache."""
    if models is None:
        return default_models_dir()
    path = Path(models).expanduser()
    if path.is_file():
        from edgedet.bundle import unpack_cached

        return unpack_cached(path, cache_dir() / "bundles")
    return path


def accuracy_rank(manifest: Manifest, *, measured_on: str | None = None) -> tuple:
    """Expected accuracy of one artifact (higher is better): expected AP (%), then φ, input size
    and precision (fp32 > fp16 > int8) to break ties.

    The expected AP is the artifact's own measured mAP when its manifest records one on the
    evaluation set ``measured_on`` (:func:`evaluation_of`); otherwise the published COCO AP of its
    variant, adjusted for its input size by :func:`edgedet.config.expected_coco_ap`. A variant the
    table does not know ranks last. Compare ranks only among artifacts ranked the same way: use
    :func:`accuracy_ranks` for a set.
    """
    accuracy = manifest.accuracy
    if measured_on is not None and accuracy is not None and evaluation_of(manifest) == measured_on:
        expected = 100.0 * accuracy.map50_95
    else:
        try:
            expected = expected_coco_ap(manifest.variant, manifest.image_size)
        except ValueError:
            expected = 0.0
    return (expected, manifest.phi, manifest.image_size, -PRECISION_RANK[manifest.precision])


def accuracy_ranks(manifests: Sequence[Manifest]) -> list[tuple]:
    """:func:`accuracy_rank` of each of ``manifests``, as selection and adaptive serving rank them:
    by measured mAP when every one was scored on the same evaluation set (figures on one set
    compare; a custom set's mAP and COCO's published AP do not), else all by the published rule."""
    sets = {evaluation_of(m) for m in manifests}
    common = next(iter(sets)) if len(sets) == 1 else None
    if len(sets) > 1 and any(sets - {None}):
        log.info("edgedet: ranking by published COCO AP: the artifacts were not all scored on one evaluation "
                 "set (edgedet-convert --eval-ann/--eval-images scores them)")
    return [accuracy_rank(m, measured_on=common) for m in manifests]


def evaluation_of(manifest: Manifest) -> str | None:
    """The evaluation set (and image count) the artifact's recorded mAP was measured on, or None."""
    accuracy = manifest.accuracy
    return None if accuracy is None else f"{accuracy.dataset}:{accuracy.images}"


def _label(manifest: Manifest) -> str:
    """``d0``, or ``d0@384`` for an input size other than the variant's native one."""
    try:
        native = get_config(manifest.variant).image_size
    except ValueError:
        native = None
    return manifest.variant if manifest.image_size == native else f"{manifest.variant}@{manifest.image_size}"


def _install_hint(backend: str) -> str:
    if backend == "torch":
        return "pip install torch"
    return f"pip install 'edgedet[{ {'onnxruntime': 'onnx'}.get(backend, backend) }]'"
