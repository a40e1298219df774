"""HF transformers' parameter names to this package's (torchvision's and the official repos').

HF's models hold the same layers under other names: its ResNet
(``embedder.embedder.convolution``, ``encoder.stages.S.layers.B.layer.I``,
``...shortcut``) is torchvision's (``conv1``, ``layerS+1.B.convI+1``,
``...downsample``); its Deformable DETR transformer names the official
layers' norms and feed-forward parts by role (``self_attn_layer_norm``,
``mlp.fc1``), and splits the decoder's self-attention projection in three.
These functions rename a state dict; they read no file.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch
from torch import Tensor


def hf_resnet_names(state: Mapping[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """The HF ResNet under ``prefix`` (e.g. ``model.backbone.conv_encoder.model.``)
    renamed to torchvision's ResNet names; other keys are left out."""
    out = {}
    for key, value in state.items():
        if not key.startswith(prefix) or key.endswith("num_batches_tracked"):
            continue
        name = key[len(prefix) :]
        name = name.replace("embedder.embedder.convolution", "conv1")
        name = name.replace("embedder.embedder.normalization", "bn1")
        match = re.match(r"encoder\.stages\.(\d+)\.layers\.(\d+)\.(.*)", name)
        if match:
            stage, block, rest = int(match[1]), int(match[2]), match[3]
            rest = rest.replace("shortcut.convolution", "downsample.0")
            rest = rest.replace("shortcut.normalization", "downsample.1")
            conv = re.match(r"layer\.(\d+)\.(convolution|normalization)\.(.*)", rest)
            if conv:
                index = int(conv[1]) + 1
                kind = "conv" if conv[2] == "convolution" else "bn"
                rest = f"{kind}{index}.{conv[3]}"
            name = f"layer{stage + 1}.{block}.{rest}"
        out[name] = value
    return out


_TOP_LEVEL = tuple(
    f"model.{name}"
    for name in ("input_proj.", "level_embed", "reference_points.", "enc_output", "pos_trans")
)
_BACKBONE_PREFIXES = ("model.backbone.conv_encoder.model.", "model.backbone.model.")
_ENCODER_LAYER = [
    ("self_attn_layer_norm", "norm1"),
    ("mlp.fc1", "linear1"),
    ("mlp.fc2", "linear2"),
    ("final_layer_norm", "norm2"),
]
_DECODER_LAYER = [
    ("self_attn_layer_norm", "norm2"),
    ("encoder_attn_layer_norm", "norm1"),
    ("encoder_attn.", "cross_attn."),
    ("self_attn.o_proj", "self_attn.out_proj"),
    ("mlp.fc1", "linear1"),
    ("mlp.fc2", "linear2"),
    ("final_layer_norm", "norm3"),
]


def hf_deformable_transformer_names(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """HF's ``encoder.layers.*`` / ``decoder.layers.*`` keys (no other prefix)
    renamed to the official Deformable-DETR names, the decoder's ``q/k/v_proj``
    joined into ``nn.MultiheadAttention``'s ``in_proj``."""
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        renames = _ENCODER_LAYER if key.startswith("encoder.") else _DECODER_LAYER
        for old, new in renames:
            key = key.replace(old, new)
        out[key] = value
    heads = sorted({k.split("self_attn.q_proj")[0] for k in out if "self_attn.q_proj" in k})
    for head in heads:
        for kind in ("weight", "bias"):
            parts = [out.pop(f"{head}self_attn.{p}_proj.{kind}") for p in "qkv"]
            out[f"{head}self_attn.in_proj_{kind}"] = torch.cat(parts)
    return out


def hf_deformable_detr_names(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """A ``DeformableDetrForObjectDetection`` state dict (HF ResNet backbone) in
    :class:`~detr_ray.model.deformable.detector.DeformableDETR`'s names."""
    # transformers 4 kept the ResNet at model.backbone.conv_encoder.model, 5 at model.backbone.model
    prefix = next(
        (p for p in _BACKBONE_PREFIXES if any(k.startswith(p) for k in state)),
        _BACKBONE_PREFIXES[0],
    )
    out = {f"backbone.{k}": v for k, v in hf_resnet_names(state, prefix).items()}
    transformer = {}
    for key, value in state.items():
        if key.startswith("model.decoder.class_embed."):
            continue  # two stages: HF's tied copy of class_embed (the decoder never reads it)
        if key.startswith(("model.encoder.", "model.decoder.")):
            transformer[key[len("model.") :]] = value
        elif key.startswith(_TOP_LEVEL):
            out[key[len("model.") :]] = value
        elif key.startswith("model.query_position_embeddings."):
            out[key.replace("model.query_position_embeddings.", "query_embed.")] = value
        elif key.startswith(("class_embed.", "bbox_embed.")):
            out[key] = value
    out.update(hf_deformable_transformer_names(transformer))
    return out
