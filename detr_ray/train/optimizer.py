"""The optimiser: AdamW with the backbone's own learning rate (and Deformable DETR's
sampling-offset and reference-point projections at a fraction of the rate)."""

from __future__ import annotations

import torch
from torch import nn

from detr_ray.config import ExperimentConfig
from detr_ray.model.training_detr import reference_detr
from detr_ray.ops import dist

# Deformable DETR's projections that place the sampling points (the official
# lr_linear_proj_names): trained at optim.linear_proj_lr_mult times the rate.
LINEAR_PROJ_NAMES = ("sampling_offsets", "reference_points")


def build_optimizer(model: nn.Module, config: ExperimentConfig) -> torch.optim.AdamW:
    """AdamW with the groups ``other`` (``optim.lr``), ``backbone``
    (``optim.backbone_lr``) and, for Deformable DETR, ``linear_proj``
    (``optim.lr * optim.linear_proj_lr_mult``); empty groups are left out."""
    module = dist.unwrap(model)
    in_backbone = {id(p) for p in reference_detr(module).backbone.parameters()}
    optim = config.optim
    groups: dict[str, tuple[float, list[nn.Parameter]]] = {
        "other": (optim.lr, []),
        "backbone": (optim.backbone_lr, []),
        "linear_proj": (optim.lr * optim.linear_proj_lr_mult, []),
    }
    for name, param in module.named_parameters():
        if not param.requires_grad:
            continue
        if id(param) in in_backbone:
            group = "backbone"
        elif any(part in name for part in LINEAR_PROJ_NAMES):
            group = "linear_proj"
        else:
            group = "other"
        groups[group][1].append(param)
    param_groups = [
        {"params": params, "lr": lr, "name": name}
        for name, (lr, params) in groups.items()
        if params or name == "other"
    ]
    weight_decay = optim.weight_decay
    try:  # the fused kernel is several times faster on CPU and GPU
        return torch.optim.AdamW(param_groups, weight_decay=weight_decay, fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(param_groups, weight_decay=weight_decay)
