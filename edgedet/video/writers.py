"""Where the loop's results go: an annotated video file and JSON lines."""
from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import IO, Any

import cv2
import numpy as np

from edgedet.detections import Detections

__all__ = ["DEFAULT_VIDEO_FPS", "JsonLinesWriter", "VideoFileWriter"]

log = logging.getLogger(__name__)

#: Frame rate of a recorded video when nothing better is known.
DEFAULT_VIDEO_FPS = 10.0


class VideoFileWriter:
    """Write frames to a video file (``cv2.VideoWriter``), opened at the first frame's size.

    The codec follows the extension: ``.mp4``/``.m4v``/``.mov`` → mp4v, ``.avi``/``.mkv`` → MJPG
    (or ``fourcc=``). With ``fps=None`` the frame rate is measured: the first frames (up to
    :attr:`PROBE_FRAMES`, or :attr:`PROBE_SECONDS` of them) are held back, and the file is opened at
    the rate they were written, so a loop that processes 7 frames a second records a video that
    plays at real speed.

    Frames go to ``<stem>.part<suffix>`` beside the target, renamed to the target by
    :meth:`close`, which every exit of :func:`run_loop` calls (Ctrl-C and SIGTERM included): a
    finished file is always playable. Only a killed process (SIGKILL, power loss) leaves the
    ``.part`` file behind, which says it is partial (an MP4 cut off like that has no index and
    does not play; an MJPG ``.avi`` mostly still does). Frames of another size than the first are
    resized to it. If no frame is written, no file is made.
    """

    FOURCC = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".avi": "MJPG", ".mkv": "MJPG"}
    PROBE_FRAMES = 30
    PROBE_SECONDS = 2.0

    def __init__(self, path: str | os.PathLike[str], fps: float | None = None, fourcc: str | None = None) -> None:
        self.path = Path(path)
        suffix = self.path.suffix.lower()
        if fourcc is None:
            if suffix not in self.FOURCC:
                raise ValueError(f"cannot tell the video codec from {self.path.name!r}: use a name ending in "
                                 f"{', '.join(self.FOURCC)}, or pass fourcc=")
            fourcc = self.FOURCC[suffix]
        if len(fourcc) != 4:
            raise ValueError(f"fourcc must be 4 characters, got {fourcc!r}")
        if fps is not None and not (math.isfinite(fps) and fps > 0):
            raise ValueError(f"fps must be a positive number, got {fps!r}")
        self.fourcc, self.fps = fourcc, fps
        self.partial_path = self.path.with_name(f"{self.path.stem}.part{self.path.suffix}")
        self.frames = 0  # written to the file or held back to be
        self.size: tuple[int, int] | None = None
        self.closed = False
        self._writer: cv2.VideoWriter | None = None
        self._pending: list[tuple[np.ndarray, float]] = []
        self._resize_logged = False

    def write(self, frame: np.ndarray) -> None:
        if self.closed:
            raise ValueError(f"{self.path} is closed")
        self.frames += 1
        if self._writer is None and self.fps is None:
            now = time.monotonic()
            self._pending.append((frame.copy(), now))
            if len(self._pending) >= self.PROBE_FRAMES or now - self._pending[0][1] >= self.PROBE_SECONDS:
                self._flush_pending()
            return
        self._write(frame)

    def _flush_pending(self) -> None:
        pending, self._pending = self._pending, []
        if self.fps is None:
            span = pending[-1][1] - pending[0][1] if pending else 0.0
            rate = (len(pending) - 1) / span if len(pending) > 1 and span > 0 else DEFAULT_VIDEO_FPS
            self.fps = round(min(max(rate, 1.0), 120.0), 2)
        for frame, _ in pending:
            self._write(frame)

    def _write(self, frame: np.ndarray) -> None:
        height, width = frame.shape[:2]
        if self._writer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fps = float(self.fps or DEFAULT_VIDEO_FPS)
            writer = cv2.VideoWriter(str(self.partial_path), cv2.VideoWriter_fourcc(*self.fourcc), fps,
                                     (width, height))
            if not writer.isOpened():
                writer.release()
                raise OSError(f"cannot write video {self.partial_path} ({self.fourcc}, {width}x{height}); is the "
                              "directory writable, and does this OpenCV have the codec? (.avi with MJPG always works)")
            self._writer, self.size, self.fps = writer, (width, height), fps
            log.info("recording to %s (%s, %dx%d, %g fps)", self.path, self.fourcc, width, height, fps)
        if (width, height) != self.size:
            if not self._resize_logged:
                log.warning("frame size changed to %dx%d; resizing to the video's %dx%d", width, height, *self.size)
                self._resize_logged = True
            frame = cv2.resize(frame, self.size, interpolation=cv2.INTER_AREA)
        self._writer.write(frame)

    def close(self) -> Path | None:
        """Finish the file and give it its final name; returns it (``None`` if no frame was written)."""
        if self.closed:
            return self.path if self.frames else None
        self.closed = True
        try:
            if self._pending:
                self._flush_pending()
        finally:
            writer, self._writer = self._writer, None
            if writer is not None:
                writer.release()
        if writer is None:
            return None
        os.replace(self.partial_path, self.path)
        log.info("wrote %s: %d frames", self.path, self.frames)
        return self.path

    def __enter__(self) -> VideoFileWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class JsonLinesWriter:
    """One JSON object per line, flushed line by line (``path`` ``"-"`` writes to stdout).

    A crash loses at most the line being written. Lines are not fsync'ed (an SD card would wear).
    """

    def __init__(self, path: str | os.PathLike[str], *, append: bool = False) -> None:
        self.path = None if os.fspath(path) == "-" else Path(path)
        self.lines = 0
        if self.path is None:
            self._file: IO[str] = sys.stdout
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "a" if append else "w", encoding="utf-8")
        self.closed = False

    def write(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps(record, separators=(",", ":"), allow_nan=False) + "\n")
        self._file.flush()
        self.lines += 1

    def write_frame(self, *, frame: int, source_frame: int, timestamp: float, latency_ms: float,
                    size: tuple[int, int], detections: Detections, artifact: str | None = None,
                    queue_ms: float | None = None) -> None:
        """The record of one processed frame (see :func:`run_loop`); ``artifact`` when known,
        ``queue_ms`` in throughput mode."""
        record = {"frame": frame, "source_frame": source_frame, "timestamp": round(timestamp, 6),
                  "latency_ms": round(latency_ms, 3)}
        if queue_ms is not None:
            record["queue_ms"] = round(queue_ms, 3)
        if artifact is not None:
            record["artifact"] = artifact
        record.update({"width": size[0], "height": size[1], "detections": detections.to_json_records()})
        self.write(record)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.path is not None:
            self._file.close()
        else:
            self._file.flush()

    def __enter__(self) -> JsonLinesWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

