"""Raw EfficientDet outputs to detections: score threshold, top-k, box decoding and NMS.

numpy and OpenCV only (part of the torch-free runtime). Shared by every backend.

The model contract (see :mod:`edgedet.anchors`): ``cls_logits`` ``[N, C]`` raw logits (sigmoid
classification, no background column) and ``box_regression`` ``[N, 4]`` ``(ty, tx, th, tw)``,
rows in the order of :func:`edgedet.anchors.generate_anchors`. Everything here is in pixels of the
square model input; :meth:`edgedet.preprocess.Letterbox.to_frame` maps the boxes to the frame.

The pipeline keeps the per-frame cost proportional to the *candidates*, not to ``N × C``:

1. one exact comparison of the raw logits against ``logit(score_threshold)`` over the whole
   ``N × C`` array (the only full pass: ~4.4 M values for D0). float16 outputs are compared through
   their bit patterns as integers, which is exact and ~10x faster than numpy's float16 compare, and
   never converts the whole array;
2. ``np.argpartition`` keeps the ``pre_nms_top_k`` largest survivors (effdet keeps the top 5000);
   when survivors are dense (an untrained model), an exact raised threshold shrinks them first;
3. sigmoid, dtype casts and :func:`edgedet.anchors.decode_boxes` run on those few rows only;
4. class-aware (or class-agnostic) greedy NMS, stopped at ``max_detections`` kept boxes.

The result equals effdet's ``_post_process`` + ``generate_detections`` (top 5000, batched NMS at
IoU 0.5, 100 detections) filtered to ``score > score_threshold``: greedy NMS goes by descending
score, so boxes below the threshold never suppress the ones above it. Differences: class ids are
0-based (effdet adds 1), and clipping to the image before NMS is optional (``clip_size``).
"""
from __future__ import annotations

import math
from typing import Literal, Sequence

import cv2
import numpy as np

from .anchors import decode_boxes

__all__ = [
    "DEFAULT_SCORE_THRESHOLD",
    "NmsMethod",
    "OPENCV_NMS_MAX_CANDIDATES",
    "PostprocessResult",
    "candidates",
    "nms",
    "nms_numpy",
    "nms_opencv",
    "postprocess",
    "postprocess_batch",
    "score_to_logit",
    "sigmoid",
]

NmsMethod = Literal["auto", "opencv", "numpy"]
#: ``"auto"`` uses OpenCV up to this many candidates, numpy above. OpenCV's greedy loop never stops
#: early (O(candidates x all kept boxes): 80-100 ms for 5000 scattered boxes), numpy's stops at
#: ``max_detections`` kept boxes (~6 ms there); below this size OpenCV is the faster of the two.
OPENCV_NMS_MAX_CANDIDATES = 1024
#: ``(boxes_xyxy float32 [K, 4], scores float32 [K], class_ids int32 [K])``, sorted by score.
PostprocessResult = tuple[np.ndarray, np.ndarray, np.ndarray]

#: The runtime's score threshold (``Detector``, ``Pipeline``, :func:`postprocess`).
DEFAULT_SCORE_THRESHOLD = 0.3


