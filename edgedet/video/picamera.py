"""The Raspberry Pi camera (CSI) through ``picamera2``, imported only when such a camera is opened."""
from __future__ import annotations

import contextlib
import importlib.util
from typing import Any

import numpy as np

from edgedet.video.sources import FrameSource, SourceError

__all__ = ["PICAMERA_HINT", "PiCameraSource", "picamera_available"]


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
            raise SourceError(PICAMERA_HINT) from exc
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


PICAMERA_HINT = ("the Pi camera needs picamera2, which is not importable here: on Raspberry Pi OS "
                  "`sudo apt install python3-picamera2`, and make the virtual environment with "
                  "`python3 -m venv --system-site-packages` so it sees the system package; a USB camera "
                  "works without it (--source 0)")


def picamera_available() -> bool:
    """``picamera2`` can be imported (without importing it)."""
    try:
        return importlib.util.find_spec("picamera2") is not None
    except (ImportError, ValueError):
        return False
