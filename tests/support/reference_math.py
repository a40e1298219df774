"""A second, deliberately plain implementation of the reference's math.

Written from the study note of mmdetection 2.11's DETR (``../shared/seed``):
one decoder layer and one image at a time, boxes in absolute pixel ``xyxy``
where the reference uses them, scipy on the ``(Q, G)`` cost. The tests compare
detr_ray's batched code against it; it shares no code with ``detr_ray``.
"""

from __future__ import annotations

import torch
from scipy.optimize import linear_sum_assignment


def to_xyxy(cxcywh):
    cx, cy, w, h = cxcywh[..., 0], cxcywh[..., 1], cxcywh[..., 2], cxcywh[..., 3]
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1)


def giou_pairwise(a, b, eps=1e-7):
    """mmdet's bbox_overlaps(mode='giou', is_aligned=False), written out."""
    out = torch.empty(a.shape[0], b.shape[0], dtype=a.dtype)
    for i in range(a.shape[0]):
        for j in range(b.shape[0]):
            out[i, j] = giou_one(a[i], b[j], eps)
    return out


def giou_one(a, b, eps=1e-7):
    area_a = (a[2] - a[0]).clamp(min=0) * (a[3] - a[1]).clamp(min=0)
    area_b = (b[2] - b[0]).clamp(min=0) * (b[3] - b[1]).clamp(min=0)
    iw = (torch.min(a[2], b[2]) - torch.max(a[0], b[0])).clamp(min=0)
    ih = (torch.min(a[3], b[3]) - torch.max(a[1], b[1])).clamp(min=0)
    inter = iw * ih
    union = torch.clamp(area_a + area_b - inter, min=eps)
    ew = (torch.max(a[2], b[2]) - torch.min(a[0], b[0])).clamp(min=0)
    eh = (torch.max(a[3], b[3]) - torch.min(a[1], b[1])).clamp(min=0)
    enclose = torch.clamp(ew * eh, min=eps)
    return inter / union - (enclose - union) / enclose


def match_cost(cls_pred, bbox_pred, gt_labels, gt_boxes_abs, img_hw, w_cls, w_bbox, w_iou, fmt):
    """HungarianAssigner's (Q, G) cost for one image (gt boxes absolute xyxy)."""
    h, w = img_hw
    factor = torch.tensor([w, h, w, h], dtype=bbox_pred.dtype)
    cls_cost = -cls_pred.softmax(-1)[:, gt_labels] * w_cls
    gt_norm = gt_boxes_abs / factor
    if fmt == "xyxy":
        reg_cost = torch.cdist(to_xyxy(bbox_pred), gt_norm, p=1) * w_bbox
    else:
        gt_cxcywh = torch.stack(
            [
                (gt_norm[:, 0] + gt_norm[:, 2]) / 2,
                (gt_norm[:, 1] + gt_norm[:, 3]) / 2,
                gt_norm[:, 2] - gt_norm[:, 0],
                gt_norm[:, 3] - gt_norm[:, 1],
            ],
            -1,
        )
        reg_cost = torch.cdist(bbox_pred, gt_cxcywh, p=1) * w_bbox
    iou_cost = -giou_pairwise(to_xyxy(bbox_pred) * factor, gt_boxes_abs) * w_iou
    return cls_cost + reg_cost + iou_cost


def assign(cost_qg):
    """(query_idx, gt_idx) sorted by query, as HungarianAssigner finds them."""
    rows, cols = linear_sum_assignment(cost_qg.detach().numpy())
    return torch.as_tensor(rows), torch.as_tensor(cols)


def loss_single_layer(
    cls_scores, bbox_preds, gts, num_classes, bg_cls_weight, assignments, world_mean=lambda x: x
):
    """mmdet's DETRHead.loss_single for one layer; returns unweighted (cls, bbox, iou).

    ``gts``: per image ``(labels, boxes_abs_xyxy, (h, w))``; ``assignments``: per image
    ``(query_idx, gt_idx)``. ``world_mean`` stands in for reduce_mean.
    """
    num_imgs, num_query, _ = cls_scores.shape
    labels_all, pred_pos, tgt_pos, factors = [], [], [], []
    num_pos = 0
    for i in range(num_imgs):
        gt_labels, gt_abs, (h, w) = gts[i]
        q_idx, g_idx = assignments[i]
        labels = torch.full((num_query,), num_classes, dtype=torch.long)
        labels[q_idx] = gt_labels[g_idx]
        labels_all.append(labels)
        factor = torch.tensor([w, h, w, h], dtype=bbox_preds.dtype)
        for q, g in zip(q_idx.tolist(), g_idx.tolist()):
            pred_pos.append(bbox_preds[i, q])
            tgt_pos.append(gt_abs[g] / factor)
            factors.append(factor)
        num_pos += len(q_idx)
    num_neg = num_imgs * num_query - num_pos
    labels = torch.cat(labels_all)
    class_weight = torch.ones(num_classes + 1, dtype=cls_scores.dtype)
    class_weight[num_classes] = bg_cls_weight
    ce = torch.nn.functional.cross_entropy(
        cls_scores.reshape(-1, num_classes + 1), labels, reduction="none"
    )
    ce = ce * class_weight[labels]
    cls_avg = world_mean(
        torch.tensor(num_pos * 1.0 + num_neg * bg_cls_weight, dtype=cls_scores.dtype)
    )
    cls_avg = max(float(cls_avg), 1.0)
    loss_cls = ce.sum() / cls_avg
    total_pos = max(float(world_mean(torch.tensor(float(num_pos), dtype=cls_scores.dtype))), 1.0)
    if not pred_pos:
        zero = bbox_preds.sum() * 0
        return loss_cls, zero, zero
    pred = torch.stack(pred_pos)
    tgt_norm_xyxy = torch.stack(tgt_pos)
    x1, y1, x2, y2 = tgt_norm_xyxy.unbind(-1)
    tgt_cxcywh = torch.stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], -1)
    fac = torch.stack(factors)
    loss_bbox = (pred - tgt_cxcywh).abs().sum() / total_pos
    pred_abs, tgt_abs = to_xyxy(pred) * fac, to_xyxy(tgt_cxcywh) * fac
    gious = torch.stack([giou_one(p, t) for p, t in zip(pred_abs, tgt_abs)])
    loss_iou = (1 - gious).sum() / total_pos
    return loss_cls, loss_bbox, loss_iou
