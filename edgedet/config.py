"""The compound-scaling table: one name (``d0``..``d7``, ``d7x``, ``lite0``..``lite4``, ``lite3x``)
to everything that defines an EfficientDet architecture.

This is the single source of truth for the table (docs/ARCHITECTURE.md, rule 2): the model, the anchors, the
converters, the runtime and the benchmarks all read it from here. Pure Python, no torch.

Figures follow the official TF implementation (google/automl ``hparams_config.py``) and the effdet
PyTorch port; see the paper (Tan, Pang and Le, *EfficientDet*, CVPR 2020) and google/automl's ``hparams_config.py``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Literal

Activation = Literal["swish", "relu6"]
Fusion = Literal["fast_normalized", "softmax", "sum"]
FUSIONS: tuple[str, ...] = ("fast_normalized", "softmax", "sum")

#: ε of fast normalized fusion, O = Σ relu(w_i)·I_i / (ε + Σ relu(w_j)).
FUSION_EPS = 1e-4
#: Batch-norm settings of the TF reference (and so of every published checkpoint).
BN_EPS = 1e-3
BN_MOMENTUM = 0.01


@dataclass(frozen=True)
class BackboneConfig:
    """An EfficientNet (B0..B7) or EfficientNet-Lite (Lite0..Lite4) backbone."""

    name: str
    width: float  # channel multiplier
    depth: float  # repeat multiplier
    squeeze_excite: bool
    activation: Activation
    #: Lite keeps the stem width and the first/last stage repeats fixed while scaling.
    fixed_stem_and_ends: bool = False


@dataclass(frozen=True)
class AnchorConfig:
    """Anchor layout: one anchor per (level, cell, scale, aspect ratio)."""

    min_level: int = 3
    max_level: int = 7
    num_scales: int = 3
    #: (width factor, height factor) per aspect ratio, as effdet writes them.
    aspect_ratios: tuple[tuple[float, float], ...] = ((1.0, 1.0), (1.4, 0.7), (0.7, 1.4))
    anchor_scale: float = 4.0

    @property
    def num_levels(self) -> int:
        return self.max_level - self.min_level + 1

    @property
    def anchors_per_cell(self) -> int:
        return self.num_scales * len(self.aspect_ratios)

    @property
    def octave_scales(self) -> tuple[float, ...]:
        return tuple(2 ** (i / self.num_scales) for i in range(self.num_scales))


@dataclass(frozen=True)
class Normalization:
    """Input normalization in 0..255 RGB units: ``(pixel - mean) / std`` per channel."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]


IMAGENET = Normalization(mean=(123.675, 116.28, 103.53), std=(58.395, 57.12, 57.375))
#: EfficientNet-Lite's (x - 127) / 128 (automl ``mean_rgb=127, stddev_rgb=128``).
LITE = Normalization(mean=(127.0, 127.0, 127.0), std=(128.0, 128.0, 128.0))


@dataclass(frozen=True)
class ModelConfig:
    """One EfficientDet variant: everything needed to build it, feed it and decode it."""

    name: str
    family: Literal["d", "lite"]
    phi: int
    image_size: int  # square input, R x R
    backbone: BackboneConfig
    fpn_channels: int
    fpn_repeats: int
    head_repeats: int
    activation: Activation
    fusion: Fusion
    anchors: AnchorConfig = field(default_factory=AnchorConfig)
    normalization: Normalization = IMAGENET
    num_classes: int = 90
    max_detections: int = 100
    #: Published COCO AP of the reference weights (D: val; Lite: float). Ranks variants across
    #: families, where φ alone does not (Lite2 is more accurate than D0).
    coco_ap: float = 0.0

    @property
    def min_level(self) -> int:
        return self.anchors.min_level

    @property
    def max_level(self) -> int:
        return self.anchors.max_level

    @property
    def num_levels(self) -> int:
        return self.anchors.num_levels

    def feature_sizes(self, image_size: int | None = None) -> list[int]:
        """Side of each pyramid level's feature map, P_min..P_max (TF 'same': ceil halving)."""
        size = image_size or self.image_size
        sizes = [size]
        for _ in range(self.max_level):
            sizes.append(math.ceil(sizes[-1] / 2))
        return sizes[self.min_level :]

    def num_anchors(self, image_size: int | None = None) -> int:
        """Total anchors (= rows of the model's outputs) at ``image_size``."""
        return sum(s * s for s in self.feature_sizes(image_size)) * self.anchors.anchors_per_cell

    def with_(self, **changes) -> ModelConfig:
        """A copy with some fields changed (e.g. ``num_classes``, ``fusion``, ``image_size``)."""
        return replace(self, **changes)


