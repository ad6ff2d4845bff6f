"""Class and box prediction heads, shared across pyramid levels.

The convolutions are shared by all levels; each level has its own batch norms (``bn_rep.<repeat>.
<level>``), as in the reference. The output of every level is laid out anchor-major per cell and
flattened to rows ``(level, y, x, anchor)``, then concatenated: one [B, N, K] tensor.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from edgedet.config import ModelConfig
from edgedet.model.layers import SeparableConv, activation, batch_norm


class _LevelNorm(nn.Module):
    """Holds one level's batch norm under the name ``bn`` (the checkpoints' layout)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.bn = batch_norm(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(x)


class Head(nn.Module):
    """``head_repeats`` separable convs (per-level BN + act), then a separable prediction conv."""

    def __init__(self, config: ModelConfig, outputs_per_anchor: int, sizes: list[int]) -> None:
        super().__init__()
        width = config.fpn_channels
        self.outputs_per_anchor = outputs_per_anchor
        # The depthwise padding depends only on whether a size is odd or even for stride 1,
        # and for a 3x3 stride-1 conv it is always (1, 1): one shared conv serves every level.
        self.conv_rep = nn.ModuleList(
            SeparableConv(width, width, in_size=sizes[0], norm=False) for _ in range(config.head_repeats))
        self.bn_rep = nn.ModuleList(
            nn.ModuleList(_LevelNorm(width) for _ in sizes) for _ in range(config.head_repeats))
        self.act = activation(config.activation)
        self.predict = SeparableConv(width, outputs_per_anchor * config.anchors.anchors_per_cell,
                                     in_size=sizes[0], norm=False)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        outputs = []
        for level, x in enumerate(features):
            for conv, norms in zip(self.conv_rep, self.bn_rep):
                x = self.act(norms[level](conv(x)))
            x = self.predict(x)
            # [B, A*K, H, W] -> [B, H*W*A, K]: rows (y, x, anchor), K outputs each.
            outputs.append(x.permute(0, 2, 3, 1).reshape(x.shape[0], -1, self.outputs_per_anchor))
        return torch.cat(outputs, dim=1)


def init_head(head: Head, prior_probability: float | None = None) -> None:
    """TF-style init: N(0, 0.01) convs, zero biases; class bias set so sigmoid = prior (focal loss)."""
    for module in head.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.normal_(module.weight, std=0.01)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    if prior_probability is not None:
        nn.init.constant_(head.predict.conv_pw.bias, -math.log((1 - prior_probability) / prior_probability))
