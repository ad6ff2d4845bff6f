"""``Pipeline``: one model with the runtime's pre- and post-processing around it, frames in,
:class:`~edgedet.detections.Detections` out.

Everything that runs a model on frames goes through it: the :class:`~edgedet.detector.Detector`
(an exported artifact), evaluation, the benchmark, and a live PyTorch module
(:meth:`edgedet.backends.torch.TorchBackend.from_module`), so that there is one letterbox, one
normalization and one decode. What to do is read from a :class:`~edgedet.manifest.Manifest`.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np

from edgedet.anchors import generate_anchors
from edgedet.backends import Backend
from edgedet.detections import Detections
from edgedet.manifest import Manifest
from edgedet.postprocess import DEFAULT_SCORE_THRESHOLD, postprocess
from edgedet.preprocess import Letterbox, prepare
from edgedet.quantization import dequantize

if TYPE_CHECKING:
    from edgedet.detector import Artifact

__all__ = ["Pipeline"]


class Pipeline:
    """A loaded model with everything around it: frames in, :class:`Detections` out.

    Args:
        source: the :class:`~edgedet.detector.Artifact` the backend loaded, or the manifest of a
            model held in memory (``TorchBackend.from_module(model).manifest()``).
        backend: what runs the preprocessed batches.
        score_threshold, iou_threshold, max_detections: post-processing settings.
        rgb: frames are RGB instead of OpenCV's BGR.
    """

    def __init__(self, source: Artifact | Manifest, backend: Backend, *,
                 score_threshold: float = DEFAULT_SCORE_THRESHOLD, iou_threshold: float = 0.5,
                 max_detections: int | None = None, rgb: bool = False) -> None:
        m = source if isinstance(source, Manifest) else source.manifest
        self.artifact = None if isinstance(source, Manifest) else source
        self.backend, self.manifest = backend, m
        self.anchors = generate_anchors(m.model_config())
        self.score_threshold, self.iou_threshold = score_threshold, iou_threshold
        self.max_detections = max_detections or 100
        self.rgb = rgb
        self._cls, self._box = m.output("cls_logits"), m.output("box_regression")
        self._labels = tuple(m.labels)

    def prepare(self, frames: Sequence[np.ndarray]) -> tuple[np.ndarray, list[Letterbox]]:
        """Frames → the model's input batch, as the manifest's ``input`` says
        (:func:`edgedet.preprocess.prepare`), and each frame's letterbox, which maps boxes back to it.

        An artifact that preprocesses inside its graph gets the frames letterboxed straight into a
        fresh uint8 batch (no float work here); the backends hand that buffer to the runtime without
        a copy where the runtime allows. Fresh per call, not reused: a caller may keep prepared
        batches (the benchmark does), or prepare the next frame while this one runs."""
        return prepare(frames, self.manifest.input, rgb=self.rgb)

    def __call__(self, frames: Sequence[np.ndarray]) -> list[Detections]:
        """One :class:`Detections` per frame (a batch the backend takes in one call)."""
        batch, letterboxes = self.prepare(frames)
        return self.decode(self.backend.run(batch), letterboxes)

    def decode(self, outputs: dict[str, np.ndarray], letterboxes: Sequence[Letterbox]) -> list[Detections]:
        """The backend's raw ``outputs`` for a batch → one :class:`Detections` per frame
        (dequantize, decode the anchors, threshold, NMS, map boxes back through ``letterboxes``)."""
        cls_all = dequantize(outputs[self._cls.name], self._cls.quantization)
        box_all = dequantize(outputs[self._box.name], self._box.quantization)
        results = []
        for i, letterbox in enumerate(letterboxes):
            boxes, scores, classes = postprocess(
                cls_all[i], box_all[i], self.anchors, score_threshold=self.score_threshold,
                iou_threshold=self.iou_threshold, max_detections=self.max_detections)
            letterbox.to_frame(boxes)
            results.append(Detections(xyxy=boxes, confidence=scores, class_id=classes, labels=self._labels))
        return results
