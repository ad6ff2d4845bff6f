"""A procedurally generated object-detection data set ("shapes"), written in COCO format.

The project's built-in data: enough to train a small reference EfficientDet on a CPU, to calibrate
INT8 quantization and to measure mAP, with no download. Eight classes of flat, shaded shapes
(:data:`CLASSES`) are drawn over textured, noisy backgrounds with varied size (≈10 px up to ~60 % of
the image side), color, rotation, mild aspect distortion, partial occlusion, crowding (1..20
objects), lighting changes, blur and JPEG noise.

Determinism: image ``index`` of a config is a pure function of ``(config, index)``: its RNG is
``np.random.default_rng((config.seed, index))``, so any worker can render any image alone and the
same (seed, index) gives the same pixels and annotations however many images were made before
(bit-identical for a given numpy/OpenCV build).

Annotations are the tight boxes of each object's *visible* pixels (after occlusion by later objects
and clipping at the image border); an object is annotated only if at least
``config.min_visibility`` of its full area stays visible. ``area`` is the visible pixel count
(COCO's segmentation area), so COCOeval's small/medium/large split uses the visible size.

numpy + OpenCV only (the runtime and the converters import this; no torch).

Example::

    from edgedet.data import SyntheticConfig, generate_splits, render
    image, anns = render(0, SyntheticConfig(image_size=320))
    paths = generate_splits("data/shapes", train=2000, val=200)   # {"train": ..json, "val": ..json}
"""
from __future__ import annotations

import colorsys
import dataclasses
import json
import logging
import math
import multiprocessing
import os
import re
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edgedet._progress import progress_bar
from edgedet._atomic import atomic_write_bytes, atomic_write_text

__all__ = [
    "CLASSES",
    "GENERATOR_VERSION",
    "VAL_INDEX_OFFSET",
    "SyntheticConfig",
    "categories",
    "generate_coco",
    "generate_splits",
    "iter_images",
    "render",
]

log = logging.getLogger(__name__)

#: The shape classes; COCO ``category_id`` is the 1-based position in ``SyntheticConfig.classes``.
CLASSES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross", "ring", "hexagon", "heart")

#: Bumped whenever rendering changes, so stale generated sets are regenerated, never reused.
GENERATOR_VERSION = 1

#: ``generate_splits`` renders the val split from indices starting here (train uses 0..train-1),
#: so the splits never share an image and growing one never changes the other.
VAL_INDEX_OFFSET = 1_000_000_000

_IMAGE_NAME = re.compile(r"^\d{6,}\.(jpg|png)$")


