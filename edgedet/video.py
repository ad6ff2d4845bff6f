"""The camera loop: frames in from a camera, a stream or a file; detections out to a window, a
video file and JSON lines. numpy and OpenCV only (``picamera2`` is imported when a Pi camera is
opened).

The pieces, each usable alone::

    source = open_source("picamera")        # or 0, "/dev/video0", "clip.mp4", "rtsp://...", a GStreamer pipeline
    stats = run_loop(detector, source, max_frames=500, video_out="out.mp4", jsonl_out="out.jsonl")
    print(stats.summary())

* :func:`open_source` makes a :class:`FrameSource` from a spec. Sources are opened (and reopened
  after a failure) by whoever reads them: :class:`LatestFrameReader`, or ``with source:``.
* :class:`LatestFrameReader` captures on its own thread and keeps only the newest frame: a slow
  detector always gets the freshest image, and the frames it had no time for are dropped and
  counted. A source that fails to open, stops delivering or stalls is released and reopened with
  exponential backoff; a file's end is reported as the end (:attr:`LatestFrameReader.eof`).
* :class:`VideoFileWriter` and :class:`JsonLinesWriter` record the annotated frames and one JSON
  object per processed frame.
* :func:`run_loop` ties them together: it ends on ``max_frames``, the end of a file, a
  ``stop_event``, ``q``/Esc in the window, or SIGINT/SIGTERM (Ctrl-C, ``systemctl stop``), and
  closes its writers in every case, so the recorded video is always playable.
"""
from __future__ import annotations

import collections
import contextlib
import importlib.util
import json
import logging
import math
import os
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any, Callable, Iterator, NamedTuple, Sequence

import cv2
import numpy as np

from edgedet.detections import Detections
from edgedet.preprocess import InputError

__all__ = [
    "CapturedFrame", "FrameSource", "JsonLinesWriter", "LatestFrameReader", "LoopStats", "PiCameraSource",
    "SourceError", "VideoCaptureSource", "VideoFileWriter", "default_source", "display_available",
    "frame_size_arg", "iter_frames", "jetson_csi_pipeline", "open_source", "overlay", "picamera_available", "run_loop",
]

log = logging.getLogger(__name__)


def frame_size_arg(text: str) -> tuple[int, int]:
    """``"1280x720"`` → ``(1280, 720)``: an argparse ``type`` for the command lines' ``--frame-size``."""
    import argparse

    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"frame size must be WIDTHxHEIGHT (e.g. 1280x720), got {text!r}") from None
    if width <= 0 or height <= 0:
        raise argparse.ArgumentTypeError(f"frame size must be positive, got {text!r}")
    return width, height

#: URL schemes opened as network streams through FFmpeg.
STREAM_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "rtmps://", "http://", "https://", "udp://", "tcp://",
                  "srt://")
#: Latencies kept for the loop's percentile (a long-running loop must not grow without bound).
LATENCY_WINDOW = 10_000
#: Frame rate of a recorded video when nothing better is known.
DEFAULT_VIDEO_FPS = 10.0


class SourceError(RuntimeError):
    """A frame source that cannot be opened or used; the message says why and what to try."""


# ------------------------------------------------------------------------------------------ sources


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


