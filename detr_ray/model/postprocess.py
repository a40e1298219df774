"""From the last decoder layer's raw outputs to detections in pixels.

DETR's softmax logits give each query its best class (:func:`postprocess`);
Deformable DETR's sigmoid logits rank every (query, class) pair
(:func:`postprocess_sigmoid`), so one query may give several detections.
"""

from __future__ import annotations

import torch
from torch import Tensor

from detr_ray.ops.boxes import cxcywh_to_xyxy

SIGMOID_TOP_K = 100  # the official Deformable DETR's detections per image


def postprocess(
    cls_scores: Tensor,
    bbox_preds: Tensor,
    orig_sizes: Tensor,
    top_k: int | None = None,
    score_threshold: float = 0.0,
) -> list[dict[str, Tensor]]:
    """Per-image detections in original-image pixels.

    Args:
        cls_scores: ``(B, Q, K + 1)`` logits of one decoder layer (usually the last).
        bbox_preds: ``(B, Q, 4)`` normalised cxcywh.
        orig_sizes: ``(B, 2)`` ``(h, w)`` each image's original size.
        top_k: keep at most this many detections per image, best first.
        score_threshold: drop detections scoring below it.

    Returns:
        ``B`` dicts with ``scores (N,)``, ``labels (N,)`` (contiguous labels,
        background never) and ``boxes_xyxy (N, 4)`` absolute pixels, sorted by
        score. Each query gives its best object class (softmax over all
        ``K + 1`` logits, background then dropped), as in the official DETR.
    """
    prob = cls_scores.float().softmax(-1)[..., :-1]  # (B, Q, K)
    scores, labels = prob.max(-1)  # (B, Q)
    height, width = orig_sizes.float().unbind(-1)
    scale = (width, height, width, height)
    boxes = cxcywh_to_xyxy(bbox_preds.float())  # (B, Q, 4) normalised
    detections = []
    for i in range(cls_scores.shape[0]):
        order = scores[i].argsort(descending=True)
        if top_k is not None:
            order = order[:top_k]
        order = order[scores[i][order] >= score_threshold]
        image_scale = boxes.new_tensor([s[i] for s in scale])
        detections.append(
            {
                "scores": scores[i][order],
                "labels": labels[i][order],
                "boxes_xyxy": boxes[i][order] * image_scale,
            }
        )
    return detections


def postprocess_sigmoid(
    cls_logits: Tensor,
    bbox_preds: Tensor,
    orig_sizes: Tensor,
    top_k: int = SIGMOID_TOP_K,
    score_threshold: float = 0.0,
) -> list[dict[str, Tensor]]:
    """Per-image detections from sigmoid logits: the ``top_k`` best (query,
    class) pairs of each image (the official Deformable DETR: 100).

    Args:
        cls_logits: ``(B, Q, K)`` sigmoid logits of one decoder layer.
        bbox_preds: ``(B, Q, 4)`` normalised cxcywh.
        orig_sizes: ``(B, 2)`` ``(h, w)`` each image's original size.

    Returns:
        as :func:`postprocess`: ``scores``, ``labels``, ``boxes_xyxy`` per
        image, best first, scores at least ``score_threshold``.
    """
    num_images, num_queries, num_classes = cls_logits.shape
    prob = cls_logits.float().sigmoid().reshape(num_images, -1)  # (B, Q * K)
    scores, flat = prob.topk(min(top_k, prob.shape[1]), dim=1)  # (B, k), best first
    queries, labels = flat // num_classes, flat % num_classes
    height, width = orig_sizes.float().unbind(-1)
    scale = torch.stack([width, height, width, height], -1)[:, None]  # (B, 1, 4)
    boxes = cxcywh_to_xyxy(bbox_preds.float()).gather(1, queries[..., None].expand(-1, -1, 4))
    boxes = boxes * scale
    keep = scores >= score_threshold
    return [
        {
            "scores": scores[i][keep[i]],
            "labels": labels[i][keep[i]],
            "boxes_xyxy": boxes[i][keep[i]],
        }
        for i in range(num_images)
    ]
