"""The datasets a run trains and validates on, as its config describes them."""

from __future__ import annotations

import functools

from detr_ray.config import ExperimentConfig
from detr_ray.data.coco import CocoDetection
from detr_ray.data.labels import LabelMap
from detr_ray.data.node_cache import NodeCache
from detr_ray.data.transforms import build_transforms


def build_datasets(
    config: ExperimentConfig, label_map: LabelMap, annotations: dict | None = None
) -> tuple[CocoDetection, CocoDetection]:
    """``(train_set, val_set)`` of ``config.data``, labelled by ``label_map``.

    ``annotations``: ``{"train": ..., "val": ...}`` as :func:`load_coco_json`
    read them on the driver (each worker reads them itself without it).
    """
    data = config.data
    annotations = annotations or {}
    cache = None if data.cache_dir is None else NodeCache(data.cache_dir, data.cache_gb)
    reading = functools.partial(
        CocoDetection, storage=config.run.storage, cache=cache, read_threads=data.read_threads
    )
    train_set = reading(
        data.train_ann,
        data.train_images,
        build_transforms(data.augmentation, train=True),
        label_map=label_map,
        filter_empty=data.filter_empty,
        on_bad_image=data.on_bad_image,
        annotations=annotations.get("train"),
    )
    val_set = reading(
        data.val_ann,
        data.val_images,
        build_transforms(data.augmentation, train=False),
        label_map=label_map,
        max_images=data.val_max_images,
        on_bad_image=data.on_bad_image,
        annotations=annotations.get("val"),
    )
    return train_set, val_set
