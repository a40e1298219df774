"""The set loss and its matcher from the config's ``model``, ``matcher`` and ``loss`` sections."""

from __future__ import annotations

from detr_ray.config import LossConfig, MatcherConfig, ModelConfig
from detr_ray.criterion.matcher import HungarianMatcher
from detr_ray.criterion.set_loss import SetCriterion


def build_criterion(
    model: ModelConfig, matcher: MatcherConfig, loss: LossConfig, num_classes: int
) -> SetCriterion:
    """The set loss (and its matcher) that the config describes: DETR's softmax
    classification, or Deformable DETR's sigmoid focal loss and focal matching
    cost (``loss.focal_alpha`` and ``loss.focal_gamma`` in both)."""
    focal = model.deformable
    return SetCriterion(
        num_classes,
        HungarianMatcher(
            cls_cost=matcher.cls_cost,
            bbox_cost=matcher.bbox_cost,
            iou_cost=matcher.iou_cost,
            bbox_cost_format=matcher.bbox_cost_format,
            cls_cost_kind="focal" if focal else "softmax",
            focal_alpha=loss.focal_alpha,
            focal_gamma=loss.focal_gamma,
        ),
        cls_weight=loss.cls_weight,
        bbox_weight=loss.bbox_weight,
        iou_weight=loss.iou_weight,
        bg_cls_weight=loss.bg_cls_weight,
        sync_cls_avg_factor=loss.sync_cls_avg_factor,
        check_labels=False,  # the engine checks its label map once instead
        cls_loss="focal" if focal else "ce",
        focal_alpha=loss.focal_alpha,
        focal_gamma=loss.focal_gamma,
    )
