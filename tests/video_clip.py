"""The camera-loop tests' shared fixtures: a short MJPG clip of synthetic scenes and the lite0 INT8
detector that serves it (imported by the test modules that use them)."""
from __future__ import annotations

from pathlib import Path

import cv2
import pytest

from edgedet.data.synthetic import SyntheticConfig, render
from edgedet.detector import Detector

WIDTH, HEIGHT, FRAMES, FPS = 320, 240, 40, 20.0
FAST = dict(backoff_initial=0.05, backoff_max=0.4, max_failures=3)  # reconnect quickly in tests


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    """40 frames, 320x240, 20 fps, MJPG .avi of synthetic scenes."""
    path = tmp_path_factory.mktemp("video") / "scenes.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), FPS, (WIDTH, HEIGHT))
    assert writer.isOpened()
    config = SyntheticConfig(image_size=(WIDTH, HEIGHT), max_objects=6)
    for i in range(FRAMES):
        writer.write(render(i, config)[0])
    writer.release()
    return path


@pytest.fixture(scope="module")
def detector(onnx_exports) -> Detector:
    exports, _ = onnx_exports
    # One thread: on a shared 2-vCPU machine two inference threads beside the capture and stage
    # threads are slower.
    return Detector(variant="lite0", precision="int8", models=exports, profile_cache=False, threads=1)
