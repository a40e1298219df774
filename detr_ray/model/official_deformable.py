"""The official Deformable-DETR checkpoint layout (fundamentalvision/Deformable-DETR).

Its ``state_dict`` (e.g. ``r50_deformable_detr-checkpoint.pth``, saved as
``{"model", "args", "optimizer", ...}``) names our ``backbone``
``backbone.0.body`` and keeps the encoder, decoder, level embeddings,
reference-point map and two-stage parts under ``transformer.``; with two
stages the decoder also holds a tied copy of the class heads
(``transformer.decoder.class_embed``), which ours does not. Every other key
is ours. Its class head has one row per COCO category id (0..90), as the
official DETR's.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Mapping

from torch import Tensor

from detr_ray.config.model import ModelConfig
from detr_ray.errors import CheckpointError
from detr_ray.model.official import backbone_depth

_TRANSFORMER_PARTS = ("level_embed", "reference_points.", "enc_output", "pos_trans")


def is_official_deformable_checkpoint(checkpoint: Mapping) -> bool:
    model = checkpoint.get("model")
    return (
        isinstance(model, Mapping)
        and "transformer.level_embed" in model
        and any(k.startswith("backbone.0.body.") for k in model)
    )


def from_official_deformable_state_dict(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """An official Deformable-DETR ``state_dict`` in our names."""
    out = {}
    for key, value in state_dict.items():
        if key.startswith("transformer.decoder.class_embed."):
            continue  # the two-stage decoder's tied copy of class_embed
        if key.startswith("backbone.0.body."):
            key = "backbone." + key[len("backbone.0.body.") :]
        elif key.startswith("transformer."):
            key = key[len("transformer.") :]
        out[key] = value
    return out


def to_official_deformable_state_dict(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Our Deformable DETR ``state_dict`` in the official names (the inverse of
    :func:`from_official_deformable_state_dict`, the tied two-stage copy added)."""
    out = {}
    for key, value in state_dict.items():
        if key.startswith("backbone."):
            out["backbone.0.body." + key[len("backbone.") :]] = value
        elif key.startswith(("encoder.", "decoder.", *_TRANSFORMER_PARTS)):
            out["transformer." + key] = value
        else:
            out[key] = value
        if key.startswith("class_embed.") and "enc_output.weight" in state_dict:
            out["transformer.decoder." + key] = value
    return out


def official_deformable_config(state_dict: Mapping[str, Tensor], args=None) -> ModelConfig:
    """The :class:`ModelConfig` of an official Deformable-DETR checkpoint: from
    the tensor shapes, and ``args`` for what shapes do not say (depth of the
    backbone when named, dropout, heads, points, two stages)."""
    args = vars(args) if isinstance(args, argparse.Namespace) else dict(args or {})
    if args.get("masks"):
        raise CheckpointError("segmentation checkpoints (--masks) are not supported")
    backbone_keys = [k for k in state_dict if k.startswith("backbone.0.body.")]

    def count(prefix: str) -> int:
        pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
        return len({m.group(1) for k in state_dict if (m := pattern.match(k))})

    levels = state_dict["transformer.level_embed"].shape[0]
    d_model = state_dict["transformer.level_embed"].shape[1]
    two_stage = "transformer.enc_output.weight" in state_dict
    num_decoder_layers = count("transformer.decoder.layers.")
    heads = int(args.get("nheads", 8))
    offsets = state_dict["transformer.encoder.layers.0.self_attn.sampling_offsets.weight"]
    dec_offsets = state_dict["transformer.decoder.layers.0.cross_attn.sampling_offsets.weight"]
    lr_backbone = args.get("lr_backbone", 2e-5)
    return ModelConfig(
        family="deformable_detr",
        backbone_depth=backbone_depth(args.get("backbone"), backbone_keys, "backbone.0.body."),
        dilation=bool(args.get("dilation", False)),
        trainable_backbone_stages=3 if lr_backbone > 0 else 0,
        d_model=d_model,
        nhead=heads,
        num_encoder_layers=count("transformer.encoder.layers."),
        num_decoder_layers=num_decoder_layers,
        dim_feedforward=state_dict["transformer.encoder.layers.0.linear1.weight"].shape[0],
        dropout=float(args.get("dropout", 0.1)),
        num_queries=int(args.get("num_queries", 300))
        if two_stage
        else state_dict["query_embed.weight"].shape[0],
        num_classes=state_dict["class_embed.0.weight"].shape[0],
        num_feature_levels=levels,
        enc_points=offsets.shape[0] // (heads * levels * 2),
        dec_points=dec_offsets.shape[0] // (heads * levels * 2),
        with_box_refine=count("transformer.decoder.bbox_embed.") > 0,
        two_stage=two_stage,
    )
