"""The data sections: where the datasets are, a generated one, pretrained weights."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from detr_ray.config.augmentation import AugmentationConfig
from detr_ray.schema import check_choices, require


@dataclass(frozen=True)
class SyntheticDataConfig:
    """Generate a synthetic dataset at ``root`` when its files are missing."""

    root: str = "data/shapes"
    num_train: int = 512
    num_val: int = 64
    size: int = 128
    seed: int = 0
    kind: Literal["shapes", "glyphs", "swarm"] = "shapes"  # see detr_ray.data.synthetic

    def __post_init__(self):
        check_choices(self)
        require(self.num_train >= 1, "num_train", self.num_train, ">= 1")
        require(self.num_val >= 1, "num_val", self.num_val, ">= 1")
        require(16 <= self.size <= 4096, "size", self.size, "in [16, 4096] (pixels)")
        require(self.num_train <= 1_000_000, "num_train", self.num_train, "<= 1,000,000")


@dataclass(frozen=True)
class DataConfig:
    train_ann: str = "data/shapes/annotations/train.json"
    train_images: str = "data/shapes/train"
    val_ann: str = "data/shapes/annotations/val.json"
    val_images: str = "data/shapes/val"
    synthetic: SyntheticDataConfig | None = None
    augmentation: AugmentationConfig = field(default_factory=AugmentationConfig)
    size_divisor: int = 32
    filter_empty: bool = False
    on_bad_image: Literal["error", "skip"] = "error"
    num_workers: int = 2
    val_max_images: int | None = None

    def __post_init__(self):
        check_choices(self)
        require(self.size_divisor >= 1, "size_divisor", self.size_divisor, ">= 1")
        require(self.num_workers >= 0, "num_workers", self.num_workers, ">= 0")
        require(
            self.val_max_images is None or self.val_max_images >= 1,
            "val_max_images",
            self.val_max_images,
            ">= 1 or null",
        )


@dataclass(frozen=True)
class InitConfig:
    """Pretrained weights for fine-tuning (``model.init_from``, ``model.class_head``)."""

    init_from: str | None = None
    class_head: Literal["keep", "reinit"] = "keep"

    def __post_init__(self):
        check_choices(self)
