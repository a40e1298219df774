"""A Hugging Face checkpoint folder's settings as ours: its ``config.json`` and
``preprocessor_config.json`` (already read into dicts) to a
:class:`~detr_ray.config.model.ModelConfig`, a label map and the validation size.

Both HF detectors ours can run: ``DetrForObjectDetection`` (``model_type``
``detr``) and ``DeformableDetrForObjectDetection`` (``deformable_detr``),
with the hub's timm ResNet or HF's own. HF freezes the backbone's batch
norms and trains ``layer2``-``layer4``, as the official repositories do.
Shapes come from the weights where they say them (depth, classes), the rest
from the config.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor

from detr_ray.config.augmentation import AugmentationConfig
from detr_ray.config.model import ModelConfig
from detr_ray.data.labels import LabelMap
from detr_ray.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from detr_ray.errors import CheckpointError
from detr_ray.model.official import backbone_depth

HF_MODEL_TYPES = ("detr", "deformable_detr")


def hf_model_config(config: Mapping, state_dict: Mapping[str, Tensor], where: str) -> ModelConfig:
    """The :class:`ModelConfig` of an HF model whose ``state_dict`` is already in our names."""
    kind = config.get("model_type")
    if kind not in HF_MODEL_TYPES:
        raise CheckpointError(
            f"{where}: model_type {kind!r} is not one detr-ray runs; it runs {list(HF_MODEL_TYPES)}"
        )
    backbone = config.get("backbone_config") or {}
    name = config.get("backbone") or backbone.get("backbone")
    depth = backbone_depth(
        name if isinstance(name, str) else None,
        [k for k in state_dict if k.startswith("backbone.")],
        "backbone.",
    )
    common = dict(
        backbone_depth=depth,
        dilation=bool(config.get("dilation") or False),
        trainable_backbone_stages=3,
        backbone_norm="frozen",
        d_model=int(config.get("d_model", 256)),
        nhead=int(config.get("encoder_attention_heads", 8)),
        num_encoder_layers=int(config.get("encoder_layers", 6)),
        num_decoder_layers=int(config.get("decoder_layers", 6)),
        dim_feedforward=int(config.get("encoder_ffn_dim", 2048)),
        dropout=float(config.get("dropout", 0.1)),
    )
    if kind == "detr":
        return ModelConfig(
            **common,  # type: ignore[arg-type]
            num_queries=state_dict["query_embed.weight"].shape[0],
            position_encoding="learned"
            if config.get("position_embedding_type") == "learned"
            else "sine",
            num_classes=state_dict["class_head.weight"].shape[0] - 1,
        )
    two_stage = bool(config.get("two_stage"))
    return ModelConfig(
        **common,  # type: ignore[arg-type]
        family="deformable_detr",
        num_queries=int(config.get("two_stage_num_proposals", 300))
        if two_stage
        else state_dict["query_embed.weight"].shape[0],
        num_classes=_first_class_head(state_dict, where).shape[0],
        num_feature_levels=int(config.get("num_feature_levels", 4)),
        enc_points=int(config.get("encoder_n_points", 4)),
        dec_points=int(config.get("decoder_n_points", 4)),
        with_box_refine=bool(config.get("with_box_refine")),
        two_stage=two_stage,
    )


def _first_class_head(state_dict: Mapping[str, Tensor], where: str) -> Tensor:
    """The first class head's weight (``save_pretrained`` may keep the decoder's tied copy)."""
    for key in ("class_embed.0.weight", "decoder.class_embed.0.weight"):
        if key in state_dict:
            return state_dict[key]
    raise CheckpointError(f"{where}: its weights hold no class head (class_embed.0.weight)")


def hf_label_map(config: Mapping, num_classes: int) -> LabelMap:
    """Label ``i`` is HF's class id ``i`` (the category id, as in COCO-trained
    hub models), named by ``id2label``."""
    names = {int(k): str(v) for k, v in (config.get("id2label") or {}).items()}
    return LabelMap(
        tuple(range(num_classes)), tuple(names.get(i, f"class {i}") for i in range(num_classes))
    )


def hf_augmentation(preprocessor: Mapping | None, where: str) -> AugmentationConfig:
    """The validation size of ``preprocessor_config.json`` (the shortest and
    longest edge; HF's default 800 / 1333 without the file)."""
    if not preprocessor:
        return AugmentationConfig()
    for key, ours in (("image_mean", IMAGENET_MEAN), ("image_std", IMAGENET_STD)):
        theirs = preprocessor.get(key)
        if theirs is not None and [round(float(v), 3) for v in theirs] != [
            round(v, 3) for v in ours
        ]:
            raise CheckpointError(
                f"{where}: preprocessor_config.json normalises with {key} {theirs}; detr-ray "
                f"normalises with ImageNet's {list(ours)}"
            )
    size = preprocessor.get("size") or {}
    if isinstance(size, Mapping):
        shortest = size.get("shortest_edge", 800)
        longest = size.get("longest_edge", 1333)
    else:  # older files: "size": 800, "max_size": 1333
        shortest, longest = size, preprocessor.get("max_size", 1333)
    base = AugmentationConfig.scaled(int(shortest))
    return AugmentationConfig(
        train_scales=base.train_scales,
        max_size=int(longest),
        crop_resize_scales=base.crop_resize_scales,
        crop_size=base.crop_size,
        val_scale=int(shortest),
    )
