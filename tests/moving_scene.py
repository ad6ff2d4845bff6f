"""A generated video with one object crossing the frame, and a detector that really finds it.

The INT8 test artifacts carry realistic *random* weights: they return ~100 arbitrary boxes per
frame (mostly one class along the top edge), unrelated to what is in the picture, so they cannot
give "one object enters, moves, leaves". :class:`RedObjectDetector` is a real (classical) detector
instead: it reads the decoded video pixels, thresholds the object's colour and returns
:class:`edgedet.Detections` of the blobs it finds; the tests pair it with the real tracker,
publisher, broker and subscriber, and use the INT8 artifact where only a realistic load matters.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from edgedet.detections import Detections

SIZE = (640, 360)
OBJECT_W, OBJECT_H = 90, 150
TOP = 110


def object_box(i: int, frames: int, size: tuple[int, int] = SIZE) -> tuple[int, int, int, int] | None:
    """The object's box in frame ``i`` (``None`` when it is out of view): it enters after a quarter of
    the frames and leaves before the last quarter."""
    start, end = frames // 4, frames - frames // 4
    if not start <= i < end:
        return None
    x1 = int(20 + (size[0] - 40 - OBJECT_W) * (i - start) / max(1, end - start - 1))
    return x1, TOP, x1 + OBJECT_W, TOP + OBJECT_H


def render(i: int, frames: int, size: tuple[int, int] = SIZE) -> np.ndarray:
    rng = np.random.default_rng(1234)  # the same textured background in every frame
    image = cv2.GaussianBlur((rng.random((size[1], size[0], 3)) * 70 + 60).astype(np.uint8), (0, 0), 2)
    box = object_box(i, frames, size)
    if box is not None:
        x1, y1, x2, y2 = box
        cv2.rectangle(image, (x1, y1), (x2 - 1, y2 - 1), (30, 30, 220), cv2.FILLED)
        cv2.circle(image, ((x1 + x2) // 2, y1 + 30), 18, (200, 200, 240), cv2.FILLED)  # a "face"
    return image


def write_video(path: Path, frames: int = 60, size: tuple[int, int] = SIZE, fps: float = 10.0) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, size)
    assert writer.isOpened(), "OpenCV cannot write MJPG here"
    for i in range(frames):
        writer.write(render(i, frames, size))
    writer.release()
    return path


class RedObjectDetector:
    """Finds saturated red blobs (the object) in a BGR frame: ``frame -> Detections`` (label ``person``)."""

    labels = ("person",)

    def __call__(self, frame: np.ndarray) -> Detections:
        hsv = cv2.cvtColor(frame, cv2.COLOR_BGR2HSV)
        mask = cv2.inRange(hsv, (0, 120, 90), (10, 255, 255)) | cv2.inRange(hsv, (170, 120, 90), (180, 255, 255))
        mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, np.ones((25, 25), np.uint8))
        count, _, boxes, _ = cv2.connectedComponentsWithStats(mask)
        found = [(x, y, x + w, y + h) for x, y, w, h, area in boxes[1:count] if area > 800]
        if not found:
            return Detections.empty(self.labels)
        return Detections(found, [0.9] * len(found), [0] * len(found), self.labels)
