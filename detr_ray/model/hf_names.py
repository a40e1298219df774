"""HF transformers' parameter names to this package's (torchvision's and the official repos').

HF's models hold the same layers under other names, and its names changed
between transformers 4 (what the hub's files hold, e.g. facebook/detr-resnet-50
and SenseTime/deformable-detr) and 5 (``backbone.conv_encoder`` became
``backbone``, ``fc1`` ``mlp.fc1``, ``out_proj`` ``o_proj``):
:func:`hf_current_names` brings a 4 file to 5's names, as transformers does
when it loads one. Then:

- the backbone is timm's ResNet (the hub's files: torchvision's names,
  ``conv1``, ``layer1.0.conv1``...) or HF's own (``embedder.embedder.convolution``,
  ``encoder.stages.S.layers.B.layer.I``, ``...shortcut``), renamed to torchvision's;
- HF's transformer layers name the official layers' norms and feed-forward
  parts by role (``self_attn_layer_norm``, ``mlp.fc1``) and split each
  ``nn.MultiheadAttention`` projection in three (``q/k/v_proj``).

These functions rename a state dict; they read no file.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch
from torch import Tensor

# transformers 4 -> 5 (transformers' own conversion_mapping for detr and deformable_detr)
_V4_TO_V5 = (
    (re.compile(r"backbone\.conv_encoder\."), "backbone."),
    (re.compile(r"(layers\.\d+)\.fc([12])\."), r"\1.mlp.fc\2."),
    (re.compile(r"(self_attn|encoder_attn)\.out_proj\."), r"\1.o_proj."),
)
BACKBONE_PREFIX = "model.backbone.model."  # (transformers 5's names)


def hf_current_names(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """A transformers 4 state dict in transformers 5's names (5's are kept)."""
    out = {}
    for key, value in state.items():
        for pattern, replacement in _V4_TO_V5:
            key = pattern.sub(replacement, key)
        out[key] = value
    return out


def hf_resnet_names(state: Mapping[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """The ResNet under ``prefix`` (e.g. ``model.backbone.model.``), timm's or
    HF's own, in torchvision's ResNet names; other keys are left out."""
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


def _join_qkv(state: dict[str, Tensor], old: str, new: str) -> None:
    """``...{old}.q/k/v_proj.*`` -> ``...{new}.in_proj_*`` (``nn.MultiheadAttention``), in place."""
    heads = sorted({k.split(f"{old}.q_proj")[0] for k in state if f"{old}.q_proj" in k})
    for head in heads:
        for kind in ("weight", "bias"):
            parts = [state.pop(f"{head}{old}.{p}_proj.{kind}") for p in "qkv"]
            state[f"{head}{new}.in_proj_{kind}"] = torch.cat(parts)


def _renamed(key: str, renames: list[tuple[str, str]]) -> str:
    for old, new in renames:
        key = key.replace(old, new)
    return key


# ---------------------------------------------------------------- Deformable DETR
_DEFORMABLE_TOP_LEVEL = tuple(
    f"model.{name}"
    for name in ("input_proj.", "level_embed", "reference_points.", "enc_output", "pos_trans")
)
_DEFORMABLE_ENCODER_LAYER = [
    ("self_attn_layer_norm", "norm1"),
    ("mlp.fc1", "linear1"),
    ("mlp.fc2", "linear2"),
    ("final_layer_norm", "norm2"),
]
_DEFORMABLE_DECODER_LAYER = [
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
        encoder = key.startswith("encoder.")
        out[_renamed(key, _DEFORMABLE_ENCODER_LAYER if encoder else _DEFORMABLE_DECODER_LAYER)] = (
            value
        )
    _join_qkv(out, "self_attn", "self_attn")
    return out


def hf_deformable_detr_names(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """A ``DeformableDetrForObjectDetection`` state dict (transformers 4 or 5,
    timm or HF ResNet) in :class:`~detr_ray.model.deformable.detector.DeformableDETR`'s names."""
    state = hf_current_names(state)
    out = {f"backbone.{k}": v for k, v in hf_resnet_names(state, BACKBONE_PREFIX).items()}
    transformer = {}
    for key, value in state.items():
        if key.startswith(("model.encoder.", "model.decoder.")):
            transformer[key[len("model.") :]] = value
        elif key.startswith(_DEFORMABLE_TOP_LEVEL):
            out[key[len("model.") :]] = value
        elif key.startswith("model.query_position_embeddings."):
            out[key.replace("model.query_position_embeddings.", "query_embed.")] = value
        elif key.startswith(("class_embed.", "bbox_embed.")):
            out[key] = value
    out.update(hf_deformable_transformer_names(transformer))
    return out


