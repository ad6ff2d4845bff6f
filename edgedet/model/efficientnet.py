"""EfficientNet B0..B7 and EfficientNet-Lite0..4 as EfficientDet backbones.

Module names follow timm's EfficientNet (``conv_stem``, ``bn1``, ``blocks.<stage>.<block>.*``) so
checkpoints ported from the TF reference load without renaming. The backbone returns the features
at strides 8, 16 and 32 (the ends of stages 2, 4 and 6): EfficientDet's P3, P4 and P5.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from edgedet.config import BackboneConfig
from edgedet.model.layers import DropPath, SameConv2d, activation, batch_norm

# Base (B0) stages: (kind, repeats, kernel, stride, expansion, output channels).
# "ds" is the depthwise-separable first stage, "ir" the inverted-residual MBConv.
_STAGES = (
    ("ds", 1, 3, 1, 1, 16),
    ("ir", 2, 3, 2, 6, 24),
    ("ir", 2, 5, 2, 6, 40),
    ("ir", 3, 3, 2, 6, 80),
    ("ir", 3, 5, 1, 6, 112),
    ("ir", 4, 5, 2, 6, 192),
    ("ir", 1, 3, 1, 6, 320),
)
_STEM_CHANNELS = 32
_SE_RATIO = 0.25
#: Stages whose last block feeds the detector (strides 8, 16, 32).
FEATURE_STAGES = (2, 4, 6)


def round_channels(channels: float, multiplier: float, divisor: int = 8) -> int:
    """Scale a channel count and round to a multiple of ``divisor`` (never down by more than 10%)."""
    scaled = channels * multiplier
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * scaled:
        rounded += divisor
    return rounded


class SqueezeExcite(nn.Module):
    """Channel attention: global pool, reduce, activate, expand, sigmoid gate."""

    def __init__(self, channels: int, reduced: int, act: str) -> None:
        super().__init__()
        self.conv_reduce = nn.Conv2d(channels, reduced, 1, bias=True)
        self.act = activation(act)
        self.conv_expand = nn.Conv2d(reduced, channels, 1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = self.conv_expand(self.act(self.conv_reduce(x.mean((2, 3), keepdim=True))))
        return x * torch.sigmoid(gate)


class DepthwiseSeparableBlock(nn.Module):
    """Stage 0 block: depthwise conv, BN, act, [SE], pointwise conv, BN, [residual]."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int, *, in_size: int,
                 se: bool, act: str, drop_path: float) -> None:
        super().__init__()
        self.conv_dw = SameConv2d(in_ch, in_ch, kernel, in_size=in_size, stride=stride, groups=in_ch)
        self.bn1 = batch_norm(in_ch)
        self.act = activation(act)
        self.se = SqueezeExcite(in_ch, max(1, int(in_ch * _SE_RATIO)), act) if se else nn.Identity()
        self.conv_pw = nn.Conv2d(in_ch, out_ch, 1, bias=False)
        self.bn2 = batch_norm(out_ch)
        self.residual = stride == 1 and in_ch == out_ch
        self.drop_path = DropPath(drop_path)
        self.out_size = self.conv_dw.out_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.se(self.act(self.bn1(self.conv_dw(x))))
        y = self.bn2(self.conv_pw(y))
        return x + self.drop_path(y) if self.residual else y


class InvertedResidualBlock(nn.Module):
    """MBConv: expand 1x1, BN, act, depthwise, BN, act, [SE], project 1x1, BN, [residual]."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int, expansion: int, *,
                 in_size: int, se: bool, act: str, drop_path: float) -> None:
        super().__init__()
        mid = in_ch * expansion
        self.conv_pw = nn.Conv2d(in_ch, mid, 1, bias=False)
        self.bn1 = batch_norm(mid)
        self.conv_dw = SameConv2d(mid, mid, kernel, in_size=in_size, stride=stride, groups=mid)
        self.bn2 = batch_norm(mid)
        self.act = activation(act)
        # SE width follows the block *input* width, as in the reference.
        self.se = SqueezeExcite(mid, max(1, int(in_ch * _SE_RATIO)), act) if se else nn.Identity()
        self.conv_pwl = nn.Conv2d(mid, out_ch, 1, bias=False)
        self.bn3 = batch_norm(out_ch)
        self.residual = stride == 1 and in_ch == out_ch
        self.drop_path = DropPath(drop_path)
        self.out_size = self.conv_dw.out_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self.bn1(self.conv_pw(x)))
        y = self.se(self.act(self.bn2(self.conv_dw(y))))
        y = self.bn3(self.conv_pwl(y))
        return x + self.drop_path(y) if self.residual else y


def stage_repeats(config: BackboneConfig) -> list[int]:
    """Blocks per stage after depth scaling (Lite keeps the first and last stage fixed)."""
    repeats = [math.ceil(r * config.depth) for _, r, *_ in _STAGES]
    if config.fixed_stem_and_ends:
        repeats[0], repeats[-1] = _STAGES[0][1], _STAGES[-1][1]
    return repeats


class EfficientNet(nn.Module):
    """EfficientNet feature extractor returning [P3, P4, P5] (strides 8, 16, 32)."""

    def __init__(self, config: BackboneConfig, image_size: int, drop_path_rate: float = 0.2) -> None:
        super().__init__()
        act = config.activation
        stem = _STEM_CHANNELS if config.fixed_stem_and_ends else round_channels(_STEM_CHANNELS, config.width)
        self.conv_stem = SameConv2d(3, stem, 3, in_size=image_size, stride=2)
        self.bn1 = batch_norm(stem)
        self.act = activation(act)

        repeats = stage_repeats(config)
        total, index = sum(repeats), 0
        size, in_ch = self.conv_stem.out_size, stem
        self.blocks = nn.ModuleList()
        self.feature_channels: list[int] = []
        self.feature_sizes: list[int] = []
        for stage, ((kind, _, kernel, stride, expansion, out), n) in enumerate(zip(_STAGES, repeats)):
            out_ch = round_channels(out, config.width)
            blocks = []
            for i in range(n):
                common = dict(in_size=size, se=config.squeeze_excite, act=act,
                              drop_path=drop_path_rate * index / total)
                s = stride if i == 0 else 1
                if kind == "ds":
                    block = DepthwiseSeparableBlock(in_ch, out_ch, kernel, s, **common)
                else:
                    block = InvertedResidualBlock(in_ch, out_ch, kernel, s, expansion, **common)
                blocks.append(block)
                in_ch, size, index = out_ch, block.out_size, index + 1
            self.blocks.append(nn.Sequential(*blocks))
            if stage in FEATURE_STAGES:
                self.feature_channels.append(out_ch)
                self.feature_sizes.append(size)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.act(self.bn1(self.conv_stem(x)))
        features = []
        for stage, blocks in enumerate(self.blocks):
            x = blocks(x)
            if stage in FEATURE_STAGES:
                features.append(x)
        return features
