"""Conversion to and from the official DETR's checkpoint layout.

The official ``state_dict`` (e.g. ``detr-r50-e632da11.pth``) names what we
call ``backbone`` ``backbone.0.body``, the decoder's cross-attention
``multihead_attn``, the heads ``class_embed`` / ``bbox_embed``, and a learned
positional encoding ``backbone.1``; every other key is the same. Its class
head has one row per COCO category id (0..90, unused ids included) plus the
no-object row.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Mapping
from typing import Literal

import torch
from torch import Tensor

from detr_ray.config.model import ModelConfig
from detr_ray.data.labels import LabelMap
from detr_ray.errors import CheckpointError
from detr_ray.model.detr import DETR

# (our prefix, official prefix), applied to the start of each key
_PREFIXES = (
    ("backbone.", "backbone.0.body."),
    ("position_encoding.", "backbone.1."),
    ("class_head.", "class_embed."),
    ("box_head.", "bbox_embed."),
)
_CROSS_ATTN = (re.compile(r"(decoder\.layers\.\d+\.)cross_attn\."), r"\1multihead_attn.")
_MULTIHEAD_ATTN = (re.compile(r"(decoder\.layers\.\d+\.)multihead_attn\."), r"\1cross_attn.")

COCO_CATEGORY_NAMES = {
    1: "person", 2: "bicycle", 3: "car", 4: "motorcycle", 5: "airplane", 6: "bus", 7: "train",
    8: "truck", 9: "boat", 10: "traffic light", 11: "fire hydrant", 13: "stop sign",
    14: "parking meter", 15: "bench", 16: "bird", 17: "cat", 18: "dog", 19: "horse", 20: "sheep",
    21: "cow", 22: "elephant", 23: "bear", 24: "zebra", 25: "giraffe", 27: "backpack",
    28: "umbrella", 31: "handbag", 32: "tie", 33: "suitcase", 34: "frisbee", 35: "skis",
    36: "snowboard", 37: "sports ball", 38: "kite", 39: "baseball bat", 40: "baseball glove",
    41: "skateboard", 42: "surfboard", 43: "tennis racket", 44: "bottle", 46: "wine glass",
    47: "cup", 48: "fork", 49: "knife", 50: "spoon", 51: "bowl", 52: "banana", 53: "apple",
    54: "sandwich", 55: "orange", 56: "broccoli", 57: "carrot", 58: "hot dog", 59: "pizza",
    60: "donut", 61: "cake", 62: "chair", 63: "couch", 64: "potted plant", 65: "bed",
    67: "dining table", 70: "toilet", 72: "tv", 73: "laptop", 74: "mouse", 75: "remote",
    76: "keyboard", 77: "cell phone", 78: "microwave", 79: "oven", 80: "toaster", 81: "sink",
    82: "refrigerator", 84: "book", 85: "clock", 86: "vase", 87: "scissors", 88: "teddy bear",
    89: "hair drier", 90: "toothbrush",
}  # fmt: skip
_OFFICIAL_BACKBONES: dict[str, Literal[18, 34, 50, 101]] = {
    "resnet18": 18,
    "resnet34": 34,
    "resnet50": 50,
    "resnet101": 101,
}


def official_label_map(num_classes: int = 91) -> LabelMap:
    """The official class head's labels: label ``i`` is COCO category id ``i``."""
    return LabelMap(
        tuple(range(num_classes)),
        tuple(COCO_CATEGORY_NAMES.get(i, f"N/A {i}") for i in range(num_classes)),
    )


