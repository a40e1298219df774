"""The training engine: one step, one epoch, evaluation; plain PyTorch.

``torch.distributed`` through :mod:`detr_ray.ops.dist`; no Ray, no MLflow. The
Ray Train worker (:mod:`detr_ray.train.worker`) builds an :class:`Engine`
(:func:`detr_ray.train.build.build_engine`) and hands it callbacks for logging
and reporting, so this file can be read (and tested) as an ordinary DETR
training loop.

Elastic runs: the world size may change between restarts (a lost or returning
node). The engine keeps its place in world-size-free units
(:class:`~detr_ray.train.state.TrainState`): the epoch, and the images of the
epoch's order already trained on (:mod:`detr_ray.data.epoch_plan`); the
learning-rate warm-up counts images seen and its drops count epochs
(:mod:`detr_ray.train.schedule`). Each start recomputes steps and shards from
those and the world size it finds.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from detr_ray.config import ExperimentConfig
from detr_ray.criterion.build import build_criterion
from detr_ray.criterion.matcher import FlatTargets
from detr_ray.data.collate import Batch, PadCollate
from detr_ray.data.epoch_plan import EpochPlan, full_epoch_steps
from detr_ray.data.labels import LabelMap
from detr_ray.errors import ConfigError
from detr_ray.evaluation.distributed import GatheredResults, detect_on_workers
from detr_ray.model.training_detr import TrainingDETR, as_training_output, reference_detr
from detr_ray.ops import dist
from detr_ray.train.budget import TimeBudget
from detr_ray.train.hooks import WorkerHooks
from detr_ray.train.objective import TrainingObjective
from detr_ray.train.optimizer import build_optimizer
from detr_ray.train.schedule import lr_factor
from detr_ray.train.seeds import epoch_seed, seed_everything
from detr_ray.train.skips import NON_FINITE, SkippedSteps
from detr_ray.train.state import TrainState
from detr_ray.train.step_stats import StepLog, StepResult, average_over_workers, worker_row


class Engine:
    """Train one DETR with one :class:`ExperimentConfig` in this process.

    Build it with :func:`detr_ray.train.build.build_engine`.

    Args:
        model: what the forward pass runs: the trained module (the reference
            DETR, or a :class:`TrainingDETR` around it, as
            :func:`~detr_ray.train.build.build_trained_module` makes it), on
            ``device``, wrapped in DDP when there are several workers.
        train_set, val_set: datasets yielding ``(image, target)`` after transforms.
        label_map: the label map of ``train_set``.
        device: where the model lives.
        hooks: fault injection for tests (:mod:`detr_ray.train.hooks`); ``None``
            in a user's run, where nothing is called.

    Attributes:
        distributed_model: ``model`` as given (DDP-wrapped or not): what a step runs.
        trained_module: the module inside it, whose parameters the optimiser trains.
        reference_detr: the reference DETR inside that: what is evaluated,
            checkpointed, exported (training-only parts are not).
    """

    def __init__(
        self,
        config: ExperimentConfig,
        model: nn.Module,
        train_set: Dataset,
        val_set: Dataset,
        label_map: LabelMap,
        device: torch.device | str,
        hooks: WorkerHooks | None = None,
    ):
        self.config = config
        self.distributed_model = model
        self.trained_module = dist.unwrap(model)
        self.reference_detr = reference_detr(self.trained_module)
        self.hooks = hooks
        wants_dense = config.train.dense_aux_weight > 0
        has_dense = (
            isinstance(self.trained_module, TrainingDETR)
            and self.trained_module.dense_head is not None
        )
        if (
            wants_dense != has_dense
            or self.module_groups != config.train.query_groups
            or self.reference_detr.sigmoid_classes != config.model.deformable
        ):
            raise ConfigError(
                "the model does not match the config's model.family / train.query_groups / "
                "train.dense_aux_weight: build it with build_trained_module(detr, config)"
            )
        self.num_groups = config.train.query_groups
        self.device = torch.device(device)
        self.label_map = label_map
        if (
            label_map.num_classes > self.reference_detr.num_classes
        ):  # the loss does not check each batch
            raise ConfigError(
                f"the model has {self.reference_detr.num_classes} classes but the training set "
                f"{label_map.num_classes} categories; set model.num_classes (or leave it null)"
            )
        self.criterion = build_criterion(
            config.model, config.matcher, config.loss, self.num_classes
        ).to(self.device)
        self.objective = TrainingObjective(
            self.criterion,
            self.num_groups,
            config.train.dense_aux_weight,
            two_stage=config.model.two_stage,
        )
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
        self.budget = TimeBudget(config.train.time_budget_minutes)
        self.skips = SkippedSteps(config.train.max_nan_steps, self.rank)
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
        if isinstance(self.trained_module, TrainingDETR):  # training-only weights, not the model's
            extra = self.trained_module.state_dict()
            state["training_parts"] = {k: v for k, v in extra.items() if not k.startswith("detr.")}
        return state

    def load_checkpoint(self, checkpoint: dict) -> None:
        """Model weights and training state from a detr-ray checkpoint."""
        self.reference_detr.load_state_dict(checkpoint["model"])
        parts = checkpoint.get("training_parts")
        if isinstance(self.trained_module, TrainingDETR) and parts:
            # The parts this run still has, of the same shapes (the accelerator's
            # settings may have changed between runs: the others start afresh).
            own = self.trained_module.state_dict()
            kept = {k: v for k, v in parts.items() if k in own and own[k].shape == v.shape}
            self.trained_module.load_state_dict({**own, **kept})
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base  # the schedule is recomputed from the state below
        if checkpoint.get("scaler"):
            self.scaler.load_state_dict(checkpoint["scaler"])
        full_batch = self.world_size * self.config.train.batch_size
        self.state = TrainState.from_checkpoint(checkpoint["train_state"], full_batch)
        self.budget = TimeBudget(self.config.train.time_budget_minutes, self.state.train_seconds)
        self.skips.clear()

    @property
    def finished(self) -> bool:
        """All ``train.epochs`` done, or ``train.time_budget_minutes`` spent."""
        return self.state.epoch >= self.config.train.epochs or self.budget.exhausted

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
    ) -> None:
        """Train until the end of the current epoch (resuming mid-epoch if needed),
        or until ``train.time_budget_minutes`` is spent (every worker at the same step).

        ``on_log`` gets every logged step (combined over workers: a collective);
        ``on_mid_epoch_report`` is called every ``train.report_every`` steps.
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
        self.distributed_model.train()
        window = StepWindow()
        hooks = self.hooks
        for indices, step_images, batch in zip(batches, plan.sizes, loader):
            if hooks:
                hooks.before_step(state.global_step + 1)  # the 1-based number of the step to come
            window.images += 0 if batch is None else len(batch)
            self._set_lr()
            result = self.train_step(batch)
            if hooks:
                ids = [self.train_set.records[i].image_id for i in indices]  # type: ignore[attr-defined]
                hooks.after_step(ids, state.epoch, state.global_step + 1, self.world_size)
            state.global_step += 1
            state.step_in_epoch += 1
            state.epoch_images_seen += step_images
            state.images_seen += step_images
            state.train_seconds = self.budget.spent_s
            last_of_epoch = state.step_in_epoch >= self.steps_per_epoch
            out_of_time = self.budget.exhausted  # agreed: every worker stops here
            # Every log_every steps, and always at an epoch's end: a run shorter
            # than log_every still has its per-layer loss history.
            if state.global_step % config.train.log_every == 0 or last_of_epoch or out_of_time:
                self.settle_skips()
                on_log(self.step_log(result, window))
                window = StepWindow()
            if out_of_time:
                break
            if config.train.report_every and state.global_step % config.train.report_every == 0:
                if not last_of_epoch:
                    self.settle_skips()
                    on_mid_epoch_report()
        self.settle_skips()
        if state.step_in_epoch >= self.steps_per_epoch:  # (a spent budget may stop it sooner)
            state.epoch += 1
            state.step_in_epoch = 0
            state.epoch_images_seen = 0

    def _set_lr(self) -> None:
        """Each group's rate for the coming step (see :func:`lr_factor`)."""
        state = self.state
        factor = lr_factor(
            state.images_seen, state.epoch, self.world_size, self.config, self.budget.fraction
        )
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
        elapsed = torch.full((), self.budget.local_elapsed(), device=self.device)
        if batch is None:  # every image was unreadable (on_bad_image: skip); the others must know
            agreed = dist.max_across(torch.stack((torch.ones_like(elapsed), elapsed)))
            self.budget.agree(agreed[1].item())  # a rare step: its own host read
            return self._skip("an empty batch")
        batch = batch.to(self.device, non_blocking=True)
        images, padding_mask = batch.inputs()
        images = images.contiguous(memory_format=self.memory_format)
        with self.autocast():
            outputs = as_training_output(self.distributed_model(images, padding_mask))
        if self.hooks:
            injected = self.hooks.outputs(step_number, outputs.cls_scores)
            outputs = outputs._replace(cls_scores=injected)
        matched = (outputs.cls_scores, outputs.bbox_preds, outputs.enc_logits, outputs.enc_boxes)
        finite = torch.stack([torch.isfinite(t).all() for t in matched if t is not None]).all()
        # (this worker's outputs are bad, any worker's are, the workers' training
        # seconds) agreed before the criterion's all-reduce and DDP's, read with the costs
        bad_here = (~finite).to(elapsed.dtype)
        agreed = dist.max_across(torch.stack((bad_here, elapsed)))
        flags = torch.cat((bad_here[None], agreed))
        flat = FlatTargets.from_list(batch.targets, device=self.device)
        host = self.objective.costs_to_host(outputs, flat, rider=flags)
        bad_here_host, bad_anywhere, seconds = host.rider
        self.budget.agree(seconds)
        if bad_anywhere:
            return self._skip(
                "non-finite model outputs"
                if bad_here_host
                else "non-finite model outputs or an empty batch on another worker"
            )
        step = self.objective(outputs, flat, host)
        objective = step.objective
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(objective).backward()
        self.scaler.unscale_(self.optimizer)
        max_norm = config.optim.grad_clip if config.optim.grad_clip else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(self.trained_module.parameters(), max_norm)
        # Gradients are all-reduced, so every worker sees the same norm.
        grad_bad = None
        if not self.scaler.is_enabled():  # (fp16's scaler skips non-finite steps itself)
            grad_bad = (~torch.isfinite(grad_norm)).float()  # 0-dim, like the optimiser steps
            if self.skips_on_device:
                self.optimizer.found_inf = grad_bad  # type: ignore[attr-defined]
                self.skips.defer(step_number, grad_bad)
            elif grad_bad.item():  # an optimiser without found_inf: read it now
                return self._skip(NON_FINITE)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return StepResult(
            skipped=False,
            losses=step.losses,
            matching=step.matching,
            grad_norm=grad_norm,
            bad=grad_bad,
        )

    @property
    def module_groups(self) -> int:
        """The query groups the trained module has (1: the reference DETR alone)."""
        return (
            self.trained_module.num_groups if isinstance(self.trained_module, TrainingDETR) else 1
        )

    @property
    def skips_on_device(self) -> bool:
        """Whether the optimiser skips a non-finite update without a host read."""
        return bool(self.optimizer.defaults.get("fused"))

    def settle_skips(self) -> None:
        """Count the steps whose skip flags are still on the device
        (:class:`~detr_ray.train.skips.SkippedSteps`); called at logged steps and reports."""
        self.skips.settle(self.state)

    def _skip(self, why: str) -> StepResult:
        self.optimizer.zero_grad(set_to_none=True)
        self.settle_skips()  # the earlier steps first, for the count of skips in a row
        self.skips.count(self.state, self.state.global_step + 1, why)
        return StepResult(skipped=True)

    def autocast(self):
        if self.config.train.amp == "off":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.config.train.amp == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    def step_log(self, result: StepResult, window: StepWindow) -> StepLog:
        """The logged numbers of step ``result``, combined over workers (one
        all-gather: a collective, every rank calls it)."""
        num_layers = self.num_decoder_layers
        names = self.objective.loss_keys(num_layers)
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
        return self.reference_detr.num_classes

    @property
    def num_decoder_layers(self) -> int:
        return self.config.model.num_decoder_layers

    # ------------------------------------------------------------------ evaluation
    def evaluate(self) -> GatheredResults | None:
        """The reference DETR's detections of the validation set, gathered to
        rank 0 (``None`` on other ranks). A collective: every rank calls it."""
        return detect_on_workers(
            self.reference_detr,
            self.val_set,
            self.label_map,
            batch_size=self.config.train.batch_size,
            num_workers=self.config.data.num_workers,
            collate=self.collate,
            autocast=self.autocast,
        )


class StepWindow:
    """Images and time since the last logged step (what a logged step's images/s is over)."""

    def __init__(self):
        self.images = 0
        self.start = time.perf_counter()
