"""Anchor boxes and the box codec of EfficientDet, in numpy only (part of the torch-free runtime).

Conventions (the model contract):

* Boxes and anchors are ``x1, y1, x2, y2`` in pixels of the model input (``image_size`` square).
  (effdet and the TF reference store anchors as ``y1, x1, y2, x2``; we convert at the edge.)
* Row order of the anchors, and so of the model's ``cls_logits`` / ``box_regression`` rows:
  pyramid level P_min..P_max, then feature-map row ``y``, then column ``x``, then anchor
  ``a = scale_index * len(aspect_ratios) + aspect_index``.
* A regression row is ``(ty, tx, th, tw)``: center offsets in units of the anchor's height/width
  and log ratios of the box's height/width to the anchor's (effdet's ``decode_box_outputs``).

The stride of a level is ``image_size / feature_size`` (as in effdet and automl), which is not a
power of two when ``image_size`` is not divisible by ``2**max_level`` (e.g. Lite0's 320 at P7:
3 cells of 106.67 px).
"""
from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

from .config import AnchorConfig, ModelConfig

__all__ = [
    "MAX_LOG_SCALE",
    "anchors_per_level",
    "decode_boxes",
    "encode_boxes",
    "generate_anchors",
]

#: Upper clip of ``th``/``tw`` in :func:`decode_boxes`: a box at most 1000x its anchor's side.
#: Only an overflow guard (``exp`` of float32 overflows past ~88.7): the smallest anchor of any
#: variant is 16.8 px (Lite P3: 3 * 8 * 0.7), so an unclipped box it would change is over 16,800 px,
#: 10x any model input. effdet does not clip; for every such sane input the results are identical.
MAX_LOG_SCALE: float = math.log(1000.0)

#: Added to widths/heights in :func:`encode_boxes` against log(0)/division by 0 (effdet's EPS).
ENCODE_EPS: float = 1e-7


def _image_size(config: ModelConfig, image_size: int | None) -> int:
    size = config.image_size if image_size is None else int(image_size)
    if size <= 0:
        raise ValueError(f"image_size must be positive, got {image_size!r}")
    return size


def anchors_per_level(config: ModelConfig, image_size: int | None = None) -> list[int]:
    """Number of anchor rows of each pyramid level P_min..P_max at ``image_size``."""
    size = _image_size(config, image_size)
    per_cell = config.anchors.anchors_per_cell
    return [f * f * per_cell for f in config.feature_sizes(size)]


@lru_cache(maxsize=64)
def _anchors_cached(anchors: AnchorConfig, image_size: int, feature_sizes: tuple[int, ...]) -> np.ndarray:
    # Per-anchor half sizes, scale index outer, aspect inner: shape [A], in units of the stride.
    octave = np.repeat(np.asarray(anchors.octave_scales, dtype=np.float64), len(anchors.aspect_ratios))
    aspect = np.tile(np.asarray(anchors.aspect_ratios, dtype=np.float64), (anchors.num_scales, 1))
    half_w = anchors.anchor_scale * octave * aspect[:, 0] / 2.0
    half_h = anchors.anchor_scale * octave * aspect[:, 1] / 2.0

    levels = []
    for f in feature_sizes:
        stride = image_size / f
        centers = (np.arange(f, dtype=np.float64) + 0.5) * stride
        cy = centers[:, None, None]  # [f(y), 1, 1]
        cx = centers[None, :, None]  # [1, f(x), 1]
        hw = (half_w * stride)[None, None, :]  # [1, 1, A]
        hh = (half_h * stride)[None, None, :]
        shape = (f, f, len(half_w))
        level = np.stack(
            [np.broadcast_to(cx - hw, shape), np.broadcast_to(cy - hh, shape),
             np.broadcast_to(cx + hw, shape), np.broadcast_to(cy + hh, shape)],
            axis=-1,
        )
        levels.append(level.reshape(-1, 4))
    out = np.concatenate(levels).astype(np.float32)
    out.flags.writeable = False
    return out


def generate_anchors(config: ModelConfig, image_size: int | None = None) -> np.ndarray:
    """All anchors of ``config`` at ``image_size`` (default ``config.image_size``).

    Returns a read-only float32 array ``[N, 4]`` of ``x1, y1, x2, y2`` in input pixels, in the
    model's row order (level, y, x, scale, aspect), ``N == config.num_anchors(image_size)``.
    Results are cached per (anchor fields, image size): repeated calls return the same array.
    """
    size = _image_size(config, image_size)
    return _anchors_cached(config.anchors, size, tuple(config.feature_sizes(size)))


