"""COCO-format data: the dataset, DETR's transforms, padding collation, and a
synthetic shapes dataset for demos and tests."""

from detr_ray.data.coco import CocoDetection, DataError, load_coco_json
from detr_ray.data.collate import Batch, ImageMeta, PadCollate
from detr_ray.data.labels import LabelMap
from detr_ray.data.transforms import AugmentationConfig, build_transforms

__all__ = [
    "AugmentationConfig",
    "Batch",
    "CocoDetection",
    "DataError",
    "ImageMeta",
    "LabelMap",
    "PadCollate",
    "build_transforms",
    "load_coco_json",
]