class PiCameraSource(FrameSource):
    """A Raspberry Pi camera (CSI) through ``picamera2`` (libcamera), delivering BGR frames.

    ``picamera2`` ships with Raspberry Pi OS (``sudo apt install python3-picamera2``); a virtual
    environment sees it when made with ``python3 -m venv --system-site-packages``.
    """

    live = True

    def __init__(self, camera_num: int = 0, frame_size: tuple[int, int] = (1280, 720),
                 fps: float | None = None) -> None:
        self.camera_num, self.frame_size, self.requested_fps = camera_num, tuple(frame_size), fps
        self.fps = fps
        self.description = f"Pi camera {camera_num} ({frame_size[0]}x{frame_size[1]}, picamera2)"
        self._camera: Any = None

    def open(self) -> None:
        self.release()
        try:
            from picamera2 import Picamera2
        except ImportError as exc:
            raise SourceError(_PICAMERA_HINT) from exc
        try:
            camera = Picamera2(self.camera_num)
        except Exception as exc:  # IndexError (no such camera), RuntimeError (in use)...
            raise SourceError(f"cannot open {self.description}: {exc} (is the camera connected and enabled? "
                              "`rpicam-hello --list-cameras` lists what libcamera sees; is another process "
                              "using it?)") from exc
        try:
            controls = {"FrameRate": float(self.requested_fps)} if self.requested_fps else {}
            # "RGB888" is libcamera's name for 24-bit pixels stored B, G, R: OpenCV's BGR order.
            config = camera.create_video_configuration(main={"size": self.frame_size, "format": "RGB888"},
                                                       controls=controls)
            camera.configure(config)
            camera.start()
        except Exception as exc:
            with contextlib.suppress(Exception):
                camera.close()
            raise SourceError(f"cannot start {self.description}: {exc}") from exc
        self._camera = camera

    def read(self) -> np.ndarray | None:
        if self._camera is None:
            return None
        frame = self._camera.capture_array("main")
        if frame is None:
            return None
        if frame.ndim == 3 and frame.shape[2] == 4:  # XRGB8888 configurations: drop the padding byte
            frame = np.ascontiguousarray(frame[:, :, :3])
        return frame

    def release(self) -> None:
        camera, self._camera = self._camera, None
        if camera is not None:
            with contextlib.suppress(Exception):
                camera.stop()
            with contextlib.suppress(Exception):
                camera.close()


_PICAMERA_HINT = ("the Pi camera needs picamera2, which is not importable here: on Raspberry Pi OS "
                  "`sudo apt install python3-picamera2`, and make the virtual environment with "
                  "`python3 -m venv --system-site-packages` so it sees the system package; a USB camera "
                  "works without it (--source 0)")


def picamera_available() -> bool:
    """``picamera2`` can be imported (without importing it)."""
    try:
        return importlib.util.find_spec("picamera2") is not None
    except (ImportError, ValueError):
        return False


def default_source() -> str:
    """``"picamera"`` where picamera2 is importable (a Raspberry Pi), else ``"0"`` (the first camera)."""
    return "picamera" if picamera_available() else "0"


def jetson_csi_pipeline(sensor_id: int = 0, width: int = 1280, height: int = 720, fps: int = 30,
                        flip: int = 0) -> str:
    """The GStreamer pipeline of a Jetson CSI camera (``nvarguscamerasrc``, JetPack), ending in BGR.

    The ``appsink`` keeps one buffer and drops the rest, so a slow consumer never reads stale frames.
    Needs an OpenCV built with GStreamer (JetPack's ``python3-opencv``; the pip wheels have none).
    """
    return (f"nvarguscamerasrc sensor-id={sensor_id} ! "
            f"video/x-raw(memory:NVMM), width={width}, height={height}, framerate={fps}/1, format=NV12 ! "
            f"nvvidconv flip-method={flip} ! video/x-raw, format=BGRx ! "
            "videoconvert ! video/x-raw, format=BGR ! appsink drop=true max-buffers=1 sync=false")


def _opencv_has(feature: str) -> bool:
    """The OpenCV build information says ``feature: YES...`` (e.g. ``GStreamer``)."""
    for line in cv2.getBuildInformation().splitlines():
        name, _, value = line.strip().partition(":")
        if name.strip().lower() == feature.lower():
            return value.strip().upper().startswith("YES")
    return False


