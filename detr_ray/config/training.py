"""The training sections: matcher costs, loss weights, the optimiser, the schedule."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from detr_ray.schema import check_choices, require


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
    """The set loss's term weights (the reference's 1 / 5 / 2) and background weight.

    DETR's classification is a softmax cross-entropy (``bg_cls_weight`` weighs
    its background class). Deformable DETR's is the sigmoid focal loss with
    ``focal_alpha`` and ``focal_gamma`` (RetinaNet's 0.25 and 2), which its
    matcher's classification cost uses too; it has no background class.
    """

    cls_weight: float = 1.0
    bbox_weight: float = 5.0
    iou_weight: float = 2.0
    bg_cls_weight: float = 0.1
    sync_cls_avg_factor: bool = True
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0

    def __post_init__(self):
        for key in ("cls_weight", "bbox_weight", "iou_weight", "bg_cls_weight", "focal_gamma"):
            require(getattr(self, key) >= 0, key, getattr(self, key), ">= 0")
        require(0 <= self.focal_alpha <= 1, "focal_alpha", self.focal_alpha, "in [0, 1]")


@dataclass(frozen=True)
class OptimConfig:
    """AdamW with a separate backbone learning rate; gradient-norm clipping.

    ``linear_proj_lr_mult`` scales the rate of Deformable DETR's sampling-offset
    and reference-point projections (the official 0.1); DETR has none.
    """

    lr: float = 1e-4
    backbone_lr: float = 1e-5
    linear_proj_lr_mult: float = 0.1
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
        require(
            self.linear_proj_lr_mult >= 0,
            "linear_proj_lr_mult",
            self.linear_proj_lr_mult,
            ">= 0",
        )
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
    # Stop training after this many minutes (evaluations between epochs
    # included, restarts carried over), then evaluate and checkpoint; the lr
    # drops come at their epochs' share of the budget. epochs stays a limit.
    time_budget_minutes: float | None = None

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
            self.time_budget_minutes is None or self.time_budget_minutes > 0,
            "time_budget_minutes",
            self.time_budget_minutes,
            "> 0 or null",
        )
        require(
            all(e >= 1 for e in self.lr_drop_epochs),
            "lr_drop_epochs",
            self.lr_drop_epochs,
            "epochs >= 1",
        )