@dataclass(frozen=True)
class SyntheticConfig:
    """What to render. Frozen and JSON-able (``to_dict``), so it keys the on-disk cache.

    ``image_size`` is an int (square) or ``(width, height)``; it is stored as ``(width, height)``.
    The knobs under "difficulty" are probabilities (``*_prob``) or strengths in 0..1 unless noted;
    :meth:`preset` gives ``"easy"``, ``"default"`` and ``"hard"`` settings.
    """

    image_size: int | tuple[int, int] = 320
    min_objects: int = 1
    max_objects: int = 20
    classes: tuple[str, ...] = CLASSES
    seed: int = 0
    #: Object size (diameter of the shape before aspect distortion), pixels, log-uniform between
    #: ``min_object_size`` and ``max_object_frac`` x the shorter image side (less in crowded images).
    min_object_size: float = 10.0
    max_object_frac: float = 0.6
    #: An object is annotated if at least this fraction of its full area is visible.
    min_visibility: float = 0.4
    # --- difficulty -----------------------------------------------------------------------------
    #: A new object is re-placed (or dropped) if it would hide more than this fraction of an
    #: object drawn before it; keeps occlusion partial.
    max_occlusion: float = 0.5
    #: Largest aspect stretch of a shape (its width/height ratio is within [1/x, x]).
    max_aspect: float = 1.3
    rotate: bool = True
    #: Minimum BGR distance between an object's color and the mean of what it covers.
    min_contrast: float = 60.0
    texture_prob: float = 0.5
    texture_strength: float = 0.5
    blob_prob: float = 0.5
    clutter_prob: float = 0.3
    object_texture_prob: float = 0.15
    lighting: float = 0.5
    noise_prob: float = 0.7
    #: Standard deviation of the additive pixel noise (0..255 units), upper end.
    max_noise: float = 8.0
    blur_prob: float = 0.25
    #: Gaussian blur sigma in pixels, upper end.
    max_blur: float = 1.2
    jpeg_prob: float = 0.25
    #: JPEG quality range of the in-image compression artifacts.
    jpeg_quality: tuple[int, int] = (35, 85)

    def __post_init__(self) -> None:
        size = self.image_size
        if isinstance(size, (int, np.integer)):
            size = (int(size), int(size))
        else:
            size = tuple(int(s) for s in size)
        if len(size) != 2 or min(size) < 16:
            raise ValueError(f"image_size must be an int or (width, height), each >= 16; got {self.image_size!r}")
        object.__setattr__(self, "image_size", size)
        classes = (self.classes,) if isinstance(self.classes, str) else tuple(self.classes)
        unknown = [c for c in classes if c not in CLASSES]
        if not classes or unknown or len(set(classes)) != len(classes):
            raise ValueError(f"classes must be distinct names from {CLASSES}; got {self.classes!r}")
        object.__setattr__(self, "classes", classes)
        object.__setattr__(self, "jpeg_quality", tuple(int(q) for q in self.jpeg_quality))
        if not 1 <= self.min_objects <= self.max_objects <= 10_000:
            raise ValueError(f"need 1 <= min_objects <= max_objects <= 10000; got {self.min_objects}, {self.max_objects}")
        if int(self.seed) < 0:
            raise ValueError(f"seed must be >= 0; got {self.seed}")
        if not (self.min_object_size > 0 and 0 < self.max_object_frac <= 1.0):
            raise ValueError("need min_object_size > 0 and 0 < max_object_frac <= 1")
        if self.max_aspect < 1.0:
            raise ValueError(f"max_aspect must be >= 1; got {self.max_aspect}")

    @property
    def width(self) -> int:
        return self.image_size[0]  # type: ignore[index]

    @property
    def height(self) -> int:
        return self.image_size[1]  # type: ignore[index]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (tuples as lists), as recorded in the ``.meta.json`` beside a split."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    def replace(self, **changes: Any) -> SyntheticConfig:
        return dataclasses.replace(self, **changes)

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> SyntheticConfig:
        """``"easy"`` (clean, few objects, no texture), ``"default"`` or ``"hard"``."""
        presets: dict[str, dict[str, Any]] = {
            "easy": dict(max_objects=8, texture_prob=0.0, blob_prob=0.2, clutter_prob=0.0,
                         object_texture_prob=0.0, lighting=0.2, noise_prob=0.3, max_noise=4.0,
                         blur_prob=0.0, jpeg_prob=0.0, max_aspect=1.15, min_object_size=14.0),
            "default": {},
            "hard": dict(max_objects=30, texture_strength=0.8, clutter_prob=0.6, lighting=0.8,
                         max_noise=14.0, blur_prob=0.4, max_blur=1.8, jpeg_prob=0.5, max_occlusion=0.6,
                         min_contrast=40.0, max_aspect=1.5, min_object_size=8.0),
        }
        if name not in presets:
            raise ValueError(f"unknown preset {name!r}; choose from {sorted(presets)}")
        return cls(**{**presets[name], **overrides})


def categories(config: SyntheticConfig | None = None) -> list[dict[str, Any]]:
    """The COCO ``categories`` list: ``{"id": i + 1, "name": classes[i], "supercategory": "shape"}``."""
    config = config or SyntheticConfig()
    return [{"id": i + 1, "name": n, "supercategory": "shape"} for i, n in enumerate(config.classes)]


# --- shapes ---------------------------------------------------------------------------------------
# Each shape is one or more closed polygons in unit coordinates (radius ~1 around the origin, y down);
# the second polygon, where there is one, is a hole.

def _regular(n: int, r: float = 1.0, phase: float = -math.pi / 2) -> np.ndarray:
    t = phase + 2 * math.pi * np.arange(n) / n
    return np.stack([r * np.cos(t), r * np.sin(t)], axis=1)


def _star(points: int = 5, inner: float = 0.45) -> np.ndarray:
    t = -math.pi / 2 + math.pi * np.arange(2 * points) / points
    r = np.where(np.arange(2 * points) % 2 == 0, 1.0, inner)
    return np.stack([r * np.cos(t), r * np.sin(t)], axis=1)


def _cross(arm: float = 0.34) -> np.ndarray:
    a, b = arm, 1.0
    return np.array([(-a, -b), (a, -b), (a, -a), (b, -a), (b, a), (a, a), (a, b), (-a, b), (-a, a),
                     (-b, a), (-b, -a), (-a, -a)], dtype=np.float64) * 0.95