def open_source(spec: int | str | os.PathLike[str] | FrameSource, *, frame_size: tuple[int, int] | None = None,
                fps: float | None = None, loop_file: bool = False, realtime: bool = False,
                timeout_s: float = 10.0) -> FrameSource:
    """Make the :class:`FrameSource` that ``spec`` names.

    ``spec`` is one of:

    * ``"picamera"`` or ``"picamera:1"``: a Raspberry Pi camera through picamera2;
    * ``0``, ``"0"`` or ``"/dev/video0"``: a USB/V4L2 camera;
    * ``"rtsp://..."``, ``"http(s)://..."`` (and rtmp, udp, tcp, srt): a network stream (FFmpeg);
    * a string containing ``"!"``: a GStreamer pipeline ending in ``appsink``, e.g. a Jetson CSI
      camera: :func:`jetson_csi_pipeline` (needs an OpenCV built with GStreamer);
    * a path: a video file (or an image sequence such as ``frames/%04d.jpg``);
    * a :class:`FrameSource`, returned as it is.

    What can be checked without the device is checked here (the file exists, picamera2 and
    GStreamer are there); the device itself is opened by whoever reads the source
    (:class:`LatestFrameReader`, or ``with source:``), so a camera that is not ready at boot is
    retried rather than fatal.

    Args:
        frame_size: ``(width, height)`` asked of a camera (ignored for files and streams).
        fps: frame rate asked of a camera.
        loop_file: a file starts again at its end instead of ending.
        realtime: a file is delivered at its own frame rate, like a camera (frames the consumer
            has no time for are then dropped, as they would be from a camera).
        timeout_s: how long a network stream may take to open or to deliver a frame before the
            read fails (and the reader reconnects).

    Raises:
        FileNotFoundError: a path that does not exist.
        SourceError: a Pi camera without picamera2, or a GStreamer pipeline without GStreamer.
    """
    if isinstance(spec, FrameSource):
        return spec
    if isinstance(spec, bool):
        raise TypeError(f"source must be a camera index, a path, a URL or a pipeline, got {spec!r}")
    if isinstance(spec, int):
        return _camera(spec, frame_size, fps)
    text = os.fspath(spec).strip()
    lowered = text.lower()
    if lowered == "picamera" or lowered.startswith("picamera:"):
        index = text.partition(":")[2] or "0"
        if not index.isdigit():
            raise ValueError(f"a Pi camera is 'picamera' or 'picamera:N' (N = camera number), got {text!r}")
        if not picamera_available():
            raise SourceError(_PICAMERA_HINT)
        return PiCameraSource(int(index), frame_size or (1280, 720), fps)
    if text.isdigit():
        return _camera(int(text), frame_size, fps)
    if lowered.startswith("/dev/video"):
        return _camera(text, frame_size, fps)
    if "!" in text:
        if not _opencv_has("GStreamer"):
            raise SourceError("this OpenCV was built without GStreamer, so it cannot run the pipeline "
                              f"{text!r} (the opencv-python wheels have none). On a Jetson use JetPack's OpenCV "
                              "(`sudo apt install python3-opencv`, a venv made with --system-site-packages and "
                              "no opencv-python wheel in it); elsewhere build OpenCV with -DWITH_GSTREAMER=ON")
        hint = "" if "appsink" in text else " (a pipeline for OpenCV must end in appsink)"
        return VideoCaptureSource(text, api=cv2.CAP_GSTREAMER, live=True, description=f"GStreamer: {text}",
                                  hint=hint or " (check it with gst-launch-1.0, replacing appsink by fakesink)")
    if lowered.startswith(STREAM_SCHEMES):
        ms = int(timeout_s * 1000)
        params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, ms]
        return VideoCaptureSource(text, api=cv2.CAP_FFMPEG, params=params, live=True,
                                  description=_redact(text),
                                  hint=" (is the URL right and reachable? for RTSP over a lossy network try "
                                       "OPENCV_FFMPEG_CAPTURE_OPTIONS=rtsp_transport;tcp)")
    path = Path(text).expanduser()
    if "%" not in text and not path.exists():
        raise FileNotFoundError(f"video source {text!r} not found: give a file, a camera index (0), "
                                "'picamera', a URL (rtsp://...) or a GStreamer pipeline")
    return VideoCaptureSource(str(path), live=False, loop=loop_file, realtime=realtime,
                              description=f"file {path}", hint=" (is it a video OpenCV/FFmpeg can decode?)")


def _camera(index: int | str, frame_size: tuple[int, int] | None, fps: float | None) -> VideoCaptureSource:
    return VideoCaptureSource(index, live=True, frame_size=frame_size, fps=fps, description=f"camera {index}",
                              hint=" (is it plugged in? `v4l2-ctl --list-devices` lists cameras; is the user "
                                   "in the 'video' group? is another process using it?)")


def _redact(url: str) -> str:
    """A URL without its password, for logs."""
    scheme, sep, rest = url.partition("://")
    creds, at, host = rest.partition("@")
    if at and ":" in creds and "/" not in creds:
        return f"{scheme}{sep}{creds.split(':')[0]}:***@{host}"
    return url


# ------------------------------------------------------------------------------------------ reader