def score_to_logit(score_threshold: float) -> float:
    """``log(t / (1 - t))``: the logit whose sigmoid is ``t`` (``-inf`` for 0, ``+inf`` for 1)."""
    t = float(score_threshold)
    if not 0.0 <= t <= 1.0 or math.isnan(t):
        raise ValueError(f"score_threshold must be in [0, 1], got {score_threshold!r}")
    if t == 0.0:
        return -math.inf
    if t == 1.0:
        return math.inf
    return math.log(t) - math.log1p(-t)


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Numerically stable logistic function in float32 (no overflow warnings for any input)."""
    x = np.asarray(x, dtype=np.float32)
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e)).astype(np.float32, copy=False)


def _round_down(value: float, dtype: type) -> np.floating:
    """The largest ``dtype`` number ``<= value`` (so ``x > value  <=>  x > result`` for ``dtype`` x)."""
    v = dtype(value)
    if float(v) > value:
        v = np.nextafter(v, dtype(-np.inf))
    if v == 0:
        v = dtype(0.0)  # +0, never -0 (matters for the integer comparison below)
    return v


def _above(flat: np.ndarray, threshold: float) -> np.ndarray:
    """Flat indices of the values of ``flat`` (1-D) strictly greater than ``threshold`` (exact).

    float16 is compared through its bit pattern, without converting the array: IEEE half floats
    are sign-magnitude, so for a negative bound ``b``, ``x > b  <=>  uint16(x) < uint16(b)``, and
    for a non-negative one ``x > b  <=>  int16(x) > int16(b)``. NaNs may slip through that path;
    the caller drops them with the (few) survivors.
    """
    if flat.dtype == np.float16:
        bound = _round_down(threshold, np.float16)
        if bound < 0:
            return np.flatnonzero(flat.view(np.uint16) < bound.view(np.uint16))
        return np.flatnonzero(flat.view(np.int16) > bound.view(np.int16))
    if flat.dtype == np.float32:
        return np.flatnonzero(flat > _round_down(threshold, np.float32))
    return np.flatnonzero(flat > threshold)


#: Survivors beyond this multiple of ``pre_nms_top_k`` (an untrained model, a tiny threshold) take
#: the raised-threshold path of :func:`_densely_above` instead of one huge ``argpartition``.
_DENSE_FACTOR = 4
_DENSE_SAMPLE = 1 << 16


def _densely_above(flat: np.ndarray, threshold: float, idx: np.ndarray, k: int) -> np.ndarray:
    """A subset of ``idx`` (the indices of ``flat > threshold``) that still holds its ``k`` largest.

    Estimates from a strided sample a higher threshold that about ``2k`` values exceed, and keeps
    the values above it if at least ``k`` do (then the ``k`` largest are all among them, so the
    result stays exact); otherwise returns ``idx`` unchanged. Bounds the cost of the dense case
    (e.g. 3.5 M survivors of a randomly initialized D0: ~50 ms -> a few ms).
    """
    step = max(1, flat.size // _DENSE_SAMPLE)
    sample = flat[::step].astype(np.float32)
    q = 1.0 - min(1.0, 2.0 * k / flat.size)
    raised = float(np.quantile(sample, q))
    if not math.isfinite(raised) or raised <= threshold:
        return idx
    fewer = _above(flat, raised)
    return fewer if fewer.size >= k else idx


def candidates(cls_logits: np.ndarray, score_threshold: float, pre_nms_top_k: int
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The (anchor, class) pairs whose score exceeds ``score_threshold``, at most ``pre_nms_top_k``
    (the highest), as ``(anchor_index intp [K], class_id int32 [K], logit float32 [K])``, unordered.

    Scores are never computed for the whole array: the raw logits are compared with
    ``score_to_logit(score_threshold)``. NaN logits are never selected.
    """
    logits = np.asarray(cls_logits)
    if logits.ndim != 2:
        raise ValueError(f"cls_logits must be [N, C], got shape {logits.shape}")
    if not np.issubdtype(logits.dtype, np.floating):
        raise ValueError(f"cls_logits must be floating point, got {logits.dtype}")
    num_classes = logits.shape[1]
    threshold = score_to_logit(score_threshold)
    empty = (np.empty(0, np.intp), np.empty(0, np.int32), np.empty(0, np.float32))
    if threshold == math.inf or logits.size == 0 or pre_nms_top_k <= 0:
        return empty
    if not logits.flags.c_contiguous:
        logits = np.ascontiguousarray(logits)
    flat = logits.reshape(-1)
    idx = _above(flat, threshold)
    if idx.size == 0:
        return empty
    if idx.size > _DENSE_FACTOR * pre_nms_top_k:
        idx = _densely_above(flat, threshold, idx, pre_nms_top_k)
    values = flat[idx].astype(np.float32)
    finite = ~np.isnan(values)
    if not finite.all():
        idx, values = idx[finite], values[finite]
    if idx.size > pre_nms_top_k:
        top = np.argpartition(values, idx.size - pre_nms_top_k)[idx.size - pre_nms_top_k:]
        idx, values = idx[top], values[top]
    anchor_idx, class_ids = np.divmod(idx, num_classes)
    return anchor_idx, class_ids.astype(np.int32), values


