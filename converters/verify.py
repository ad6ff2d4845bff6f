"""Parity of an artifact with the PyTorch FP32 model, on held-out images.

Both see the same held-out frames (not used for calibration): PyTorch the normalized tensor of
:func:`edgedet.preprocess.preprocess`, the artifact what the runtime feeds it
(:func:`edgedet.preprocess.prepare` with the artifact's input spec: that tensor laid out, typed or
quantized as it takes it, or for a frame-input artifact the uint8 canvas). Figures, per output
(``cls`` = cls_logits, ``box`` = box_regression):

* ``*_max_abs``: the largest absolute difference of any raw output value;
* ``*_mean_abs``: the mean absolute difference;
* ``*_cosine``: cosine similarity of the flattened outputs (all images together);
* ``score_max_abs``: the largest difference of class scores (sigmoid of the logits), what a
  score threshold sees;
* ``top100_agreement``: per image, the fraction of PyTorch's 100 highest (anchor, class) logits
  that are also among the artifact's 100 highest (ties with the 100th count as in), averaged over
  images: do the same candidates reach NMS?
* ``detection_ap50``, ``detection_f1`` (with ``detection_precision``, ``detection_recall``): the
  decoded detections (the runtime's own post-processing, NMS IoU 0.5, 100 per image) scored
  against PyTorch FP32's at score 0.3 as ground truth, same class and IoU >= 0.5: AP of the
  artifact's ranked detections, and F1 at the runtime's threshold (:func:`detection_agreement`). Raw-output cosines count every anchor, most of
  them background whose box regressions never become a detection: on the trained reference
  Lite0, full INT8 had box cosine 0.9975 (OpenVINO) and 0.995 (TFLite) with the same val mAP as
  FP32 (0.212), so INT8 is gated on the detections first (AP: F1 at a hard threshold swings
  with scores that land just below it).

Thresholds are per precision (:data:`THRESHOLDS`, :data:`RANDOM_WEIGHT_THRESHOLDS` for random
weights); the scale-free figures (cosine, agreement) are used for reduced precisions, because
absolute errors scale with the weights. The values were set from measurements on realistic-random
D0 and Lite0 (see ``tests/test_convert_onnx.py``) and on the published D0 (docs/TOOLCHAIN.md: INT8 cls max
abs 0.022, box cosine 0.9998), with a margin.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgedet.manifest import InputSpec

from converters.base import Runner

__all__ = ["RANDOM_WEIGHT_THRESHOLDS", "THRESHOLDS", "TOP_K", "Reference", "average_precision", "box_iou",
           "check_parity", "compare", "cosine", "detection_agreement", "match_detections", "measure_parity",
           "reference_outputs"]

TOP_K = 100
#: Post-processing of the detection figures: the runtime's defaults (edgedet.Detector).
DETECTION_SCORE = 0.3
DETECTION_IOU = 0.5
#: The artifact's detections are ranked down to this score for detection_ap50.
AP_SCORE = 0.05
#: Random weights: INT8 detection AP50 floor (measured, see RANDOM_WEIGHT_THRESHOLDS).
DETECTION_AP_RANDOM_INT8 = 0.5

#: Per precision: figure -> (kind, limit); "max" means the figure must be <= limit, "min" >= limit.
_EXACT = {"cls_max_abs": ("max", 1e-3), "box_max_abs": ("max", 1e-3),
          "cls_cosine": ("min", 0.99999), "box_cosine": ("min", 0.99999),
          "top100_agreement": ("min", 0.98), "detection_ap50": ("min", 0.99)}
_FP16 = {"cls_cosine": ("min", 0.9999), "box_cosine": ("min", 0.9999),
         "score_max_abs": ("max", 0.02), "top100_agreement": ("min", 0.9), "detection_ap50": ("min", 0.95)}

#: Thresholds for trained weights. FP32 is an exact conversion (float reassociation only;
#: measured max abs 1e-5..3e-4). FP16: measured on realistic-random Lite0/D0 (more sensitive than
#: trained networks) cosine >= 0.999998, score max abs <= 0.005, top-100 agreement >= 0.99.
#: INT8: gated on the detections (AP50 >= 0.9 against FP32's), with floors on the raw outputs that
#: catch a broken graph: the trained reference Lite0 had cls cosine >= 0.9998 and box cosine
#: 0.995-0.998 at full INT8, the reference D0 cls 0.9989-0.9992 and box 0.983-0.998, all with
#: mAP within 0.005 of FP32 (the published D0: box cosine 0.9998, docs/TOOLCHAIN.md). ``score_max_abs`` is recorded, not enforced: a maximum over
#: ~4M scores, it was 0.20-0.23 on the trained reference D0 (OpenVINO/TFLite INT8) while its
#: detections agreed with FP32's.
THRESHOLDS: dict[str, dict[str, tuple[str, float]]] = {
    "fp32": _EXACT,
    "fp16": _FP16,
    "int8": {"detection_ap50": ("min", 0.9), "cls_cosine": ("min", 0.998), "box_cosine": ("min", 0.97),
             "top100_agreement": ("min", 0.5)},
}

#: Thresholds for random weights (converters.weights.realistic_random_), which quantize worse
#: than trained ones. INT8 measured (8 synthetic calibration images, 4 held out): cls cosine
#: 0.99985 (Lite0) / 0.9988 (D0), box cosine 0.9993 / 0.9932, top-100 agreement 0.95 / 0.81,
#: score max abs 0.13 / 0.36 (a tail figure over 1.7M logits: recorded, not enforced).
RANDOM_WEIGHT_THRESHOLDS: dict[str, dict[str, tuple[str, float]]] = {
    "fp32": _EXACT,
    "fp16": _FP16,
    "int8": {"cls_cosine": ("min", 0.99), "box_cosine": ("min", 0.97),
             "top100_agreement": ("min", 0.5), "detection_ap50": ("min", DETECTION_AP_RANDOM_INT8)},
}


@dataclass(frozen=True)
class Reference:
    """Held-out input batches and PyTorch FP32's outputs on them."""

    batches: tuple[np.ndarray, ...]  # each [1,3,R,R] float32, NCHW
    cls: tuple[np.ndarray, ...]
    box: tuple[np.ndarray, ...]
    description: str  # where the frames came from
    anchors: np.ndarray | None = None  # the model's anchors: decodes detections for detection_f1
    #: The frames themselves (BGR uint8): what an artifact is fed from (measure_parity).
    frames: tuple[np.ndarray, ...] = ()


