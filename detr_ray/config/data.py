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
    """The datasets: annotation files and image folders, local or in object storage.

    Any of the four locations may be an ``s3://`` or ``gs://`` URI (endpoint and
    region: ``run.storage_endpoint`` / ``run.storage_region``, as for runs). A
    batch's images are read ``read_threads`` at a time; ``cache_dir`` (a folder
    on each node's local disk) keeps up to ``cache_gb`` GB of what was read from
    object storage, so that later epochs read local disk.
    """

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
    read_threads: int = 8
    cache_dir: str | None = None  # e.g. /mnt/local-ssd/detr-ray-cache; None: no cache
    cache_gb: float = 50.0

    def __post_init__(self):
        check_choices(self)
        require(self.size_divisor >= 1, "size_divisor", self.size_divisor, ">= 1")
        require(self.num_workers >= 0, "num_workers", self.num_workers, ">= 0")
        require(1 <= self.read_threads <= 256, "read_threads", self.read_threads, "in [1, 256]")
        require(self.cache_gb > 0, "cache_gb", self.cache_gb, "> 0 (GB)")
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
