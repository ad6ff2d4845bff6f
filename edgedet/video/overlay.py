"""Drawing on frames: detections (:meth:`Detections.draw`) plus the loop's status line."""
from __future__ import annotations

import cv2
import numpy as np

from edgedet.detections import Detections

__all__ = ["overlay"]


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