def _efficientnet(index: int) -> BackboneConfig:
    width, depth = (
        (1.0, 1.0), (1.0, 1.1), (1.1, 1.2), (1.2, 1.4), (1.4, 1.8), (1.6, 2.2), (1.8, 2.6), (2.0, 3.1)
    )[index]
    return BackboneConfig(f"efficientnet_b{index}", width, depth, squeeze_excite=True, activation="swish")


def _efficientnet_lite(index: int) -> BackboneConfig:
    width, depth = ((1.0, 1.0), (1.0, 1.1), (1.1, 1.2), (1.2, 1.4), (1.4, 1.8))[index]
    return BackboneConfig(
        f"efficientnet_lite{index}", width, depth, squeeze_excite=False, activation="relu6",
        fixed_stem_and_ends=True,
    )


def _d(phi: int, backbone: int, size: int, channels: int, fpn: int, head: int, fusion: Fusion, ap: float,
       anchor_scale: float = 4.0, max_level: int = 7, name: str | None = None) -> ModelConfig:
    return ModelConfig(coco_ap=ap, 
        name=name or f"d{phi}", family="d", phi=phi, image_size=size, backbone=_efficientnet(backbone),
        fpn_channels=channels, fpn_repeats=fpn, head_repeats=head, activation="swish", fusion=fusion,
        anchors=AnchorConfig(max_level=max_level, anchor_scale=anchor_scale),
    )


def _lite(phi: int, size: int, channels: int, fpn: int, head: int, anchor_scale: float, ap: float,
          name: str | None = None) -> ModelConfig:
    return ModelConfig(coco_ap=ap, 
        name=name or f"lite{phi}", family="lite", phi=phi, image_size=size,
        backbone=_efficientnet_lite(phi), fpn_channels=channels, fpn_repeats=fpn, head_repeats=head,
        activation="relu6", fusion="sum", anchors=AnchorConfig(anchor_scale=anchor_scale),
        normalization=LITE,
    )


# W_bifpn = 64·1.35^φ rounded as the reference does; D_bifpn = 3+φ; D_head = 3+⌊φ/3⌋;
# R = 512+128φ — exact up to D4; D5..D7 follow the published table (D5: 7 layers, 1280 px).
CONFIGS: dict[str, ModelConfig] = {
    c.name: c
    for c in (
        _d(0, 0, 512, 64, 3, 3, "fast_normalized", 34.3),
        _d(1, 1, 640, 88, 4, 3, "fast_normalized", 40.2),
        _d(2, 2, 768, 112, 5, 3, "fast_normalized", 43.5),
        _d(3, 3, 896, 160, 6, 4, "fast_normalized", 46.8),
        _d(4, 4, 1024, 224, 7, 4, "fast_normalized", 49.3),
        _d(5, 5, 1280, 288, 7, 4, "fast_normalized", 51.2),
        _d(6, 6, 1280, 384, 8, 5, "sum", 52.1),
        _d(7, 6, 1536, 384, 8, 5, "sum", 53.4, anchor_scale=5.0),
        _d(7, 7, 1536, 384, 8, 5, "sum", 54.4, max_level=8, name="d7x"),
        _lite(0, 320, 64, 3, 3, 3.0, 26.41),
        _lite(1, 384, 88, 4, 3, 3.0, 31.50),
        _lite(2, 448, 112, 5, 3, 3.0, 35.06),
        _lite(3, 512, 160, 6, 4, 4.0, 38.77),
        _lite(3, 640, 200, 6, 4, 3.0, 42.64, name="lite3x"),
        _lite(4, 640, 224, 7, 4, 4.0, 43.18),
    )
}

