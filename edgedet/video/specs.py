"""Source specs: which :class:`~edgedet.video.sources.FrameSource` a string or an index names."""
from __future__ import annotations

import os
from pathlib import Path

import cv2

from edgedet.video.picamera import PICAMERA_HINT, PiCameraSource, picamera_available
from edgedet.video.sources import FrameSource, SourceError, VideoCaptureSource

__all__ = ["STREAM_SCHEMES", "default_source", "jetson_csi_pipeline", "open_source"]

#: URL schemes opened as network streams through FFmpeg.
STREAM_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "rtmps://", "http://", "https://", "udp://", "tcp://",
                  "srt://")


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
            raise SourceError(PICAMERA_HINT)
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

