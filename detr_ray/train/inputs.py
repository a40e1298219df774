"""The datasets a run trains and validates on, as its config describes them."""

from __future__ import annotations

from detr_ray.config import ExperimentConfig
from detr_ray.data.coco import CocoDetection
from detr_ray.data.labels import LabelMap
from detr_ray.data.transforms import build_transforms


def build_datasets(
    config: ExperimentConfig, label_map: LabelMap
) -> tuple[CocoDetection, CocoDetection]:
    """``(train_set, val_set)`` of ``config.data``, labelled by ``label_map``."""
    data = config.data
    train_set = CocoDetection(
        data.train_ann,
        data.train_images,
        build_transforms(data.augmentation, train=True),
        label_map=label_map,
        filter_empty=data.filter_empty,
        on_bad_image=data.on_bad_image,
    )
    val_set = CocoDetection(
        data.val_ann,
        data.val_images,
        build_transforms(data.augmentation, train=False),
        label_map=label_map,
        max_images=data.val_max_images,
        on_bad_image=data.on_bad_image,
    )
    return train_set, val_set
