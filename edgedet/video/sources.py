"""Frame sources: what a camera, a stream or a file looks like to the loop (OpenCV captures).

The Pi camera lives in :mod:`edgedet.video.picamera`; :func:`edgedet.video.specs.open_source`
turns a spec (``0``, ``"clip.mp4"``, ``"rtsp://..."``) into one of these.
"""
from __future__ import annotations

import math
import time
from typing import Sequence

import cv2
import numpy as np

__all__ = ["FrameSource", "SourceError", "VideoCaptureSource"]


class SourceError(RuntimeError):
    """A frame source that cannot be opened or used; the message says why and what to try."""



class FrameSource:
    """Where frames come from: a camera, a stream or a file.

    Subclasses implement :meth:`open` (and reopen: it is called again after a failure),
    :meth:`read` and :meth:`release`. ``read()`` returns an H×W×3 uint8 BGR frame, or ``None``
    when no frame came (a failure, or the end of a file: then :attr:`eof` is true). One thread
    at a time uses a source (:class:`LatestFrameReader` keeps it to its capture thread).

    Attributes:
        description: what the source is, for log lines.
        live: frames arrive in real time whether or not they are read (a camera, a stream); a
            file is not live: it is read as fast as it is asked.
        finite: a file: it ends (:attr:`eof`), and one that cannot be opened will not open later.
        fps: the nominal frame rate once opened, if the source knows it.
    """

    description: str = "frame source"
    live: bool = True
    finite: bool = False
    fps: float | None = None

    def open(self) -> None:
        """Open (or reopen) the source. Raises :class:`SourceError` if it cannot be opened."""
        raise NotImplementedError

    def read(self) -> np.ndarray | None:
        """The next frame, or ``None`` if none came."""
        raise NotImplementedError

    def release(self) -> None:
        """Free the device or file; safe to call when not open, and more than once."""

    @property
    def eof(self) -> bool:
        """A finite source has delivered its last frame (only ever true for files)."""
        return False

    def __enter__(self) -> FrameSource:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.description!r})"


class VideoCaptureSource(FrameSource):
    """A source read with ``cv2.VideoCapture``: a USB/V4L2 camera, a file, a URL or a GStreamer pipeline.

    Args:
        target: what ``cv2.VideoCapture`` opens (a camera index, a path, a URL, a pipeline).
        api: the OpenCV backend (``cv2.CAP_ANY``, ``cv2.CAP_GSTREAMER``, ``cv2.CAP_FFMPEG``...).
        params: ``cv2.VideoCapture`` open parameters, ``[prop, value, ...]``.
        live: see :class:`FrameSource`; ``live=False`` makes a finite source (a file).
        loop: a file starts again at its end instead of ending (demos, soak tests).
        realtime: a file is delivered at its own frame rate, as a camera would (implies ``live``).
        frame_size: ``(width, height)`` asked of a camera (it may pick the nearest it supports).
        fps: frame rate asked of a camera.
        description: for log lines (default: the target).
        hint: appended to the error when the source cannot be opened.
    """

    def __init__(self, target: int | str, *, api: int = cv2.CAP_ANY, params: Sequence[int] = (), live: bool = True,
                 loop: bool = False, realtime: bool = False, frame_size: tuple[int, int] | None = None,
                 fps: float | None = None, description: str | None = None, hint: str = "") -> None:
        self.target, self.api, self.params = target, api, list(params)
        self.loop, self.realtime = loop, realtime
        self.finite = not live
        self.live = live or realtime
        self.frame_size, self.requested_fps = frame_size, fps
        self.description = description or str(target)
        self.hint = hint
        self._cap: cv2.VideoCapture | None = None
        self._eof = False
        self._next_due: float | None = None

    def open(self) -> None:
        self.release()
        self._eof = False
        cap = cv2.VideoCapture(self.target, self.api, self.params)
        if not cap.isOpened():
            cap.release()
            raise SourceError(f"cannot open {self.description}{self.hint}")
        if self.frame_size is not None:
            cap.set(cv2.CAP_PROP_FRAME_WIDTH, int(self.frame_size[0]))
            cap.set(cv2.CAP_PROP_FRAME_HEIGHT, int(self.frame_size[1]))
        if self.requested_fps:
            cap.set(cv2.CAP_PROP_FPS, float(self.requested_fps))
        if self.live and not self.realtime:
            cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # V4L2: keep the driver from queueing stale frames
        fps = cap.get(cv2.CAP_PROP_FPS)
        self.fps = float(fps) if math.isfinite(fps) and 0 < fps < 1000 else None
        self._cap = cap
        self._next_due = None

    def read(self) -> np.ndarray | None:
        if self._cap is None:
            return None
        ok, frame = self._cap.read()
        if not ok or frame is None:
            if not self.finite:
                return None  # a camera or stream: the reader decides when to reconnect
            if self.loop and self._rewind():
                ok, frame = self._cap.read()
            if not ok or frame is None:
                self._eof = True
                return None
        if self.realtime:
            self._pace()
        return frame

    def _rewind(self) -> bool:
        """Back to the first frame (seek; reopen if the container cannot seek)."""
        assert self._cap is not None
        if self._cap.set(cv2.CAP_PROP_POS_FRAMES, 0):
            return True
        try:
            self.open()
        except SourceError:
            return False
        return True

    def _pace(self) -> None:
        period = 1.0 / (self.fps or 30.0)
        now = time.monotonic()
        if self._next_due is None or now - self._next_due > 1.0:  # first frame, or fell far behind
            self._next_due = now
        elif self._next_due > now:
            time.sleep(self._next_due - now)
        self._next_due += period

    def release(self) -> None:
        cap, self._cap = self._cap, None
        if cap is not None:
            cap.release()

    @property
    def eof(self) -> bool:
        return self._eof

