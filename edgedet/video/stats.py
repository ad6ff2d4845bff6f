"""The loop's figures: running latency and FPS while it runs, :class:`LoopStats` when it ends."""
from __future__ import annotations

import collections
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

__all__ = ["LATENCY_WINDOW", "LoopMeter", "LoopStats"]

#: Latencies kept for the loop's percentile (a long-running loop must not grow without bound).
LATENCY_WINDOW = 10_000


@dataclass
class LoopStats:
    """What :func:`run_loop` did.

    ``frames`` were processed by the detector; ``captured`` came from the source, of which
    ``dropped`` were replaced by a newer one before the detector could take them and ``skipped``
    were not H×W×3 uint8 images. Latencies are the detector's (preprocess + inference + decode +
    NMS) over the last :data:`LATENCY_WINDOW` frames (the mean over all); ``fps`` is processed
    frames per second of the loop's wall time.

    ``mode`` is the loop's (``"latency"`` or ``"throughput"``); in throughput mode latencies are each
    frame's own work (summed over its stages) and ``mean_queue_ms`` the mean time a frame waited
    between stages.
    """

    frames: int = 0
    captured: int = 0
    dropped: int = 0
    skipped: int = 0
    reconnects: int = 0
    mean_latency_ms: float | None = None
    p90_latency_ms: float | None = None
    fps: float = 0.0
    duration_s: float = 0.0
    stop_reason: str = ""
    video_path: str | None = None
    jsonl_path: str | None = None
    mode: str = "latency"
    mean_queue_ms: float | None = None

    def summary(self) -> str:
        lat = ("" if self.mean_latency_ms is None else
               f", latency mean {self.mean_latency_ms:.1f} ms / p90 {self.p90_latency_ms:.1f} ms")
        return (f"{self.frames} frames in {self.duration_s:.1f} s ({self.fps:.1f} FPS{lat}); captured "
                f"{self.captured}, dropped {self.dropped}, skipped {self.skipped}, reconnects {self.reconnects}; "
                f"stopped: {self.stop_reason}" + self._mode_note())

    def _mode_note(self) -> str:
        if self.mode == "latency":
            return ""
        queue = "" if self.mean_queue_ms is None else f", waited between stages {self.mean_queue_ms:.1f} ms mean"
        return f" ({self.mode} mode{queue})"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class LoopMeter:
    """The detector's latencies (the last :data:`LATENCY_WINDOW` for the percentile, a sum for the
    mean) and an exponential moving average of the processing rate (the overlay's FPS)."""

    def __init__(self) -> None:
        self.latencies: collections.deque[float] = collections.deque(maxlen=LATENCY_WINDOW)
        self.latency_sum = 0.0
        self.fps: float | None = None
        self._last_done: float | None = None

    def add(self, latency_ms: float, done: float) -> None:
        """One processed frame: its detector latency and when (``time.monotonic()``) it was done."""
        if self._last_done is not None and done > self._last_done:
            rate = 1.0 / (done - self._last_done)
            self.fps = rate if self.fps is None else 0.9 * self.fps + 0.1 * rate
        self._last_done = done
        self.latencies.append(latency_ms)
        self.latency_sum += latency_ms

    def p90(self) -> float:
        return float(np.percentile(self.latencies, 90))