def nms_numpy(boxes: np.ndarray, scores: np.ndarray, class_ids: np.ndarray | None,
              iou_threshold: float, max_output: int | None = None) -> np.ndarray:
    """Greedy NMS in numpy: indices of the kept boxes, by descending score.

    ``boxes`` ``[K, 4]`` xyxy; a box is suppressed by a higher-scored kept box of the same class
    (any class when ``class_ids`` is None) with IoU ``> iou_threshold``. Equal scores keep input
    order. Stops after ``max_output`` kept boxes. Each step is one vectorized IoU of the kept box
    against the remaining ones, so the loop runs once per *kept* box; the class condition is an
    exact equality mask (the effect of torchvision's offset-boxes-by-class trick, without its
    coordinate shift).
    """
    boxes = np.asarray(boxes, dtype=np.float32)
    scores = np.asarray(scores, dtype=np.float32)
    order = np.argsort(-scores, kind="stable")
    x1, y1, x2, y2 = (np.ascontiguousarray(boxes[order, k]) for k in range(4))
    area = (x2 - x1) * (y2 - y1)
    cls = None if class_ids is None else np.asarray(class_ids)[order]
    limit = order.size if max_output is None else max(0, int(max_output))
    keep: list[int] = []
    remaining = np.arange(order.size)
    while remaining.size and len(keep) < limit:
        i = remaining[0]
        keep.append(i)
        rest = remaining[1:]
        if rest.size == 0:
            break
        w = np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest])
        h = np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest])
        inter = np.maximum(w, 0.0) * np.maximum(h, 0.0)
        with np.errstate(invalid="ignore", divide="ignore"):  # 0/0 (empty boxes): NaN, kept
            suppressed = inter / (area[i] + area[rest] - inter) > iou_threshold
        if cls is not None:
            suppressed &= cls[rest] == cls[i]
        remaining = rest[~suppressed]
    return order[np.asarray(keep, dtype=np.intp)]


def nms_opencv(boxes: np.ndarray, scores: np.ndarray, class_ids: np.ndarray | None,
               iou_threshold: float, max_output: int | None = None) -> np.ndarray:
    """Same contract as :func:`nms_numpy`, with ``cv2.dnn.NMSBoxesBatched`` (``NMSBoxes`` when
    class-agnostic) doing the greedy loop in C++ (double precision).

    Boxes are translated so that every coordinate is >= 0 first: IoU does not change, and OpenCV's
    batched NMS separates classes by offsets computed from the largest coordinate, which is only
    safe for non-negative boxes (decoded boxes may start left of / above the image).
    """
    boxes = np.asarray(boxes, dtype=np.float64)
    if boxes.shape[0] == 0:
        return np.empty(0, np.intp)
    xywh = np.empty_like(boxes)
    xywh[:, :2] = boxes[:, :2] - min(0.0, float(boxes[:, :2].min()))
    np.subtract(boxes[:, 2:], boxes[:, :2], out=xywh[:, 2:])
    score_list = np.asarray(scores, dtype=np.float32)
    if not score_list.min() > 0.0:
        # OpenCV drops scores <= its (non-negative) score threshold; only NMS may decide here.
        return nms_numpy(boxes, score_list, class_ids, iou_threshold, max_output)
    if class_ids is None:
        kept = cv2.dnn.NMSBoxes(xywh, score_list, 0.0, float(iou_threshold))
    else:
        kept = cv2.dnn.NMSBoxesBatched(xywh, score_list, np.asarray(class_ids, dtype=np.int32),
                                       0.0, float(iou_threshold))
    kept = np.asarray(kept, dtype=np.intp).reshape(-1)
    # OpenCV returns the kept boxes by descending score (stable); make the order explicit.
    kept = kept[np.argsort(-score_list[kept], kind="stable")]
    return kept if max_output is None else kept[: max(0, int(max_output))]


def nms(boxes: np.ndarray, scores: np.ndarray, class_ids: np.ndarray | None, iou_threshold: float,
        max_output: int | None = None, *, method: NmsMethod = "auto") -> np.ndarray:
    """Greedy NMS (class-aware unless ``class_ids`` is None): kept indices by descending score.

    ``method`` picks the implementation: :func:`nms_opencv`, :func:`nms_numpy`, or ``"auto"``
    (OpenCV up to :data:`OPENCV_NMS_MAX_CANDIDATES` boxes, numpy above). All return the same
    indices.
    """
    if method == "auto":
        method = "opencv" if len(scores) <= OPENCV_NMS_MAX_CANDIDATES else "numpy"
    if method == "opencv":
        return nms_opencv(boxes, scores, class_ids, iou_threshold, max_output)
    if method == "numpy":
        return nms_numpy(boxes, scores, class_ids, iou_threshold, max_output)
    raise ValueError(f"method must be 'auto', 'opencv' or 'numpy', got {method!r}")


def _empty_result() -> PostprocessResult:
    return np.empty((0, 4), np.float32), np.empty(0, np.float32), np.empty(0, np.int32)


