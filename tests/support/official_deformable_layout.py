"""The official Deformable-DETR's module tree, for its checkpoint's key names and shapes.

A skeleton with the attribute names and shapes of
fundamentalvision/Deformable-DETR's ``models/deformable_detr.py`` and
``models/deformable_transformer.py`` (no forward): what ``state_dict()`` of
the official model holds, written from its module structure, independent of
detr_ray's converters. The ResNet body's keys are torchvision's (stored in
``tests/support/data``).
"""

from __future__ import annotations

import copy
import json

import torch
from torch import nn

from tests.support.torchvision_fixtures import HERE


class _MSDeformAttn(nn.Module):
    def __init__(self, d_model, n_levels, n_heads, n_points):
        super().__init__()
        self.sampling_offsets = nn.Linear(d_model, n_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(d_model, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(d_model, d_model)
        self.output_proj = nn.Linear(d_model, d_model)


class _EncoderLayer(nn.Module):
    def __init__(self, d_model, d_ffn, n_levels, n_heads, n_points):
        super().__init__()
        self.self_attn = _MSDeformAttn(d_model, n_levels, n_heads, n_points)
        self.norm1 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, d_ffn)
        self.linear2 = nn.Linear(d_ffn, d_model)
        self.norm2 = nn.LayerNorm(d_model)


class _DecoderLayer(nn.Module):
    def __init__(self, d_model, d_ffn, n_levels, n_heads, n_points):
        super().__init__()
        self.cross_attn = _MSDeformAttn(d_model, n_levels, n_heads, n_points)
        self.norm1 = nn.LayerNorm(d_model)
        self.self_attn = nn.MultiheadAttention(d_model, n_heads)
        self.norm2 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, d_ffn)
        self.linear2 = nn.Linear(d_ffn, d_model)
        self.norm3 = nn.LayerNorm(d_model)


class _Stack(nn.Module):
    def __init__(self, layer, num_layers):
        super().__init__()
        self.layers = nn.ModuleList(copy.deepcopy(layer) for _ in range(num_layers))


class _MLP(nn.Module):
    def __init__(self, d, out):
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, out)])


class _Transformer(nn.Module):
    def __init__(self, d_model, heads, layers, d_ffn, levels, points, two_stage):
        super().__init__()
        sizes = (d_model, d_ffn, levels, heads, points)
        self.encoder = _Stack(_EncoderLayer(*sizes), layers)
        self.decoder = _Stack(_DecoderLayer(*sizes), layers)
        self.level_embed = nn.Parameter(torch.zeros(levels, d_model))
        if two_stage:
            self.enc_output = nn.Linear(d_model, d_model)
            self.enc_output_norm = nn.LayerNorm(d_model)
            self.pos_trans = nn.Linear(d_model * 2, d_model * 2)
            self.pos_trans_norm = nn.LayerNorm(d_model * 2)
        else:
            self.reference_points = nn.Linear(d_model, 2)


def official_deformable_keys(
    *,
    depth: int,
    num_classes: int,
    d_model: int,
    heads: int,
    layers: int,
    d_ffn: int,
    levels: int,
    points: int,
    queries: int,
    refine: bool,
    two_stage: bool,
    backbone_channels: tuple[int, ...],
) -> dict[str, tuple[int, ...]]:
    """Every key of the official model's ``state_dict`` with its shape."""
    root = nn.Module()
    root.transformer = _Transformer(d_model, heads, layers, d_ffn, levels, points, two_stage)
    num_pred = layers + 1 if two_stage else layers
    class_embed, bbox_embed = nn.Linear(d_model, num_classes), _MLP(d_model, 4)
    if refine:
        root.class_embed = nn.ModuleList(copy.deepcopy(class_embed) for _ in range(num_pred))
        root.bbox_embed = nn.ModuleList(copy.deepcopy(bbox_embed) for _ in range(num_pred))
        root.transformer.decoder.bbox_embed = root.bbox_embed
    else:
        root.class_embed = nn.ModuleList([class_embed] * num_pred)
        root.bbox_embed = nn.ModuleList([bbox_embed] * num_pred)
    if two_stage:
        root.transformer.decoder.class_embed = root.class_embed
    else:
        root.query_embed = nn.Embedding(queries, d_model * 2)
    convs = [
        nn.Sequential(nn.Conv2d(c, d_model, 1), nn.GroupNorm(32, d_model))
        for c in backbone_channels
    ]
    in_channels = backbone_channels[-1]
    for _ in range(levels - len(backbone_channels)):
        convs.append(
            nn.Sequential(nn.Conv2d(in_channels, d_model, 3, 2, 1), nn.GroupNorm(32, d_model))
        )
        in_channels = d_model
    root.input_proj = nn.ModuleList(convs)
    keys = {k: tuple(v.shape) for k, v in root.state_dict().items()}
    body = json.loads((HERE / f"torchvision_resnet{depth}_keys.json").read_text())
    for key, shape in body:
        if not key.startswith("fc.") and not key.endswith("num_batches_tracked"):
            keys[f"backbone.0.body.{key}"] = tuple(shape)
    return keys
