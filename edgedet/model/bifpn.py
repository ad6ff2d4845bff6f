"""BiFPN: the bidirectional feature pyramid of EfficientDet, with selectable fusion.

Each cell has a top-down path (P_max-1 .. P_min) and a bottom-up path (P_min+1 .. P_max); every
bottom-up node also takes its level's original input (the same-level shortcut edge). Inputs are
fused by one of

* ``fast_normalized``: O = Σ relu(w_i)·I_i / (ε + Σ relu(w_j)), ε = 1e-4 (the paper's default);
* ``softmax``:         O = Σ softmax(w)_i·I_i;
* ``sum``:             O = Σ I_i (D6, D7 and the Lite family).

Module names mirror the TF-ported checkpoints (``resample``, ``cell.<n>.fnode.<m>.combine``,
``after_combine``) so those load without renaming.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from edgedet.config import FUSION_EPS, FUSIONS, ModelConfig
from edgedet.model.layers import ConvBn, SameMaxPool2d, SeparableConv, activation


def bifpn_nodes(min_level: int, max_level: int) -> list[tuple[int, list[int]]]:
    """The node graph of one BiFPN cell: (level, input ids) per node, in evaluation order.

    Ids 0..L-1 are the cell's inputs (P_min..P_max); node k gets id L + k. A cell's outputs are
    the last node made at each level.
    """
    levels = range(min_level, max_level + 1)
    ids = {level: [i] for i, level in enumerate(levels)}
    nodes: list[tuple[int, list[int]]] = []
    for level in range(max_level - 1, min_level - 1, -1):  # top-down
        nodes.append((level, [ids[level][-1], ids[level + 1][-1]]))
        ids[level].append(len(levels) + len(nodes) - 1)
    for level in range(min_level + 1, max_level + 1):  # bottom-up, with the same-level shortcut
        nodes.append((level, ids[level] + [ids[level - 1][-1]]))
        ids[level].append(len(levels) + len(nodes) - 1)
    return nodes


class Resample(nn.Module):
    """Bring a feature map to ``out_ch`` channels (1x1 conv + BN) and to ``out_size`` (pool/upsample)."""

    def __init__(self, in_ch: int, out_ch: int, in_size: int, out_size: int) -> None:
        super().__init__()
        self.conv = ConvBn(in_ch, out_ch) if in_ch != out_ch else None
        self.downsample = SameMaxPool2d(in_size) if in_size > out_size else None
        self.out_size = out_size if in_size < out_size else None  # nearest upsampling target

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.conv is not None:
            x = self.conv(x)
        if self.downsample is not None:
            x = self.downsample(x)
        elif self.out_size is not None:
            x = F.interpolate(x, size=(self.out_size, self.out_size), mode="nearest")
        return x


class FuseInputs(nn.Module):
    """Resample a node's inputs to its level and fuse them (fast normalized, softmax or sum)."""

    def __init__(self, input_ids: list[int], channels: list[int], sizes: list[int], out_ch: int,
                 out_size: int, fusion: str) -> None:
        super().__init__()
        if fusion not in FUSIONS:
            raise ValueError(f"unknown fusion {fusion!r}; expected one of {FUSIONS}")
        self.input_ids = input_ids
        self.fusion = fusion
        self.resample = nn.ModuleDict(
            {str(i): Resample(channels[i], out_ch, sizes[i], out_size) for i in input_ids})
        self.edge_weights = nn.Parameter(torch.ones(len(input_ids))) if fusion != "sum" else None
        # Set by fold(): the normalized weights as plain floats, so the exported graph holds
        # constants instead of relu/softmax/divide on parameters.
        self.folded: tuple[float, ...] | None = None

    def normalized_weights(self) -> torch.Tensor | None:
        if self.fusion == "fast_normalized":
            w = F.relu(self.edge_weights)
            return w / (w.sum() + FUSION_EPS)
        if self.fusion == "softmax":
            return torch.softmax(self.edge_weights, dim=0)
        return None

    @torch.no_grad()
    def fold(self) -> None:
        w = self.normalized_weights()
        self.folded = None if w is None else tuple(float(v) for v in w)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        inputs = [self.resample[str(i)](features[i]) for i in self.input_ids]
        weights = self.folded if self.folded is not None else self.normalized_weights()
        if weights is None:
            out = inputs[0]
            for x in inputs[1:]:
                out = out + x
            return out
        out = inputs[0] * weights[0]
        for x, w in zip(inputs[1:], weights[1:]):
            out = out + x * w
        return out


class FusionNode(nn.Module):
    """One BiFPN node: fuse, activate, separable conv + BN."""

    def __init__(self, combine: FuseInputs, channels: int, size: int, act: str) -> None:
        super().__init__()
        self.combine = combine
        self.after_combine = nn.Sequential()
        self.after_combine.add_module("act", activation(act))
        self.after_combine.add_module("conv", SeparableConv(channels, channels, in_size=size))

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        return self.after_combine(self.combine(features))


class BiFpnCell(nn.Module):
    """One repetition of the BiFPN over P_min..P_max."""

    def __init__(self, in_channels: list[int], sizes: dict[int, int], config: ModelConfig,
                 fusion: str) -> None:
        super().__init__()
        width = config.fpn_channels
        levels = list(range(config.min_level, config.max_level + 1))
        channels = list(in_channels)
        node_sizes = [sizes[level] for level in levels]
        nodes = bifpn_nodes(config.min_level, config.max_level)
        self.fnode = nn.ModuleList()
        for level, input_ids in nodes:
            combine = FuseInputs(input_ids, channels, node_sizes, width, sizes[level], fusion)
            self.fnode.append(FusionNode(combine, width, sizes[level], config.activation))
            channels.append(width)
            node_sizes.append(sizes[level])
        # Outputs: the last node made at each level.
        last = {level: i for i, level in enumerate(levels)}
        for k, (level, _) in enumerate(nodes):
            last[level] = len(levels) + k
        self.output_ids = [last[level] for level in levels]

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        nodes = list(features)
        for node in self.fnode:
            nodes.append(node(nodes))
        return [nodes[i] for i in self.output_ids]


class BiFpn(nn.Module):
    """Extra levels from the backbone's last feature, then ``fpn_repeats`` BiFPN cells."""

    def __init__(self, config: ModelConfig, backbone_channels: list[int], image_size: int,
                 fusion: str | None = None) -> None:
        super().__init__()
        fusion = fusion or config.fusion
        sizes = dict(zip(range(config.min_level, config.max_level + 1), config.feature_sizes(image_size)))
        channels = list(backbone_channels)
        # P6.. are made by downsampling the previous level (1x1 conv first if widths differ).
        self.resample = nn.ModuleDict()
        for index in range(len(backbone_channels), config.num_levels):
            level = config.min_level + index
            self.resample[str(index)] = Resample(channels[-1], config.fpn_channels, sizes[level - 1],
                                                 sizes[level])
            channels.append(config.fpn_channels)
        self.cell = nn.ModuleList()
        for _ in range(config.fpn_repeats):
            self.cell.append(BiFpnCell(channels, sizes, config, fusion))
            channels = [config.fpn_channels] * config.num_levels

    def fold(self) -> None:
        """Freeze the fusion weights into constants (after training, before export)."""
        for module in self.modules():
            if isinstance(module, FuseInputs):
                module.fold()

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        features = list(features)
        for resample in self.resample.values():
            features.append(resample(features[-1]))
        for cell in self.cell:
            features = cell(features)
        return features