def decode_boxes(box_regression: np.ndarray, anchors: np.ndarray) -> np.ndarray:
    """Boxes ``x1, y1, x2, y2`` (float32) from regressions ``(ty, tx, th, tw)`` and anchors ``xyxy``.

    ``box_regression`` is ``[..., N, 4]`` (e.g. ``[N, 4]`` or ``[B, N, 4]``) and broadcasts
    against ``anchors`` ``[N, 4]`` (or any broadcast-compatible shape). Equals effdet's
    ``decode_box_outputs(..., output_xyxy=True)`` except that ``th``/``tw`` are clipped at
    :data:`MAX_LOG_SCALE` against overflow. No clipping to the image is done here.
    """
    rel = np.asarray(box_regression, dtype=np.float32)
    anc = np.asarray(anchors, dtype=np.float32)
    if rel.shape[-1] != 4 or anc.shape[-1] != 4:
        raise ValueError(f"expected [..., 4] inputs, got {rel.shape} and {anc.shape}")
    wa = anc[..., 2] - anc[..., 0]
    ha = anc[..., 3] - anc[..., 1]
    out = np.empty(np.broadcast_shapes(rel.shape, anc.shape), dtype=np.float32)
    x1, y1, x2, y2 = out[..., 0], out[..., 1], out[..., 2], out[..., 3]
    # Half sizes into x2/y2: exp(min(t, clip)) * size / 2.
    np.minimum(rel[..., 3], MAX_LOG_SCALE, out=x2)
    np.minimum(rel[..., 2], MAX_LOG_SCALE, out=y2)
    np.exp(out[..., 2:], out=out[..., 2:])
    x2 *= wa
    y2 *= ha
    out[..., 2:] *= 0.5
    # Centers into x1/y1: t * size + anchor center.
    np.multiply(rel[..., 1], wa, out=x1)
    x1 += (anc[..., 0] + anc[..., 2]) * 0.5
    np.multiply(rel[..., 0], ha, out=y1)
    y1 += (anc[..., 1] + anc[..., 3]) * 0.5
    # (center, half) -> (center - half, center + half), in place.
    out[..., :2] -= out[..., 2:]
    out[..., 2:] *= 2.0
    out[..., 2:] += out[..., :2]
    return out


def encode_boxes(boxes_xyxy: np.ndarray, anchors: np.ndarray) -> np.ndarray:
    """Regression targets ``(ty, tx, th, tw)`` (float32) of boxes ``xyxy`` against anchors ``xyxy``.

    The inverse of :func:`decode_boxes`; equals effdet's ``FasterRcnnBoxCoder().encode`` (no scale
    factors, :data:`ENCODE_EPS` added to every width and height). Inputs broadcast like
    :func:`decode_boxes`.
    """
    box = np.asarray(boxes_xyxy, dtype=np.float32)
    anc = np.asarray(anchors, dtype=np.float32)
    if box.shape[-1] != 4 or anc.shape[-1] != 4:
        raise ValueError(f"expected [..., 4] inputs, got {box.shape} and {anc.shape}")
    wa = anc[..., 2] - anc[..., 0] + np.float32(ENCODE_EPS)
    ha = anc[..., 3] - anc[..., 1] + np.float32(ENCODE_EPS)
    w = box[..., 2] - box[..., 0] + np.float32(ENCODE_EPS)
    h = box[..., 3] - box[..., 1] + np.float32(ENCODE_EPS)
    out = np.empty(np.broadcast_shapes(box.shape, anc.shape), dtype=np.float32)
    # Center offsets, then divided by the anchor size (eps included, as effdet does).
    np.subtract((box[..., 1] + box[..., 3]) * 0.5, (anc[..., 1] + anc[..., 3]) * 0.5, out=out[..., 0])
    out[..., 0] /= ha
    np.subtract((box[..., 0] + box[..., 2]) * 0.5, (anc[..., 0] + anc[..., 2]) * 0.5, out=out[..., 1])
    out[..., 1] /= wa
    np.log(h / ha, out=out[..., 2])
    np.log(w / wa, out=out[..., 3])
    return out