def postprocess(cls_logits: np.ndarray, box_regression: np.ndarray, anchors: np.ndarray, *,
                score_threshold: float = DEFAULT_SCORE_THRESHOLD, iou_threshold: float = 0.5, max_detections: int = 100,
                pre_nms_top_k: int = 5000, class_agnostic: bool = False,
                clip_size: tuple[float, float] | None = None,
                nms_method: NmsMethod = "auto") -> PostprocessResult:
    """Detections of one image from the raw model outputs.

    Args:
        cls_logits: ``[N, C]`` raw class logits (float32 or float16; never converted as a whole).
        box_regression: ``[N, 4]`` ``(ty, tx, th, tw)`` regressions, same row order.
        anchors: ``[N, 4]`` xyxy anchors from :func:`edgedet.anchors.generate_anchors`.
        score_threshold: keep (anchor, class) pairs with ``sigmoid(logit) > score_threshold``
            (implemented as ``logit > log(t / (1 - t))``).
        iou_threshold: a box is suppressed by a higher-scored one (of the same class unless
            ``class_agnostic``) with IoU above this.
        max_detections: at most this many detections are returned.
        pre_nms_top_k: at most this many highest-scored pairs enter NMS (effdet: 5000).
        class_agnostic: suppress across classes too.
        clip_size: optional ``(width, height)`` in model-input pixels; boxes are clipped to
            ``[0, width] × [0, height]`` before NMS (effdet clips to the letterboxed frame's
            extent, ``frame size × Letterbox.scale``). None: no clipping.
        nms_method: ``"auto"`` (default), ``"opencv"`` or ``"numpy"``; see :func:`nms`.

    Returns:
        ``(boxes_xyxy float32 [K, 4], scores float32 [K], class_ids int32 [K])`` in model-input
        pixels, sorted by descending score, ``K <= max_detections``. Class ids are 0-based
        columns of ``cls_logits``.
    """
    if max_detections < 0:
        raise ValueError(f"max_detections must be >= 0, got {max_detections}")
    if not 0.0 <= float(iou_threshold) <= 1.0:
        raise ValueError(f"iou_threshold must be in [0, 1], got {iou_threshold!r}")
    logits = np.asarray(cls_logits)
    regression = np.asarray(box_regression)
    if logits.ndim != 2:
        hint = " (a batch? use postprocess_batch)" if logits.ndim == 3 else ""
        raise ValueError(f"cls_logits must be [N, C], got shape {logits.shape}{hint}")
    n = logits.shape[0]
    if regression.shape != (n, 4):
        raise ValueError(f"box_regression must be [{n}, 4] to match cls_logits {logits.shape}, "
                         f"got {regression.shape}")
    if np.shape(anchors) != (n, 4):
        raise ValueError(f"anchors must be [{n}, 4] to match cls_logits {logits.shape}, got "
                         f"{np.shape(anchors)} (generate them for the model's input size)")
    if max_detections == 0:
        return _empty_result()

    anchor_idx, class_ids, values = candidates(logits, score_threshold, pre_nms_top_k)
    if anchor_idx.size == 0:
        return _empty_result()
    scores = sigmoid(values)
    boxes = decode_boxes(regression[anchor_idx], np.asarray(anchors)[anchor_idx])
    if clip_size is not None:
        width, height = clip_size
        np.clip(boxes[:, 0::2], 0.0, width, out=boxes[:, 0::2])
        np.clip(boxes[:, 1::2], 0.0, height, out=boxes[:, 1::2])
    keep = nms(boxes, scores, None if class_agnostic else class_ids, iou_threshold, max_detections,
               method=nms_method)
    return boxes[keep], scores[keep], class_ids[keep]


def postprocess_batch(cls_logits: np.ndarray | Sequence[np.ndarray],
                      box_regression: np.ndarray | Sequence[np.ndarray], anchors: np.ndarray,
                      **kwargs) -> list[PostprocessResult]:
    """:func:`postprocess` of each image of a batch: ``cls_logits`` ``[B, N, C]`` and
    ``box_regression`` ``[B, N, 4]`` (or sequences of per-image arrays); ``kwargs`` as for
    :func:`postprocess`. Returns one ``(boxes, scores, class_ids)`` per image."""
    if isinstance(cls_logits, np.ndarray) and cls_logits.ndim != 3:
        raise ValueError(f"cls_logits must be [B, N, C], got shape {cls_logits.shape}")
    if isinstance(box_regression, np.ndarray) and box_regression.ndim != 3:
        raise ValueError(f"box_regression must be [B, N, 4], got shape {box_regression.shape}")
    if len(cls_logits) != len(box_regression):
        raise ValueError(f"batch sizes differ: cls_logits {len(cls_logits)}, "
                         f"box_regression {len(box_regression)}")
    return [postprocess(c, b, anchors, **kwargs) for c, b in zip(cls_logits, box_regression)]
