"""``Detector``: choose the largest EfficientDet that meets a latency budget *on this device*, then
turn frames into :class:`~edgedet.detections.Detections`.

Selection (DESIGN.md): artifacts are grouped by family (D, Lite) and ordered by φ; each is
measured end to end (preprocess + inference + decode + NMS) after warm-up on a frame of the size
the caller will send; the walk goes up in φ and stops at the first variant with no artifact
within budget (a bigger φ is never faster). Among the artifacts of one φ that fit, the most
accurate precision wins (fp32 > fp16 > int8), then the fastest. The D and Lite walks each end
at their largest φ within budget; between those two, the variant with the higher published COCO
AP is served (φ does not compare across families: Lite2 beats D0). Measurements are cached per
device, runtime, threads, artifact and frame size, so a second start measures nothing.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Sequence

import numpy as np

from edgedet.config import get_config
from edgedet.backends import BACKENDS, BackendError, available_backends, load_backend, runtime_version
from edgedet.detections import Detections
from edgedet.hub import cache_dir
from edgedet.manifest import MANIFEST_NAME, Manifest, ManifestError
from edgedet.pipeline import Pipeline  # re-exported: it was defined here
from edgedet.postprocess import DEFAULT_SCORE_THRESHOLD
from edgedet.preprocess import InputError, validate_frame
from edgedet.profiling import Clock, LatencyStats, ProfileCache, measure, profile_key

log = logging.getLogger(__name__)

#: Where models are looked for when ``models=`` is not given (overridden by ``EDGEDET_MODELS``).
MODELS_ENV = "EDGEDET_MODELS"
#: More accurate first: the order in which precisions of the same φ are preferred.
PRECISION_RANK = {"fp32": 0, "fp16": 1, "int8": 2}
#: When no budget forces a measurement, the runtime tried first.
BACKEND_PREFERENCE = ("onnxruntime", "openvino", "tflite", "torch")
TYPICAL_FRAME = (1280, 720)  # width, height: an HD camera


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
    source: str  # "measured", "cache", "skipped (walk stopped)", "not measured", or an error


class ProfileTable(list):
    """The rows of a selection; ``str()`` renders an aligned text table."""

    def __str__(self) -> str:
        header = ("artifact", "latency ms", "fits", "source")
        rows = [(r.artifact, "-" if r.latency_ms is None else f"{r.latency_ms:.1f}",
                 "-" if r.fits is None else ("yes" if r.fits else "no"), r.source) for r in self]
        widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
        lines = ["  ".join(str(x).ljust(w) for x, w in zip(row, widths)) for row in (header, *rows)]
        return "\n".join(lines)


class Detector:
    """Serve the largest EfficientDet whose end-to-end latency meets ``budget_ms`` on this device.

    Args:
        budget_ms: end-to-end latency budget per frame (at ``percentile``). With ``variant`` only,
            no budget is needed and nothing is measured.
        variant: serve this variant (``"d2"``, ``"lite0"``...) instead of choosing by budget.
        models: directory of exported artifacts, or a bundle file (``python -m edgedet.bundle
            pack``), unpacked and verified into the cache once (default :func:`default_models_dir`).
        backend: ``"auto"`` (any of ``"onnxruntime"``, ``"openvino"``, ``"tflite"``) or one of
            them, or ``"torch"`` (the PyTorch reference: only when named; needs torch).
        precision: ``"auto"`` or one of ``"fp32"``, ``"fp16"``, ``"int8"``.
        threads: inference threads (None: the runtime's default).
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
        clock: the timer (injectable for tests).
    """

    def __init__(self, budget_ms: float | None = None, *, variant: str | None = None,
                 models: str | Path | None = None, backend: str = "auto", precision: str = "auto",
                 threads: int | None = None, percentile: float = 90, frame_size: tuple[int, int] = TYPICAL_FRAME,
                 device: str = "cpu", on_miss: Literal["error", "smallest"] = "error", refresh: bool = False,
                 profile_cache: str | Path | Literal[False] | None = None, score_threshold: float = DEFAULT_SCORE_THRESHOLD,
                 iou_threshold: float = 0.5, max_detections: int = 100, rgb: bool = False, warmup: int = 3,
                 runs: int = 20, clock: Clock = time.perf_counter) -> None:
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
        self.budget_ms, self.percentile, self.threads, self.device = budget_ms, percentile, threads, device
        self.frame_size = (int(width), int(height))
        self._post = dict(score_threshold=score_threshold, iou_threshold=iou_threshold,
                          max_detections=max_detections, rgb=rgb)
        self._timing = dict(warmup=warmup, runs=runs, clock=clock)
        self.models_dir = _models_dir(models)
        cache_path = (None if profile_cache is False else
                      Path(profile_cache) if profile_cache is not None else cache_dir() / "profiles.json")
        self._cache = ProfileCache(cache_path) if cache_path is not None else None
        self._refresh = refresh
        self.profile = ProfileTable()

        candidates = self._candidates(variant, backend, precision)
        if budget_ms is None:
            chosen = self._pick_without_budget(candidates)
            self._pipeline = self._load(chosen)
            self.latency_ms: float | None = None
        else:
            chosen, self._pipeline, self.latency_ms = self._select(candidates, on_miss)
        self.artifact = chosen
        log.info("edgedet: serving %s (%s)%s", chosen.name, self._pipeline.backend.describe(),
                 "" if self.latency_ms is None else
                 f", p{percentile:g} {self.latency_ms:.1f} ms within {budget_ms:g} ms")

    # ------------------------------------------------------------------------------- public

    @property
    def pipeline(self) -> Pipeline:
        """The loaded artifact with its pre/post-processing (its ``backend``, ``prepare()``...)."""
        return self._pipeline

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
        if isinstance(frame, (list, tuple)):
            raise InputError("Detector(frame) takes one frame; use detector.detect_batch(frames) for several")
        return self._pipeline(validate_frame(frame))[0]

    def detect(self, frame: np.ndarray) -> Detections:
        """Same as calling the detector."""
        return self(frame)

    def detect_batch(self, frames: Sequence[np.ndarray]) -> list[Detections]:
        """Detect in several frames (one inference call per artifact batch size)."""
        if len(frames) == 0:
            raise InputError("detect_batch() got no frames")
        batch = self.artifact.manifest.input.batch_size
        results: list[Detections] = []
        for start in range(0, len(frames), batch):
            chunk = list(frames[start:start + batch])
            count = len(chunk)
            chunk += [chunk[-1]] * (batch - count)  # a fixed-batch artifact: pad the last chunk
            results.extend(self._pipeline(chunk)[:count])
        return results

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
                                       "chosen by preference (no budget)"))
        return chosen

    def _load(self, artifact: Artifact) -> Pipeline:
        artifact.manifest.verify_files(artifact.directory)  # never serve a file that is not the exported one
        options = {}
        if artifact.manifest.backend in ("onnxruntime", "openvino", "torch"):
            options["device"] = self.device.upper() if artifact.manifest.backend == "openvino" else self.device
        if artifact.manifest.backend == "openvino" and artifact.manifest.precision == "fp32":
            options["inference_precision"] = "f32"  # as verified at export; bf16 would be a silent change
        backend = load_backend(artifact.manifest.backend, artifact.model_path, threads=self.threads, **options)
        return Pipeline(artifact, backend, **self._post)

    def _frame(self) -> np.ndarray:
        width, height = self.frame_size
        rng = np.random.default_rng(0)
        return rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)

    def _latency(self, artifact: Artifact) -> tuple[LatencyStats, str, Pipeline | None]:
        """The artifact's end-to-end latency: from the cache, else measured (returns the pipeline)."""
        key = profile_key(artifact_sha256=artifact.sha256, backend=artifact.manifest.backend,
                          runtime_version=runtime_version(artifact.manifest.backend), threads=self.threads,
                          frame_size=self.frame_size, device=self.device)
        if self._cache is not None and not self._refresh:
            cached = self._cache.get(key)
            if cached is not None:
                return cached, "cache", None
        pipeline = self._load(artifact)
        frame = self._frame()
        # A model far over budget gets few runs: its verdict does not need a tight percentile.
        limit = None if self.budget_ms is None else max(2.0, 4 * self._timing["runs"] * self.budget_ms / 1000)
        stats = measure(lambda: pipeline(frame), warmup=self._timing["warmup"], runs=self._timing["runs"],
                        clock=self._timing["clock"], max_seconds=limit)
        if self._cache is not None:
            self._cache.put(key, stats, {"artifact": artifact.name, "frame_size": list(self.frame_size),
                                         "threads": self.threads, "backend": pipeline.backend.describe()})
        return stats, "measured", pipeline

    def _select(self, candidates: list[Artifact], on_miss: str) -> tuple[Artifact, Pipeline, float]:
        budget = float(self.budget_ms)  # type: ignore[arg-type]
        by_family: dict[str, dict[tuple[int, int, str], list[Artifact]]] = {}
        for a in candidates:
            m = a.manifest
            by_family.setdefault(m.family, {}).setdefault((m.phi, m.image_size, m.variant), []).append(a)

        best: list[tuple[tuple, Artifact, float, Pipeline | None]] = []
        measured_all: list[tuple[float, Artifact, Pipeline | None]] = []
        for family, variants in by_family.items():
            stopped = False
            for (phi, size, variant) in sorted(variants):
                group = sorted(variants[(phi, size, variant)], key=lambda a: a.name)
                if stopped:
                    for a in group:
                        self.profile.append(ProfileRow(a.name, variant, phi, a.manifest.backend,
                                                       a.manifest.precision, None, None, "skipped (walk stopped)"))
                    continue
                fitting = []
                for a in group:
                    try:
                        stats, source, pipeline = self._latency(a)
                    except (BackendError, ManifestError) as exc:
                        log.warning("cannot use %s: %s", a.name, exc)
                        self.profile.append(ProfileRow(a.name, variant, phi, a.manifest.backend,
                                                       a.manifest.precision, None, None, f"error: {exc}"))
                        continue
                    latency = stats.percentile_ms(self.percentile)
                    fits = latency <= budget
                    self.profile.append(ProfileRow(a.name, variant, phi, a.manifest.backend, a.manifest.precision,
                                                   latency, fits, source))
                    log.info("%s: p%g %.1f ms (%s) %s budget %.1f ms", a.name, self.percentile, latency, source,
                             "within" if fits else "over", budget)
                    measured_all.append((latency, a, pipeline))
                    if fits:
                        fitting.append((PRECISION_RANK[a.manifest.precision], latency, a, pipeline))
                if not fitting:
                    stopped = True  # bigger φ is never faster: stop this family's walk
                    continue
                rank, latency, a, pipeline = min(fitting, key=lambda t: (t[0], t[1]))
                best.append(((_published_ap(variant), phi, size), a, latency, pipeline))

        if best:
            _, artifact, latency, pipeline = max(best, key=lambda t: t[0])
            return artifact, pipeline or self._load(artifact), latency
        if not measured_all:
            raise NoArtifactsError(f"none of the artifacts in {self.models_dir} could be loaded; see the log")
        latency, artifact, pipeline = min(measured_all, key=lambda t: t[0])
        message = (f"no artifact meets the {budget:g} ms budget (p{self.percentile:g}, end to end, frames "
                   f"{self.frame_size[0]}x{self.frame_size[1]}) on this device: the fastest, {artifact.name}, "
                   f"takes {latency:.1f} ms. What could help: export INT8 artifacts "
                   "(edgedet-convert --precisions int8), try another backend (backend='openvino' or 'tflite'), "
                   "a smaller variant (lite0), send smaller frames, free the CPU of other work, "
                   "or raise the budget.\n" + str(self.profile))
        if on_miss == "error":
            raise BudgetError(message)
        log.warning("%s\nServing the fastest, %s, as on_miss='smallest' asks.", message, artifact.name)
        return artifact, pipeline or self._load(artifact), latency


def _models_dir(models: str | Path | None) -> Path:
    """The directory to search: ``models``, or a bundle file unpacked (and verified) into the cache."""
    if models is None:
        return default_models_dir()
    path = Path(models).expanduser()
    if path.is_file():
        from edgedet.bundle import unpack_cached

        return unpack_cached(path, cache_dir() / "bundles")
    return path


def _published_ap(variant: str) -> float:
    """The variant's published COCO AP: ranks the winners of the D and Lite walks against each
    other (within a family it grows with φ). A variant the table does not know ranks last."""
    try:
        return get_config(variant).coco_ap
    except ValueError:
        return 0.0


def _install_hint(backend: str) -> str:
    if backend == "torch":
        return "pip install torch"
    return f"pip install 'edgedet[{ {'onnxruntime': 'onnx'}.get(backend, backend) }]'"
