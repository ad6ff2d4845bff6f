"""Parity of an artifact with the PyTorch FP32 model, on held-out images.

Both run on the same batches (made by :func:`edgedet.preprocess.preprocess` from frames that were
not used for calibration). Figures, per output (``cls`` = cls_logits, ``box`` = box_regression):

* ``*_max_abs``: the largest absolute difference of any raw output value;
* ``*_mean_abs``: the mean absolute difference;
* ``*_cosine``: cosine similarity of the flattened outputs (all images together);
* ``score_max_abs``: the largest difference of class scores (sigmoid of the logits), what a
  score threshold sees;
* ``top100_agreement``: per image, the fraction of PyTorch's 100 highest (anchor, class) logits
  that are also among the artifact's 100 highest (ties with the 100th count as in), averaged over
  images: do the same candidates reach NMS?

Thresholds are per precision (:data:`THRESHOLDS`, :data:`RANDOM_WEIGHT_THRESHOLDS` for random
weights); the scale-free figures (cosine, agreement) are used for reduced precisions, because
absolute errors scale with the weights. The values were set from measurements on realistic-random
D0 and Lite0 (see ``tests/test_convert_onnx.py``) and on the published D0 (STACK.md: INT8 cls max
abs 0.022, box cosine 0.9998), with a margin.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgedet.manifest import Quantization
from edgedet.quantization import quantize

from converters.base import Runner

__all__ = ["RANDOM_WEIGHT_THRESHOLDS", "THRESHOLDS", "TOP_K", "Reference", "check_parity", "compare",
           "measure_parity", "reference_outputs"]

TOP_K = 100

#: Per precision: figure -> (kind, limit); "max" means the figure must be <= limit, "min" >= limit.
_EXACT = {"cls_max_abs": ("max", 1e-3), "box_max_abs": ("max", 1e-3),
          "cls_cosine": ("min", 0.99999), "box_cosine": ("min", 0.99999),
          "top100_agreement": ("min", 0.98)}
_FP16 = {"cls_cosine": ("min", 0.9999), "box_cosine": ("min", 0.9999),
         "score_max_abs": ("max", 0.02), "top100_agreement": ("min", 0.9)}

#: Thresholds for trained weights. FP32 is an exact conversion (float reassociation only;
#: measured max abs 1e-5..3e-4). FP16: measured on realistic-random Lite0/D0 (more sensitive than
#: trained networks) cosine >= 0.999998, score max abs <= 0.005, top-100 agreement >= 0.99.
#: INT8: the published D0 measured box cosine 0.9998 and cls max abs 0.022 (STACK.md); the top-100
#: agreement limit is provisional until measured on published weights.
THRESHOLDS: dict[str, dict[str, tuple[str, float]]] = {
    "fp32": _EXACT,
    "fp16": _FP16,
    "int8": {"cls_cosine": ("min", 0.999), "box_cosine": ("min", 0.998),
             "score_max_abs": ("max", 0.15), "top100_agreement": ("min", 0.5)},
}

#: Thresholds for random weights (converters.weights.realistic_random_), which quantize worse
#: than trained ones. INT8 measured (8 synthetic calibration images, 4 held out): cls cosine
#: 0.99985 (Lite0) / 0.9988 (D0), box cosine 0.9993 / 0.9932, top-100 agreement 0.95 / 0.81,
#: score max abs 0.13 / 0.36 (a tail figure over 1.7M logits: recorded, not enforced).
RANDOM_WEIGHT_THRESHOLDS: dict[str, dict[str, tuple[str, float]]] = {
    "fp32": _EXACT,
    "fp16": _FP16,
    "int8": {"cls_cosine": ("min", 0.99), "box_cosine": ("min", 0.97),
             "top100_agreement": ("min", 0.5)},
}


@dataclass(frozen=True)
class Reference:
    """Held-out input batches and PyTorch FP32's outputs on them."""

    batches: tuple[np.ndarray, ...]  # each [1,3,R,R] float32, NCHW
    cls: tuple[np.ndarray, ...]
    box: tuple[np.ndarray, ...]
    description: str  # where the frames came from


def reference_outputs(model: Any, frames: Iterable[np.ndarray], *, description: str) -> Reference:
    """Run the PyTorch model on ``frames`` (BGR uint8), one at a time, in FP32."""
    import torch

    from edgedet.preprocess import preprocess

    config = model.config
    norm = config.normalization
    batches, cls, box = [], [], []
    with torch.no_grad():
        for frame in frames:
            batch, _ = preprocess(frame, config.image_size, norm.mean, norm.std, layout="NCHW")
            c, b = model(torch.from_numpy(batch))
            batches.append(batch)
            cls.append(c.numpy().astype(np.float32))
            box.append(b.numpy().astype(np.float32))
    if not batches:
        raise ValueError("no held-out frames to verify with")
    return Reference(tuple(batches), tuple(cls), tuple(box), description)


def measure_parity(reference: Reference, run: Runner, *, layout: str = "NCHW", dtype: str = "float32",
                   quantization: Quantization | None = None) -> dict[str, Any]:
    """Run the artifact on the reference batches, fed as the runtime feeds it (layout, dtype, and
    quantized for integer inputs), and :func:`compare` the outputs."""
    cls, box = [], []
    for batch in reference.batches:
        x = batch.transpose(0, 2, 3, 1) if layout == "NHWC" else batch
        x = (quantize(x, quantization, dtype) if quantization is not None
             else np.ascontiguousarray(x, dtype=np.dtype(dtype)))
        c, b = run(x)
        cls.append(c)
        box.append(b)
    figures = compare(reference.cls, reference.box, cls, box)
    figures["images"] = len(reference.batches)
    figures["image_source"] = reference.description
    figures["reference"] = "pytorch-fp32"
    return figures


def compare(ref_cls: Iterable[np.ndarray], ref_box: Iterable[np.ndarray], cls: Iterable[np.ndarray],
            box: Iterable[np.ndarray], *, top_k: int = TOP_K) -> dict[str, Any]:
    """Parity figures of outputs ``cls``/``box`` against references (lists of per-batch arrays)."""
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
        figures[f"{prefix}_cosine"] = _cosine(r, o)
    # In score space (sigmoid), as a detection threshold sees the class outputs.
    figures["score_max_abs"] = float(max(np.abs(_sigmoid(r) - _sigmoid(o)).max() for r, o in zip(ref_cls, cls)))
    agreements = []
    for r, o in zip(ref_cls, cls):
        for ri, oi in zip(r.reshape(r.shape[0], -1), o.reshape(o.shape[0], -1)):
            agreements.append(_top_k_agreement(ri, np.nan_to_num(oi, nan=-np.inf), top_k))
    figures[f"top{top_k}_agreement"] = float(np.mean(agreements))
    return {k: _round(v) for k, v in figures.items()}


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


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
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