def reference_outputs(model: Any, frames: Iterable[np.ndarray], *, description: str) -> Reference:
    """Run the PyTorch model on ``frames`` (BGR uint8), one at a time, in FP32."""
    import torch

    from edgedet.anchors import generate_anchors
    from edgedet.preprocess import preprocess

    config = model.config
    norm = config.normalization
    batches, cls, box, kept = [], [], [], []
    with torch.no_grad():
        for frame in frames:
            kept.append(frame)
            batch, _ = preprocess(frame, config.image_size, norm.mean, norm.std, layout="NCHW")
            c, b = model(torch.from_numpy(batch))
            batches.append(batch)
            cls.append(c.numpy().astype(np.float32))
            box.append(b.numpy().astype(np.float32))
    if not batches:
        raise ValueError("no held-out frames to verify with")
    return Reference(tuple(batches), tuple(cls), tuple(box), description, generate_anchors(config), tuple(kept))


def measure_parity(reference: Reference, run: Runner, spec: InputSpec) -> dict[str, Any]:
    """Run the artifact on the reference frames, fed exactly as the runtime feeds an artifact whose
    manifest ``input`` is ``spec`` (:func:`edgedet.preprocess.prepare`), and :func:`compare` the
    outputs with PyTorch's on the same frames."""
    if len(reference.frames) != len(reference.batches):
        raise ValueError("the reference holds no frames to feed the artifact: make it with reference_outputs()")
    from edgedet.preprocess import prepare

    cls, box = [], []
    for frame in reference.frames:
        x, _ = prepare(frame, spec)
        c, b = run(x)
        cls.append(c)
        box.append(b)
    figures = compare(reference.cls, reference.box, cls, box, anchors=reference.anchors)
    figures["images"] = len(reference.batches)
    figures["image_source"] = reference.description
    figures["reference"] = "pytorch-fp32"
    return figures


