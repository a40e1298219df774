"""The training engine: optimiser, schedule, one step, one epoch, evaluation.

Plain PyTorch with ``torch.distributed`` through :mod:`detr_ray.ops.dist`; no Ray,
no MLflow. The Ray Train worker (:mod:`detr_ray.train.worker`) builds a
:class:`Engine` and hands it callbacks for logging and reporting, so this file
can be read (and tested) as an ordinary DETR training loop.

Determinism: every epoch reseeds Python, NumPy and torch from
``(seed, epoch, rank)`` and the epoch's image order depends on ``(seed, epoch)``
only, so a run resumed at an epoch boundary continues exactly as an
uninterrupted one would.

Elastic runs: the world size may change between restarts (a lost or returning
node). The engine keeps its place in world-size-free units: the epoch, and the
images of the epoch's order already trained on (:mod:`detr_ray.data.epoch_plan`);
the learning-rate warm-up counts images seen and its drops count epochs. Each
start recomputes steps and shards from those and the world size it finds.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from detr_ray.config import ExperimentConfig, LossConfig, MatcherConfig
from detr_ray.criterion.dense_loss import DENSE_TERMS, dense_losses
from detr_ray.criterion.matcher import FlatTargets, HungarianMatcher
from detr_ray.criterion.set_loss import SetCriterion, group_loss_names, grouped_losses
from detr_ray.data.collate import Batch, PadCollate
from detr_ray.data.epoch_plan import EpochPlan, full_epoch_steps
from detr_ray.data.labels import LabelMap
from detr_ray.errors import ConfigError, TrainingStopped
from detr_ray.evaluation.coco_eval import GatheredResults, gather_image_results, to_coco_results
from detr_ray.evaluation.predict import detect_batch
from detr_ray.model.detr import DETR
from detr_ray.model.training_detr import TrainingDETR, groups_as_layers
from detr_ray.ops import dist
from detr_ray.train.step_stats import StepLog, StepResult, average_over_workers, worker_row

log = logging.getLogger(__name__)


@dataclass
class TrainState:
    """Where training stands; saved in every checkpoint."""

    epoch: int = 0  # completed epochs
    step_in_epoch: int = 0  # optimiser steps done in the current epoch
    global_step: int = 0  # optimiser steps (and skipped steps) so far
    epoch_images_seen: int = 0  # images of the current epoch's order trained on
    images_seen: int = 0  # images trained on so far (all epochs, all workers)
    nan_streak: int = 0  # consecutive skipped steps
    skipped_steps: list[int] = field(default_factory=list)


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    return (seed * 1_000_003 + epoch * 1009 + rank) % (2**31)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def build_criterion(matcher: MatcherConfig, loss: LossConfig, num_classes: int) -> SetCriterion:
    """The set loss (and its matcher) that the config's ``matcher`` and ``loss`` describe."""
    return SetCriterion(
        num_classes,
        HungarianMatcher(
            cls_cost=matcher.cls_cost,
            bbox_cost=matcher.bbox_cost,
            iou_cost=matcher.iou_cost,
            bbox_cost_format=matcher.bbox_cost_format,
        ),
        cls_weight=loss.cls_weight,
        bbox_weight=loss.bbox_weight,
        iou_weight=loss.iou_weight,
        bg_cls_weight=loss.bg_cls_weight,
        sync_cls_avg_factor=loss.sync_cls_avg_factor,
        check_labels=False,  # the engine checks its label map once instead
    )


def trained_module(detr: DETR, config: ExperimentConfig) -> nn.Module:
    """What the optimiser trains: ``detr``, or with a training-time accelerator on
    (``train.query_groups`` > 1, ``train.dense_aux_weight`` > 0) a
    :class:`TrainingDETR` around it (the extra parts exist only there)."""
    train = config.train
    if train.query_groups == 1 and train.dense_aux_weight == 0:
        return detr
    return TrainingDETR(detr, train.query_groups, dense_head=train.dense_aux_weight > 0)


def reference_detr(module: nn.Module) -> DETR:
    """The reference DETR inside what :func:`trained_module` made."""
    inner = module.detr if isinstance(module, TrainingDETR) else module
    if not isinstance(inner, DETR):
        raise TypeError(f"expected a DETR or TrainingDETR, got {type(module).__name__}")
    return inner


