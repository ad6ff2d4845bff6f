"""Import effdet (the reference implementation) on a CPU-only torch.

The torchvision wheel that pip serves here is a CUDA build whose import fails on the CPU torch
("operator torchvision::nms does not exist"). effdet never calls NMS in the code paths the tests
use, but torchvision registers fake kernels for these ops at import, so the ops must exist first.
We define them with torch.library as plain PyTorch; only test code loads this module.
"""
from __future__ import annotations

import importlib

import torch

_LIB = None


def _nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    order = scores.argsort(descending=True)
    keep = []
    suppressed = torch.zeros(len(boxes), dtype=torch.bool)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    for i in order.tolist():
        if suppressed[i]:
            continue
        keep.append(i)
        lt = torch.maximum(boxes[i, :2], boxes[:, :2])
        rb = torch.minimum(boxes[i, 2:], boxes[:, 2:])
        inter = (rb - lt).clamp(min=0).prod(dim=1)
        iou = inter / (area[i] + area - inter)
        suppressed |= iou > iou_threshold
    return torch.tensor(keep, dtype=torch.int64)


def _register_ops() -> None:
    global _LIB
    if _LIB is not None:
        return
    try:
        torch.ops.torchvision.nms  # already there (a CPU torchvision)
        _LIB = True
        return
    except (AttributeError, RuntimeError):
        pass
    lib = torch.library.Library("torchvision", "DEF")
    lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.impl("nms", _nms, "CPU")
    lib.impl("nms", _nms, "Meta")
    lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.impl("qnms", _nms, "CPU")
    _LIB = lib


def import_effdet():
    """Return the `effdet` module, importable on CPU torch."""
    _register_ops()
    return importlib.import_module("effdet")
