"""COCO mAP of a PyTorch EfficientDet, measured exactly as the runtime measures an artifact.

:func:`evaluate_model` feeds the model through the runtime's own
:func:`~edgedet.preprocess.preprocess` and :func:`~edgedet.postprocess.postprocess` and scores it
with :func:`edgedet.evaluate.run_and_score`, the loop :func:`edgedet.evaluate.evaluate_artifact`
uses, so a model and its exported artifacts give the same mAP for the same weights.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from edgedet.anchors import generate_anchors
from edgedet.detections import Detections
from edgedet.evaluate import EVAL_SCORE_THRESHOLD, AnnSource, load_dataset, run_and_score
from edgedet.postprocess import postprocess
from edgedet.preprocess import preprocess

__all__ = ["evaluate_model"]


def evaluate_model(model: Any, ann_file: AnnSource, images_dir: str | os.PathLike[str], *,
                   score_threshold: float = EVAL_SCORE_THRESHOLD, iou_threshold: float = 0.5,
                   max_detections: int = 100, batch_size: int = 8, device: Any = None,
                   labels: Sequence[str] | None = None, category_ids: Sequence[int] | None = None,
                   progress: bool = False, limit: int | None = None, return_detections: bool = False):
    """COCO metrics of a PyTorch EfficientDet on a COCO split.

    Frames are read with OpenCV (BGR) and fed exactly as the runtime feeds an artifact
    (:func:`~edgedet.preprocess.preprocess` at ``model.image_size`` with the model's
    normalization, then :func:`~edgedet.postprocess.postprocess` and the letterbox mapping back
    to frame pixels). The model runs in eval mode under ``torch.inference_mode`` on ``device``
    (default: where its parameters are) and is put back in its previous mode afterwards.

    ``labels`` (class names) and ``category_ids`` map model classes to the file's categories
    (:func:`category_mapping`); ``limit`` evaluates only the first images of the file.
    Returns the metrics dict of :func:`coco_map` (with ``return_detections``, also the
    ``{image_id: Detections}`` it scored).
    """
    data = load_dataset(ann_file)
    config = model.config
    size = int(getattr(model, "image_size", config.image_size))
    anchors = generate_anchors(config, size)
    mean, std = config.normalization.mean, config.normalization.std
    if device is None:
        device = next(model.parameters()).device
    names = tuple(labels) if labels is not None else None

    def detect(frames: list[np.ndarray]) -> list[Detections]:
        batch, letterboxes = preprocess(frames, size, mean, std, layout="NCHW", rgb=False)
        with torch.inference_mode():
            cls, box = model(torch.from_numpy(batch).to(device))
            cls_all, box_all = cls.float().cpu().numpy(), box.float().cpu().numpy()
        out = []
        for i, letterbox in enumerate(letterboxes):
            boxes, scores, classes = postprocess(cls_all[i], box_all[i], anchors,
                                                 score_threshold=score_threshold,
                                                 iou_threshold=iou_threshold,
                                                 max_detections=max_detections)
            letterbox.to_frame(boxes)
            out.append(Detections(xyxy=boxes, confidence=scores, class_id=classes, labels=names))
        return out

    was_training = model.training
    model.eval()
    try:
        return run_and_score(detect, data, images_dir, batch_size=batch_size, category_ids=category_ids,
                              num_classes=int(config.num_classes), progress=progress,
                              desc=f"eval {config.name}@{size}", limit=limit,
                              return_detections=return_detections)
    finally:
        model.train(was_training)
