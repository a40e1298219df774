"""Whether the data suits the model: warnings at training start, each with its fix.

From the training set's profile (:mod:`detr_ray.data.profile`) at the
training scale, three mismatches that make a detector learn little, each a
single line that names the numbers and what to change:

- most objects smaller than one cell of the model's finest feature map;
- images with more objects than the model has queries (they can never all
  be matched);
- classes with so few training objects that they will score little.

Pure: no torch, Ray or MLflow.
"""

from __future__ import annotations

from detr_ray.config import AugmentationConfig, ModelConfig
from detr_ray.data.profile import DatasetProfile, percentile

RARE_BELOW = 10  # training objects


def finest_stride(model: ModelConfig) -> int:
    """Pixels per cell of the finest feature map ``model`` reads: DETR's last
    backbone map (32; 16 with 3 stages or DC5), Deformable DETR's finest level
    (the backbone's ``layer2``-``layer4`` maps at 8, 16, 32, the last
    ``num_feature_levels`` of them)."""
    if not model.deformable:
        return 16 if model.backbone_stages == 3 or model.dilation else 32
    maps = [8, 16] if model.backbone_stages == 3 else [8, 16, 16 if model.dilation else 32]
    return maps[-min(model.num_feature_levels, len(maps))]


def training_scale(augmentation: AugmentationConfig) -> tuple[int, int]:
    """The typical training resize: the middle of ``train_scales`` and ``max_size``."""
    return int(percentile(sorted(float(s) for s in augmentation.train_scales), 50)), (
        augmentation.max_size
    )


def data_fit_warnings(profile: DatasetProfile, model: ModelConfig) -> list[str]:
    """The warnings (see the module doc) for a training set's ``profile``, taken
    at the training scale, and the model that will train on it; ``[]`` if none."""
    warnings = []
    stride = finest_stride(model)
    median = profile.object_size_at_scale.p50
    if profile.per_image_counts and median and median < stride:
        fixes = "resize the images larger (data.augmentation.scaled_to or train_scales/val_scale)"
        if not model.deformable:
            fixes += ", use model.backbone_stages: 3 (16-px cells) or model.family: deformable_detr"
        warnings.append(
            f"half of the training objects are under {median:.0f} px at the training scale "
            f"(short side {profile.scale}), less than one cell of this model's finest feature "
            f"map ({stride} px): it will hardly see them. Fix: {fixes}; `detr-ray recipe` "
            "chooses a scale and model for your data"
        )
    over = profile.images_over(model.num_queries)
    if over:
        p99 = profile.objects_per_image.p99
        warnings.append(
            f"{over} training image(s) hold more objects than model.num_queries "
            f"({model.num_queries}; the most is {profile.objects_per_image.max:.0f}, p99 "
            f"{p99:.0f}): their extra objects can never be matched. Fix: model.num_queries "
            f"above {p99:.0f}, with a margin"
        )
    rare = profile.rare_classes(RARE_BELOW)
    if rare:
        shown = ", ".join(f"{name} ({n})" for name, n in list(rare.items())[:8])
        more = f" and {len(rare) - 8} more" if len(rare) > 8 else ""
        warnings.append(
            f"{len(rare)} class(es) have fewer than {RARE_BELOW} training objects: {shown}"
            f"{more}; expect little AP on them. Fix: more examples of them, or merge or "
            "drop those categories"
        )
    return warnings