def to_official_state_dict(model: DETR | Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Our ``state_dict`` (or model) with the official DETR's key names."""
    state_dict = model.state_dict() if isinstance(model, torch.nn.Module) else model
    return {_rename(k, _CROSS_ATTN, reverse=False): v for k, v in state_dict.items()}


def from_official_state_dict(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """An official DETR ``state_dict`` with our key names (inverse of the above)."""
    return {_rename(k, _MULTIHEAD_ATTN, reverse=True): v for k, v in state_dict.items()}


def _rename(key: str, attention, reverse: bool) -> str:
    for ours, theirs in _PREFIXES:
        source, target = (theirs, ours) if reverse else (ours, theirs)
        if key.startswith(source):
            key = target + key[len(source) :]
            break
    pattern, replacement = attention
    return pattern.sub(replacement, key)


def is_official_checkpoint(checkpoint: Mapping) -> bool:
    """An official DETR checkpoint (not Deformable-DETR's, which has level embeddings)."""
    model = checkpoint.get("model")
    return (
        isinstance(model, Mapping)
        and "query_embed.weight" in model
        and "transformer.level_embed" not in model
        and any(k.startswith("backbone.0.body.") for k in model)
    )


def official_config(state_dict: Mapping[str, Tensor], args=None) -> ModelConfig:
    """The :class:`ModelConfig` of an official checkpoint.

    Read from its ``args`` where present; the tensor shapes decide the rest
    (and win over ``args``: they are what will be loaded).
    """
    args = vars(args) if isinstance(args, argparse.Namespace) else dict(args or {})
    if args.get("masks") or any(
        k.startswith(("bbox_attention.", "mask_head.")) for k in state_dict
    ):
        raise CheckpointError("segmentation DETR checkpoints (--masks) are not supported")
    backbone_keys = [k for k in state_dict if k.startswith("backbone.0.body.")]
    if not backbone_keys:
        raise CheckpointError("not an official DETR checkpoint: no 'backbone.0.body.*' keys")
    depth = backbone_depth(args.get("backbone"), backbone_keys, "backbone.0.body.")

    def count(prefix: str) -> int:
        pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
        return len({m.group(1) for k in state_dict if (m := pattern.match(k))})

    d_model = state_dict["query_embed.weight"].shape[1]
    lr_backbone = args.get("lr_backbone", 1e-5)
    return ModelConfig(
        backbone_depth=depth,
        dilation=bool(args.get("dilation", False)),
        trainable_backbone_stages=3 if lr_backbone > 0 else 0,
        d_model=d_model,
        nhead=int(args.get("nheads", 8)),
        num_encoder_layers=count("transformer.encoder.layers."),
        num_decoder_layers=count("transformer.decoder.layers."),
        dim_feedforward=state_dict["transformer.encoder.layers.0.linear1.weight"].shape[0]
        if "transformer.encoder.layers.0.linear1.weight" in state_dict
        else state_dict["transformer.decoder.layers.0.linear1.weight"].shape[0],
        dropout=float(args.get("dropout", 0.1)),
        pre_norm="transformer.encoder.norm.weight" in state_dict,
        num_queries=state_dict["query_embed.weight"].shape[0],
        position_encoding="learned" if "backbone.1.row_embed.weight" in state_dict else "sine",
        num_classes=state_dict["class_embed.weight"].shape[0] - 1,
    )


def backbone_depth(
    name: str | None, backbone_keys: list[str], prefix: str
) -> Literal[18, 34, 50, 101]:
    """A ResNet's depth: from its ``name`` (``resnet50``...) if given, else from
    its torchvision-named keys under ``prefix`` (blocks in ``layer3``, bottlenecks)."""
    if name in _OFFICIAL_BACKBONES:
        return _OFFICIAL_BACKBONES[name]
    layer3 = prefix + "layer3."
    blocks_in_layer3 = len(
        {k[len(layer3) :].split(".")[0] for k in backbone_keys if k.startswith(layer3)}
    )
    bottleneck = any(".conv3." in k for k in backbone_keys)
    if bottleneck:
        return 101 if blocks_in_layer3 == 23 else 50
    return 34 if blocks_in_layer3 == 6 else 18


def load_official_state_dict(model: DETR, official_state_dict: Mapping[str, Tensor]) -> None:
    """Load official weights into ``model`` strictly; a mismatch lists the keys."""
    ours = from_official_state_dict(official_state_dict)
    expected = set(model.state_dict())
    missing, unexpected = sorted(expected - set(ours)), sorted(set(ours) - expected)
    if missing or unexpected:
        raise CheckpointError(
            "the checkpoint does not fit this architecture (official key names): "
            f"missing {[_rename(k, _CROSS_ATTN, False) for k in missing]}, "
            f"unexpected {[_rename(k, _CROSS_ATTN, False) for k in unexpected]}"
        )
    model.load_state_dict(ours, strict=True)
