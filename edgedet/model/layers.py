"""Building blocks shared by the backbone, the BiFPN and the heads.

TF "same" padding is computed once, from the fixed input size the model is built for, so the
exported graph holds plain static pads (no shape arithmetic at run time).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from edgedet.config import BN_EPS, BN_MOMENTUM


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TF 'SAME' padding (before, after) of one spatial dimension of length ``size``."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def conv_out_size(size: int, stride: int) -> int:
    """Output length of a TF-'same' conv or pool: ceil(size / stride)."""
    return math.ceil(size / stride)


class SameConv2d(nn.Conv2d):
    """A Conv2d with TF 'same' padding for a known input size.

    Symmetric padding goes into the conv itself; asymmetric padding (stride 2 on an even size)
    becomes one static ``F.pad`` before it. The parameters are those of ``nn.Conv2d``, so state
    dicts of TF-ported checkpoints load unchanged.
    """

    def __init__(self, in_ch: int, out_ch: int, kernel: int, *, in_size: int, stride: int = 1,
                 groups: int = 1, bias: bool = False) -> None:
        before, after = same_padding(in_size, kernel, stride)
        symmetric = before == after
        super().__init__(in_ch, out_ch, kernel, stride=stride, groups=groups, bias=bias,
                         padding=before if symmetric else 0)
        self.static_pad = None if symmetric else (before, after, before, after)
        self.out_size = conv_out_size(in_size, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.static_pad is not None:
            x = F.pad(x, self.static_pad)
        return super().forward(x)


class SameMaxPool2d(nn.Module):
    """3x3/stride-2 max pooling with TF 'same' semantics.

    TF pads with -inf; we pad by replicating the edge instead, which gives exactly the same maxima
    and keeps infinities out of the graph (they break INT8 calibration in every toolchain).
    """

    def __init__(self, in_size: int, kernel: int = 3, stride: int = 2) -> None:
        super().__init__()
        before, after = same_padding(in_size, kernel, stride)
        self.pad = (before, after, before, after)
        self.kernel, self.stride = kernel, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if any(self.pad):
            x = F.pad(x, self.pad, mode="replicate")
        return F.max_pool2d(x, self.kernel, self.stride)


def batch_norm(channels: int) -> nn.BatchNorm2d:
    """BatchNorm with the TF reference's eps and momentum."""
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


def activation(name: str) -> nn.Module:
    """``swish`` (SiLU) or ``relu6``."""
    if name == "swish":
        return nn.SiLU(inplace=True)
    if name == "relu6":
        return nn.ReLU6(inplace=True)
    raise ValueError(f"unknown activation {name!r}; expected 'swish' or 'relu6'")


class ConvBn(nn.Module):
    """1x1 conv (with bias, as in the TF graphs) followed by batch norm; used for lateral resampling."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, 1, bias=True)
        self.bn = batch_norm(out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


class SeparableConv(nn.Module):
    """Depthwise 3x3 then pointwise 1x1 (with bias), optionally followed by batch norm."""

    def __init__(self, in_ch: int, out_ch: int, *, in_size: int, norm: bool = True) -> None:
        super().__init__()
        self.conv_dw = SameConv2d(in_ch, in_ch, 3, in_size=in_size, groups=in_ch)
        self.conv_pw = nn.Conv2d(in_ch, out_ch, 1, bias=True)
        self.bn = batch_norm(out_ch) if norm else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_pw(self.conv_dw(x))
        return self.bn(x) if self.bn is not None else x


class DropPath(nn.Module):
    """Stochastic depth on a residual branch (training only; identity in eval and export)."""

    def __init__(self, rate: float) -> None:
        super().__init__()
        self.rate = rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.rate == 0.0:
            return x
        keep = 1.0 - self.rate
        mask = x.new_empty((x.shape[0], 1, 1, 1)).bernoulli_(keep)
        return x * mask / keep