class CapturedFrame(NamedTuple):
    """A frame and where it came from."""

    image: np.ndarray
    index: int  #: 0-based position among all frames captured by the reader (across reconnects)
    timestamp: float  #: ``time.time()`` when it was captured


class LatestFrameReader:
    """Capture from a :class:`FrameSource` on a thread, keeping only the newest frame.

    ``get()`` returns the newest frame not yet returned; when the consumer is slower than the
    source, the frames it had no time for are dropped (counted in :attr:`dropped`). With
    ``drop_frames=False`` (the default for files) the capture thread waits for the consumer
    instead, so every frame is processed.

    The capture thread owns the source: it opens it, reads it and releases it. When the source
    fails to open (a live one), returns no frame ``max_failures`` times in a row, or delivers
    nothing for ``stall_timeout`` seconds, it is released and reopened after a wait that doubles
    from ``backoff_initial`` up to ``backoff_max`` (reset by the next frame), with a log line each
    time. A file's end is the end (:attr:`eof`) unless ``reconnect_on_eof``; a file that cannot be
    opened is an error (:attr:`error`), not retried.

    A read that blocks inside the driver cannot be interrupted from Python: network streams get
    FFmpeg read timeouts from :func:`open_source`, and ``stop()`` leaves a thread still blocked
    after ``timeout`` behind (a daemon thread) with a warning.

    Counters (read them any time): ``captured``, ``delivered``, ``dropped``, ``failures`` (times
    the source was found failing), ``reconnects`` (successful reopenings after a failure),
    ``open_attempts``.
    """

    def __init__(self, source: FrameSource, *, drop_frames: bool | None = None, stall_timeout: float = 5.0,
                 max_failures: int = 5, backoff_initial: float = 0.5, backoff_max: float = 10.0,
                 reconnect_on_eof: bool = False) -> None:
        if stall_timeout <= 0 or max_failures < 1 or backoff_initial <= 0 or backoff_max < backoff_initial:
            raise ValueError("need stall_timeout > 0, max_failures >= 1 and 0 < backoff_initial <= backoff_max")
        self.source = source
        self.drop_frames = source.live if drop_frames is None else bool(drop_frames)
        self.stall_timeout, self.max_failures = float(stall_timeout), int(max_failures)
        self.backoff_initial, self.backoff_max = float(backoff_initial), float(backoff_max)
        self.reconnect_on_eof = reconnect_on_eof
        self.captured = self.delivered = self.dropped = 0
        self.failures = self.reconnects = self.open_attempts = 0
        self.eof = False
        self.error: BaseException | None = None
        self.last_frame_time: float | None = None  # time.monotonic() of the newest capture
        self._cond = threading.Condition()
        self._latest: CapturedFrame | None = None
        self._stop = threading.Event()
        self._done = False
        self._thread: threading.Thread | None = None

    # -- control ---------------------------------------------------------------------------------

    def start(self) -> LatestFrameReader:
        if self._thread is not None:
            raise RuntimeError("a LatestFrameReader starts once; make a new one to read again")
        self._thread = threading.Thread(target=self._run, name=f"edgedet-capture({self.source.description})",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop capturing, join the thread (up to ``timeout`` s) and so release the source."""
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
            if thread.is_alive():
                log.warning("%s: the capture thread is still blocked in a read after %.1f s; leaving it behind "
                            "(it releases the source when the read returns)", self.source.description, timeout)

    def __enter__(self) -> LatestFrameReader:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def finished(self) -> bool:
        """Capture has ended (end of file, error or stop) and every captured frame was taken."""
        with self._cond:
            return self._done and self._latest is None

    # -- consumer --------------------------------------------------------------------------------

    def get(self, timeout: float | None = None) -> np.ndarray | None:
        """The newest frame not yet returned; ``None`` after ``timeout`` s or once capture ended."""
        item = self.get_frame(timeout)
        return None if item is None else item.image

    def get_frame(self, timeout: float | None = None) -> CapturedFrame | None:
        """Like :meth:`get`, with the frame's capture index and timestamp."""
        with self._cond:
            self._cond.wait_for(lambda: self._latest is not None or self._done, timeout)
            item, self._latest = self._latest, None
            if item is not None:
                self.delivered += 1
                self._cond.notify_all()  # a non-dropping capture thread waits for the slot
            return item

    # -- capture thread --------------------------------------------------------------------------

    def _publish(self, frame: np.ndarray) -> None:
        with self._cond:
            if not self.drop_frames:
                while self._latest is not None and not self._stop.is_set():
                    self._cond.wait(0.1)
                if self._stop.is_set():
                    return
            if self._latest is not None:
                self.dropped += 1
            self._latest = CapturedFrame(frame, self.captured, time.time())
            self.captured += 1
            self.last_frame_time = time.monotonic()
            self._cond.notify_all()

    def _release(self) -> None:
        try:
            self.source.release()
        except Exception as exc:  # a release that fails must not stop the reconnects
            log.warning("%s: release failed: %s", self.source.description, exc)

    def _run(self) -> None:
        desc = self.source.description
        backoff = self.backoff_initial
        is_open = failed_before = False
        in_a_row = 0
        last_good = time.monotonic()
        try:
            while not self._stop.is_set():
                if not is_open:
                    self.open_attempts += 1
                    try:
                        self.source.open()
                    except Exception as exc:
                        if self.source.finite and not self.reconnect_on_eof:
                            raise  # a file that cannot be opened will not open by waiting
                        self._release()
                        failed_before = True
                        log.warning("%s: cannot open (%s); retrying in %.3g s", desc, exc, backoff)
                        self._stop.wait(backoff)
                        backoff = min(backoff * 2, self.backoff_max)
                        continue
                    is_open, in_a_row, last_good = True, 0, time.monotonic()
                    if failed_before:
                        self.reconnects += 1
                        log.info("%s: reopened (reconnect %d)", desc, self.reconnects)
                    else:
                        log.info("%s: opened%s", desc, f" ({self.source.fps:g} fps)" if self.source.fps else "")
                try:
                    frame = self.source.read()
                except Exception as exc:
                    log.warning("%s: read failed: %s", desc, exc)
                    frame = None
                now = time.monotonic()
                if frame is not None:
                    self._publish(frame)
                    in_a_row, last_good, backoff = 0, now, self.backoff_initial
                    continue
                if self.source.eof and not self.reconnect_on_eof:
                    self.eof = True
                    log.info("%s: end of stream after %d frames", desc, self.captured)
                    break
                in_a_row += 1
                if self.source.eof or in_a_row >= self.max_failures or now - last_good >= self.stall_timeout:
                    why = ("end of stream" if self.source.eof else
                           f"no frame for {now - last_good:.1f} s" if now - last_good >= self.stall_timeout
                           else f"{in_a_row} failed reads in a row")
                    self.failures += 1
                    failed_before = True
                    log.warning("%s: stopped delivering (%s); releasing it and reopening in %.3g s",
                                desc, why, backoff)
                    self._release()
                    is_open = False
                    self._stop.wait(backoff)
                    backoff = min(backoff * 2, self.backoff_max)
                else:
                    self._stop.wait(min(0.01 * in_a_row, 0.1))  # a brief pause before trying again
        except BaseException as exc:
            self.error = exc
            log.error("%s: capture stopped: %s", desc, exc)
        finally:
            self._release()
            with self._cond:
                self._done = True
                self._cond.notify_all()


# ------------------------------------------------------------------------------------------ writers


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
                    size: tuple[int, int], detections: Detections) -> None:
        """The record of one processed frame (see :func:`run_loop`)."""
        self.write({"frame": frame, "source_frame": source_frame, "timestamp": round(timestamp, 6),
                    "latency_ms": round(latency_ms, 3), "width": size[0], "height": size[1],
                    "detections": detections.to_json_records()})

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