def build_optimizer(model: nn.Module, config: ExperimentConfig) -> torch.optim.AdamW:
    """AdamW with two groups, ``backbone`` (backbone_lr) and ``other`` (lr)."""
    module = dist.unwrap(model)
    in_backbone = {id(p) for p in reference_detr(module).backbone.parameters()}
    backbone: list[nn.Parameter] = []
    other: list[nn.Parameter] = []
    for param in module.parameters():
        if param.requires_grad:
            (backbone if id(param) in in_backbone else other).append(param)
    groups: list[dict] = [{"params": other, "lr": config.optim.lr, "name": "other"}]
    if backbone:
        groups.append({"params": backbone, "lr": config.optim.backbone_lr, "name": "backbone"})
    weight_decay = config.optim.weight_decay
    try:  # the fused kernel is several times faster on CPU and GPU
        return torch.optim.AdamW(groups, weight_decay=weight_decay, fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(groups, weight_decay=weight_decay)


def lr_factor(images_seen: int, epoch: int, world_size: int, config: ExperimentConfig) -> float:
    """The learning rate's multiplier for the next step, from where training
    stands in world-size-free units (a resize moves neither warm-up nor drops).

    Warm-up is linear over ``train.warmup_steps`` steps *at the full size*
    (``scaling.num_workers`` workers x ``train.batch_size``), i.e. over that many
    images; each drop epoch passed multiplies by ``lr_gamma``. With
    ``optim.lr_scaling`` (off by default) the rate also follows the global batch
    of the workers present: ``linear`` (world / num_workers) or ``sqrt``.
    """
    train, full_world = config.train, config.scaling.num_workers
    factor = 1.0
    if train.warmup_steps:
        full_batch = full_world * train.batch_size
        factor = min(1.0, (images_seen + full_batch) / (train.warmup_steps * full_batch))
    factor *= train.lr_gamma ** sum(1 for e in train.lr_drop_epochs if epoch >= e)
    if config.optim.lr_scaling == "linear":
        factor *= world_size / full_world
    elif config.optim.lr_scaling == "sqrt":
        factor *= math.sqrt(world_size / full_world)
    return factor


class Engine:
    """Train one DETR with one :class:`ExperimentConfig` in this process.

    Args:
        model: the (possibly DDP-wrapped) :func:`trained_module`, already on ``device``.
        train_set, val_set: datasets yielding ``(image, target)`` after transforms.
        label_map: the label map of ``train_set``.
        device: where the model lives.
    """

    def __init__(
        self,
        config: ExperimentConfig,
        model: nn.Module,
        train_set: Dataset,
        val_set: Dataset,
        label_map: LabelMap,
        device: torch.device | str,
    ):
        self.config = config
        self.model = model
        self.module = dist.unwrap(model)
        self.detr = reference_detr(self.module)  # evaluated, checkpointed, exported
        wants_dense = config.train.dense_aux_weight > 0
        has_dense = isinstance(self.module, TrainingDETR) and self.module.dense_head is not None
        if wants_dense != has_dense or self.module_groups != config.train.query_groups:
            raise ConfigError(
                "the model does not match the config's train.query_groups / "
                "train.dense_aux_weight: build it with trained_module(detr, config)"
            )
        self.num_groups = config.train.query_groups
        self.device = torch.device(device)
        self.label_map = label_map
        if label_map.num_classes > self.detr.num_classes:  # the loss does not check each batch
            raise ConfigError(
                f"the model has {self.detr.num_classes} classes but the training set "
                f"{label_map.num_classes} categories; set model.num_classes (or leave it null)"
            )
        self.criterion = build_criterion(config.matcher, config.loss, self.num_classes)
        self.criterion.to(self.device)
        self.optimizer = build_optimizer(model, config)
        self.train_set, self.val_set = train_set, val_set
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        self.full_epoch_steps = full_epoch_steps(  # a whole epoch at this world size
            len(train_set),  # type: ignore[arg-type]
            self.world_size,
            config.train.batch_size,
            config.train.max_steps_per_epoch,
        )
        self.steps_per_epoch = self.full_epoch_steps  # of the current epoch, set as it starts
        self.base_lrs = [group["lr"] for group in self.optimizer.param_groups]
        use_fp16 = config.train.amp == "fp16"
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=use_fp16)
        self.memory_format = (
            torch.channels_last if config.train.channels_last else torch.contiguous_format
        )
        self.state = TrainState()
        # (step, 1.0 if its update was skipped): read at the next logged step
        self._unsettled: list[tuple[int, torch.Tensor]] = []
        self.collate = PadCollate(config.data.size_divisor)

    # ------------------------------------------------------------------ state
    def training_state(self) -> dict:
        """Everything but the model weights that a resume needs."""
        self.settle_skips()
        state = {
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "train_state": vars(self.state).copy(),
        }
        if isinstance(self.module, TrainingDETR):  # training-only weights, not the model's
            extra = self.module.state_dict()
            state["training_parts"] = {k: v for k, v in extra.items() if not k.startswith("detr.")}
        return state

    def load_checkpoint(self, checkpoint: dict) -> None:
        """Model weights and training state from a detr-ray checkpoint."""
        self.detr.load_state_dict(checkpoint["model"])
        parts = checkpoint.get("training_parts")
        if isinstance(self.module, TrainingDETR) and parts:
            # The parts this run still has, of the same shapes (the accelerator's
            # settings may have changed between runs: the others start afresh).
            own = self.module.state_dict()
            kept = {k: v for k, v in parts.items() if k in own and own[k].shape == v.shape}
            self.module.load_state_dict({**own, **kept})
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base  # the schedule is recomputed from the state below
        if checkpoint.get("scaler"):
            self.scaler.load_state_dict(checkpoint["scaler"])
        self.state = _train_state(checkpoint["train_state"], self.config, self.world_size)
        self._unsettled = []

    @property
    def finished(self) -> bool:
        return self.state.epoch >= self.config.train.epochs

    # ------------------------------------------------------------------ training
    def plan(self) -> EpochPlan:
        """The rest of the current epoch at this world size (see :class:`EpochPlan`)."""
        state, train = self.state, self.config.train
        limit = train.max_steps_per_epoch
        return EpochPlan.build(
            len(self.train_set),  # type: ignore[arg-type]
            train.seed,
            state.epoch,
            state.epoch_images_seen,
            self.world_size,
            train.batch_size,
            max_steps=None if limit is None else max(0, limit - state.step_in_epoch),
        )

    def train_epoch(
        self,
        on_log: Callable[[StepLog], None] = lambda _: None,
        on_mid_epoch_report: Callable[[], None] = lambda: None,
        should_fail: Callable[[int], None] = lambda _: None,
        on_step: Callable[[list[int]], None] = lambda _: None,
    ) -> None:
        """Train until the end of the current epoch (resuming mid-epoch if needed).

        ``on_step`` gets the dataset indices this worker trained on in each step
        (the ``debug.record_images`` hook).
        """
        config, state = self.config, self.state
        epoch = state.epoch
        seed_everything(epoch_seed(config.train.seed, epoch, self.rank))
        plan = self.plan()
        batches = plan.rank_batches(self.rank)
        self.steps_per_epoch = state.step_in_epoch + len(plan.sizes)
        loader = DataLoader(
            self.train_set,
            batch_sampler=batches,
            num_workers=config.data.num_workers,
            collate_fn=self.collate,
            pin_memory=self.device.type == "cuda",
            generator=torch.Generator().manual_seed(
                epoch_seed(config.train.seed, epoch, self.rank)
            ),
        )
        self.model.train()
        window = _Window()
        for indices, step_images, batch in zip(batches, plan.sizes, loader):
            should_fail(state.global_step + 1)  # the 1-based number of the step to come
            window.images += 0 if batch is None else len(batch)
            self._set_lr()
            result = self.train_step(batch)
            on_step(indices)
            state.global_step += 1
            state.step_in_epoch += 1
            state.epoch_images_seen += step_images
            state.images_seen += step_images
            last_of_epoch = state.step_in_epoch >= self.steps_per_epoch
            # Every log_every steps, and always at an epoch's end: a run shorter
            # than log_every still has its per-layer loss history.
            if state.global_step % config.train.log_every == 0 or last_of_epoch:
                self.settle_skips()
                on_log(self._step_log(result, window))
                window = _Window()
            if config.train.report_every and state.global_step % config.train.report_every == 0:
                if not last_of_epoch:
                    self.settle_skips()
                    on_mid_epoch_report()
        self.settle_skips()
        state.epoch += 1
        state.step_in_epoch = 0
        state.epoch_images_seen = 0

    def _set_lr(self) -> None:
        """Each group's rate for the coming step (see :func:`lr_factor`)."""
        state = self.state
        factor = lr_factor(state.images_seen, state.epoch, self.world_size, self.config)
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base * factor

    def train_step(self, batch: Batch | None) -> StepResult:
        """One optimiser step. Non-finite outputs, losses or gradients on any
        worker skip the step on every worker.

        Host reads: one per step, the matching costs copied together with the
        workers' agreed "skip" flag (``HungarianMatcher.costs_to_host``). A
        non-finite gradient norm skips the update on the device (the fused
        AdamW's ``found_inf``); the step learns that it was skipped at the
        next logged step (:meth:`settle_skips`), so ``train.max_nan_steps``
        counts such steps up to ``train.log_every`` steps late.
        """
        config = self.config
        step_number = self.state.global_step + 1  # 1-based, as logged
        if batch is None:  # every image was unreadable (on_bad_image: skip); the others must know
            dist.max_across(torch.ones((), device=self.device))
            return self._skip("an empty batch")
        batch = batch.to(self.device, non_blocking=True)
        images, padding_mask = batch.inputs()
        images = images.contiguous(memory_format=self.memory_format)
        with self._autocast():
            cls_scores, bbox_preds, *dense = self.model(images, padding_mask)
        if step_number in config.debug.nan_at_steps and self.rank == 0:
            cls_scores = cls_scores * float("nan")  # fault injection for tests
        finite = torch.isfinite(cls_scores).all() & torch.isfinite(bbox_preds).all()
        # (this worker's outputs are bad, any worker's are) agreed before the
        # criterion's all-reduce and DDP's, read with the costs
        bad_here = (~finite).float()
        flags = torch.stack((bad_here, dist.max_across(bad_here)))
        if self.num_groups > 1:  # each (layer, group) is one "layer" of the batched math
            cls_scores = groups_as_layers(cls_scores, self.num_groups)
            bbox_preds = groups_as_layers(bbox_preds, self.num_groups)
        flat = FlatTargets.from_list(batch.targets, device=self.device)
        matcher = self.criterion.matcher
        cost_host, (bad_here_host, bad_anywhere) = matcher.costs_to_host(
            cls_scores.detach(), bbox_preds.detach(), flat, rider=flags
        )
        if bad_anywhere:
            return self._skip(
                "non-finite model outputs"
                if bad_here_host
                else "non-finite model outputs or an empty batch on another worker"
            )
        matching = matcher.solve(cost_host, flat, self.device)
        weighted = self.criterion.layer_losses(cls_scores, bbox_preds, flat, matching)
        losses, objective = grouped_losses(weighted, self.num_groups)
        if dense:  # the dense auxiliary head's one-to-many losses
            dense_cls, dense_boxes, centers, valid = dense
            terms = dense_losses(self.criterion, dense_cls, dense_boxes, centers, valid, flat)
            terms = terms * self.config.train.dense_aux_weight
            losses.update(zip(DENSE_TERMS, terms.unbind()))
            objective = objective + terms.sum()
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(objective).backward()
        self.scaler.unscale_(self.optimizer)
        max_norm = config.optim.grad_clip if config.optim.grad_clip else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(self.module.parameters(), max_norm)
        # Gradients are all-reduced, so every worker sees the same norm.
        grad_bad = None
        if not self.scaler.is_enabled():  # (fp16's scaler skips non-finite steps itself)
            grad_bad = (~torch.isfinite(grad_norm)).float()  # 0-dim, like the optimiser steps
            if self.skips_on_device:
                self.optimizer.found_inf = grad_bad  # type: ignore[attr-defined]
                self._unsettled.append((step_number, grad_bad))
            elif grad_bad.item():  # an optimiser without found_inf: read it now
                return self._skip("a non-finite loss or gradient")
        self.scaler.step(self.optimizer)
        self.scaler.update()
        reference = matching.layers(slice(None, None, self.num_groups))  # group 0 of each layer
        return StepResult(
            skipped=False, losses=losses, matching=reference, grad_norm=grad_norm, bad=grad_bad
        )

    @property
    def module_groups(self) -> int:
        """The query groups the trained module has (1: the reference DETR alone)."""
        return self.module.num_groups if isinstance(self.module, TrainingDETR) else 1

    @property
    def skips_on_device(self) -> bool:
        """Whether the optimiser skips a non-finite update without a host read."""
        return bool(self.optimizer.defaults.get("fused"))

    def settle_skips(self) -> None:
        """Read the flags of the steps whose gradients were checked on the device
        (one copy), count the skipped ones, and stop the run past
        ``train.max_nan_steps`` in a row. Called at logged steps and reports."""
        if not self._unsettled:
            return
        steps, flags = zip(*self._unsettled)
        self._unsettled = []
        for step_number, bad in zip(steps, torch.stack(flags).tolist()):
            if bad:
                self._count_skip(step_number, "a non-finite loss or gradient")
            else:
                self.state.nan_streak = 0

    def _skip(self, why: str) -> StepResult:
        self.optimizer.zero_grad(set_to_none=True)
        self.settle_skips()  # the earlier steps first, for the count of skips in a row
        self._count_skip(self.state.global_step + 1, why)
        return StepResult(skipped=True)

    def _count_skip(self, step_number: int, why: str) -> None:
        state = self.state
        state.nan_streak += 1
        state.skipped_steps.append(step_number)
        if self.rank == 0:
            log.warning(
                "step %d: %s; step skipped (%d in a row, limit train.max_nan_steps=%d)",
                step_number,
                why,
                state.nan_streak,
                self.config.train.max_nan_steps,
            )
        if state.nan_streak > self.config.train.max_nan_steps:
            raise TrainingStopped(
                f"stopped at step {step_number} (epoch {state.epoch + 1}): {why} for "
                f"{state.nan_streak} steps in a row (train.max_nan_steps="
                f"{self.config.train.max_nan_steps}). The model diverged; lower optim.lr, "
                "check the data, or resume from the last checkpoint."
            )

    def _autocast(self):
        if self.config.train.amp == "off":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.config.train.amp == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    def _step_log(self, result: StepResult, window: _Window) -> StepLog:
        """Combine the step's numbers over workers (one all-gather; every rank calls it)."""
        num_layers = self.num_decoder_layers
        names = group_loss_names(num_layers, self.num_groups)
        if self.config.train.dense_aux_weight > 0:
            names = names + list(DENSE_TERMS)
        row = worker_row(result, names, num_layers, window.images)
        table = dist.all_gather_tensor(row.to(self.device)).cpu()  # (world, columns)
        metrics = average_over_workers(table, names, num_layers)
        images = metrics.pop("images")
        elapsed = time.perf_counter() - window.start
        grad_norm = float(result.grad_norm) if result.grad_norm is not None else float("nan")
        metrics.update(
            {
                "grad_norm": grad_norm,
                "images_per_s": images / max(elapsed, 1e-9),
                "skipped_steps": float(len(self.state.skipped_steps)),
            }
        )
        for group in self.optimizer.param_groups:
            metrics[f"lr/{group['name']}"] = group["lr"]
        metrics["world_size"] = float(self.world_size)
        metrics["global_batch"] = float(self.world_size * self.config.train.batch_size)
        state = self.state
        return StepLog(
            global_step=state.global_step,
            epoch=state.epoch,
            step_in_epoch=state.step_in_epoch,
            steps_per_epoch=self.steps_per_epoch,
            metrics=metrics,
        )

    @property
    def num_classes(self) -> int:
        return self.detr.num_classes

    @property
    def num_decoder_layers(self) -> int:
        return self.config.model.num_decoder_layers

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate(self) -> GatheredResults | None:
        """Detections of this worker's shard of the validation set, gathered to
        rank 0 as COCO results with the ids of the images run (``None`` on other
        ranks). A collective: every rank calls it."""
        sampler: DistributedSampler = DistributedSampler(
            self.val_set, self.world_size, self.rank, shuffle=False
        )
        loader = DataLoader(
            self.val_set,
            batch_size=self.config.train.batch_size,
            sampler=sampler,
            num_workers=self.config.data.num_workers,
            collate_fn=self.collate,
        )
        self.detr.eval()
        local = []
        for batch in loader:
            if batch is None:
                continue
            with self._autocast():
                detections = detect_batch(self.detr, batch)
            for det in detections:
                local.append((det["image_id"], to_coco_results([det], self.label_map)))
        self.detr.train()
        return gather_image_results(local)


def _train_state(saved: dict, config: ExperimentConfig, world_size: int) -> TrainState:
    """A checkpoint's ``train_state``. Checkpoints written before positions were
    kept in images are read as if written at this world size."""
    saved = dict(saved)
    full_batch = world_size * config.train.batch_size
    saved.setdefault("epoch_images_seen", saved.get("step_in_epoch", 0) * full_batch)
    saved.setdefault("images_seen", saved.get("global_step", 0) * full_batch)
    known = TrainState.__dataclass_fields__
    return TrainState(**{k: v for k, v in saved.items() if k in known})


class _Window:
    """Images and time since the last logged step."""

    def __init__(self):
        self.images = 0
        self.start = time.perf_counter()
