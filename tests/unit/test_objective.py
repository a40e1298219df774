"""A training step's objective: the decoder's set loss, a two-stage encoder's
proposals, the dense head; one device read for every matching.

The encoder's loss is checked against a plain implementation of the official
Deformable-DETR's (every label made the first class, one scipy matching per
image, sigmoid focal loss, L1 and GIoU, normalised by the targets).
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from detr_ray.criterion.matcher import FlatTargets
from detr_ray.model.training_detr import TrainingOutput
from detr_ray.train.objective import TrainingObjective

from tests.support.reference_math import giou_one, to_xyxy
from tests.unit.test_focal_loss import _criterion, _predictions

S = 9  # encoder tokens


def _encoder_outputs(seed):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(3, S, 5, generator=g, dtype=torch.float64) * 2
    centre = torch.rand(3, S, 2, generator=g, dtype=torch.float64) * 0.6 + 0.2
    size = torch.rand(3, S, 2, generator=g, dtype=torch.float64) * 0.3 + 0.05
    return logits, torch.cat([centre, size], -1)


def _official_encoder_loss(logits, boxes, targets):
    """Binary targets, a scipy matching per image, the three terms (weights 1)."""
    focal = l1 = giou = 0.0
    matched = 0
    onehot = torch.zeros_like(logits)
    for b, target in enumerate(targets):
        count = len(target["labels"])
        if count == 0:
            continue
        p = logits[b, :, 0].sigmoid()  # (S,) the first class: "an object"
        cost_cls = 0.25 * (1 - p) ** 2 * -(p + 1e-8).log() - 0.75 * p**2 * -(1 - p + 1e-8).log()
        cost = np.zeros((S, count))
        for s in range(S):
            for t in range(count):
                pred, want = boxes[b, s], target["boxes"][t].double()
                cost[s, t] = (
                    2 * cost_cls[s]
                    + 5 * (pred - want).abs().sum()
                    - 2 * giou_one(to_xyxy(pred), to_xyxy(want))
                )
        rows, cols = linear_sum_assignment(cost)
        for s, t in zip(rows, cols):
            onehot[b, s, 0] = 1.0
            pred, want = boxes[b, s], target["boxes"][t].double()
            l1 += (pred - want).abs().sum()
            giou += 1 - giou_one(to_xyxy(pred), to_xyxy(want))
            matched += 1
    p = logits.sigmoid()
    p_true = p * onehot + (1 - p) * (1 - onehot)
    alpha = 0.25 * onehot + 0.75 * (1 - onehot)
    ce = -(onehot * p.log() + (1 - onehot) * (1 - p).log())
    focal = (alpha * (1 - p_true) ** 2 * ce).sum()
    return torch.stack([focal, l1, giou]) / max(matched, 1)


def test_the_two_stage_encoder_loss_is_the_officials_with_binary_targets():
    logits, boxes, targets = _predictions(2)  # 3 decoder layers, 3 images (one empty)
    enc_logits, enc_boxes = _encoder_outputs(3)
    outputs = TrainingOutput(logits, boxes, None, enc_logits, enc_boxes)
    objective = TrainingObjective(_criterion(), num_groups=1, dense_weight=0.0, two_stage=True)
    flat = FlatTargets.from_list(targets)
    rider = torch.tensor([0.0, 1.0], dtype=torch.float64)
    host = objective.costs_to_host(outputs, flat, rider)
    assert host.rider.tolist() == [0.0, 1.0]  # the rider came back in the same copy
    assert host.decoder.shape == (3, 6, 12) and host.encoder.shape == (1, 6, S)
    step = objective(outputs, flat, host)
    assert list(step.losses) == objective.loss_keys(3)
    assert [k for k in step.losses if k.startswith("enc.")] == [
        "enc.loss_cls",
        "enc.loss_bbox",
        "enc.loss_iou",
    ]
    expected = _official_encoder_loss(enc_logits, enc_boxes, targets)
    got = torch.stack([step.losses[k] for k in ("enc.loss_cls", "enc.loss_bbox", "enc.loss_iou")])
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-10)
    # the decoder's terms are the set loss's, and the objective sums everything
    decoder = _criterion()(logits, boxes, targets)
    for key, value in decoder.items():
        torch.testing.assert_close(step.losses[key], value, rtol=0, atol=1e-12)
    torch.testing.assert_close(step.objective, decoder["loss"] + got.sum())
    assert step.matching.num_layers == 3
