"""Images for calibration (INT8) and for parity checks: a folder, a video, or synthetic scenes.

Every source yields BGR uint8 frames (OpenCV's convention) and splits its images into two
disjoint sets: ``calibration_frames`` (what quantization sees) and ``holdout_frames`` (what
verification compares on), so parity is never measured on the calibration images.

* ``DIR``: image files (sorted by name); the last ``holdout`` files are held out, calibration
  draws evenly spaced files from the rest.
* ``VIDEO``: a video file read with ``cv2.VideoCapture``; the last 10% of frames are held out,
  calibration takes evenly spaced frames from the first 90%.
* ``synthetic`` (or ``synthetic:SEED``): the project's scenes (:mod:`edgedet.data.synthetic`: 1-20
  shaded shapes of many scales over textured, lit backgrounds, with occlusion, blur, noise and
  JPEG artifacts; what the reference models are trained on) at camera-like sizes. Held-out images
  come from another seed stream.

A source is a :class:`CalibrationSource` (not the runtime's :class:`edgedet.video.FrameSource`,
which streams live frames: calibration needs a frame count and frames at exact positions, split
into calibration and held-out parts); :func:`open_calibration_source` opens one.

Frames become network input only through :func:`edgedet.preprocess.prepare` (the runtime's own
path: the normalized tensor, or the uint8 canvas for a graph that preprocesses inside), so an
artifact is calibrated exactly as the runtime will feed it.
"""
from __future__ import annotations

import hashlib
import os
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from edgedet.data.synthetic import GENERATOR_VERSION, SyntheticConfig, render
from edgedet.manifest import CalibrationInfo, InputSpec, NormalizationSpec
from edgedet.preprocess import prepare

__all__ = [
    "IMAGE_SUFFIXES",
    "VIDEO_SUFFIXES",
    "Calibration",
    "CalibrationError",
    "CalibrationSource",
    "FolderSource",
    "SyntheticSource",
    "VideoSource",
    "open_calibration_source",
    "synthetic_frame",
]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg")
#: Bump when the synthetic frames change here (part of every export key that uses them, with
#: edgedet.data.synthetic's GENERATOR_VERSION). 2: edgedet.data.synthetic's scenes.
SYNTHETIC_VERSION = 2
#: What identifies the synthetic frames in keys: changes with either version.
SYNTHETIC_KEY = f"v{SYNTHETIC_VERSION}.{GENERATOR_VERSION}"
#: Frame sizes the synthetic frames cycle through (width, height): camera-like aspects.
_SYNTHETIC_SIZES = ((640, 480), (480, 640), (800, 600), (512, 512), (1280, 720))
_HOLDOUT_STREAM = 1_000_003  # seed offset of the held-out synthetic images


class CalibrationError(ValueError):
    """A calibration source cannot be used (missing, unreadable, too few images)."""


class CalibrationSource(ABC):
    """Where calibration and held-out frames come from."""

    #: Short description recorded in manifests (``synthetic:0``, ``DIR (120 images)``...).
    description: str

    @abstractmethod
    def calibration_frames(self, count: int) -> Iterator[np.ndarray]:
        """Up to ``count`` BGR uint8 frames for calibration (disjoint from the held-out ones)."""

    @abstractmethod
    def holdout_frames(self, count: int) -> Iterator[np.ndarray]:
        """Up to ``count`` BGR uint8 frames never used for calibration, for parity checks."""

    @abstractmethod
    def fingerprint(self) -> str:
        """A short hash that changes when the images would change (part of the export key)."""

    def calibration_count(self, count: int) -> int:
        """How many frames :meth:`calibration_frames` yields for ``count`` requested."""
        return count

    @property
    def holdout_description(self) -> str:
        """Where :meth:`holdout_frames` come from (recorded with the parity figures)."""
        return f"{self.description} (held out)"


@dataclass(frozen=True)
class Calibration:
    """Calibration data for one conversion run: ``count`` frames of ``source``."""

    source: CalibrationSource
    count: int

    @property
    def info(self) -> CalibrationInfo:
        """What the manifest records."""
        return CalibrationInfo(source=self.source.description,
                               count=self.source.calibration_count(self.count))

    @property
    def key(self) -> str:
        """What identifies this calibration in an export key."""
        return f"{self.source.fingerprint()}:count={self.source.calibration_count(self.count)}"

    def batches(self, size: int, mean: Sequence[float], std: Sequence[float], *,
                layout: str = "NCHW", dtype: type | np.dtype = np.float32) -> Iterator[np.ndarray]:
        """The calibration frames as normalized tensor batches of one (``layout``, float ``dtype``):
        :meth:`inputs` of a tensor-input spec."""
        shape = (1, 3, size, size) if layout == "NCHW" else (1, size, size, 3)
        spec = InputSpec("images", shape, layout, np.dtype(dtype).name,
                         NormalizationSpec(tuple(map(float, mean)), tuple(map(float, std))))  # type: ignore[arg-type]
        return self.inputs(spec)

    def inputs(self, spec: InputSpec) -> Iterator[np.ndarray]:
        """The calibration frames as batches of one of the input ``spec`` describes (a manifest's
        ``input``: the normalized tensor, or the uint8 canvas of a frame-input graph), through
        :func:`edgedet.preprocess.prepare`, the runtime's own path."""
        for frame in self.source.calibration_frames(self.count):
            batch, _ = prepare(frame, spec)
            yield batch


