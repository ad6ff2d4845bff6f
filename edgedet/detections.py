"""Detections: what :class:`edgedet.Detector` returns for one frame.

A small immutable container of ``N`` boxes in frame pixels, modelled on ``supervision.Detections``
(same field names), with per-detection records, filtering, drawing, JSON records and a conversion
to ``supervision`` when that package is installed. numpy and OpenCV only.
"""
from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import cv2
import numpy as np

__all__ = ["Detection", "Detections", "class_color"]

#: BGR colors, one per class id modulo its length (fixed, so colors never change between runs).
PALETTE: tuple[tuple[int, int, int], ...] = (
    (56, 56, 255), (151, 157, 255), (31, 112, 255), (29, 178, 255), (49, 210, 207),
    (10, 249, 72), (23, 204, 146), (134, 219, 61), (52, 147, 26), (187, 212, 0),
    (168, 153, 44), (255, 194, 0), (147, 69, 52), (255, 115, 100), (236, 24, 0),
    (255, 56, 132), (133, 0, 82), (255, 56, 203), (200, 149, 255), (199, 55, 255),
)


def class_color(class_id: int) -> tuple[int, int, int]:
    """The BGR drawing color of ``class_id`` (deterministic)."""
    return PALETTE[int(class_id) % len(PALETTE)]


class Detection(NamedTuple):
    """One detection: ``box`` ``(x1, y1, x2, y2)`` in frame pixels, its confidence, class id and
    class name (``None`` when the detections carry no labels)."""

    box: tuple[float, float, float, float]
    confidence: float
    class_id: int
    label: str | None


def _readonly(array: np.ndarray) -> np.ndarray:
    array.flags.writeable = False
    return array


