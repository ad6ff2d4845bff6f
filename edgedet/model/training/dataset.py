"""COCO-format detection data for training: decode, augment, then the runtime's own preprocessing.

Every sample goes through :func:`edgedet.preprocess.preprocess`, the function the runtime and the
converters use, so a network is trained on exactly the tensors it will see at inference (letterbox
top-left, mean-color padding, ``(pixel - mean) / std``, RGB, NCHW).

Augmentation (training only), all in frame pixels before ``preprocess``:

* horizontal flip with probability ``flip_prob``;
* scale jitter: the frame is resized to ``letterbox scale x U(scale_min, scale_max)``, then a
  random ``size x size`` window is cropped where it is larger than the model input, and the rest
  is padded at the bottom/right with the mean color (automl's ``random_crop``); the result is a
  ``size x size`` frame that ``preprocess`` only normalizes (its letterbox scale is 1);
* boxes follow the same transform, are clipped to the visible image, and are dropped when either
  side falls under ``min_box_size`` pixels or less than ``min_visible`` of their area stays in view.

The augmentation of sample ``i`` in epoch ``e`` is a pure function of ``(seed, e, i)``, so a run is
reproducible whatever the number of workers, and a resumed run sees the same data as an
uninterrupted one.

numpy, OpenCV and torch (the ``Dataset`` base class and tensors).
"""
from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from edgedet.config import Normalization
from edgedet.preprocess import preprocess

__all__ = ["Augment", "CocoDetection", "CocoIndex", "collate", "load_coco_index"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Augment:
    """Training augmentation settings (see the module docstring). ``Augment.none()`` disables all."""

    flip_prob: float = 0.5
    scale_min: float = 0.75
    scale_max: float = 1.25
    #: A box is dropped when its width or height (model-input pixels) falls below this.
    min_box_size: float = 2.0
    #: ... or when less than this fraction of its area stays inside the crop.
    min_visible: float = 0.25

    @classmethod
    def none(cls) -> Augment:
        return cls(flip_prob=0.0, scale_min=1.0, scale_max=1.0, min_visible=0.0)

    @property
    def enabled(self) -> bool:
        return self.flip_prob > 0 or self.scale_min != 1.0 or self.scale_max != 1.0

    def to_dict(self) -> dict[str, float]:
        return {k: float(v) for k, v in asdict(self).items()}


@dataclass(frozen=True)
class CocoIndex:
    """What a COCO annotation file says, in the form training needs.

    ``category_ids[k]`` is the file's category id of contiguous class ``k`` (ids sorted
    ascending) and ``class_names[k]`` its name. ``boxes[i]`` are image ``i``'s non-crowd boxes as
    ``x1, y1, x2, y2`` frame pixels and ``labels[i]`` their contiguous class indices.
    """

    image_ids: list[int]
    file_names: list[str]
    sizes: list[tuple[int, int]]  # (width, height) as the file says (0 when absent)
    boxes: list[np.ndarray]
    labels: list[np.ndarray]
    category_ids: list[int]
    class_names: list[str]

    @property
    def num_classes(self) -> int:
        return len(self.category_ids)

    def __len__(self) -> int:
        return len(self.image_ids)


def load_coco_index(ann_file: str | os.PathLike[str]) -> CocoIndex:
    """Read a COCO detection json (plain json, no pycocotools) into a :class:`CocoIndex`.

    Crowd annotations (``iscrowd: 1``) and degenerate boxes (zero width or height) are left out
    of the training targets; category ids are mapped to contiguous indices by ascending id.
    """
    path = Path(ann_file)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise FileNotFoundError(f"cannot read the COCO annotation file {path}: {exc}") from exc
    except ValueError as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict) or "images" not in data or "categories" not in data:
        raise ValueError(f"{path} is not a COCO detection file (needs 'images' and 'categories')")
    cats = sorted(data["categories"], key=lambda c: int(c["id"]))
    if not cats:
        raise ValueError(f"{path} has no categories")
    category_ids = [int(c["id"]) for c in cats]
    class_names = [str(c.get("name", c["id"])) for c in cats]
    to_index = {cid: k for k, cid in enumerate(category_ids)}

    images = data["images"]
    position = {int(img["id"]): i for i, img in enumerate(images)}
    per_image: list[list[tuple[list[float], int]]] = [[] for _ in images]
    skipped = 0
    for ann in data.get("annotations", []):
        i = position.get(int(ann["image_id"]))
        if i is None:
            skipped += 1
            continue
        cid = int(ann["category_id"])
        if cid not in to_index:
            raise ValueError(f"{path}: annotation {ann.get('id')} has category_id {cid}, "
                             f"which is not in 'categories' ({category_ids})")
        x, y, w, h = (float(v) for v in ann["bbox"])
        if ann.get("iscrowd", 0) or w <= 0 or h <= 0:
            continue
        per_image[i].append(([x, y, x + w, y + h], to_index[cid]))
    if skipped:
        log.warning("%s: %d annotations refer to unknown images (ignored)", path, skipped)
    boxes = [np.asarray([b for b, _ in anns], np.float32).reshape(-1, 4) for anns in per_image]
    labels = [np.asarray([c for _, c in anns], np.int64) for anns in per_image]
    return CocoIndex(
        image_ids=[int(img["id"]) for img in images],
        file_names=[str(img["file_name"]) for img in images],
        sizes=[(int(img.get("width", 0)), int(img.get("height", 0))) for img in images],
        boxes=boxes, labels=labels, category_ids=category_ids, class_names=class_names,
    )


