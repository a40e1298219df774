"""Where and how a run runs: its workers, its folder, its tracking."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from detr_ray.schema import check_choices, require
from detr_ray.storage import StorageOptions


@dataclass(frozen=True)
class ScalingConfig:
    """Workers of a run. ``min_workers`` below ``num_workers`` makes the run
    elastic: it starts with as many workers as fit (at least ``min_workers``),
    goes on with fewer when a node is lost and grows back (checked every
    ``resize_interval_s``) when capacity returns; each resize restarts the
    workers from the latest checkpoint.

    ``start_timeout_s`` bounds the wait for the workers' resources on a
    cluster that may grow (0: wait for ever); a Ray this command starts
    cannot grow, so a run it can never hold is refused at once."""

    num_workers: int = 2  # the most workers (all of them in a fixed-size run)
    min_workers: int | None = None  # null: num_workers (a fixed size)
    resize_interval_s: float = 60.0  # how often an elastic run looks for room to grow
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    start_timeout_s: float = 300.0  # the wait for the workers' resources (0: for ever)

    @property
    def elastic(self) -> bool:
        return self.min_workers is not None and self.min_workers < self.num_workers

    def __post_init__(self):
        require(self.num_workers >= 1, "num_workers", self.num_workers, ">= 1")
        require(
            self.min_workers is None or 1 <= self.min_workers <= self.num_workers,
            "min_workers",
            self.min_workers,
            f"between 1 and num_workers ({self.num_workers}), or null",
        )
        require(
            self.resize_interval_s > 0, "resize_interval_s", self.resize_interval_s, "> 0 seconds"
        )
        require(self.cpus_per_worker > 0, "cpus_per_worker", self.cpus_per_worker, "> 0")
        require(
            self.start_timeout_s >= 0,
            "start_timeout_s",
            self.start_timeout_s,
            ">= 0 seconds (0: wait for ever)",
        )


@dataclass(frozen=True)
class RunConfig:
    """Where the run lives; the same name and storage path resume it.

    ``storage_path`` is a local or shared folder, or object storage
    (``s3://bucket/prefix``, ``gs://...``); an S3-compatible endpoint and its
    region may be set here (see :mod:`detr_ray.storage`); credentials come from
    the usual AWS variables or files, never from the config.
    """

    name: str = "detr"
    storage_path: str = "runs"
    storage_endpoint: str | None = None  # e.g. http://minio.internal:9000
    storage_region: str | None = None
    max_failures: int = 2
    keep_checkpoints: int = 3
    resume_from: str | None = None
    # async: a checkpoint is written locally, then copied to storage_path while
    # training goes on (a report stalls training only for the local write)
    checkpoint_upload: Literal["async", "sync"] = "async"

    @property
    def storage(self) -> StorageOptions:
        return StorageOptions(self.storage_endpoint, self.storage_region)

    def __post_init__(self):
        check_choices(self)
        require(
            bool(self.name) and "/" not in self.name,
            "name",
            self.name,
            "a non-empty name without '/'",
        )
        require(self.max_failures >= 0, "max_failures", self.max_failures, ">= 0")
        require(self.keep_checkpoints >= 1, "keep_checkpoints", self.keep_checkpoints, ">= 1")


@dataclass(frozen=True)
class TrackingConfig:
    """MLflow. ``uri`` null: a sqlite file in the run's storage path."""

    uri: str | None = None
    experiment: str = "detr-ray"
    log_images: int = 4
    # Register the best checkpoint as a version of this MLflow model (null: do not);
    # the alias "champion" moves to the version with the best validation AP.
    register_model: str | None = None
    system_metrics_every: float = 10.0  # seconds between system samples per node (0: off)
    async_logging: bool = True  # metric points through a background queue
    parent_run_id: str | None = None  # set by sweeps: the run is a trial of this one

    def __post_init__(self):
        require(self.log_images >= 0, "log_images", self.log_images, ">= 0")
        require(
            self.system_metrics_every >= 0,
            "system_metrics_every",
            self.system_metrics_every,
            ">= 0 (0: off)",
        )
        require(
            self.register_model is None or bool(self.register_model.strip()),
            "register_model",
            self.register_model,
            "a model name or null",
        )