class Detections:
    """``N`` detections of one frame (immutable).

    Attributes:
        xyxy: ``[N, 4]`` float32 boxes ``x1, y1, x2, y2`` in frame pixels.
        confidence: ``[N]`` float32 scores in ``[0, 1]``.
        class_id: ``[N]`` int32 class indices (0-based, indices into ``labels``).
        labels: the model's class names (index = class id), or ``None``.
        tracker_id: ``[N]`` int64 ids of the tracked object each box belongs to (stable across
            frames; set by a tracker, :mod:`edgedet.tracking`), or ``None`` when not tracked.

    The arrays are copied on construction and read-only. Indexing with an int gives a
    :class:`Detection`; with a slice, a boolean mask or an index array, a new ``Detections``.
    Iterating yields :class:`Detection` records.

    Raises:
        ValueError: from the constructor, if the shapes disagree, a value is not finite, a
            confidence is outside ``[0, 1]``, a class id is negative, non-integral or (with
            ``labels``) has no label.
    """

    __slots__ = ("xyxy", "confidence", "class_id", "labels", "tracker_id")
    xyxy: np.ndarray
    confidence: np.ndarray
    class_id: np.ndarray
    labels: tuple[str, ...] | None
    tracker_id: np.ndarray | None

    def __init__(self, xyxy: Any, confidence: Any, class_id: Any,
                 labels: Sequence[str] | None = None, tracker_id: Any = None) -> None:
        boxes = np.array(xyxy, dtype=np.float32)
        if boxes.size == 0 and boxes.ndim <= 1:
            boxes = boxes.reshape(0, 4)
        if boxes.ndim != 2 or boxes.shape[1] != 4:
            raise ValueError(f"xyxy must be [N, 4], got shape {boxes.shape}")
        n = boxes.shape[0]
        scores = np.array(confidence, dtype=np.float32)
        if n == 0 and scores.size == 0:
            scores = scores.reshape(0)
        if scores.shape != (n,):
            raise ValueError(f"confidence must be [{n}] to match xyxy {boxes.shape}, got shape "
                             f"{scores.shape}")
        raw_ids = np.asarray(class_id)
        if n == 0 and raw_ids.size == 0:
            raw_ids = raw_ids.reshape(0).astype(np.int32)
        if raw_ids.shape != (n,):
            raise ValueError(f"class_id must be [{n}] to match xyxy {boxes.shape}, got shape "
                             f"{raw_ids.shape}")
        if not np.issubdtype(raw_ids.dtype, np.integer):
            integral = (np.issubdtype(raw_ids.dtype, np.floating) and bool(np.isfinite(raw_ids).all())
                        and bool((raw_ids == np.round(raw_ids)).all()))
            if not integral:
                raise ValueError(f"class_id must hold integers, got {raw_ids.dtype} values")
        if n and (raw_ids.max() > np.iinfo(np.int32).max):
            raise ValueError(f"class_id {raw_ids.max()} is out of range")
        ids = raw_ids.astype(np.int32)
        if not np.isfinite(boxes).all():
            raise ValueError("xyxy holds NaN or infinite coordinates")
        if n and not ((scores >= 0) & (scores <= 1)).all():  # also false for NaN
            raise ValueError("confidence must be in [0, 1]")
        if n and ids.min() < 0:
            raise ValueError(f"class_id must be >= 0, got {int(ids.min())}")
        names: tuple[str, ...] | None = None
        if labels is not None:
            if isinstance(labels, (str, bytes)) or isinstance(labels, Mapping):
                raise ValueError("labels must be a sequence of class names (index = class id)")
            names = tuple(str(label) for label in labels)
            if n and ids.max() >= len(names):
                raise ValueError(f"class_id {int(ids.max())} has no label: {len(names)} labels "
                                 "given (do the labels belong to this model?)")
        object.__setattr__(self, "xyxy", _readonly(boxes))
        object.__setattr__(self, "confidence", _readonly(scores))
        object.__setattr__(self, "class_id", _readonly(ids))
        object.__setattr__(self, "labels", names)
        tracks: np.ndarray | None = None
        if tracker_id is not None:
            tracks = np.array(tracker_id, dtype=np.int64).reshape(-1)
            if tracks.shape != (n,):
                raise ValueError(f"tracker_id must be [{n}] to match xyxy {boxes.shape}, got shape "
                                 f"{tracks.shape}")
            tracks = _readonly(tracks)
        object.__setattr__(self, "tracker_id", tracks)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"Detections is immutable (cannot set {name!r})")

    # -- construction ---------------------------------------------------------------------------

    @classmethod
    def empty(cls, labels: Sequence[str] | None = None) -> Detections:
        """No detections (``len == 0``), optionally carrying ``labels``."""
        return cls(np.empty((0, 4), np.float32), np.empty(0, np.float32), np.empty(0, np.int32),
                   labels)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Detections:
        """The inverse of :meth:`to_dict`."""
        return cls(data["xyxy"], data["confidence"], data["class_id"], data.get("labels"),
                   data.get("tracker_id"))

    @classmethod
    def from_json_records(cls, records: Iterable[Mapping[str, Any]],
                          labels: Sequence[str] | None = None) -> Detections:
        """The inverse of :meth:`to_json_records` (``labels`` are not part of the records)."""
        records = list(records)
        if not records:
            return cls.empty(labels)
        # Tracked records carry "tracker_id"; a mix of tracked and untracked ones is not tracked.
        tracks = ([r["tracker_id"] for r in records]
                  if all(r.get("tracker_id") is not None for r in records) else None)
        return cls([r["xyxy"] for r in records], [r["confidence"] for r in records],
                   [r["class_id"] for r in records], labels, tracks)

    # -- container protocol ---------------------------------------------------------------------

    def __len__(self) -> int:
        return int(self.xyxy.shape[0])

    def __iter__(self) -> Iterator[Detection]:
        names = self.class_names
        for box, score, cid, name in zip(self.xyxy.tolist(), self.confidence.tolist(),
                                         self.class_id.tolist(), names):
            yield Detection(tuple(box), score, cid, name if self.labels is not None else None)

    def __getitem__(self, index: int | slice | np.ndarray | Sequence[int] | Sequence[bool]
                    ) -> Detection | Detections:
        if isinstance(index, (int, np.integer)):
            i = int(index)
            if not -len(self) <= i < len(self):
                raise IndexError(f"index {i} out of range for {len(self)} detections")
            label = self.labels[self.class_id[i]] if self.labels is not None else None
            return Detection(tuple(self.xyxy[i].tolist()), float(self.confidence[i]),
                             int(self.class_id[i]), label)
        if not isinstance(index, slice):
            index = np.asarray(index)
            if index.dtype == bool and index.shape != (len(self),):
                raise IndexError(f"boolean mask of shape {index.shape} for {len(self)} detections")
            if index.size == 0:
                index = index.astype(np.intp)
        return Detections(self.xyxy[index], self.confidence[index], self.class_id[index],
                          self.labels, None if self.tracker_id is None else self.tracker_id[index])

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Detections):
            return NotImplemented
        return (self.labels == other.labels and np.array_equal(self.xyxy, other.xyxy)
                and np.array_equal(self.confidence, other.confidence)
                and np.array_equal(self.class_id, other.class_id)
                and (self.tracker_id is None) == (other.tracker_id is None)
                and (self.tracker_id is None or np.array_equal(self.tracker_id, other.tracker_id)))

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        shown = ", ".join(f"{d.label if d.label is not None else d.class_id} {d.confidence:.2f}"
                          for d in list(self)[:5])
        more = ", ..." if len(self) > 5 else ""
        return f"Detections({len(self)}: [{shown}{more}])"

    def with_tracker_id(self, tracker_id: Any) -> Detections:
        """The same detections with ``tracker_id`` set (``None``: without)."""
        return Detections(self.xyxy, self.confidence, self.class_id, self.labels, tracker_id)

    # -- queries --------------------------------------------------------------------------------

    @property
    def class_names(self) -> list[str]:
        """The class name of each detection; the class id as a string when there are no labels."""
        if self.labels is None:
            return [str(c) for c in self.class_id.tolist()]
        return [self.labels[c] for c in self.class_id.tolist()]

    def filter(self, classes: Iterable[int | str] | int | str | None = None,
               min_confidence: float | None = None) -> Detections:
        """The detections of the given ``classes`` (ids, or names when there are labels) with
        confidence ``>= min_confidence``. ``None`` means no condition.

        Raises:
            ValueError: a class name is unknown, or names are given without labels.
        """
        keep = np.ones(len(self), dtype=bool)
        if classes is not None:
            if isinstance(classes, (int, np.integer, str)):
                classes = [classes]
            ids = [self._class_index(c) for c in classes]
            keep &= np.isin(self.class_id, np.asarray(ids, dtype=np.int32))
        if min_confidence is not None:
            keep &= self.confidence >= np.float32(min_confidence)
        return self[keep]

    def _class_index(self, cls: int | str) -> int:
        if isinstance(cls, str):
            if self.labels is None:
                raise ValueError(f"cannot filter by class name {cls!r}: these detections have no "
                                 "labels; pass class ids")
            try:
                return self.labels.index(cls)
            except ValueError:
                raise ValueError(f"unknown class name {cls!r}; known: {', '.join(self.labels)}") from None
        return int(cls)

    # -- output ---------------------------------------------------------------------------------

    def draw(self, frame: np.ndarray, *, copy: bool = True, thickness: int = 2) -> np.ndarray:
        """Draw each box and a ``"label 0.87"`` caption onto ``frame`` (H×W×3 uint8, BGR).

        Colors are fixed per class (:func:`class_color`). Returns the drawn image: a copy of
        ``frame`` unless ``copy`` is false (then ``frame`` itself, which must be writable and
        C-contiguous).
        """
        from .preprocess import validate_frame

        image = validate_frame(frame)
        if copy:
            image = image.copy()
        elif not (image.flags.writeable and image.flags.c_contiguous):
            raise ValueError("draw(copy=False) needs a writable, C-contiguous frame")
        thickness = max(1, int(thickness))
        font, font_scale, font_thickness = cv2.FONT_HERSHEY_SIMPLEX, 0.5, 1
        height, width = image.shape[:2]
        tracks = [None] * len(self) if self.tracker_id is None else self.tracker_id.tolist()
        for det, name, track in zip(self, self.class_names, tracks):
            # Clamped to a margin around the image: OpenCV clips the rest, ints cannot overflow.
            x1, x2 = (int(round(min(max(v, -width), 2 * width))) for v in det.box[0::2])
            y1, y2 = (int(round(min(max(v, -height), 2 * height))) for v in det.box[1::2])
            color = class_color(det.class_id)
            cv2.rectangle(image, (x1, y1), (x2, y2), color, thickness)
            text = f"{name} {det.confidence:.2f}" if track is None else f"#{track} {name} {det.confidence:.2f}"
            (tw, th), baseline = cv2.getTextSize(text, font, font_scale, font_thickness)
            # Caption above the box, or inside it when the box touches the top edge.
            ty = y1 - 2 if y1 - th - baseline - 2 >= 0 else min(height - 1, y1 + th + baseline + 2)
            tx = min(max(0, x1), max(0, width - tw))
            cv2.rectangle(image, (tx, ty - th - baseline), (tx + tw, ty), color, cv2.FILLED)
            luminance = 0.114 * color[0] + 0.587 * color[1] + 0.299 * color[2]
            text_color = (0, 0, 0) if luminance > 140 else (255, 255, 255)
            cv2.putText(image, text, (tx, ty - baseline), font, font_scale, text_color,
                        font_thickness, cv2.LINE_AA)
        return image

    def to_supervision(self) -> Any:
        """These detections as ``supervision.Detections`` (class names in ``data["class_name"]``).

        Raises:
            ImportError: ``supervision`` is not installed (with the command that installs it).
        """
        try:
            import supervision as sv
        except ImportError as exc:
            raise ImportError("Detections.to_supervision() needs the 'supervision' package: "
                              "pip install supervision") from exc
        data = {}
        if self.labels is not None:
            data["class_name"] = np.asarray(self.class_names, dtype=str)
        return sv.Detections(xyxy=np.array(self.xyxy), confidence=np.array(self.confidence),
                             class_id=np.array(self.class_id, dtype=int), data=data,
                             tracker_id=None if self.tracker_id is None else np.array(self.tracker_id, dtype=int))

    def to_dict(self) -> dict[str, Any]:
        """Plain Python types (JSON-serializable): ``xyxy`` (list of 4-lists), ``confidence``,
        ``class_id``, ``class_name`` (per detection), ``labels`` (or None) and, when tracked,
        ``tracker_id``."""
        data = {
            "xyxy": self.xyxy.tolist(),
            "confidence": self.confidence.tolist(),
            "class_id": self.class_id.tolist(),
            "class_name": self.class_names,
            "labels": list(self.labels) if self.labels is not None else None,
        }
        if self.tracker_id is not None:
            data["tracker_id"] = self.tracker_id.tolist()
        return data

    def to_json_records(self) -> list[dict[str, Any]]:
        """One plain dict per detection (``xyxy``, ``confidence``, ``class_id``, ``class_name``,
        and ``tracker_id`` when tracked), ready for ``json.dumps`` (e.g. one JSON line per frame)."""
        records = [{"xyxy": list(d.box), "confidence": d.confidence, "class_id": d.class_id,
                    "class_name": name}
                   for d, name in zip(self, self.class_names)]
        if self.tracker_id is not None:
            for record, track in zip(records, self.tracker_id.tolist()):
                record["tracker_id"] = track
        return records

    def to_json(self) -> str:
        """:meth:`to_json_records` as one compact JSON line."""
        return json.dumps(self.to_json_records(), separators=(",", ":"))
