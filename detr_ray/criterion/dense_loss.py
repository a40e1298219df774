"""The dense auxiliary head's one-to-many assignment and losses (training only).

Every encoder token (feature cell) inside a target box is a positive for
that target (the smallest box, when boxes overlap); each target also claims
the valid cell nearest to its centre, so a box smaller than a cell still has
one. The other valid cells are background. All images at once: the cost is
``(B, T, S)`` booleans for ``T`` targets and ``S`` cells, no per-image loop.

The losses mirror the set loss (:class:`~detr_ray.criterion.set_loss.SetCriterion`): the
cross-entropy over every valid cell with background weighted by
``bg_cls_weight`` and normalised by ``num_pos + bg_cls_weight * num_neg``
(DETR), or the sigmoid focal loss over every valid cell and class normalised
by the number of positive cells (Deformable DETR, whose set loss is focal);
L1 and 1 - GIoU over the positive cells, normalised by the number of
positive cells; both counts averaged over workers (``reduce_mean``) so that
N workers equal one with the whole batch; weighted by the set loss's term
weights.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from detr_ray.criterion.matcher import FlatTargets
from detr_ray.criterion.set_loss import SetCriterion, sigmoid_focal_loss
from detr_ray.ops.boxes import cxcywh_to_xyxy, giou
from detr_ray.ops.dist import reduce_mean


def assign_cells(centers: Tensor, valid: Tensor, targets: FlatTargets) -> Tensor:
    """``(B, S)`` int64: the target (an index into ``targets``) of each cell, -1 for background.

    Args:
        centers: ``(B, S, 2)`` cell centres ``(x, y)`` relative to each image's size.
        valid: ``(B, S)`` False over padding.
        targets: the batch's targets, normalised cxcywh.
    """
    batch, cells = valid.shape
    assigned = torch.full((batch, cells), -1, dtype=torch.int64, device=valid.device)
    if targets.labels.numel() == 0:
        return assigned
    boxes = targets.boxes_cxcywh.to(centers.dtype)  # (T, 4)
    own = centers[targets.image_idx]  # (T, S, 2): each target against its image's cells
    own_valid = valid[targets.image_idx]  # (T, S)
    offset = (own - boxes[:, None, :2]).abs()  # (T, S, 2)
    inside = (offset < boxes[:, None, 2:] / 2).all(-1) & own_valid
    distance = offset.sum(-1).masked_fill(~own_valid, float("inf"))  # (T, S)
    inside[torch.arange(len(boxes), device=valid.device), distance.argmin(1)] = True
    area = boxes[:, 2] * boxes[:, 3]  # (T,): the smallest box wins a shared cell
    cost = torch.where(inside, area[:, None], torch.full_like(area[:, None], float("inf")))
    same_image = targets.image_idx[None, :] == torch.arange(batch, device=valid.device)[:, None]
    per_image = cost[None].expand(batch, -1, -1).masked_fill(~same_image[:, :, None], float("inf"))
    best, winner = per_image.min(1)  # (B, S)
    return torch.where(torch.isfinite(best) & valid, winner, assigned)


def dense_losses(
    criterion: SetCriterion,
    cls_logits: Tensor,
    boxes_cxcywh: Tensor,
    centers: Tensor,
    valid: Tensor,
    targets: FlatTargets,
) -> Tensor:
    """``(3,)``: the weighted ``loss_cls``, ``loss_bbox``, ``loss_iou`` of the dense head.

    Args:
        criterion: the set loss, for its class and term weights.
        cls_logits: ``(B, S, K + 1)``, background last; ``(B, S, K)`` sigmoid
            logits when the criterion's ``cls_loss`` is ``focal``.
        boxes_cxcywh: ``(B, S, 4)`` normalised.
        centers, valid: as :func:`assign_cells`.
    """
    dtype = torch.promote_types(cls_logits.dtype, torch.float32)
    cls_logits, boxes_cxcywh = cls_logits.to(dtype), boxes_cxcywh.to(dtype)
    assigned = assign_cells(centers.to(dtype), valid, targets)  # (B, S)
    positive = assigned >= 0
    num_pos, num_valid = positive.sum(), valid.sum()
    counts = reduce_mean(torch.stack((num_pos, num_valid - num_pos)).to(dtype))
    num_total_pos = counts[0].clamp(min=1)
    cls_avg_factor = (counts[0] + criterion.bg_cls_weight * counts[1]).clamp(min=1)

    # Masks and gathers over every cell, no boolean indexing: the shapes never
    # depend on the data, so nothing here waits for the device.
    if targets.labels.numel():
        owner = assigned.clamp(min=0)  # (B, S): background cells point at target 0, masked below
        labels = torch.where(positive, targets.labels[owner], criterion.num_classes)
        wanted = targets.boxes_cxcywh.to(dtype)[owner]  # (B, S, 4)
    else:
        labels = torch.full_like(assigned, criterion.num_classes)
        wanted = boxes_cxcywh.detach()  # no positives: never used
    if criterion.cls_loss == "focal":
        # (B, S, K): 1 at a positive cell's label; background (label K) is all zeros.
        # (A comparison, not F.one_hot, which reads the labels' range from the device.)
        classes = torch.arange(criterion.num_classes, device=labels.device)
        onehot = (labels[..., None] == classes).to(dtype)
        focal = sigmoid_focal_loss(
            cls_logits, onehot, criterion.focal_alpha, criterion.focal_gamma
        ).sum(-1)  # (B, S)
        loss_cls = (focal * valid).sum() / num_total_pos
    else:
        cross_entropy = F.cross_entropy(
            cls_logits.flatten(0, 1),
            labels.flatten(),
            weight=criterion.class_weight.to(dtype),
            reduction="none",
        )  # (B * S,)
        loss_cls = (cross_entropy * valid.flatten()).sum() / cls_avg_factor
    l1 = (boxes_cxcywh - wanted).abs().sum(-1)  # (B, S)
    loss_bbox = torch.where(positive, l1, 0.0).sum() / num_total_pos
    pair_giou = giou(cxcywh_to_xyxy(boxes_cxcywh), cxcywh_to_xyxy(wanted))  # (B, S)
    loss_iou = torch.where(positive, 1 - pair_giou, 0.0).sum() / num_total_pos
    return torch.stack(
        (
            criterion.cls_weight * loss_cls,
            criterion.bbox_weight * loss_bbox,
            criterion.iou_weight * loss_iou,
        )
    )
