"""The reference's matching costs and loss weights, written out for the tests.

detr-ray's core classes take these without defaults (the experiment config
holds them); the tests spell out mmdetection 2.11's DETR values here instead
of reading them from the code under test.
"""

from __future__ import annotations

from detr_ray.criterion.matcher import HungarianMatcher
from detr_ray.criterion.set_loss import SetCriterion

REFERENCE_COSTS = {"cls_cost": 1.0, "bbox_cost": 5.0, "iou_cost": 2.0, "bbox_cost_format": "xyxy"}
REFERENCE_LOSS = {
    "cls_weight": 1.0,
    "bbox_weight": 5.0,
    "iou_weight": 2.0,
    "bg_cls_weight": 0.1,
    "sync_cls_avg_factor": True,
}


def reference_matcher(**changes) -> HungarianMatcher:
    return HungarianMatcher(**{**REFERENCE_COSTS, **changes})


def reference_criterion(num_classes: int, matcher=None, **changes) -> SetCriterion:
    return SetCriterion(
        num_classes, matcher or reference_matcher(), **{**REFERENCE_LOSS, **changes}
    )