def _heart(n: int = 64) -> np.ndarray:
    t = np.linspace(0, 2 * math.pi, n, endpoint=False)
    x = 16 * np.sin(t) ** 3
    y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
    pts = np.stack([x, y], axis=1)
    pts -= (pts.max(0) + pts.min(0)) / 2
    return pts / np.abs(pts).max()


_SHAPES: dict[str, tuple[np.ndarray, ...]] = {
    "circle": (_regular(48),),
    "square": (_regular(4, math.sqrt(2) * 0.8, math.pi / 4),),
    "triangle": ((_regular(3) + (0.0, 0.2)),),
    "star": (_star(),),
    "cross": (_cross(),),
    "ring": (_regular(48), _regular(48, 0.55)),
    "hexagon": (_regular(6, 1.0, 0.0),),
    "heart": (_heart(),),
}

_SHIFT = 4  # fixed-point bits for cv2 polygon vertices (sub-pixel placement)
_ONE = 1 << _SHIFT


def _shape_mask(name: str, cx: float, cy: float, radius: float, angle: float, aspect: float
                ) -> tuple[np.ndarray, int, int]:
    """The anti-aliased 0..255 mask of one shape and its top-left corner (x0, y0) in the image."""
    c, s = math.cos(angle), math.sin(angle)
    rot = np.array([[c, -s], [s, c]]) * radius
    scale = np.array([math.sqrt(aspect), 1 / math.sqrt(aspect)])
    polys = [(p * scale) @ rot.T + (cx, cy) for p in _SHAPES[name]]
    allp = np.concatenate(polys)
    x0, y0 = int(math.floor(allp[:, 0].min())) - 1, int(math.floor(allp[:, 1].min())) - 1
    x1, y1 = int(math.ceil(allp[:, 0].max())) + 2, int(math.ceil(allp[:, 1].max())) + 2
    mask = np.zeros((y1 - y0, x1 - x0), np.uint8)
    for i, p in enumerate(polys):
        fixed = np.round((p - (x0, y0) - 0.5) * _ONE).astype(np.int32)  # pixel centers at +0.5
        cv2.fillPoly(mask, [fixed], 255 if i == 0 else 0, cv2.LINE_AA, _SHIFT)
    return mask, x0, y0


# --- colors, backgrounds, effects -------------------------------------------------------------------

def _hsv_bgr(h: float, s: float, v: float) -> np.ndarray:
    r, g, b = colorsys.hsv_to_rgb(h, s, v)
    return np.array([b, g, r], np.float32) * 255.0


def _random_color(rng: np.random.Generator, v_lo: float = 0.1, v_hi: float = 1.0) -> np.ndarray:
    return _hsv_bgr(rng.random(), rng.uniform(0.0, 1.0), rng.uniform(v_lo, v_hi))


def _coords(w: int, h: int) -> tuple[np.ndarray, np.ndarray]:
    return np.arange(w, dtype=np.float32)[None, :], np.arange(h, dtype=np.float32)[:, None]


def _upsample_planar(small: np.ndarray, w: int, h: int) -> np.ndarray:
    """(sh, sw, 3) -> planar (3, h, w) float32, bilinear (fast; the content is smooth)."""
    out = np.empty((3, h, w), np.float32)
    for c in range(3):
        cv2.resize(np.ascontiguousarray(small[..., c]), (w, h), dst=out[c], interpolation=cv2.INTER_LINEAR)
    return out


# Images are composed as planar float32 (3, H, W) in 0..255 BGR: per-channel arithmetic on
# contiguous planes is several times faster in numpy than on interleaved (H, W, 3).