def compare(ref_cls: Iterable[np.ndarray], ref_box: Iterable[np.ndarray], cls: Iterable[np.ndarray],
            box: Iterable[np.ndarray], *, top_k: int = TOP_K, anchors: np.ndarray | None = None) -> dict[str, Any]:
    """Parity figures of outputs ``cls``/``box`` against references (lists of per-batch arrays);
    with ``anchors``, also the agreement of the decoded detections (:func:`detection_agreement`)."""
    ref_cls, ref_box, cls, box = (list(map(_f32, x)) for x in (ref_cls, ref_box, cls, box))
    for name, refs, outs in (("cls_logits", ref_cls, cls), ("box_regression", ref_box, box)):
        for r, o in zip(refs, outs, strict=True):
            if r.shape != o.shape:
                raise ValueError(f"{name}: artifact output shape {o.shape} != PyTorch {r.shape}")
    figures: dict[str, Any] = {}
    for prefix, refs, outs in (("cls", ref_cls, cls), ("box", ref_box, box)):
        r = np.concatenate([x.ravel() for x in refs]).astype(np.float64)
        o = np.concatenate([x.ravel() for x in outs]).astype(np.float64)
        diff = np.abs(r - o)
        figures[f"{prefix}_max_abs"] = float(diff.max()) if np.isfinite(diff).all() else float("inf")
        figures[f"{prefix}_mean_abs"] = float(diff.mean()) if np.isfinite(diff).all() else float("inf")
        figures[f"{prefix}_cosine"] = cosine([r], [o])
    # In score space (sigmoid), as a detection threshold sees the class outputs.
    figures["score_max_abs"] = float(max(np.abs(_sigmoid(r) - _sigmoid(o)).max() for r, o in zip(ref_cls, cls)))
    agreements = []
    for r, o in zip(ref_cls, cls):
        for ri, oi in zip(r.reshape(r.shape[0], -1), o.reshape(o.shape[0], -1)):
            agreements.append(_top_k_agreement(ri, np.nan_to_num(oi, nan=-np.inf), top_k))
    figures[f"top{top_k}_agreement"] = float(np.mean(agreements))
    if anchors is not None:
        figures.update(detection_agreement(ref_cls, ref_box, cls, box, anchors))
    return {k: _round(v) for k, v in figures.items()}


def detection_agreement(ref_cls: list[np.ndarray], ref_box: list[np.ndarray], cls: list[np.ndarray],
                        box: list[np.ndarray], anchors: np.ndarray, *, score_threshold: float = DETECTION_SCORE,
                        iou: float = DETECTION_IOU) -> dict[str, float]:
    """The artifact's detections scored against PyTorch FP32's as ground truth.

    Ground truth: PyTorch's detections at ``score_threshold`` (the runtime's default). A detection
    of the artifact is right when it overlaps an unmatched ground-truth box of its class by IoU >=
    ``iou`` (greedy, highest score first). ``detection_ap50``: average precision of the artifact's
    detections down to score :data:`AP_SCORE` (all images pooled, all-point interpolation), which,
    like mAP, does not punish a score that lands just below the threshold; ``detection_f1`` (with
    precision and recall): at ``score_threshold`` itself, what a user sees; means over images,
    1.0 where neither finds anything.
    """
    from edgedet.postprocess import postprocess

    precision, recall, f1 = [], [], []
    ranked: list[tuple[np.ndarray, np.ndarray]] = []  # (scores, hit flags) per image
    truths = 0
    for rc_all, rb_all, oc_all, ob_all in zip(ref_cls, ref_box, cls, box):
        for rc, rb, oc, ob in zip(rc_all, rb_all, oc_all, ob_all):
            want = postprocess(rc, rb, anchors, score_threshold=score_threshold)
            got = postprocess(np.nan_to_num(oc, nan=-np.inf), np.nan_to_num(ob), anchors, score_threshold=AP_SCORE)
            hit = _matches(got, want, iou)
            scores = got[1]
            truths += len(want[0])
            ranked.append((scores, hit))
            at = scores > score_threshold  # the runtime's view (scores are sorted, hits greedy by score)
            hits, n_got, n_want = int(hit[at].sum()), int(at.sum()), len(want[0])
            p = hits / n_got if n_got else float(n_want == 0)
            r = hits / n_want if n_want else float(n_got == 0)
            precision.append(p)
            recall.append(r)
            f1.append(2 * p * r / (p + r) if p + r > 0 else 0.0)
    return {"detection_ap50": average_precision(ranked, truths), "detection_precision": float(np.mean(precision)),
            "detection_recall": float(np.mean(recall)), "detection_f1": float(np.mean(f1))}


def average_precision(ranked: list[tuple[np.ndarray, np.ndarray]], truths: int) -> float:
    """All-point interpolated AP of pooled (score, hit) lists against ``truths`` ground-truth boxes."""
    scores = np.concatenate([s for s, _ in ranked]) if ranked else np.zeros(0)
    hits = np.concatenate([h for _, h in ranked]).astype(np.float64) if ranked else np.zeros(0)
    if truths == 0:
        return 1.0 if scores.size == 0 else 0.0
    order = np.argsort(-scores, kind="stable")
    tp = np.cumsum(hits[order])
    recall = tp / truths
    precision = tp / np.arange(1, len(tp) + 1)
    envelope = np.maximum.accumulate(precision[::-1])[::-1]  # the precision envelope, right to left
    steps = np.diff(np.concatenate([[0.0], recall]))
    return float(np.sum(steps * envelope))


