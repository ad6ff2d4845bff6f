"""COCO mAP of a PyTorch EfficientDet, measured exactly as the runtime measures an artifact.

:func:`evaluate_model` runs the live model through the runtime's own
:class:`~edgedet.pipeline.Pipeline` (:meth:`TorchBackend.from_module
<edgedet.backends.torch.TorchBackend.from_module>`) and scores it with
:func:`edgedet.evaluate.run_and_score`, the loop :func:`edgedet.evaluate.evaluate_artifact` uses,
so a model and its exported artifacts give the same mAP for the same weights.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from edgedet.backends.torch import TorchBackend
from edgedet.evaluate import EVAL_SCORE_THRESHOLD, AnnSource, load_dataset, run_and_score
from edgedet.pipeline import Pipeline

__all__ = ["evaluate_model"]


def evaluate_model(model: Any, ann_file: AnnSource, images_dir: str | os.PathLike[str], *,
                   score_threshold: float = EVAL_SCORE_THRESHOLD, iou_threshold: float = 0.5,
                   max_detections: int = 100, batch_size: int = 8, device: Any = None,
                   labels: Sequence[str] | None = None, category_ids: Sequence[int] | None = None,
                   progress: bool = False, limit: int | None = None, return_detections: bool = False):
    """COCO metrics of a PyTorch EfficientDet on a COCO split.

    Frames are read with OpenCV (BGR) and fed exactly as the runtime feeds an artifact: the same
    :class:`~edgedet.pipeline.Pipeline` (letterbox at ``model.image_size``, the model's
    normalization, decode, NMS, boxes mapped back to frame pixels) around the live model. The
    model runs in eval mode under ``torch.inference_mode`` on ``device`` (default: where its
    parameters are) and is put back in its previous mode afterwards.

    ``labels`` (class names) and ``category_ids`` map model classes to the file's categories
    (:func:`category_mapping`); ``limit`` evaluates only the first images of the file.
    Returns the metrics dict of :func:`coco_map` (with ``return_detections``, also the
    ``{image_id: Detections}`` it scored).
    """
    data = load_dataset(ann_file)
    config = model.config
    backend = TorchBackend.from_module(model, device=None if device is None else str(device))
    pipeline = Pipeline(backend.manifest(labels=labels), backend, score_threshold=score_threshold,
                        iou_threshold=iou_threshold, max_detections=max_detections)
    was_training = model.training
    model.eval()
    try:
        return run_and_score(pipeline, data, images_dir, batch_size=batch_size, category_ids=category_ids,
                              num_classes=int(config.num_classes), progress=progress,
                              desc=f"eval {config.name}@{config.image_size}", limit=limit,
                              return_detections=return_detections)
    finally:
        model.train(was_training)