def _fill_bgr(normalization: Normalization) -> tuple[int, int, int]:
    """The padding color preprocess uses (the mean, rounded), in BGR order."""
    rgb = np.clip(np.rint(np.asarray(normalization.mean, np.float64)), 0, 255).astype(int)
    return int(rgb[2]), int(rgb[1]), int(rgb[0])


class CocoDetection(Dataset):
    """A COCO detection split as network inputs and targets.

    ``dataset[i]`` is a dict: ``image`` float32 tensor ``[3, size, size]`` (normalized as
    ``normalization`` says), ``boxes`` float32 ``[K, 4]`` xyxy in model-input pixels, ``labels``
    int64 ``[K]`` contiguous class indices, ``image_id`` (the file's id) and ``scale`` (frame pixels
    to model-input pixels, for the unaugmented letterbox).

    Args:
        ann_file: the COCO json.
        images_dir: the folder ``file_name`` is relative to.
        image_size: the model's square input side.
        normalization: the model's input normalization (``model.config.normalization``).
        augment: an :class:`Augment` (training) or None (evaluation: letterbox only).
        seed: seeds the augmentation; sample ``i`` of epoch ``e`` uses ``(seed, e, i)``.
    """

    def __init__(self, ann_file: str | os.PathLike[str], images_dir: str | os.PathLike[str],
                 image_size: int, normalization: Normalization, *, augment: Augment | None = None,
                 seed: int = 0, index: CocoIndex | None = None) -> None:
        self.ann_file = Path(ann_file)
        self.images_dir = Path(images_dir)
        if not self.images_dir.is_dir():
            raise FileNotFoundError(f"image folder {self.images_dir} does not exist")
        self.index = index if index is not None else load_coco_index(ann_file)
        self.image_size = int(image_size)
        self.normalization = normalization
        self.augment = augment if augment is not None and augment.enabled else None
        self._min_box = augment.min_box_size if augment is not None else 0.0
        self._min_visible = augment.min_visible if augment is not None else 0.0
        self.seed = int(seed)
        self.epoch = 0
        self._fill = _fill_bgr(normalization)

    # The index is shared, read-only, by the worker process (copied on fork).
    @property
    def num_classes(self) -> int:
        return self.index.num_classes

    @property
    def class_names(self) -> list[str]:
        return list(self.index.class_names)

    @property
    def category_ids(self) -> list[int]:
        return list(self.index.category_ids)

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation draws of ``epoch`` (call before creating the epoch's loader)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.index)

    def read_image(self, i: int) -> np.ndarray:
        """Image ``i`` as decoded by OpenCV (BGR uint8)."""
        path = self.images_dir / self.index.file_names[i]
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            raise FileNotFoundError(f"cannot read image {path} (missing or not an image)")
        return image

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        """Sample ``i`` (augmented as in the epoch of :meth:`set_epoch`), or ``(epoch, i)``."""
        epoch, i = (int(key[0]), int(key[1])) if isinstance(key, tuple) else (self.epoch, int(key))
        frame = self.read_image(i)
        boxes = self.index.boxes[i].copy()
        labels = self.index.labels[i].copy()
        size = self.image_size
        h, w = frame.shape[:2]
        base_scale = min(size / h, size / w)
        if self.augment is not None:
            rng = np.random.default_rng((self.seed, epoch, i))
            frame, boxes, labels = self._augment(frame, boxes, labels, rng)
            scale = 1.0  # the augmented frame is size x size: preprocess only normalizes it
        else:
            scale = base_scale
        batch, letterboxes = preprocess(frame, size, self.normalization.mean, self.normalization.std,
                                        layout="NCHW", rgb=False)
        if self.augment is None:
            boxes *= np.float32(letterboxes[0].scale)
            boxes, labels = self._filter(boxes, labels, boxes.copy(), w * letterboxes[0].scale,
                                         h * letterboxes[0].scale)
        return {
            "image": torch.from_numpy(batch[0]),
            "boxes": torch.from_numpy(np.ascontiguousarray(boxes, dtype=np.float32)),
            "labels": torch.from_numpy(labels.astype(np.int64)),
            "image_id": self.index.image_ids[i],
            "scale": float(scale),
        }

    def _augment(self, frame: np.ndarray, boxes: np.ndarray, labels: np.ndarray,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        aug = self.augment
        assert aug is not None
        size = self.image_size
        h, w = frame.shape[:2]
        if rng.random() < aug.flip_prob:
            frame = cv2.flip(frame, 1)
            boxes = np.stack([w - boxes[:, 2], boxes[:, 1], w - boxes[:, 0], boxes[:, 3]], axis=1)
        jitter = rng.uniform(aug.scale_min, aug.scale_max) if aug.scale_max > aug.scale_min else aug.scale_min
        scale = min(size / h, size / w) * jitter
        new_h, new_w = max(1, round(h * scale)), max(1, round(w * scale))
        # Crop offsets (automl's random_crop): only where the resized frame exceeds the input.
        oy = int(rng.integers(0, new_h - size + 1)) if new_h > size else 0
        ox = int(rng.integers(0, new_w - size + 1)) if new_w > size else 0
        interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
        resized = frame if (new_h, new_w) == (h, w) else cv2.resize(
            frame, (new_w, new_h), interpolation=interpolation)
        canvas = np.empty((size, size, 3), np.uint8)
        canvas[:] = self._fill
        vis_h, vis_w = min(size, new_h - oy), min(size, new_w - ox)
        canvas[:vis_h, :vis_w] = resized[oy:oy + vis_h, ox:ox + vis_w]
        # The exact scale per axis of the rounded resize, as the pixels saw it.
        sx, sy = new_w / w, new_h / h
        full = boxes * np.asarray([sx, sy, sx, sy], np.float32) - np.asarray([ox, oy, ox, oy], np.float32)
        return canvas, *self._filter(full, labels, full, vis_w, vis_h)

    def _filter(self, boxes: np.ndarray, labels: np.ndarray, unclipped: np.ndarray,
                width: float, height: float) -> tuple[np.ndarray, np.ndarray]:
        """Clip ``boxes`` to ``[0, width] x [0, height]``; drop the tiny and the mostly hidden."""
        boxes = boxes.astype(np.float32, copy=True)
        np.clip(boxes[:, 0::2], 0, width, out=boxes[:, 0::2])
        np.clip(boxes[:, 1::2], 0, height, out=boxes[:, 1::2])
        bw, bh = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
        area = (unclipped[:, 2] - unclipped[:, 0]) * (unclipped[:, 3] - unclipped[:, 1])
        keep = (bw >= self._min_box) & (bh >= self._min_box) & (bw > 0) & (bh > 0)
        if self._min_visible > 0:
            keep &= bw * bh >= self._min_visible * np.maximum(area, 1e-6)
        return boxes[keep], labels[keep]


def collate(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack images; pad boxes to ``[B, K_max, 4]`` and labels to ``[B, K_max]`` with ``-1``."""
    images = torch.stack([s["image"] for s in samples])
    k = max((len(s["labels"]) for s in samples), default=0)
    boxes = torch.zeros((len(samples), k, 4), dtype=torch.float32)
    labels = torch.full((len(samples), k), -1, dtype=torch.int64)
    for i, s in enumerate(samples):
        n = len(s["labels"])
        boxes[i, :n] = s["boxes"]
        labels[i, :n] = s["labels"]
    return {
        "images": images,
        "boxes": boxes,
        "labels": labels,
        "image_ids": [s["image_id"] for s in samples],
        "scales": [s["scale"] for s in samples],
    }