# ------------------------------------------------------------------------------------ synthetic


class SyntheticSource(CalibrationSource):
    """Deterministic scene-like images; frame ``i`` of seed ``s`` is always the same image."""

    def __init__(self, seed: int = 0) -> None:
        self.seed = int(seed)
        self.description = f"synthetic:{self.seed}"

    def calibration_frames(self, count: int) -> Iterator[np.ndarray]:
        for i in range(count):
            yield synthetic_frame(self.seed, i)

    def holdout_frames(self, count: int) -> Iterator[np.ndarray]:
        for i in range(count):
            yield synthetic_frame(self.seed + _HOLDOUT_STREAM, i)

    def fingerprint(self) -> str:
        return f"synthetic-{SYNTHETIC_KEY}:{self.seed}"


def synthetic_frame(seed: int, index: int, size: tuple[int, int] | None = None) -> np.ndarray:
    """Scene ``index`` of stream ``seed`` of :mod:`edgedet.data.synthetic` (deterministic), BGR uint8.

    ``size`` is (width, height); by default it cycles through camera-like sizes so that
    letterboxing is exercised.
    """
    w, h = size or _SYNTHETIC_SIZES[index % len(_SYNTHETIC_SIZES)]
    image, _ = render(int(index), SyntheticConfig(image_size=(w, h), seed=int(seed) & 0xFFFFFFFF))
    return _auto_levels(image)


def _auto_levels(image: np.ndarray, clip: float = 0.005) -> np.ndarray:
    """Stretch ``image``'s levels so that a ``clip`` fraction of its values saturates at each end,
    as a camera's auto exposure does.

    Why: the scenes' random lighting leaves some dark or flat, and INT8 calibrators average each
    frame's extremes (ai-edge-quantizer: a moving average), so such frames would narrow the
    input's quantization range below the pixel range every real frame can reach.
    """
    counts = np.cumsum(np.bincount(image.reshape(-1), minlength=256))
    lo = int(np.searchsorted(counts, clip * counts[-1]))
    hi = int(np.searchsorted(counts, (1 - clip) * counts[-1]))
    if hi <= lo:
        return image
    lut = np.clip((np.arange(256) - lo) * 255.0 / (hi - lo) + 0.5, 0, 255).astype(np.uint8)
    return cv2.LUT(image, lut)


# ------------------------------------------------------------------------------------ folder


