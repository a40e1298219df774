"""The experiment configuration: typed, loaded from YAML, overridable with ``--set``.

Sections and their keys are the frozen dataclasses below; every weight and
size is set in exactly one place. Loading goes YAML -> nested dict ->
``--set a.b=value`` overrides -> dataclasses, and every problem (an unknown
key, a value of the wrong type, a value out of range) raises
:class:`ConfigError` naming the dotted key.

Two conveniences exist only in YAML: ``model.preset`` starts the model section
from a named preset (its other keys override the preset), and
``data.augmentation.scaled_to`` starts the augmentation from the official
recipe scaled to that validation size. The resolved config (what
:meth:`ExperimentConfig.to_dict` writes) spells every key out.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from detr_ray.config.augmentation import AugmentationConfig
from detr_ray.config.model import ModelConfig, preset_config
from detr_ray.errors import ConfigError
from detr_ray.schema import build, check_choices, plain_data, require
from detr_ray.storage import StorageOptions, is_uri, read_bytes, without_query


@dataclass(frozen=True)
class SyntheticDataConfig:
    """Generate a synthetic dataset at ``root`` when its files are missing."""

    root: str = "data/shapes"
    num_train: int = 512
    num_val: int = 64
    size: int = 128
    seed: int = 0
    kind: Literal["shapes", "glyphs"] = "shapes"  # see detr_ray.data.synthetic

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


@dataclass(frozen=True)
class MatcherConfig:
    """The Hungarian matcher's cost weights (the reference's 1 / 5 / 2) and L1 box format.

    ``bbox_cost_format``'s words are :data:`detr_ray.criterion.matcher.BOX_COST_FORMATS`.
    """

    cls_cost: float = 1.0
    bbox_cost: float = 5.0
    iou_cost: float = 2.0
    bbox_cost_format: Literal["xyxy", "cxcywh"] = "xyxy"

    def __post_init__(self):
        check_choices(self)
        for key in ("cls_cost", "bbox_cost", "iou_cost"):
            require(getattr(self, key) >= 0, key, getattr(self, key), ">= 0")


@dataclass(frozen=True)
class LossConfig:
    """The set loss's term weights (the reference's 1 / 5 / 2) and background weight."""

    cls_weight: float = 1.0
    bbox_weight: float = 5.0
    iou_weight: float = 2.0
    bg_cls_weight: float = 0.1
    sync_cls_avg_factor: bool = True

    def __post_init__(self):
        for key in ("cls_weight", "bbox_weight", "iou_weight", "bg_cls_weight"):
            require(getattr(self, key) >= 0, key, getattr(self, key), ">= 0")


@dataclass(frozen=True)
class OptimConfig:
    """AdamW with a separate backbone learning rate; gradient-norm clipping."""

    lr: float = 1e-4
    backbone_lr: float = 1e-5
    weight_decay: float = 1e-4
    grad_clip: float | None = 0.1
    # Follow the global batch when an elastic run has fewer workers than
    # scaling.num_workers: none (the default; DETR's authors do not scale the
    # rate with the batch), linear or sqrt in (workers present / num_workers).
    lr_scaling: Literal["none", "linear", "sqrt"] = "none"

    def __post_init__(self):
        check_choices(self)
        require(self.lr > 0, "lr", self.lr, "> 0")
        require(self.backbone_lr >= 0, "backbone_lr", self.backbone_lr, ">= 0")
        require(self.weight_decay >= 0, "weight_decay", self.weight_decay, ">= 0")
        require(
            self.grad_clip is None or self.grad_clip > 0, "grad_clip", self.grad_clip, "> 0 or null"
        )


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 500
    lr_drop_epochs: tuple[int, ...] = (400,)
    lr_gamma: float = 0.1
    # linear warm-up over this many steps at the full size (scaling.num_workers
    # workers), counted in images, so an elastic resize does not move it
    warmup_steps: int = 0
    batch_size: int = 2  # per worker
    max_steps_per_epoch: int | None = None
    amp: Literal["off", "bf16", "fp16"] = "off"
    channels_last: bool = False
    seed: int = 42
    eval_every: int = 1  # epochs
    # COCOeval: pycocotools, faster-coco-eval (same metrics), or auto (faster when installed)
    eval_backend: Literal["auto", "pycocotools", "faster-coco-eval"] = "auto"
    log_every: int = 10  # steps
    report_every: int | None = None  # steps; None: once per epoch
    max_nan_steps: int = 10  # consecutive skipped steps before the run stops
    # Group DETR: train K groups of queries, each matched one-to-one (1: off, the
    # reference DETR). Evaluation, checkpoints and export use the first group only.
    query_groups: int = 1
    # Co-DETR-style dense auxiliary head on the encoder, trained one-to-many; the
    # weight of its losses (0: off). Dropped from evaluation, checkpoints and export.
    dense_aux_weight: float = 0.0

    def __post_init__(self):
        check_choices(self)
        require(self.epochs >= 1, "epochs", self.epochs, ">= 1")
        require(self.query_groups >= 1, "query_groups", self.query_groups, ">= 1 (1: off)")
        require(
            self.dense_aux_weight >= 0, "dense_aux_weight", self.dense_aux_weight, ">= 0 (0: off)"
        )
        require(self.batch_size >= 1, "batch_size", self.batch_size, ">= 1")
        require(0 < self.lr_gamma <= 1, "lr_gamma", self.lr_gamma, "in (0, 1]")
        require(self.warmup_steps >= 0, "warmup_steps", self.warmup_steps, ">= 0")
        require(
            self.max_steps_per_epoch is None or self.max_steps_per_epoch >= 1,
            "max_steps_per_epoch",
            self.max_steps_per_epoch,
            ">= 1 or null",
        )
        require(self.eval_every >= 1, "eval_every", self.eval_every, ">= 1")
        require(self.log_every >= 1, "log_every", self.log_every, ">= 1")
        require(
            self.report_every is None or self.report_every >= 1,
            "report_every",
            self.report_every,
            ">= 1 or null",
        )
        require(self.max_nan_steps >= 0, "max_nan_steps", self.max_nan_steps, ">= 0")
        require(
            all(e >= 1 for e in self.lr_drop_epochs),
            "lr_drop_epochs",
            self.lr_drop_epochs,
            "epochs >= 1",
        )


@dataclass(frozen=True)
class ScalingConfig:
    """Workers of a run. ``min_workers`` below ``num_workers`` makes the run
    elastic: it starts with as many workers as fit (at least ``min_workers``),
    goes on with fewer when a node is lost and grows back (checked every
    ``resize_interval_s``) when capacity returns; each resize restarts the
    workers from the latest checkpoint."""

    num_workers: int = 2  # the most workers (all of them in a fixed-size run)
    min_workers: int | None = None  # null: num_workers (a fixed size)
    resize_interval_s: float = 60.0  # how often an elastic run looks for room to grow
    use_gpu: bool = False
    cpus_per_worker: float = 1.0

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


@dataclass(frozen=True)
class DebugConfig:
    """Fault injection, for tests of the failure paths. Leave unset."""

    fail_once_at_step: int | None = None
    nan_at_steps: tuple[int, ...] = ()
    # A local folder: every worker appends, per step, the image ids it trained
    # on (with epoch, step, world size, its pid) to a JSON-lines file there.
    record_images: str | None = None
    step_delay_s: float = 0.0  # sleep before every step: slows a tiny run down for fault tests
    fail_scoring: bool = False  # a DataError while scoring the first evaluation

    def __post_init__(self):
        require(self.step_delay_s >= 0, "step_delay_s", self.step_delay_s, ">= 0 seconds")


@dataclass(frozen=True)
class ExperimentConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    init: InitConfig = field(default_factory=InitConfig)
    data: DataConfig = field(default_factory=DataConfig)
    matcher: MatcherConfig = field(default_factory=MatcherConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    scaling: ScalingConfig = field(default_factory=ScalingConfig)
    run: RunConfig = field(default_factory=RunConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    debug: DebugConfig = field(default_factory=DebugConfig)

    def __post_init__(self):
        if self.train.amp == "fp16" and not self.scaling.use_gpu:
            raise ConfigError(
                "train.amp: fp16 needs a GPU (scaling.use_gpu: true); use bf16 on CPU"
            )

    # ------------------------------------------------------------------ I/O
    @classmethod
    def from_dict(cls, raw: dict) -> ExperimentConfig:
        """Build and validate from a nested dict (YAML's shape)."""
        raw = _expand_conveniences(_deep_copy(raw))
        model_raw = raw.pop("model", None) or {}
        if not isinstance(model_raw, dict):
            raise ConfigError(f"model must be a mapping, got {model_raw!r}")
        # model.init_from and model.class_head are the model section's keys in YAML
        init_raw = {k: model_raw.pop(k) for k in ("init_from", "class_head") if k in model_raw}
        init = build(InitConfig, init_raw, prefix="model.")
        return build(cls, {**raw, "model": model_raw, "init": init})

    def to_dict(self) -> dict:
        """The resolved config as plain data; ``from_dict`` of it is equal to ``self``."""
        data = plain_data(self)
        data["model"].update(data.pop("init"))
        return data

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def flat(self) -> dict[str, Any]:
        """Dotted key -> value, e.g. for MLflow params."""
        return _flatten(self.to_dict())


def load_config(path: str | os.PathLike, overrides: list[str] | None = None) -> ExperimentConfig:
    """Read a YAML experiment config and apply ``a.b=value`` overrides."""
    raw = read_yaml_file(path, "config file")
    if raw == {}:
        raise ConfigError(
            f"config file {path} is empty; start from configs/shapes_tiny.yaml or "
            "configs/coco_detr_r50.yaml (an empty file would train the defaults: 500 epochs)"
        )
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {path} must hold a mapping of sections")
    try:
        return ExperimentConfig.from_dict(apply_overrides(raw, overrides or []))
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


def read_yaml_file(path: str | os.PathLike, what: str) -> Any:
    """The YAML document in ``path`` (``{}`` if empty); errors name ``what`` and the file."""
    if is_uri(path):  # e.g. a sweep's best_config.yaml in object storage
        try:
            text = read_bytes(str(path)).decode()
        except (OSError, ValueError) as e:
            raise ConfigError(f"{what} {without_query(str(path))} cannot be read: {e}") from None
    else:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{what} {path} does not exist")
        text = path.read_text()
    try:
        return yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{what} {path} is not valid YAML: {e}") from None


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """``["train.epochs=3", "data.synthetic=null"]`` applied to a nested dict (copied)."""
    raw = _deep_copy(raw)
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError:
            value = text
        parts = key.split(".")
        node = raw
        for depth, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"--set {key}: {'.'.join(parts[: depth + 1])} is not a section")
            node = child
        node[parts[-1]] = value
    return raw