VARIANTS: tuple[str, ...] = tuple(CONFIGS)

#: Every input side must be a multiple of this: the backbone's last stride (P5). Levels above P5
#: halve with ceil (TF 'same'), so 2**max_level (128) need not divide the size: Lite0's own 320
#: does not, and google/automl dropped its early multiple-of-128 rule (automl issue 779).
SIZE_MULTIPLE = 32

#: Expected COCO AP at an input size other than the native one, for the same weights (see
#: :func:`expected_coco_ap`): the relative AP lost per unit of ln(native / size) below native...
AP_SLOPE_BELOW = 0.27
#: ...and gained per unit of ln(size / native) above it.
AP_SLOPE_ABOVE = 0.08


def check_image_size(size: object) -> int:
    """``size`` as an int if an EfficientDet can take it (a positive multiple of
    :data:`SIZE_MULTIPLE`), else ``ValueError`` saying which sizes work."""
    if isinstance(size, bool) or not isinstance(size, int) or size <= 0 or size % SIZE_MULTIPLE:
        hint = ""
        if isinstance(size, int) and not isinstance(size, bool) and size > 0:
            below = size // SIZE_MULTIPLE * SIZE_MULTIPLE
            above = below + SIZE_MULTIPLE
            hint = f"; the nearest that work are {' and '.join(str(s) for s in (below, above) if s > 0)}"
        raise ValueError(f"image size {size!r} is not a positive multiple of {SIZE_MULTIPLE} (the backbone "
                         f"downsamples by {SIZE_MULTIPLE}){hint}")
    return size


def expected_coco_ap(variant: str | ModelConfig, image_size: int | None = None) -> float:
    """The COCO AP to expect of ``variant``'s published weights run at ``image_size`` inputs.

    At the native size it is the published figure (:attr:`ModelConfig.coco_ap`). At another
    size ``s`` of a native ``n`` the rule is ``AP_n * (1 + k * ln(s / n))``, with
    ``k = AP_SLOPE_BELOW`` below native and the smaller ``AP_SLOPE_ABOVE`` above it (more pixels
    help less than fewer pixels hurt: the weights were trained for objects at native scale), and
    never below 0. The slopes are fitted to published results of one set of weights tested at
    several sizes (docs/ARCHITECTURE.md, "How the Detector chooses").
    """
    config = variant if isinstance(variant, ModelConfig) else get_config(variant)
    size = image_size or config.image_size
    ratio = math.log(size / config.image_size)
    slope = AP_SLOPE_BELOW if ratio < 0 else AP_SLOPE_ABOVE
    return max(0.0, config.coco_ap * (1.0 + slope * ratio))


def get_config(name: str) -> ModelConfig:
    """The configuration of variant ``name`` (``"d0"``..``"d7x"``, ``"lite0"``..``"lite4"``).

    Accepts the effdet spellings too (``"tf_efficientdet_d0"``, ``"efficientdet_lite0"``).
    Raises ``ValueError`` listing the valid names for anything else.
    """
    key = str(name).strip().lower()
    for prefix in ("tf_efficientdet_", "efficientdet_", "efficientdet-"):
        if key.startswith(prefix):
            key = key[len(prefix):]
    if key not in CONFIGS:
        raise ValueError(f"unknown EfficientDet variant {name!r}; valid names: {', '.join(VARIANTS)}")
    return CONFIGS[key]
