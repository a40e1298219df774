"""Deformable DETR's focal matching cost and loss against HF transformers', and by hand.

HF's ``DeformableDetrForObjectDetectionLoss`` (its own matcher, scipy, its
own focal loss) on the same predictions and targets, float64: every decoder
layer's three terms equal ours, unweighted. HF weighs the classification
term 1 in its total (the official recipe: 2), so the terms are compared, not
the totals.
"""

from __future__ import annotations

import math

import pytest
import torch
import transformers
from transformers.loss.loss_deformable_detr import DeformableDetrForObjectDetectionLoss

from detr_ray.criterion.matcher import FlatTargets, HungarianMatcher
from detr_ray.criterion.set_loss import SetCriterion

L, B, Q, K = 3, 3, 12, 5


def _criterion(num_classes=K):
    matcher = HungarianMatcher(
        cls_cost=2.0, bbox_cost=5.0, iou_cost=2.0, bbox_cost_format="cxcywh", cls_cost_kind="focal"
    )
    return SetCriterion(
        num_classes,
        matcher,
        cls_weight=1.0,
        bbox_weight=1.0,
        iou_weight=1.0,
        bg_cls_weight=0.0,
        sync_cls_avg_factor=False,
        cls_loss="focal",
    )


def _predictions(seed):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(L, B, Q, K, generator=g, dtype=torch.float64) * 2
    centre = torch.rand(L, B, Q, 2, generator=g, dtype=torch.float64) * 0.6 + 0.2
    size = torch.rand(L, B, Q, 2, generator=g, dtype=torch.float64) * 0.3 + 0.05
    targets = []
    for count in (2, 0, 4):  # one image without objects
        xy = torch.rand(count, 2, generator=g, dtype=torch.float64) * 0.6 + 0.2
        wh = torch.rand(count, 2, generator=g, dtype=torch.float64) * 0.3 + 0.05
        labels = torch.randint(0, K, (count,), generator=g)
        targets.append({"labels": labels, "boxes": torch.cat([xy, wh], 1)})
    return logits, torch.cat([centre, size], -1), targets


def test_every_layers_terms_equal_hf_deformable_detrs_loss():
    logits, boxes, targets = _predictions(0)
    ours = _criterion()
    flat = FlatTargets.from_list(targets)
    matching = ours.matcher(logits, boxes, flat)
    terms = ours.layer_losses(logits, boxes, flat, matching)  # (L, 3), weights 1
    config = transformers.DeformableDetrConfig(
        num_labels=K, class_cost=2, bbox_cost=5, giou_cost=2, decoder_layers=L, auxiliary_loss=True
    )
    labels = [{"class_labels": t["labels"], "boxes": t["boxes"]} for t in targets]
    _, hf, _ = DeformableDetrForObjectDetectionLoss(
        logits[-1], labels, "cpu", boxes[-1], config, outputs_class=logits, outputs_coord=boxes
    )
    for layer in range(L):
        suffix = "" if layer == L - 1 else f"_{layer}"
        expected = [hf[f"loss_ce{suffix}"], hf[f"loss_bbox{suffix}"], hf[f"loss_giou{suffix}"]]
        torch.testing.assert_close(terms[layer], torch.stack(expected), rtol=0, atol=1e-10)


def test_the_focal_cost_and_loss_by_hand():
    # one query, one class, logit 0 (p = 1/2): the cost of calling it the class is
    # 0.25 * 0.5^2 * ln 2 - 0.75 * 0.5^2 * ln 2 = -ln(2) / 8
    matcher = _criterion(num_classes=1).matcher
    flat = FlatTargets.from_list(
        [{"labels": torch.tensor([0]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]])}]
    )
    logits = torch.zeros(1, 1, 1, 1, dtype=torch.float64)
    boxes = torch.tensor([0.5, 0.5, 0.2, 0.2], dtype=torch.float64).view(1, 1, 1, 4)
    cost = matcher.cost(logits, boxes, flat)
    assert cost.item() == pytest.approx(2.0 * -math.log(2) / 8 + 5.0 * 0 + 2.0 * -1.0, abs=1e-7)
    # the loss of that matched query: alpha (1 - p)^2 (-ln p) = 0.25 * 0.25 * ln 2; perfect box
    criterion = _criterion(num_classes=1)
    terms = criterion.layer_losses(logits, boxes, flat, matcher(logits, boxes, flat))
    assert terms[0].tolist() == pytest.approx([0.25 * 0.25 * math.log(2), 0.0, 0.0], abs=1e-7)
    # an unmatched query of the same logit: (1 - alpha) p^2 (-ln(1 - p)) per class
    two = torch.zeros(1, 1, 2, 1, dtype=torch.float64)
    two_boxes = (
        torch.tensor([[0.5, 0.5, 0.2, 0.2], [0.1, 0.1, 0.05, 0.05]]).double().view(1, 1, 2, 4)
    )
    terms = criterion.layer_losses(two, two_boxes, flat, matcher(two, two_boxes, flat))
    expected = 0.25 * 0.25 * math.log(2) + 0.75 * 0.25 * math.log(2)
    assert terms[0, 0].item() == pytest.approx(expected, abs=1e-7)


def test_a_focal_criterion_refuses_a_background_channel():
    logits, boxes, targets = _predictions(1)
    with_background = torch.cat([logits, logits[..., :1]], -1)
    with pytest.raises(ValueError, match="expected num_classes = 5 .cls_loss 'focal'"):
        _criterion()(with_background, boxes, targets)
