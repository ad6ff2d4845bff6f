"""EfficientDet's training loss: anchor matching, focal loss on classes, Huber loss on boxes.

As effdet / the TF reference (``anchor_labeler`` + ``DetectionLoss``):

* **Matching** (``ArgMaxMatcher(0.5, 0.4, force_match_for_each_row=True)``): an anchor whose best
  IoU with a ground-truth box is ``>= 0.5`` is positive for that box, ``< 0.4`` negative
  (background), in between ignored; then every ground-truth box claims its best anchor as
  positive whatever the IoU, so no object goes unmatched (an anchor claimed by several boxes goes
  to the one it overlaps most).
* **Class loss**: sigmoid focal loss (``alpha=0.25``, ``gamma=1.5``) over every (anchor, class) of
  positive and negative anchors (ignored anchors contribute nothing), summed and divided by the
  number of positives in the batch + 1.
* **Box loss**: Huber (``delta=0.1``) between the regression rows of positive anchors and their
  targets from :func:`edgedet.anchors.encode_boxes` (``ty, tx, th, tw``; the one box codec of the
  project), summed and divided by ``4 x (positives + 1)``; weighted by 50 in the total.

Everything is batched torch; the IoU matrix is ``[B, anchors, boxes]``. Only the few positive rows
are sent through ``encode_boxes`` (numpy).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from edgedet.anchors import encode_boxes

__all__ = ["IGNORE", "NEGATIVE", "DetectionLoss", "Targets", "box_iou", "focal_loss", "match_anchors"]

#: ``Targets.classes`` of a background anchor.
NEGATIVE = -1
#: ``Targets.classes`` of an anchor in the ignored IoU band (no class loss, no box loss).
IGNORE = -2


@dataclass
class Targets:
    """Per-anchor training targets of a batch.

    ``classes`` int64 ``[B, N]``: the class index of a positive anchor, :data:`NEGATIVE` or
    :data:`IGNORE`. ``matched`` int64 ``[B, N]``: the matched ground-truth index (``-1`` if none).
    ``box_targets`` float32 ``[P, 4]`` and ``positive_index`` (two ``[P]`` tensors: batch, anchor)
    for the ``P`` positive anchors.
    """

    classes: Tensor
    matched: Tensor
    positive_index: tuple[Tensor, Tensor]
    box_targets: Tensor

    @property
    def num_positives(self) -> int:
        return int(self.positive_index[0].numel())


def box_iou(boxes_a: Tensor, boxes_b: Tensor) -> Tensor:
    """IoU of ``[..., N, 4]`` and ``[..., K, 4]`` xyxy boxes (leading dims broadcast): ``[..., N, K]``.

    Pairs whose union is empty get 0.
    """
    ax1, ay1, ax2, ay2 = (boxes_a[..., :, None, i] for i in range(4))
    bx1, by1, bx2, by2 = (boxes_b[..., None, :, i] for i in range(4))
    iw = (torch.minimum(ax2, bx2) - torch.maximum(ax1, bx1)).clamp_(min=0)
    ih = (torch.minimum(ay2, by2) - torch.maximum(ay1, by1)).clamp_(min=0)
    inter = iw.mul_(ih)
    area_a = (ax2 - ax1).clamp(min=0) * (ay2 - ay1).clamp(min=0)
    area_b = (bx2 - bx1).clamp(min=0) * (by2 - by1).clamp(min=0)
    union = (area_a + area_b).sub_(inter).clamp_(min=1e-9)
    return inter.div_(union)


@torch.no_grad()
def match_anchors(anchors: Tensor, gt_boxes: Tensor, gt_labels: Tensor, *,
                  positive_iou: float = 0.5, negative_iou: float = 0.4,
                  force_match: bool = True, anchors_np: np.ndarray | None = None) -> Targets:
    """Match ``anchors`` ``[N, 4]`` to padded ground truth (``gt_boxes`` ``[B, K, 4]`` xyxy,
    ``gt_labels`` ``[B, K]`` with ``-1`` for padding); see the module docstring for the rules.

    ``anchors_np`` is the same anchors as a numpy array (given to avoid a copy per call).
    """
    if positive_iou < negative_iou:
        raise ValueError(f"positive_iou ({positive_iou}) must be >= negative_iou ({negative_iou})")
    batch, k = gt_labels.shape
    n = anchors.shape[0]
    device = anchors.device
    classes = torch.full((batch, n), NEGATIVE, dtype=torch.int64, device=device)
    matched = torch.full((batch, n), -1, dtype=torch.int64, device=device)
    if k == 0:
        empty = torch.empty(0, dtype=torch.int64, device=device)
        return Targets(classes, matched, (empty, empty), torch.empty((0, 4), device=device))
    valid = gt_labels >= 0  # [B, K]
    iou = box_iou(anchors, gt_boxes.to(anchors.dtype))  # [B, N, K] (anchors broadcast)
    iou = iou.masked_fill(~valid[:, None, :], -1.0)
    best_iou, best_gt = iou.max(dim=2)  # [B, N]
    positive = best_iou >= positive_iou
    ignored = (best_iou >= negative_iou) & ~positive
    gt_of = torch.where(positive, best_gt, torch.full_like(best_gt, -1))
    if force_match:
        # Every valid box claims its best anchor; an anchor claimed twice goes to the box it
        # overlaps most (ties: the lower box index, as argmax).
        gt_best, best_anchor = iou.max(dim=1)  # [B, K]: each box's best anchor and its IoU
        gt_best = gt_best.masked_fill(~valid, -3.0)
        anchor_max = torch.full((batch, n), -3.0, dtype=iou.dtype, device=device).scatter_reduce(
            1, best_anchor, gt_best, reduce="amax")
        winner = valid & (gt_best == anchor_max.gather(1, best_anchor))
        box_index = torch.arange(k, device=device).expand(batch, k)
        claim_gt = torch.full((batch, n), k, dtype=torch.int64, device=device).scatter_reduce(
            1, best_anchor, torch.where(winner, box_index, k), reduce="amin")
        claimed = claim_gt < k  # [B, N]
        gt_of = torch.where(claimed, claim_gt, gt_of)
        positive = positive | claimed
        ignored = ignored & ~claimed
    matched = gt_of
    gt_class = torch.gather(gt_labels, 1, gt_of.clamp(min=0))
    classes = torch.where(positive, gt_class, classes)
    classes = classes.masked_fill(ignored, IGNORE)

    b_idx, a_idx = torch.nonzero(positive, as_tuple=True)
    boxes = gt_boxes[b_idx, gt_of[b_idx, a_idx]]
    if anchors_np is None:
        anchors_np = anchors.detach().cpu().numpy()
    encoded = encode_boxes(boxes.detach().cpu().numpy(), anchors_np[a_idx.cpu().numpy()])
    box_targets = torch.from_numpy(encoded).to(device)
    return Targets(classes, matched, (b_idx, a_idx), box_targets)


def focal_loss(logits: Tensor, targets: Tensor, *, alpha: float = 0.25, gamma: float = 1.5) -> Tensor:
    """Element-wise sigmoid focal loss (effdet's ``focal_loss_legacy``, unreduced).

    ``targets`` are 0/1 floats of the logits' shape.
    """
    prob = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = targets * prob + (1 - targets) * (1 - prob)
    alpha_factor = targets * alpha + (1 - targets) * (1 - alpha)
    return alpha_factor * (1 - p_t).pow(gamma) * ce


class DetectionLoss(torch.nn.Module):
    """``loss, parts = DetectionLoss(anchors)(cls_logits, box_regression, gt_boxes, gt_labels)``.

    ``anchors`` is the ``[N, 4]`` numpy array of :func:`edgedet.anchors.generate_anchors` for the
    model's input size (converted once to a tensor buffer). ``parts`` holds the detached
    ``cls_loss``, ``box_loss`` and ``num_positives``.
    """

    def __init__(self, anchors: np.ndarray, *, alpha: float = 0.25, gamma: float = 1.5,
                 delta: float = 0.1, box_loss_weight: float = 50.0, positive_iou: float = 0.5,
                 negative_iou: float = 0.4, force_match: bool = True) -> None:
        super().__init__()
        self._anchors_np = np.ascontiguousarray(anchors, dtype=np.float32)
        self.register_buffer("anchors", torch.from_numpy(self._anchors_np.copy()), persistent=False)
        self.alpha, self.gamma, self.delta = alpha, gamma, delta
        self.box_loss_weight = box_loss_weight
        self.positive_iou, self.negative_iou, self.force_match = positive_iou, negative_iou, force_match

    def targets(self, gt_boxes: Tensor, gt_labels: Tensor) -> Targets:
        return match_anchors(self.anchors, gt_boxes.to(self.anchors.device),
                             gt_labels.to(self.anchors.device), positive_iou=self.positive_iou,
                             negative_iou=self.negative_iou, force_match=self.force_match,
                             anchors_np=self._anchors_np)

    def forward(self, cls_logits: Tensor, box_regression: Tensor, gt_boxes: Tensor, gt_labels: Tensor,
                targets: Targets | None = None) -> tuple[Tensor, dict[str, float]]:
        if cls_logits.shape[1] != self.anchors.shape[0]:
            raise ValueError(f"the model gives {cls_logits.shape[1]} rows but there are "
                             f"{self.anchors.shape[0]} anchors: were they generated for its input size?")
        t = targets if targets is not None else self.targets(gt_boxes, gt_labels)
        num_classes = cls_logits.shape[2]
        normalizer = t.num_positives + 1.0
        logits = cls_logits.float()

        # Class loss over positive and negative anchors.
        keep = t.classes != IGNORE
        one_hot = F.one_hot(t.classes.clamp(min=0), num_classes).to(logits.dtype)
        one_hot = one_hot * (t.classes >= 0).unsqueeze(-1).to(logits.dtype)
        per_element = focal_loss(logits, one_hot, alpha=self.alpha, gamma=self.gamma)
        cls_loss = (per_element * keep.unsqueeze(-1).to(logits.dtype)).sum() / normalizer

        # Box loss over positive anchors only.
        b_idx, a_idx = t.positive_index
        if b_idx.numel():
            pred = box_regression[b_idx, a_idx].float()
            box_loss = F.huber_loss(pred, t.box_targets, delta=self.delta, reduction="sum") / (4.0 * normalizer)
        else:
            box_loss = box_regression.sum() * 0.0
        total = cls_loss + self.box_loss_weight * box_loss
        parts = {"cls_loss": float(cls_loss.detach()), "box_loss": float(box_loss.detach()),
                 "num_positives": t.num_positives}
        return total, parts
