"""What accuracy-aware INT8 aims at, shared by the exporters that make it (OpenVINO, ONNX).

An accuracy-aware INT8 export leaves the layers whose quantization hurts most in floating point
until the outputs agree with FP32 to an :class:`AccuracyTarget`, measured on frames of the
calibration source that neither calibration nor the parity check uses
(:func:`validation_frames`). How the layers are ranked is each backend's own business (see
:mod:`converters.openvino_exporter` and :mod:`converters.onnx_exporter`); growing the float set
until the target is met can use :func:`smallest_passing`.
"""
from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from converters.calibration import Calibration

__all__ = ["AccuracyTarget", "cosine", "smallest_passing", "validation_frames"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class AccuracyTarget:
    """Output agreement an accuracy-aware INT8 model must reach against FP32 (cosine similarity
    of the flattened outputs over the validation frames, as :mod:`converters.verify` computes).

    Defaults: cls cosine 0.999 and box cosine 0.97. A box cosine counts every anchor's
    regression, background included, so it says little about the detections: on the trained
    reference D0, full ONNX INT8 had box cosine 0.983 with its mAP within 0.002 of FP32 (detection
    AP50 vs FP32 0.973), while a search for box cosine >= 0.998 kept 308 nodes in float (14.4 MB,
    slower than FP32) for a lower mAP. The box floor only catches a broken graph; the artifacts
    are then gated on their detections (:data:`converters.verify.THRESHOLDS`).
    """

    cls_cosine: float = 0.999
    box_cosine: float = 0.97
    #: Held-out frames the agreement is measured on (not calibration, not the parity check's).
    validation_images: int = 4
    #: Frames the ranking of layers runs on (the first of the validation frames).
    ranking_images: int = 1
    #: The search aims at this fraction of the allowed error on the validation frames, leaving
    #: room for images it has not seen.
    headroom: float = 0.9
    #: OpenVINO: blocks of consecutive quantizers ranked first (coarse to fine, see
    #: ``converters.openvino_exporter._AccuracySearch``). The ONNX search does not use it.
    blocks: int = 16

    def __post_init__(self) -> None:
        for name in ("cls_cosine", "box_cosine"):
            if not 0.0 < getattr(self, name) < 1.0:
                raise ValueError(f"AccuracyTarget.{name} must be in (0, 1), got {getattr(self, name)}")
        if not 0.0 < self.headroom <= 1.0 or self.blocks < 1:
            raise ValueError("AccuracyTarget needs 0 < headroom <= 1 and blocks >= 1")
        if self.validation_images < 1 or not 1 <= self.ranking_images <= self.validation_images:
            raise ValueError("AccuracyTarget needs validation_images >= 1 and "
                             "1 <= ranking_images <= validation_images")

    def shortfall(self, cls_cosine: float, box_cosine: float) -> float:
        """How far from the target, in units of the allowed error: <= 1 meets it (0 = exact)."""
        return max((1.0 - cls_cosine) / (1.0 - self.cls_cosine), (1.0 - box_cosine) / (1.0 - self.box_cosine))

    def describe(self) -> str:
        return (f"cls_cosine>={self.cls_cosine:g},box_cosine>={self.box_cosine:g},"
                f"validation={self.validation_images},ranking={self.ranking_images},"
                f"headroom={self.headroom:g},blocks={self.blocks}")


def cosine(refs: Sequence[np.ndarray], outs: Sequence[np.ndarray]) -> float:
    """Cosine similarity of the flattened, concatenated ``outs`` against ``refs`` (as
    :func:`converters.verify.compare` computes it); -1 when an output is not finite."""
    a = np.concatenate([np.ravel(x) for x in refs]).astype(np.float64)
    b = np.concatenate([np.ravel(x) for x in outs]).astype(np.float64)
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        return -1.0
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0 or nb == 0:
        return 1.0 if na == nb else 0.0
    return float(np.dot(a, b) / (na * nb))


def validation_frames(calibration: Calibration, count: int) -> list[np.ndarray]:
    """``count`` frames of the calibration source that calibration does not use (nor does the parity
    check, which takes the source's held-out frames): the next ones after the calibration frames.
    A source too small to spare any (a small folder) gives its calibration frames instead."""
    source = calibration.source

    def digest(frame: np.ndarray) -> str:
        return hashlib.sha1(np.ascontiguousarray(frame).tobytes()).hexdigest()

    used = {digest(f) for f in source.calibration_frames(calibration.count)}
    extra = [f for f in source.calibration_frames(calibration.count + count) if digest(f) not in used]
    if extra:
        return extra[:count]
    logger.warning("calibration source %s has no frames to spare for the accuracy-aware INT8 check; "
                   "measuring agreement on calibration frames", source.description)
    return list(source.calibration_frames(min(count, calibration.count)))


def smallest_passing(shortfall_at: Callable[[int], float], size: int, goal: float, *,
                     tolerance: float = 0.0) -> tuple[int | None, float]:
    """The smallest ``n`` in ``1..size`` with ``shortfall_at(n) <= goal``, for a shortfall that
    (roughly) falls as ``n`` grows: doubling from 1, then bisection of the last step until the
    bracket is narrower than ``max(1, tolerance * n)`` (a ``tolerance`` of 0.125 accepts up to
    12.5% more than the smallest ``n``, for fewer evaluations). ``(n, shortfall_at(n))``, or
    ``(None, shortfall_at(size))`` when even ``size`` misses the goal. Each ``n`` is evaluated once.
    """
    if size < 1:
        raise ValueError("smallest_passing needs size >= 1")
    low, n = 0, 1  # `low`: the largest n known to miss the goal (0: none tried)
    while True:
        s = shortfall_at(n)
        if s <= goal:
            break
        if n >= size:
            return None, s
        low, n = n, min(size, 2 * n)
    high, best = n, s  # `high`: the smallest n known to meet it
    while high - low > max(1, int(tolerance * high)):
        mid = (low + high) // 2
        s = shortfall_at(mid)
        if s <= goal:
            high, best = mid, s
        else:
            low = mid
    return high, best