# ------------------------------------------------------------------------------------------ drawing


def overlay(frame: np.ndarray, detections: Detections, fps: float | None = None, latency_ms: float | None = None,
            *, text: str | None = None) -> np.ndarray:
    """``frame`` with the detections drawn (:meth:`Detections.draw`) and a status line in the top-left
    corner: ``text``, the loop's frames per second and the detector's latency. Returns a copy."""
    image = detections.draw(frame)
    parts = [p for p in (text,
                         None if fps is None else f"{fps:.1f} FPS",
                         None if latency_ms is None else f"{latency_ms:.0f} ms") if p]
    if parts:
        line = "  ".join(parts)
        font, scale, thickness = cv2.FONT_HERSHEY_SIMPLEX, 0.5, 1
        (tw, th), baseline = cv2.getTextSize(line, font, scale, thickness)
        cv2.rectangle(image, (0, 0), (tw + 8, th + baseline + 8), (0, 0, 0), cv2.FILLED)
        cv2.putText(image, line, (4, th + 4), font, scale, (255, 255, 255), thickness, cv2.LINE_AA)
    return image


def display_available() -> tuple[bool, str]:
    """Whether ``cv2.imshow`` can open a window here, and why not."""
    gui = None
    for row in cv2.getBuildInformation().splitlines():
        name, _, value = row.strip().partition(":")
        if name.strip() == "GUI":
            gui = value.strip()
            break
    if gui is not None and gui.upper() in ("", "NONE", "NO"):
        return False, ("this OpenCV has no GUI (opencv-python-headless); `pip install opencv-python` "
                       "instead for a window")
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return False, "no display (DISPLAY and WAYLAND_DISPLAY are unset: a service, or ssh without -X)"
    return True, ""


