"""Initialising a model for fine-tuning from pretrained weights.

Three sources, told apart by their contents:

- a torchvision ResNet ``state_dict`` file: loads into the backbone only;
- an official DETR checkpoint: every weight, its class head adapted;
- a detr-ray checkpoint: the same.

The class head can keep the rows of the categories the new dataset shares
with the checkpoint (matched by category id: an official COCO checkpoint's
row ``i`` is COCO category ``i``), or be re-initialised; either way the
no-object row is kept.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch
from torch import Tensor

from detr_ray.data.labels import LabelMap
from detr_ray.model.backbone import load_torchvision_state_dict
from detr_ray.model.detr import DETR
from detr_ray.model.official import (
    from_official_state_dict,
    is_official_checkpoint,
    load_checkpoint_file,
    official_label_map,
)

CLASS_HEAD_POLICIES = ("keep", "reinit")


def is_torchvision_resnet(state_dict: Mapping) -> bool:
    return "conv1.weight" in state_dict and "layer1.0.conv1.weight" in state_dict


def initialise_from(
    model: DETR, path: str | os.PathLike, label_map: LabelMap, class_head: str = "keep"
) -> str:
    """Load pretrained weights into ``model`` in place; returns what was loaded.

    Args:
        label_map: the labels ``model`` is being trained for.
        class_head: ``"keep"`` the checkpoint's rows of ``label_map``'s
            categories, or ``"reinit"`` them (the no-object row is kept).
    """
    if class_head not in CLASS_HEAD_POLICIES:
        raise ValueError(f"class_head must be one of {CLASS_HEAD_POLICIES}, got {class_head!r}")
    from detr_ray.checkpoint import FORMAT, resolve_checkpoint_path

    checkpoint = load_checkpoint_file(resolve_checkpoint_path(path))
    if is_torchvision_resnet(checkpoint):
        load_torchvision_state_dict(model.backbone, checkpoint)
        return f"backbone from torchvision ResNet weights {path}"
    if is_official_checkpoint(checkpoint):
        state_dict = from_official_state_dict(checkpoint["model"])
        source = official_label_map(state_dict["class_head.weight"].shape[0] - 1)
        kind = "official DETR checkpoint"
    elif checkpoint.get("format") == FORMAT:
        state_dict, source = dict(checkpoint["model"]), LabelMap.from_dict(checkpoint["label_map"])
        kind = "detr-ray checkpoint"
    else:
        raise ValueError(
            f"{path} is not a torchvision ResNet state_dict, an official DETR checkpoint "
            "or a detr-ray checkpoint"
        )
    state_dict.update(_class_head(model, state_dict, source, label_map, class_head, path))
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    misshaped = [
        k for k in expected if k in state_dict and state_dict[k].shape != expected[k].shape
    ]
    if missing or unexpected or misshaped:
        raise ValueError(
            f"{kind} {path} does not fit the configured model: missing {missing[:8]}, "
            f"unexpected {unexpected[:8]}, different shapes {misshaped[:8]}. "
            "Match the model config (preset, d_model, layers, queries) to the checkpoint."
        )
    model.load_state_dict(state_dict, strict=True)
    return f"all weights from {kind} {path} (class head: {class_head})"


def _class_head(model, state_dict, source: LabelMap, target: LabelMap, policy: str, path):
    weight: Tensor = state_dict["class_head.weight"]  # (K_source + 1, C)
    bias: Tensor = state_dict["class_head.bias"]
    if policy == "keep":
        missing = [c for c in target.category_ids if c not in source.category_ids]
        if missing:
            raise ValueError(
                f"the class head of {path} has no rows for category ids {missing[:10]}; "
                "set model.class_head: reinit to fine-tune to new categories"
            )
        rows = torch.tensor([source.label_of(c) for c in target.category_ids])
        new_weight, new_bias = weight[rows], bias[rows]
    else:
        fresh = model.class_head
        new_weight, new_bias = fresh.weight.detach()[:-1], fresh.bias.detach()[:-1]
    return {
        "class_head.weight": torch.cat((new_weight, weight[-1:])),
        "class_head.bias": torch.cat((new_bias, bias[-1:])),
    }