def _background(rng: np.random.Generator, cfg: SyntheticConfig) -> np.ndarray:
    w, h = cfg.image_size  # type: ignore[misc]
    # Smooth part at 1/8 resolution: a linear gradient between two related colors, low-frequency
    # color noise and large blurred blobs of other colors.
    sw, sh = max(4, -(-w // 8)), max(4, -(-h // 8))
    c1 = _random_color(rng, 0.15, 0.95)
    c2 = np.clip(c1 + rng.normal(0, 45, 3).astype(np.float32), 0, 255)
    theta = rng.uniform(0, 2 * math.pi)
    sx, sy = _coords(sw, sh)
    t = sx * math.cos(theta) + sy * math.sin(theta)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    small = c1 + t[..., None] * (c2 - c1)
    k = int(rng.integers(2, 7))
    low = rng.normal(0, rng.uniform(5, 30), (k, k, 3)).astype(np.float32)
    small += cv2.resize(low, (sw, sh), interpolation=cv2.INTER_CUBIC)
    if rng.random() < cfg.blob_prob:
        blobs = np.zeros((sh, sw, 3), np.float32)
        for _ in range(int(rng.integers(1, 5))):
            center = (int(rng.integers(sw)), int(rng.integers(sh)))
            axes = (int(rng.integers(2, max(3, sw // 2))), int(rng.integers(2, max(3, sh // 2))))
            color = rng.normal(0, 40, 3).tolist()
            cv2.ellipse(blobs, center, axes, float(rng.uniform(0, 180)), 0, 360, color, -1, cv2.LINE_AA)
        small += cv2.GaussianBlur(blobs, (0, 0), 1.5)
    img = _upsample_planar(small, w, h)
    # Texture: stripes, checker, grid or mid-frequency noise.
    if rng.random() < cfg.texture_prob:
        xs, ys = _coords(w, h)
        kind = int(rng.integers(4))
        period = rng.uniform(6, 40)
        phi = rng.uniform(0, math.pi)
        f = 2 * math.pi / period
        cs, sn = math.cos(phi) * f, math.sin(phi) * f
        if kind == 0:
            pattern = np.sin(xs * cs + ys * sn + rng.uniform(0, 6.3))
            if rng.random() < 0.5:
                pattern = np.sign(pattern)
        elif kind == 1:
            pattern = np.sign(np.sin(xs * cs + ys * sn) * np.sin(ys * cs - xs * sn))
        elif kind == 2:
            pattern = (np.maximum(np.cos(xs * cs + ys * sn), np.cos(ys * cs - xs * sn)) > 0.9) * np.float32(2) - 1
        else:
            cells = (max(2, int(w / period * 2)), max(2, int(h / period * 2)))
            pattern = cv2.resize(rng.uniform(-1, 1, cells[::-1]).astype(np.float32), (w, h),
                                 interpolation=cv2.INTER_LINEAR)
        amp = cfg.texture_strength * rng.uniform(0.3, 1.0) * 35.0
        tint = rng.uniform(0.5, 1.0, 3) if rng.random() < 0.5 else np.ones(3)
        pattern = pattern.astype(np.float32, copy=False)
        for c in range(3):
            img[c] += pattern * np.float32(amp * tint[c])
    # Clutter: thin lines and arcs (not objects).
    if rng.random() < cfg.clutter_prob:
        for _ in range(int(rng.integers(1, 6))):
            color = _random_color(rng)
            thick = int(rng.integers(1, 3))
            if rng.random() < 0.6:
                p1 = (int(rng.integers(w)), int(rng.integers(h)))
                p2 = (int(rng.integers(w)), int(rng.integers(h)))
                for c in range(3):
                    cv2.line(img[c], p1, p2, float(color[c]), thick, cv2.LINE_AA)
            else:
                center = (int(rng.integers(w)), int(rng.integers(h)))
                r = int(rng.integers(8, max(9, min(w, h) // 2)))
                start = float(rng.uniform(0, 360))
                stop = start + float(rng.uniform(30, 150))
                for c in range(3):
                    cv2.ellipse(img[c], center, (r, r), 0, start, stop, float(color[c]), thick, cv2.LINE_AA)
    return img


def _lighting(rng: np.random.Generator, img: np.ndarray, cfg: SyntheticConfig) -> np.ndarray:
    """Global contrast/brightness, vignette and soft shadow (planar float32, in place)."""
    s = cfg.lighting
    if s <= 0:
        return img
    h, w = img.shape[1:]
    contrast = 1.0 + s * rng.uniform(-0.5, 0.4)
    brightness = s * rng.uniform(-50, 50)
    img *= np.float32(contrast)
    img += np.float32(128.0 * (1 - contrast) + brightness)
    sw, sh = max(4, w // 16), max(4, h // 16)
    gain = None
    if rng.random() < 0.5 * min(1.0, 2 * s):  # vignette around a random center
        xs, ys = _coords(sw, sh)
        cx, cy = rng.uniform(0.3, 0.7) * sw, rng.uniform(0.3, 0.7) * sh
        r2 = ((xs - cx) / sw) ** 2 + ((ys - cy) / sh) ** 2
        gain = 1.0 - s * rng.uniform(0.4, 1.2) * r2
    if rng.random() < 0.4 * min(1.0, 2 * s):  # soft shadow
        shadow = np.zeros((sh, sw), np.float32)
        center = (int(rng.integers(sw)), int(rng.integers(sh)))
        axes = (int(rng.integers(2, max(3, sw // 2 + 1))), int(rng.integers(2, max(3, sh // 2 + 1))))
        cv2.ellipse(shadow, center, axes, float(rng.uniform(0, 180)), 0, 360, 1.0, -1)
        shadow = cv2.GaussianBlur(shadow, (0, 0), rng.uniform(0.8, 2.0))
        shade = 1.0 - s * rng.uniform(0.4, 0.9) * shadow
        gain = shade if gain is None else gain * shade
    if gain is not None:
        gain = cv2.resize(np.clip(gain, 0.2, 1.2).astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
        img *= gain[None]
    return img


def _finish(rng: np.random.Generator, img: np.ndarray, cfg: SyntheticConfig) -> np.ndarray:
    """Planar float image -> interleaved uint8 BGR with gamma, blur, noise and JPEG artifacts."""
    np.clip(img, 0, 255, out=img)
    out = cv2.merge([plane.astype(np.uint8) for plane in img])
    if cfg.lighting > 0:
        gamma = math.exp(cfg.lighting * rng.uniform(-0.5, 0.5))
        lut = np.clip(((np.arange(256) / 255.0) ** gamma) * 255.0 + 0.5, 0, 255).astype(np.uint8)
        out = cv2.LUT(out, lut)
    if rng.random() < cfg.blur_prob and cfg.max_blur > 0:
        out = cv2.GaussianBlur(out, (0, 0), rng.uniform(0.4, max(0.41, cfg.max_blur)))
    if rng.random() < cfg.noise_prob and cfg.max_noise > 0:
        sigma = rng.uniform(1.0, max(1.0, cfg.max_noise))
        # Difference of two uniform uint8 draws (triangular, std 255/sqrt(6)): several times
        # faster than normal(); the eye and a detector can't tell the two apart.
        a = rng.integers(0, 256, out.shape, dtype=np.uint8)
        b = rng.integers(0, 256, out.shape, dtype=np.uint8)
        noise = cv2.subtract(a, b, dtype=cv2.CV_16S)
        out = cv2.addWeighted(out, 1.0, noise, sigma * math.sqrt(6) / 255.0, 0.0, dtype=cv2.CV_8U)
    if rng.random() < cfg.jpeg_prob:
        q = int(rng.integers(min(cfg.jpeg_quality), max(cfg.jpeg_quality) + 1))
        ok, buf = cv2.imencode(".jpg", out, [cv2.IMWRITE_JPEG_QUALITY, q])
        if ok:
            out = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    return out


def _object_color(rng: np.random.Generator, under: np.ndarray, min_contrast: float) -> np.ndarray:
    """A random color at least ``min_contrast`` (BGR distance) from ``under`` (the best of 12 tries)."""
    best, best_d = None, -1.0
    for _ in range(12):
        color = _hsv_bgr(rng.random(), rng.uniform(0.15, 1.0), rng.uniform(0.1, 1.0))
        d = float(np.linalg.norm(color - under))
        if d >= min_contrast:
            return color
        if d > best_d:
            best, best_d = color, d
    # Nothing far enough: push the best candidate away from the background.
    assert best is not None
    direction = best - under
    norm = float(np.linalg.norm(direction))
    if norm < 1e-3:
        direction, norm = np.where(under > 127, -1.0, 1.0).astype(np.float32), math.sqrt(3)
    return np.clip(under + direction / norm * min_contrast * 1.2, 0, 255).astype(np.float32)


# --- rendering -------------------------------------------------------------------------------------

@dataclass
class _Placed:
    class_index: int
    x0: int  # clipped region of the object in the image
    y0: int
    x1: int
    y1: int
    full_area: int  # pixels of the whole object, in or out of the image
    visible: int = 0


def render(index: int, config: SyntheticConfig | None = None, *, return_masks: bool = False):
    """Render image ``index`` of ``config``: ``(image_bgr, annotations)``.

    ``image_bgr`` is ``uint8`` of shape ``(height, width, 3)``. ``annotations`` is a list of
    ``{"bbox": [x, y, w, h], "category_id": int (1-based), "area": float, "iscrowd": 0}``: ``bbox``
    is the tight box of the object's visible pixels in pixel-edge coordinates (a one-pixel object at
    column 3 has x=3, w=1); ``area`` its visible pixel count.

    With ``return_masks=True`` returns ``(image_bgr, annotations, masks)``: one boolean
    ``(height, width)`` mask of visible pixels per annotation (for tests and debugging).
    """
    cfg = config or SyntheticConfig()
    index = int(index)
    if index < 0:
        raise ValueError(f"index must be >= 0; got {index}")
    rng = np.random.default_rng((int(cfg.seed), index))
    w, h = cfg.image_size  # type: ignore[misc]
    img = _background(rng, cfg)
    owner = np.full((h, w), -1, np.int16)

    # How many objects; crowded images get smaller objects.
    span = cfg.max_objects - cfg.min_objects + 1
    count = cfg.min_objects + int(span * rng.random() ** 1.4)
    side = min(w, h)
    hi = cfg.max_object_frac * side * min(1.0, math.sqrt(3.0 / count))
    lo = min(cfg.min_object_size, hi)
    sizes = np.exp(rng.uniform(math.log(lo), math.log(hi), count))
    # Mostly large first, so small ones land on top (with some shuffling).
    order = np.argsort(-(np.log(sizes) + rng.normal(0, 0.6, count)))
    keep = 1.0 - cfg.max_occlusion

    placed: list[_Placed] = []
    for size in sizes[order]:
        cls = int(rng.integers(cfg.num_classes))
        name = cfg.classes[cls]
        radius = float(size) / 2
        for _attempt in range(4):
            margin = 0.4 * radius  # at most 60 % of the radius outside the image
            cx = rng.uniform(min(margin, w / 2), max(w - margin, w / 2))
            cy = rng.uniform(min(margin, h / 2), max(h - margin, h / 2))
            angle = rng.uniform(0, 2 * math.pi) if cfg.rotate else 0.0
            aspect = math.exp(rng.uniform(-1, 1) * math.log(cfg.max_aspect))
            mask, mx, my = _shape_mask(name, cx, cy, radius, angle, aspect)
            solid = mask >= 128
            full = int(np.count_nonzero(solid))
            if full == 0:
                continue
            x0, y0 = max(mx, 0), max(my, 0)
            x1, y1 = min(mx + mask.shape[1], w), min(my + mask.shape[0], h)
            if x1 <= x0 or y1 <= y0:
                continue
            local = (slice(y0 - my, y1 - my), slice(x0 - mx, x1 - mx))
            sol = solid[local]
            covered = owner[y0:y1, x0:x1][sol]
            hidden = np.bincount(covered[covered >= 0], minlength=len(placed)) if placed else np.zeros(0, np.int64)
            # Accept if every object this one covers keeps >= (1 - max_occlusion) of its area.
            if all(placed[j].visible - int(hidden[j]) >= keep * placed[j].full_area
                   for j in np.flatnonzero(hidden)):
                break
        else:
            continue  # no placement that keeps the others visible enough: drop this object
        visible_here = int(np.count_nonzero(sol))
        if visible_here == 0:
            continue
        for j in np.flatnonzero(hidden):
            placed[j].visible -= int(hidden[j])
        k = len(placed)
        owner[y0:y1, x0:x1][sol] = k
        placed.append(_Placed(cls, x0, y0, x1, y1, full, visible_here))

        # Paint: a contrasting color with a linear shading gradient (and sometimes stripes).
        roi = img[:, y0:y1, x0:x1]
        alpha = mask[local].astype(np.float32) * np.float32(1 / 255)
        under = roi[:, sol].mean(axis=1)
        color = _object_color(rng, under, cfg.min_contrast)
        xs = np.arange(x0, x1, dtype=np.float32)[None, :] - np.float32(cx)
        ys = np.arange(y0, y1, dtype=np.float32)[:, None] - np.float32(cy)
        g = rng.uniform(0, 0.35) / max(radius, 1.0)
        ga = rng.uniform(0, 2 * math.pi)
        shade = 1.0 + (xs * np.float32(g * math.cos(ga)) + ys * np.float32(g * math.sin(ga)))
        if rng.random() < cfg.object_texture_prob:
            f = 2 * math.pi / rng.uniform(3, max(4, radius))
            ta = rng.uniform(0, math.pi)
            shade = shade * (1.0 + 0.18 * np.sign(np.sin(xs * np.float32(f * math.cos(ta))
                                                          + ys * np.float32(f * math.sin(ta)))))
        for c in range(3):  # roi += alpha * (color * shade - roi)
            plane = roi[c]
            plane += alpha * (shade * np.float32(color[c]) - plane)

    img = _lighting(rng, img, cfg)
    image = _finish(rng, img, cfg)

    annotations: list[dict[str, Any]] = []
    masks: list[np.ndarray] = []
    for k, p in enumerate(placed):
        if p.visible <= 0 or p.visible < cfg.min_visibility * p.full_area:
            continue
        vis = owner[p.y0:p.y1, p.x0:p.x1] == k
        cols = np.flatnonzero(vis.any(axis=0))
        rows = np.flatnonzero(vis.any(axis=1))
        bx, by = p.x0 + int(cols[0]), p.y0 + int(rows[0])
        bw, bh = int(cols[-1]) - int(cols[0]) + 1, int(rows[-1]) - int(rows[0]) + 1
        annotations.append({"bbox": [float(bx), float(by), float(bw), float(bh)],
                            "category_id": p.class_index + 1, "area": float(p.visible), "iscrowd": 0})
        if return_masks:
            full_mask = np.zeros((h, w), bool)
            full_mask[p.y0:p.y1, p.x0:p.x1] = vis
            masks.append(full_mask)
    if return_masks:
        return image, annotations, masks
    return image, annotations


def iter_images(config: SyntheticConfig | None = None, count: int = 100, start: int = 0) -> Iterator[np.ndarray]:
    """Yield ``count`` BGR images, indices ``start..start+count-1`` (e.g. INT8 calibration pixels)."""
    cfg = config or SyntheticConfig()
    for i in range(start, start + count):
        yield render(i, cfg)[0]


# --- COCO writing ----------------------------------------------------------------------------------

def _encode(image: np.ndarray, fmt: str) -> bytes:
    params = [cv2.IMWRITE_JPEG_QUALITY, 95] if fmt == "jpg" else [cv2.IMWRITE_PNG_COMPRESSION, 1]
    ok, buf = cv2.imencode("." + fmt, image, params)
    if not ok:
        raise RuntimeError(f"OpenCV could not encode a .{fmt} image")
    return buf.tobytes()


def _render_and_write(job: tuple[SyntheticConfig, int, int, str, str]) -> tuple[int, list[dict[str, Any]]]:
    """Render render-index ``index`` and write it as ``path``; returns (position, annotations)."""
    cfg, position, index, path, fmt = job
    image, anns = render(index, cfg)
    atomic_write_bytes(path, _encode(image, fmt), fsync=False)
    return position, anns


def _worker_init() -> None:
    cv2.setNumThreads(1)  # one process per core already; OpenCV's own threads would oversubscribe


def _render_chunk(jobs: list[tuple[SyntheticConfig, int, int, str, str]]) -> list[tuple[int, list[dict[str, Any]]]]:
    return [_render_and_write(j) for j in jobs]


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def generate_coco(
    out_dir: str | os.PathLike[str],
    *,
    num_images: int,
    config: SyntheticConfig | None = None,
    split_name: str = "train",
    workers: int = 1,
    progress: bool = True,
    start_index: int = 0,
    image_format: str = "jpg",
    on_image: Callable[[int], None] | None = None,
) -> Path:
    """Render ``num_images`` images (render indices ``start_index..``) as a COCO split; return its json path.

    Writes ``out_dir/<split_name>/000000.jpg`` ... (JPEG quality 95, or ``image_format="png"``) and
    ``out_dir/annotations/<split_name>.json``; image ids are 1-based, ``file_name`` is relative to
    ``out_dir/<split_name>``, and each image records its ``synthetic_index``. Every file is written
    to a temporary name and renamed, and the json is written only after all images, followed by
    ``out_dir/annotations/<split_name>.meta.json`` (config, count, generator version). A rerun
    whose meta matches, with the json and every image present, returns at once; anything else
    deletes the old json and meta first, so an interrupted run never leaves a split that looks
    complete. ``workers > 1`` renders in a (spawn) process pool. ``on_image(position)`` is called in this
    process after each image is written (a hook for progress or tests).
    """
    cfg = config or SyntheticConfig()
    if num_images < 0:
        raise ValueError(f"num_images must be >= 0; got {num_images}")
    if image_format not in ("jpg", "png"):
        raise ValueError(f"image_format must be 'jpg' or 'png'; got {image_format!r}")
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", split_name) or split_name in (".", "..", "annotations"):
        raise ValueError(f"bad split name {split_name!r}")
    out = Path(out_dir)
    image_dir = out / split_name
    ann_path = out / "annotations" / f"{split_name}.json"
    meta_path = out / "annotations" / f"{split_name}.meta.json"
    names = [f"{i:06d}.{image_format}" for i in range(num_images)]
    meta = {"generator": "edgedet.data.synthetic", "version": GENERATOR_VERSION, "split": split_name,
            "num_images": int(num_images), "start_index": int(start_index), "image_format": image_format,
            "config": cfg.to_dict()}

    if (_read_json(meta_path) == meta and ann_path.is_file()
            and all((image_dir / n).is_file() for n in names)):
        log.info("%s: up to date (%d images), skipping", ann_path, num_images)
        return ann_path

    # Out of date or incomplete: nothing may look complete until we finish.
    for p in (meta_path, ann_path):
        p.unlink(missing_ok=True)
    image_dir.mkdir(parents=True, exist_ok=True)
    ann_path.parent.mkdir(parents=True, exist_ok=True)

    jobs = [(cfg, i, start_index + i, str(image_dir / names[i]), image_format) for i in range(num_images)]
    results: list[list[dict[str, Any]] | None] = [None] * num_images
    bar = progress_bar(num_images, f"shapes/{split_name}", unit="img", enabled=progress, leave=False)
    try:
        if workers <= 1 or num_images < 2:
            for job in jobs:
                pos, anns = _render_and_write(job)
                results[pos] = anns
                bar.update(1)
                if on_image is not None:
                    on_image(pos)
        else:
            chunk = max(1, min(64, num_images // (workers * 4) or 1))
            chunks = [jobs[i:i + chunk] for i in range(0, num_images, chunk)]
            # spawn, not fork: forking a process whose OpenCV (or torch) thread pools are running
            # can deadlock the children. (Scripts calling this need an ``if __name__ == "__main__"`` guard.)
            ctx = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_worker_init) as pool:
                try:
                    for done in pool.map(_render_chunk, chunks):
                        for pos, anns in done:
                            results[pos] = anns
                            bar.update(1)
                            if on_image is not None:
                                on_image(pos)
                except BaseException:
                    pool.shutdown(wait=True, cancel_futures=True)
                    raise
    finally:
        bar.close()

    w, h = cfg.image_size  # type: ignore[misc]
    images, annotations = [], []
    for pos, anns in enumerate(results):
        assert anns is not None
        images.append({"id": pos + 1, "file_name": names[pos], "width": w, "height": h,
                       "synthetic_index": start_index + pos})
        for a in anns:
            annotations.append({"id": len(annotations) + 1, "image_id": pos + 1, **a})
    coco = {
        "info": {"description": "edgedet synthetic shapes", "version": str(GENERATOR_VERSION),
                 "seed": cfg.seed, "split": split_name},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": categories(cfg),
    }
    # Stale images from a larger earlier run, and temp files of interrupted ones.
    wanted = set(names)
    for p in image_dir.iterdir():
        if (_IMAGE_NAME.match(p.name) and p.name not in wanted) or ".tmp-" in p.name:
            p.unlink(missing_ok=True)
    atomic_write_text(ann_path, json.dumps(coco, separators=(",", ":")))
    atomic_write_text(meta_path, json.dumps(meta, indent=2, sort_keys=True))
    log.info("wrote %s: %d images, %d boxes", ann_path, num_images, len(annotations))
    return ann_path


def generate_splits(
    out_dir: str | os.PathLike[str],
    *,
    train: int = 2000,
    val: int = 200,
    config: SyntheticConfig | None = None,
    workers: int = 1,
    progress: bool = True,
    image_format: str = "jpg",
    splits: Sequence[str] = ("train", "val"),
) -> dict[str, Path]:
    """Train and val splits from disjoint render indices (train ``0..``, val ``VAL_INDEX_OFFSET..``).

    Returns ``{"train": json path, "val": json path}``; each split is cached as in :func:`generate_coco`.
    """
    counts = {"train": (train, 0), "val": (val, VAL_INDEX_OFFSET)}
    out: dict[str, Path] = {}
    for name in splits:
        n, start = counts[name]
        out[name] = generate_coco(out_dir, num_images=n, config=config, split_name=name, workers=workers,
                                  progress=progress, start_index=start, image_format=image_format)
    return out
