"""EfficientDet: EfficientNet backbone + BiFPN + shared class/box heads.

``EfficientDet(config)(images)`` maps a [B, 3, R, R] float tensor, already normalized as
``config.normalization`` says, to

* ``cls_logits``     [B, N, num_classes]: raw class logits (apply sigmoid for scores),
* ``box_regression`` [B, N, 4]: (ty, tx, th, tw) relative to each anchor,

with rows ordered by pyramid level (P_min..P_max), then feature-map row y, then column x, then
anchor (octave scale outer, aspect ratio inner) — the order of :func:`edgedet.anchors.generate_anchors`.
The graph has no data-dependent control flow: it exports at a fixed size with ``torch.onnx.export``
and ``torch.export``.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from edgedet.config import ModelConfig, get_config
from edgedet.model.bifpn import BiFpn
from edgedet.model.efficientnet import EfficientNet
from edgedet.model.head import Head, init_head


class EfficientDet(nn.Module):
    """The EfficientDet network for one variant at one fixed input size."""

    def __init__(self, config: ModelConfig, *, image_size: int | None = None, fusion: str | None = None,
                 drop_path_rate: float = 0.2) -> None:
        super().__init__()
        self.image_size = image_size or config.image_size
        if self.image_size <= 0 or self.image_size % 32:
            # Backbone strides reach 32; P6.. halve with ceil, so any multiple of 32 works.
            raise ValueError(f"image_size must be a positive multiple of 32, got {self.image_size}")
        self.config = config.with_(image_size=self.image_size, fusion=fusion or config.fusion)
        self.backbone = EfficientNet(config.backbone, self.image_size, drop_path_rate=drop_path_rate)
        self.fpn = BiFpn(self.config, self.backbone.feature_channels, self.image_size)
        sizes = self.config.feature_sizes()
        self.class_net = Head(self.config, self.config.num_classes, sizes)
        self.box_net = Head(self.config, 4, sizes)
        self._init_weights()

    def _init_weights(self) -> None:
        for name, module in self.named_modules():
            if isinstance(module, nn.Conv2d):
                if name.startswith("backbone."):
                    # He init on fan-out counted per group, as the reference: torch's kaiming_normal_
                    # ignores groups and would make depthwise kernels ~30x too small.
                    kh, kw = module.kernel_size
                    fan_out = kh * kw * module.out_channels // module.groups
                    nn.init.normal_(module.weight, std=math.sqrt(2.0 / fan_out))
                else:
                    nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        init_head(self.class_net, prior_probability=0.01)
        init_head(self.box_net)

    def reset_class_head(self, num_classes: int) -> None:
        """Replace the class head for ``num_classes`` classes (fresh weights, e.g. for fine-tuning)."""
        self.config = self.config.with_(num_classes=num_classes)
        self.class_net = Head(self.config, num_classes, self.config.feature_sizes())
        init_head(self.class_net, prior_probability=0.01)

    def fold_fusion_weights(self) -> "EfficientDet":
        """Freeze the BiFPN fusion weights into constants; call after training, before export."""
        self.fpn.fold()
        return self

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.fpn(self.backbone(images))
        return self.class_net(features), self.box_net(features)


def create_model(name: str, num_classes: int = 90, *, image_size: int | None = None,
                 fusion: str | None = None, checkpoint: str | None = None,
                 drop_path_rate: float = 0.2) -> EfficientDet:
    """Build variant ``name`` (``"d0"``..``"d7x"``, ``"lite0"``..``"lite4"``).

    Args:
        name: a variant of :data:`edgedet.config.VARIANTS` (effdet spellings accepted).
        num_classes: classes of the class head (90 for COCO as the published checkpoints).
        image_size: input side if not the variant's native one (a multiple of 32).
        fusion: ``"fast_normalized"``, ``"softmax"`` or ``"sum"`` to override the table's choice.
        checkpoint: optional weights (path, URL or registry name) in the effdet format.
        drop_path_rate: stochastic depth of the backbone while training.
    """
    config = get_config(name).with_(num_classes=num_classes)
    model = EfficientDet(config, image_size=image_size, fusion=fusion, drop_path_rate=drop_path_rate)
    if checkpoint is not None:
        from edgedet.model.checkpoint import load_checkpoint

        load_checkpoint(model, checkpoint)
    return model.eval()
