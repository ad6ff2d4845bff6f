"""What accuracy-aware INT8 aims at, and how a candidate is measured against it.

One target for every backend (:class:`AccuracyTarget`): detection-level, like the INT8 parity gate
of :mod:`converters.verify` (the candidate's detections scored against PyTorch FP32's, AP50), with
the raw-output cosines as floors. A candidate is measured (:class:`Agreement`) on frames of the
calibration source that neither calibration nor the parity check uses (:func:`validation_frames`),
against PyTorch FP32 on the same frames. The search that uses it is :mod:`converters.int8`.
"""
from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from converters.verify import Reference, cosine, detection_agreement, reference_outputs

if TYPE_CHECKING:
    from converters.calibration import Calibration

__all__ = ["FIGURES", "AccuracyTarget", "Agreement", "Outputs", "validation_frames", "validation_reference"]

logger = logging.getLogger(__name__)

#: One candidate's outputs on one batch: ``(cls_logits, box_regression)``.
Outputs = tuple[np.ndarray, np.ndarray]
#: The figures :class:`Agreement` measures (names as in :func:`converters.verify.compare`).
FIGURES = ("detection_ap50", "detection_f1", "cls_cosine", "box_cosine")


@dataclass(frozen=True)
class AccuracyTarget:
    """The agreement with PyTorch FP32 an accuracy-aware INT8 model must reach on the validation
    frames: detection AP50 against FP32's detections (as the parity gate measures it), and cosine
    floors on the raw outputs.

    Defaults: detection AP50 0.95 (the trained-weight parity gate is 0.9), cls cosine 0.999, box
    cosine 0.97. The cls floor is what the ONNX and OpenVINO searches aimed at before the target
    was detection-level (the trained reference D0 has cls cosine 0.9989-0.9992 fully quantized,
    so a few layers stay float there); a box cosine counts every anchor's regression, background
    included, so its floor only catches a broken graph (trained D0: full INT8 box cosine 0.983
    with mAP within 0.002 of FP32).
    """

    detection_ap50: float = 0.95
    cls_cosine: float = 0.999
    box_cosine: float = 0.97
    #: Held-out frames the agreement is measured on (not calibration, not the parity check's).
    validation_images: int = 4
    #: Frames a backend ranks its units on (the first of the validation frames).
    ranking_images: int = 1
    #: The search aims at this fraction of the allowed error on the validation frames, leaving
    #: room for images it has not seen.
    headroom: float = 0.9

    def __post_init__(self) -> None:
        for name in ("detection_ap50", "cls_cosine", "box_cosine"):
            if not 0.0 < getattr(self, name) < 1.0:
                raise ValueError(f"AccuracyTarget.{name} must be in (0, 1), got {getattr(self, name)}")
        if not 0.0 < self.headroom <= 1.0:
            raise ValueError("AccuracyTarget needs 0 < headroom <= 1")
        if self.validation_images < 1 or not 1 <= self.ranking_images <= self.validation_images:
            raise ValueError("AccuracyTarget needs validation_images >= 1 and "
                             "1 <= ranking_images <= validation_images")

    def shortfall(self, figures: dict[str, float]) -> float:
        """How far ``figures`` are from the target, in units of the allowed error (the largest over
        the gated figures): <= 1 meets it, 0 is exact; a missing or non-finite figure is infinite."""
        worst = 0.0
        for name in ("detection_ap50", "cls_cosine", "box_cosine"):
            value = figures.get(name)
            if value is None or not math.isfinite(value):
                return math.inf
            worst = max(worst, (1.0 - value) / (1.0 - getattr(self, name)))
        return worst

    def describe(self) -> str:
        """The target as one line (manifest ``options["accuracy_target"]``, part of the export key)."""
        return (f"detection_ap50>={self.detection_ap50:g},cls_cosine>={self.cls_cosine:g},"
                f"box_cosine>={self.box_cosine:g},validation={self.validation_images},"
                f"ranking={self.ranking_images},headroom={self.headroom:g}")


class Agreement:
    """Measures candidates' outputs against PyTorch FP32's on the validation frames."""

    def __init__(self, target: AccuracyTarget, reference: Reference) -> None:
        self.target, self.reference = target, reference

    @property
    def batches(self) -> tuple[np.ndarray, ...]:
        """The validation batches, [1,3,R,R] float32 NCHW, preprocessed."""
        return self.reference.batches

    @property
    def ranking_batches(self) -> tuple[np.ndarray, ...]:
        """The batches a backend ranks its units on."""
        return self.reference.batches[:self.target.ranking_images]

    def figures(self, outputs: Sequence[Outputs]) -> dict[str, float]:
        """:data:`FIGURES` of ``outputs`` (one per batch, from the first) against FP32's, and the
        ``shortfall`` they leave."""
        n = len(outputs)
        ref_cls, ref_box = list(self.reference.cls[:n]), list(self.reference.box[:n])
        cls, box = [np.asarray(o[0], np.float32) for o in outputs], [np.asarray(o[1], np.float32) for o in outputs]
        figures: dict[str, float] = {"cls_cosine": cosine(ref_cls, cls), "box_cosine": cosine(ref_box, box)}
        detections = detection_agreement(ref_cls, ref_box, cls, box, self.reference.anchors)
        figures.update(detection_ap50=detections["detection_ap50"], detection_f1=detections["detection_f1"])
        figures = {k: _round(v) for k, v in figures.items()}
        figures["shortfall"] = _round(self.target.shortfall(figures))
        return figures

    def shortfall(self, outputs: Sequence[Outputs]) -> float:
        """The target shortfall of ``outputs`` (see :meth:`AccuracyTarget.shortfall`)."""
        return self.figures(outputs)["shortfall"]


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


def validation_reference(model: Any, calibration: Calibration, target: AccuracyTarget) -> Reference:
    """PyTorch FP32's outputs on the validation frames of ``calibration`` (what :class:`Agreement`
    compares with)."""
    frames = validation_frames(calibration, target.validation_images)
    return reference_outputs(model, frames, description=f"validation frames of {calibration.source.description}")


def _round(value: float) -> float:
    # 6 significant digits (as the parity figures); inf stays inf: it sorts as "worst".
    return float(f"{value:.6g}") if math.isfinite(value) else math.inf