class FolderSource(CalibrationSource):
    """The image files of a directory (not recursive), sorted by name."""

    def __init__(self, directory: str | os.PathLike[str], *, holdout: int = 4) -> None:
        self.directory = Path(directory)
        self.files = sorted(p for p in self.directory.iterdir()
                            if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not self.files:
            raise CalibrationError(f"{self.directory} holds no images ({', '.join(IMAGE_SUFFIXES)}); "
                                   f"point --calibration at a folder of images, a video, or 'synthetic'")
        # Hold out up to `holdout` files, but never more than a fifth of the folder.
        reserved = min(holdout, len(self.files) // 5)
        self._calibration = self.files[:len(self.files) - reserved]
        self._holdout = self.files[len(self.files) - reserved:]
        self.description = f"{self.directory} ({len(self.files)} images)"

    def calibration_count(self, count: int) -> int:
        return min(count, len(self._calibration))

    def calibration_frames(self, count: int) -> Iterator[np.ndarray]:
        for path in _evenly_spaced(self._calibration, count):
            yield _read_image(path)

    @property
    def holdout_description(self) -> str:
        if not self._holdout:
            return "synthetic:0 (held out; the folder is too small to spare images)"
        return f"{self.description}, last {len(self._holdout)} (held out)"

    def holdout_frames(self, count: int) -> Iterator[np.ndarray]:
        if not self._holdout:
            # Too few images to spare any: compare on synthetic scenes instead of on calibration data.
            yield from SyntheticSource(0).holdout_frames(count)
            return
        for path in self._holdout[:count]:
            yield _read_image(path)

    def fingerprint(self) -> str:
        digest = hashlib.sha256()
        for path in self.files:
            stat = path.stat()
            digest.update(f"{path.name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        return f"dir:{digest.hexdigest()[:16]}"


def _read_image(path: Path) -> np.ndarray:
    # imdecode over imread: handles non-ASCII paths everywhere.
    data = np.fromfile(path, dtype=np.uint8)
    img = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if img is None:
        raise CalibrationError(f"cannot decode image {path}: damaged or not an image; remove it "
                               f"from the calibration folder")
    return img


def _evenly_spaced(items: list, count: int) -> list:
    if count >= len(items):
        return list(items)
    return [items[int(i * len(items) / count)] for i in range(count)]


# ------------------------------------------------------------------------------------ video


class VideoSource(CalibrationSource):
    """Frames of a video file; the last 10% are held out."""

    HOLDOUT_FRACTION = 0.1

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.total = self._count_frames()
        if self.total < 2:
            raise CalibrationError(f"video {self.path} has {self.total} readable frames; need at least 2")
        self._split = max(1, min(self.total - 1, int(round(self.total * (1 - self.HOLDOUT_FRACTION)))))
        self.description = f"{self.path} ({self.total} frames)"

    def _open(self) -> cv2.VideoCapture:
        cap = cv2.VideoCapture(str(self.path))
        if not cap.isOpened():
            raise CalibrationError(f"cannot open video {self.path} (unsupported codec or not a video); "
                                   f"extract frames to a folder of images and pass that instead")
        return cap

    def _count_frames(self) -> int:
        cap = self._open()
        try:
            reported = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
            if reported > 0:
                return reported
            n = 0
            while cap.grab():
                n += 1
            return n
        finally:
            cap.release()

    def _frames_at(self, indices: list[int]) -> Iterator[np.ndarray]:
        wanted = sorted(set(indices))
        if not wanted:
            return
        cap = self._open()
        try:
            position, k = 0, 0
            # Sequential grab: exact frame positions on every codec (seeking is not always exact).
            while k < len(wanted) and cap.grab():
                if position == wanted[k]:
                    ok, frame = cap.retrieve()
                    if ok and frame is not None:
                        yield frame
                    k += 1
                position += 1
        finally:
            cap.release()

    def calibration_count(self, count: int) -> int:
        return min(count, self._split)

    def calibration_frames(self, count: int) -> Iterator[np.ndarray]:
        yield from self._frames_at(_evenly_spaced(list(range(self._split)), count))

    def holdout_frames(self, count: int) -> Iterator[np.ndarray]:
        yield from self._frames_at(_evenly_spaced(list(range(self._split, self.total)), count))

    def fingerprint(self) -> str:
        stat = self.path.stat()
        return f"video:{self.path.name}:{stat.st_size}:{stat.st_mtime_ns}"


# ------------------------------------------------------------------------------------ dispatch


def open_calibration_source(spec: str | os.PathLike[str], *, holdout: int = 4) -> CalibrationSource:
    """The frame source named by ``spec``: ``synthetic[:SEED]``, a directory, or a video file."""
    text = os.fspath(spec)
    if text == "synthetic" or text.startswith("synthetic:"):
        seed = text.partition(":")[2] or "0"
        try:
            return SyntheticSource(int(seed))
        except ValueError:
            raise CalibrationError(f"bad synthetic seed in {text!r}; use 'synthetic' or "
                                   f"'synthetic:SEED' with an integer SEED") from None
    path = Path(text).expanduser()
    if path.is_dir():
        return FolderSource(path, holdout=holdout)
    if path.is_file():
        if path.suffix.lower() in IMAGE_SUFFIXES:
            raise CalibrationError(f"{path} is a single image; calibration needs many: pass the folder "
                                   f"holding it")
        return VideoSource(path)
    raise CalibrationError(f"calibration source {text!r} does not exist; pass 'synthetic', a folder "
                           f"of images or a video file")


# ------------------------------------------------------------------------------------ in memory


class FrozenSource(CalibrationSource):
    """Frames read once from another source and kept in memory, under that source's description and
    fingerprint: what a worker without the driver's file system calibrates with (a Ray task)."""

    def __init__(self, source: CalibrationSource, count: int) -> None:
        self.description = source.description
        self._fingerprint = source.fingerprint()
        self._count = source.calibration_count(count)
        self._frames = list(source.calibration_frames(count))

    def calibration_frames(self, count: int) -> Iterator[np.ndarray]:
        yield from (frame.copy() for frame in self._frames[:count])

    def holdout_frames(self, count: int) -> Iterator[np.ndarray]:
        raise CalibrationError("a frozen calibration source holds no held-out frames (the driver keeps them)")

    def fingerprint(self) -> str:
        return self._fingerprint

    def calibration_count(self, count: int) -> int:
        return min(count, self._count)


def freeze(calibration: Calibration, spare: int = 16) -> Calibration:
    """``calibration`` with its frames in memory: its own count, plus ``spare`` more for the
    accuracy-aware search's validation frames (:func:`converters.accuracy.validation_frames`)."""
    return Calibration(FrozenSource(calibration.source, calibration.count + spare), calibration.count)