def _matches(got: tuple[np.ndarray, ...], want: tuple[np.ndarray, ...], iou: float) -> np.ndarray:
    """Per detection of ``got`` (sorted by score): does it match an unmatched box of ``want`` of
    its class with IoU >= ``iou`` (greedy, one-to-one)?"""
    return match_detections(got, want, iou) >= 0


def match_detections(got: tuple[np.ndarray, ...], want: tuple[np.ndarray, ...], iou: float) -> np.ndarray:
    """Per detection of ``got`` (``(boxes xyxy, scores, classes)``, sorted by score): the index of
    the box of ``want`` it matches, or -1. Greedy, highest score first, one-to-one: a match is an
    unmatched box of ``want`` of the same class with the highest IoU, at least ``iou``."""
    gb, _, gc = got
    wb, _, wc = want
    matched = np.full(len(gb), -1, np.int64)
    if len(gb) == 0 or len(wb) == 0:
        return matched
    overlap = box_iou(gb, wb)
    overlap[np.asarray(gc)[:, None] != np.asarray(wc)[None, :]] = 0.0
    taken = np.zeros(len(wb), bool)
    for i, row in enumerate(overlap):
        row = np.where(taken, 0.0, row)
        j = int(row.argmax())
        if row[j] >= iou:
            taken[j] = True
            matched[i] = j
    return matched


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``[len(a), len(b)]`` IoU of xyxy boxes."""
    a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area_a = np.prod(np.clip(a[:, 2:] - a[:, :2], 0, None), axis=1)
    area_b = np.prod(np.clip(b[:, 2:] - b[:, :2], 0, None), axis=1)
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


def check_parity(figures: Mapping[str, Any], precision: str,
                 thresholds: Mapping[str, Mapping[str, tuple[str, float]]] | None = None) -> list[str]:
    """The threshold failures of ``figures`` for ``precision`` (empty when it passes)."""
    limits = (thresholds or THRESHOLDS).get(precision, {})
    failures = []
    for name, (kind, limit) in limits.items():
        value = figures.get(name)
        if value is None or not np.isfinite(value):
            failures.append(f"{name} is {value} (not finite)")
        elif kind == "max" and value > limit:
            failures.append(f"{name} = {value:.3g} > {limit:g}")
        elif kind == "min" and value < limit:
            failures.append(f"{name} = {value:.6g} < {limit:g}")
    return failures


def _top_k_agreement(ref: np.ndarray, out: np.ndarray, k: int) -> float:
    """Fraction of ``ref``'s top-``k`` entries that are in ``out``'s top-``k``, ties included: an
    entry counts when its ``out`` value reaches ``out``'s k-th largest value. (Letterbox padding
    gives many anchors identical logits; an arbitrary tie break must not count as disagreement.)"""
    k = min(k, ref.size)
    top_ref = np.argpartition(-ref, k - 1)[:k]
    kth_out = np.partition(out, out.size - k)[out.size - k]
    return float(np.count_nonzero(out[top_ref] >= kth_out)) / k


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x.astype(np.float64)))


def _f32(x: Any) -> np.ndarray:
    return np.asarray(x, dtype=np.float32)


def cosine(refs: Iterable[np.ndarray], outs: Iterable[np.ndarray]) -> float:
    """Cosine similarity of the flattened, concatenated ``outs`` against ``refs`` (in float64).

    The one cosine of the converters (parity figures and the INT8 accuracy target). Non-finite
    input (NaN or inf anywhere, on either side) gives NaN: it is not a measurement, and every
    consumer treats NaN as a failure (:func:`check_parity` fails it, the manifest records null,
    :meth:`converters.accuracy.AccuracyTarget.shortfall` makes it infinite). Two all-zero sides
    agree (1.0); one all-zero side does not (0.0).
    """
    a = np.concatenate([np.ravel(x) for x in refs]).astype(np.float64)
    b = np.concatenate([np.ravel(x) for x in outs]).astype(np.float64)
    if a.shape != b.shape:
        raise ValueError(f"cosine of {a.size} values against {b.size}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        return float("nan")
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0 or nb == 0:
        return 1.0 if na == nb else 0.0
    return float(np.dot(a, b) / (na * nb))


def _round(value: Any) -> Any:
    # Keep manifests readable: 6 significant digits are plenty for parity figures.
    # Non-finite figures become null (JSON has no NaN/inf); check_parity fails on them.
    if isinstance(value, float):
        return float(f"{value:.6g}") if np.isfinite(value) else None
    return value