# ---------------------------------------------------------------------- internals
def _expand_conveniences(raw: dict) -> dict:
    model = raw.get("model")
    if isinstance(model, dict) and "preset" in model:
        model = dict(model)
        name = model.pop("preset")
        arch_keys = {f.name for f in dataclasses.fields(ModelConfig)}
        arch = {k: v for k, v in model.items() if k in arch_keys}
        try:
            base = dataclasses.asdict(preset_config(str(name)))
        except ConfigError as e:
            raise ConfigError(f"model.preset: {e}") from None
        base.update(arch)
        model.update(base)
        raw["model"] = model
    data = raw.get("data")
    augmentation = data.get("augmentation") if isinstance(data, dict) else None
    if isinstance(data, dict) and isinstance(augmentation, dict) and "scaled_to" in augmentation:
        augmentation = dict(augmentation)
        scale = augmentation.pop("scaled_to")
        if not isinstance(scale, int) or scale < 8:
            raise ConfigError(f"data.augmentation.scaled_to must be an integer >= 8, got {scale!r}")
        base = dataclasses.asdict(AugmentationConfig.scaled(scale))
        base.update(augmentation)
        data["augmentation"] = base
    return raw


def _deep_copy(raw):
    return plain_data(raw) if isinstance(raw, dict) else raw


def _flatten(data: dict, prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
