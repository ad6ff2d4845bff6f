"""Live figures of a running camera loop, for the outputs that report them (MQTT stats, the web view).

``run_loop`` reports its :class:`~edgedet.video.LoopStats` only when it returns; these two
read the same figures while it runs, through the hooks it already has::

    detector = MeteredDetector(edgedet.Detector(...))     # inference time, skipped frames
    meter = LoopMeter(detector)
    run_loop(detector, source, on_frame=meter.on_frame)   # detection FPS, dropped frames
    meter.snapshot()   # {"frames": ..., "detection_fps": ..., "inference_ms": ..., ...}
"""
from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from edgedet.detections import Detections
from edgedet.preprocess import InputError

__all__ = ["LoopMeter", "MeteredDetector"]

#: Latencies kept for the live mean and p90 (recent behaviour, not the whole run).
WINDOW = 100


class MeteredDetector:
    """A detector that times itself and counts the frames it refused (``InputError``: skipped).

    Other attributes (``labels``, ``variant``, ``profile``...) are the wrapped detector's.
    """

    def __init__(self, detector: Callable[[np.ndarray], Detections]) -> None:
        self.detector = detector
        self.skipped = 0
        self.calls = 0
        self._latencies: collections.deque[float] = collections.deque(maxlen=WINDOW)
        self._lock = threading.Lock()

    def __call__(self, frame: np.ndarray) -> Detections:
        t0 = time.perf_counter()
        try:
            detections = self.detector(frame)
        except InputError:
            with self._lock:
                self.skipped += 1
            raise
        elapsed = (time.perf_counter() - t0) * 1000.0
        with self._lock:
            self.calls += 1
            self._latencies.append(elapsed)
        return detections

    def latency_ms(self) -> tuple[float | None, float | None]:
        """Mean and p90 of the last :data:`WINDOW` inferences (``None`` before the first)."""
        with self._lock:
            values = list(self._latencies)
        if not values:
            return None, None
        return float(np.mean(values)), float(np.percentile(values, 90))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.detector, name)


class LoopMeter:
    """Counts processed frames, the detection rate and the frames the loop never saw.

    Use :meth:`on_frame` as (or inside) ``run_loop``'s ``on_frame``. Dropped frames are the gaps
    in the capture index (frames replaced by a newer one before the detector took them, and
    skipped ones). Thread-safe: :meth:`snapshot` may be called from any thread.
    """

    def __init__(self, detector: MeteredDetector | None = None, *, fps_window_s: float = 5.0) -> None:
        self.detector = detector
        self.fps_window_s = fps_window_s
        self.started = time.time()
        self.frames = 0
        self.dropped = 0
        self.last_frame_time: float | None = None  # time.monotonic() of the newest frame
        self.last_size: tuple[int, int] | None = None
        self.last_count = 0
        self._last_index: int | None = None
        self._times: collections.deque[float] = collections.deque()
        self._lock = threading.Lock()

    def on_frame(self, frame: np.ndarray, detections: Detections, info: Any) -> None:
        """The per-frame hook (``info``: the loop's ``CapturedFrame``, with ``index``)."""
        now = time.monotonic()
        index = getattr(info, "index", None)
        with self._lock:
            self.frames += 1
            if index is not None:
                if self._last_index is not None and index > self._last_index + 1:
                    self.dropped += index - self._last_index - 1
                self._last_index = index
            self.last_frame_time = now
            self.last_size = (int(frame.shape[1]), int(frame.shape[0]))
            self.last_count = len(detections)
            self._times.append(now)
            while self._times and now - self._times[0] > self.fps_window_s:
                self._times.popleft()

    def fps(self) -> float:
        """Processed frames per second over the last ``fps_window_s`` seconds."""
        with self._lock:
            times = list(self._times)
        if len(times) < 2 or time.monotonic() - times[-1] > self.fps_window_s:
            return 0.0
        return (len(times) - 1) / (times[-1] - times[0]) if times[-1] > times[0] else 0.0

    def snapshot(self) -> dict[str, Any]:
        """The figures now, JSON-ready."""
        with self._lock:
            frames, dropped, last, size, count = (self.frames, self.dropped, self.last_frame_time,
                                                  self.last_size, self.last_count)
        mean = p90 = None
        skipped = 0
        if self.detector is not None:
            mean, p90 = self.detector.latency_ms()
            skipped = self.detector.skipped
        return {"uptime_s": round(time.time() - self.started, 1), "frames": frames,
                "detection_fps": round(self.fps(), 2),
                "inference_ms": None if mean is None else round(mean, 2),
                "inference_p90_ms": None if p90 is None else round(p90, 2),
                "skipped_frames": skipped, "dropped_frames": dropped, "detections": count,
                "frame_size": list(size) if size else None,
                "last_frame_age_s": None if last is None else round(time.monotonic() - last, 2)}