def deformable_heads(
    state: Mapping[str, Tensor], num_heads: int, refine: bool
) -> dict[str, Tensor]:
    """:func:`hf_deformable_detr_names`' output with every head our model holds.

    ``save_pretrained`` writes a tensor shared by several modules once: the
    heads every layer shares without box refinement as ``class_embed.0`` /
    ``bbox_embed.0`` only, and the heads box refinement ties to the decoder
    under the decoder's name (``decoder.class_embed.i``, ``decoder.bbox_embed.i``).
    Ours are ``class_embed.i`` and ``bbox_embed.i`` for each of ``num_heads``
    (decoder layers, plus the two-stage encoder's), and with box refinement
    the decoder's view of the box heads, ``decoder.bbox_embed.i``.
    """
    out = {k: v for k, v in state.items() if not k.startswith("decoder.class_embed.")}
    for key, value in state.items():
        match = re.match(r"(decoder\.)?(class_embed|bbox_embed)\.(\d+)\.(.*)", key)
        if not match:
            continue
        head, index, rest = match[2], int(match[3]), match[4]
        shared = not refine and index == 0  # every layer's
        for target in range(num_heads) if shared else [index]:
            out.setdefault(f"{head}.{target}.{rest}", value)
            if refine and head == "bbox_embed":
                out.setdefault(f"decoder.bbox_embed.{target}.{rest}", value)
    return out


# ---------------------------------------------------------------- DETR
_DETR_ENCODER_LAYER = [
    ("self_attn.o_proj", "self_attn.out_proj"),
    ("self_attn_layer_norm", "norm1"),
    ("mlp.fc1", "linear1"),
    ("mlp.fc2", "linear2"),
    ("final_layer_norm", "norm2"),
]
_DETR_DECODER_LAYER = [
    ("self_attn.o_proj", "self_attn.out_proj"),
    ("encoder_attn.o_proj", "cross_attn.out_proj"),
    ("self_attn_layer_norm", "norm1"),
    ("encoder_attn_layer_norm", "norm2"),
    ("mlp.fc1", "linear1"),
    ("mlp.fc2", "linear2"),
    ("final_layer_norm", "norm3"),
]
_DETR_TOP_LEVEL = [
    ("model.input_projection.", "input_proj."),
    ("model.query_position_embeddings.", "query_embed."),
    ("model.decoder.layernorm.", "transformer.decoder.norm."),
    ("class_labels_classifier.", "class_head."),
    ("bbox_predictor.", "box_head."),
]


def hf_detr_names(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """A ``DetrForObjectDetection`` state dict (transformers 4 or 5, timm or HF
    ResNet) in :class:`~detr_ray.model.detr.DETR`'s names."""
    state = hf_current_names(state)
    out = {f"backbone.{k}": v for k, v in hf_resnet_names(state, BACKBONE_PREFIX).items()}
    for key, value in state.items():
        if key.startswith("model.encoder.layers."):
            out["transformer." + _renamed(key[len("model.") :], _DETR_ENCODER_LAYER)] = value
        elif key.startswith("model.decoder.layers."):
            out["transformer." + _renamed(key[len("model.") :], _DETR_DECODER_LAYER)] = value
        else:
            for old, new in _DETR_TOP_LEVEL:
                if key.startswith(old):
                    out[new + key[len(old) :]] = value
    _join_qkv(out, "self_attn", "self_attn")
    _join_qkv(out, "encoder_attn", "cross_attn")
    return out