# ------------------------------------------------------------------------------------------ the loop


@dataclass
class LoopStats:
    """What :func:`run_loop` did.

    ``frames`` were processed by the detector; ``captured`` came from the source, of which
    ``dropped`` were replaced by a newer one before the detector could take them and ``skipped``
    were not H×W×3 uint8 images. Latencies are the detector's (preprocess + inference + decode +
    NMS) over the last :data:`LATENCY_WINDOW` frames (the mean over all); ``fps`` is processed
    frames per second of the loop's wall time.
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

    def summary(self) -> str:
        lat = ("" if self.mean_latency_ms is None else
               f", latency mean {self.mean_latency_ms:.1f} ms / p90 {self.p90_latency_ms:.1f} ms")
        return (f"{self.frames} frames in {self.duration_s:.1f} s ({self.fps:.1f} FPS{lat}); captured "
                f"{self.captured}, dropped {self.dropped}, skipped {self.skipped}, reconnects {self.reconnects}; "
                f"stopped: {self.stop_reason}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _SignalStop:
    """SIGINT/SIGTERM set ``event`` (a second one raises KeyboardInterrupt: stop now). Handlers are
    installed only in the main thread (Python allows no other) and restored on exit."""

    def __init__(self, event: threading.Event) -> None:
        self.event = event
        self.received: str | None = None
        self._previous: dict[int, Any] = {}

    def _handler(self, signum: int, _frame: object) -> None:
        name = signal.Signals(signum).name
        if self.received is not None:
            log.warning("%s again: stopping now", name)
            raise KeyboardInterrupt
        self.received = name
        self.event.set()
        log.info("%s: stopping after this frame (send it again to stop at once)", name)

    def __enter__(self) -> _SignalStop:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        self._previous.clear()


def _check_classes(detector: Any, classes: Sequence[int | str] | None) -> list[int | str] | None:
    if classes is None:
        return None
    classes = [classes] if isinstance(classes, (int, str)) else list(classes)
    labels = getattr(detector, "labels", None)
    names = [c for c in classes if isinstance(c, str)]
    if names and labels:
        unknown = [c for c in names if c not in labels]
        if unknown:
            raise ValueError(f"unknown class name(s) {unknown}; this model knows: {', '.join(labels)}")
    return classes


def _label(detector: Any) -> str | None:
    parts = [getattr(detector, attr, None) for attr in ("variant", "precision")]
    parts = [p for p in parts if isinstance(p, str)]
    return " ".join(parts) or None


def run_loop(detector: Callable[[np.ndarray], Detections], source: int | str | os.PathLike[str] | FrameSource, *,
             max_frames: int | None = None, classes: Sequence[int | str] | None = None,
             display: bool | str = "auto", video_out: str | os.PathLike[str] | VideoFileWriter | None = None,
             jsonl_out: str | os.PathLike[str] | JsonLinesWriter | None = None,
             stop_event: threading.Event | None = None, drop_frames: bool | None = None,
             video_fps: float | None = None, on_frame: Callable[[np.ndarray, Detections, CapturedFrame], Any] | None = None,
             reader_options: dict[str, Any] | None = None, log_interval_s: float = 30.0,
             window: str = "edgedet") -> LoopStats:
    """Run ``detector`` on the newest frame of ``source`` until told to stop.

    Each iteration takes the newest frame (:class:`LatestFrameReader`), detects, keeps the
    ``classes`` asked for, and writes a JSON line, the annotated frame to the video and the
    window, then calls ``on_frame(frame, detections, captured_frame)``. A frame the detector
    refuses (wrong shape or dtype: :class:`~edgedet.preprocess.InputError`) is skipped with a
    warning and counted. The loop ends at ``max_frames`` processed frames, at the end of a file,
    when ``stop_event`` is set, on ``q``/Esc in the window, or on SIGINT/SIGTERM (handled only
    when called from the main thread; the previous handlers are restored after). The reader is
    stopped and the writers closed on every exit, exceptions included.

    Args:
        detector: an :class:`edgedet.Detector` (or any callable frame → :class:`Detections`).
        source: a :class:`FrameSource` or a spec for :func:`open_source`.
        max_frames: stop after this many processed frames (None: no limit).
        classes: class names or ids to keep (None: all).
        display: ``"auto"`` shows a window when there is a display and OpenCV has a GUI;
            ``True`` asks for one (falling back to headless with a log line); ``False`` never.
        video_out: a path (or :class:`VideoFileWriter`) for the annotated video.
        jsonl_out: a path (``"-"``: stdout) or :class:`JsonLinesWriter`; each line holds ``frame``
            (processed index), ``source_frame`` (capture index), ``timestamp`` (capture time,
            Unix seconds), ``latency_ms`` (the detector's), ``width``, ``height`` and
            ``detections`` (:meth:`Detections.to_json_records`).
        stop_event: set it (from any thread) to end the loop after the current frame.
        drop_frames: keep only the newest frame (default: for live sources; files are processed
            frame by frame).
        video_fps: the recorded video's frame rate (default: the file's when every frame is
            processed; else the rate frames are processed, measured over the first ones).
        reader_options: more :class:`LatestFrameReader` arguments (``stall_timeout``, backoff...).
        log_interval_s: how often a progress line is logged.

    Raises:
        SourceError: the source could not be used at all (e.g. a file that does not decode).
    """
    src = open_source(source)
    classes = _check_classes(detector, classes)
    if max_frames is not None and max_frames < 0:
        raise ValueError(f"max_frames must be >= 0, got {max_frames}")
    show = False
    if display:
        ok, why = display_available()
        if ok:
            show = True
        else:
            (log.warning if display is True else log.info)("running headless: %s", why)
    internal_stop = threading.Event()
    reader = LatestFrameReader(src, drop_frames=drop_frames, **(reader_options or {}))
    writer = video_out if isinstance(video_out, VideoFileWriter) or video_out is None else VideoFileWriter(video_out)
    jsonl = jsonl_out if isinstance(jsonl_out, JsonLinesWriter) or jsonl_out is None else JsonLinesWriter(jsonl_out)
    label = _label(detector)
    stats = LoopStats()
    latencies: collections.deque[float] = collections.deque(maxlen=LATENCY_WINDOW)
    latency_sum = 0.0
    fps_ema: float | None = None
    last_done: float | None = None
    started = time.monotonic()
    next_log = started + log_interval_s
    warned_waiting = started
    reason = ""
    window_open = False

    with _SignalStop(internal_stop) as signals:
        try:
            reader.start()
            while True:
                if max_frames is not None and stats.frames >= max_frames:
                    reason = "max_frames"
                    break
                if internal_stop.is_set():
                    reason = signals.received or "stopped"
                    break
                if stop_event is not None and stop_event.is_set():
                    reason = "stop_event"
                    break
                item = reader.get_frame(timeout=0.1)
                now = time.monotonic()
                if item is None:
                    if reader.finished:
                        if reader.eof:
                            reason = "end of stream"
                            break
                        if reader.error is not None:
                            raise SourceError(f"{src.description}: {reader.error}") from reader.error
                        reason = "source stopped"
                        break
                    quiet = now - (reader.last_frame_time or started)
                    if quiet > reader.stall_timeout and now - warned_waiting > log_interval_s:
                        log.warning("no frame from %s for %.0f s (reconnects so far: %d)",
                                    src.description, quiet, reader.reconnects)
                        warned_waiting = now
                    continue

                t0 = time.perf_counter()
                try:
                    detections = detector(item.image)
                except InputError as exc:
                    stats.skipped += 1
                    if stats.skipped <= 5 or stats.skipped % 100 == 0:
                        log.warning("skipping frame %d from %s (%d skipped so far): %s",
                                    item.index, src.description, stats.skipped, exc)
                    continue
                latency_ms = (time.perf_counter() - t0) * 1000.0
                if classes is not None:
                    detections = detections.filter(classes=classes)
                done = time.monotonic()
                if last_done is not None and done > last_done:
                    rate = 1.0 / (done - last_done)
                    fps_ema = rate if fps_ema is None else 0.9 * fps_ema + 0.1 * rate
                last_done = done
                latencies.append(latency_ms)
                latency_sum += latency_ms
                index = stats.frames
                stats.frames += 1
                height, width = item.image.shape[:2]

                if jsonl is not None:
                    jsonl.write_frame(frame=index, source_frame=item.index, timestamp=item.timestamp,
                                      latency_ms=latency_ms, size=(width, height), detections=detections)
                if writer is not None or show:
                    annotated = overlay(item.image, detections, fps_ema, latency_ms, text=label)
                    if writer is not None:
                        if writer.frames == 0 and writer.fps is None:
                            writer.fps = video_fps or _video_fps(src, reader)
                        writer.write(annotated)
                    if show:
                        if not window_open:
                            try:
                                cv2.namedWindow(window, cv2.WINDOW_NORMAL)
                                window_open = True
                            except cv2.error as exc:
                                log.warning("cannot open a window (%s); running headless",
                                            str(exc).strip().splitlines()[-1])
                                show = False
                        if window_open:
                            cv2.imshow(window, annotated)
                            key = cv2.waitKey(1) & 0xFF
                            if key in (ord("q"), 27):
                                reason = "key"
                                break
                            if cv2.getWindowProperty(window, cv2.WND_PROP_VISIBLE) < 1:
                                reason = "window closed"
                                break
                if on_frame is not None:
                    on_frame(item.image, detections, item)
                if done >= next_log:
                    next_log = done + log_interval_s
                    log.info("%d frames, %.1f FPS, latency p90 %.1f ms; dropped %d, skipped %d, reconnects %d",
                             stats.frames, fps_ema or 0.0, float(np.percentile(latencies, 90)), reader.dropped,
                             stats.skipped, reader.reconnects)
        except BaseException:
            reason = reason or "error"
            raise
        finally:
            reader.stop()
            try:
                if writer is not None:
                    path = writer.close()
                    stats.video_path = None if path is None else str(path)
            finally:
                if jsonl is not None:
                    jsonl.close()
                    stats.jsonl_path = None if jsonl.path is None else str(jsonl.path)
                if window_open:
                    with contextlib.suppress(cv2.error):
                        cv2.destroyWindow(window)
            stats.duration_s = time.monotonic() - started
            stats.captured, stats.dropped, stats.reconnects = reader.captured, reader.dropped, reader.reconnects
            if latencies:
                stats.mean_latency_ms = latency_sum / stats.frames
                stats.p90_latency_ms = float(np.percentile(latencies, 90))
            stats.fps = stats.frames / stats.duration_s if stats.duration_s > 0 else 0.0
            stats.stop_reason = reason
    log.info("camera loop: %s", stats.summary())
    return stats


def _video_fps(source: FrameSource, reader: LatestFrameReader) -> float | None:
    """The recorded video's frame rate when none was given: the file's when every frame is
    processed; else None: the writer measures the rate frames are processed."""
    return source.fps if not reader.drop_frames and source.fps else None


def iter_frames(source: int | str | os.PathLike[str] | FrameSource, **reader_options: Any) -> Iterator[np.ndarray]:
    """The newest frames of ``source``, one per ``next()``, until it ends (a file) or the loop breaks.

    For custom loops: ``for frame in iter_frames("picamera"): detections = detector(frame)``.
    """
    with LatestFrameReader(open_source(source), **reader_options) as reader:
        while True:
            frame = reader.get(timeout=0.5)
            if frame is None:
                if reader.finished:
                    if reader.error is not None:
                        raise SourceError(f"{reader.source.description}: {reader.error}") from reader.error
                    return
                continue
            yield frame
