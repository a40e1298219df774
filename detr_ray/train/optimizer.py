"""The optimiser: AdamW with the backbone's own learning rate."""

from __future__ import annotations

import torch
from torch import nn

from detr_ray.config import ExperimentConfig
from detr_ray.model.training_detr import reference_detr
from detr_ray.ops import dist


def build_optimizer(model: nn.Module, config: ExperimentConfig) -> torch.optim.AdamW:
    """AdamW with two groups, ``backbone`` (backbone_lr) and ``other`` (lr)."""
    module = dist.unwrap(model)
    in_backbone = {id(p) for p in reference_detr(module).backbone.parameters()}
    backbone: list[nn.Parameter] = []
    other: list[nn.Parameter] = []
    for param in module.parameters():
        if param.requires_grad:
            (backbone if id(param) in in_backbone else other).append(param)
    groups: list[dict] = [{"params": other, "lr": config.optim.lr, "name": "other"}]
    if backbone:
        groups.append({"params": backbone, "lr": config.optim.backbone_lr, "name": "backbone"})
    weight_decay = config.optim.weight_decay
    try:  # the fused kernel is several times faster on CPU and GPU
        return torch.optim.AdamW(groups, weight_decay=weight_decay, fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(groups, weight_decay=weight_decay)
