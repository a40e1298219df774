"""Rank 0's view of a run: progress lines and ETA, MLflow metrics, sample images, registration.

Also how a run's MLflow run is opened (:func:`open_tracker`) and each node's
system-metrics sampler (:func:`node_sampler`). MLflow is reached only through
:mod:`detr_ray.tracking`.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING

from detr_ray.config import ExperimentConfig
from detr_ray.criterion.loss_keys import keys_by_term
from detr_ray.data.coco import CocoDetection
from detr_ray.data.labels import LabelMap
from detr_ray.evaluation.coco_eval import evaluate
from detr_ray.evaluation.detect import describe_detections, detect_batch, draw_detections
from detr_ray.evaluation.distributed import GatheredResults
from detr_ray.storage import without_query
from detr_ray.tracking.names import (
    BEST_CHECKPOINT_ARTIFACT,
    BEST_CHECKPOINT_TAG,
    BEST_VAL_AP_TAG,
    CONFIG_ARTIFACT,
    LABEL_MAP_ARTIFACT,
    LOSS,
    PARENT_TAG,
    REGISTERED_MODEL_TAG,
    VAL_PREFIX,
)
from detr_ray.tracking.store import tracking_uri_of
from detr_ray.tracking.system_metrics import SystemSampler
from detr_ray.train.engine import Engine
from detr_ray.train.hooks import WorkerHooks
from detr_ray.train.step_stats import StepLog

if TYPE_CHECKING:  # MLflow is imported on rank 0 only, when it opens its run
    from detr_ray.tracking.runs import RunTracker


class Progress:
    """Rank 0's view of the run: progress lines, MLflow metrics, images and plots."""

    def __init__(
        self,
        config: ExperimentConfig,
        engine: Engine,
        tracker: RunTracker,
        label_map: LabelMap,
        val_set: CocoDetection,
        hooks: WorkerHooks | None = None,
    ):
        self.config, self.engine, self.tracker, self.hooks = config, engine, tracker, hooks
        self.label_map, self.val_set = label_map, val_set
        self.started = time.perf_counter()
        self.start_step = engine.state.global_step
        self.logged_losses: list[float] = []  # since the last report
        self.noted_ground_truth = False
        if not tracker.resumed:
            tracker.log_text(json.dumps(label_map.to_dict(), indent=2), LABEL_MAP_ARTIFACT)

    def on_log(self, step: StepLog) -> None:
        self.logged_losses.append(step.metrics[LOSS])
        self.tracker.log_metrics(step.global_step, step.metrics)
        # steps still to come at the current world size (an elastic run's change it)
        epochs_after = self.config.train.epochs - step.epoch - 1
        to_come = step.steps_per_epoch - step.step_in_epoch
        total = step.global_step + to_come + epochs_after * self.engine.full_epoch_steps
        done = step.global_step - self.start_step
        rate = (time.perf_counter() - self.started) / max(done, 1)
        eta = _duration(rate * max(total - step.global_step, 0))
        budget = self.engine.budget
        if budget.budget_s is not None:  # whichever ends the run first
            left = max(budget.budget_s - budget.spent_s, 0)
            if left < rate * max(total - step.global_step, 0):
                eta = f"{_duration(left)} (time budget)"
        print(
            f"[detr-ray] epoch {step.epoch + 1}/{self.config.train.epochs} "
            f"step {step.step_in_epoch}/{step.steps_per_epoch} (total {step.global_step}/{total}) "
            f"x{self.engine.world_size} workers "
            f"loss {step.metrics['loss']:.4f} ({step.metrics['images_per_s']:.1f} img/s) "
            f"ETA {eta}",
            flush=True,
        )

    def mean_loss_since_report(self) -> float | None:
        """The mean logged training loss since the last call (None if nothing was logged)."""
        losses, self.logged_losses = self.logged_losses, []
        return sum(losses) / len(losses) if losses else None

    def score(self, gathered: GatheredResults | None) -> dict[str, float]:
        """COCO metrics of the gathered detections; logged, printed, with sample images."""
        if gathered is None:
            raise ValueError("rank 0 scores what engine.evaluate() gathered, not None")
        if self.hooks:
            self.hooks.before_scoring()
        if not self.noted_ground_truth:
            print(f"[detr-ray] validation is {self.val_set.ground_truth_note}", flush=True)
            self.noted_ground_truth = True
        metrics, _ = evaluate(
            self.val_set.coco,
            gathered.results,
            image_ids=gathered.image_ids,
            backend=self.config.train.eval_backend,
        )
        self.tracker.log_metrics(self.engine.state.global_step, metrics, prefix=VAL_PREFIX)
        self._log_sample_images()
        shown = "  ".join(f"{k} {metrics[k]:.3f}" for k in ("AP", "AP50", "AP75", "AR100"))
        state = self.engine.state
        where = f"epoch {state.epoch}"
        if state.step_in_epoch:  # a time budget ended training mid-epoch
            where += f" + {state.step_in_epoch} steps"
        print(f"[detr-ray] {where} validation: {shown}", flush=True)
        return metrics

    def on_report(self, best: tuple[float, str] | None, new_best: bool) -> None:
        self.tracker.flush()  # what was queued since the last report reaches the store
        self.tracker.log_loss_plot()
        if new_best and best is not None:
            score, path = best
            self.tracker.set_tags({BEST_CHECKPOINT_TAG: path, BEST_VAL_AP_TAG: f"{score:.4f}"})
            self.tracker.log_text(f"{path}\nval AP {score:.4f}\n", BEST_CHECKPOINT_ARTIFACT)

    def register(self, best: tuple[float, str], name: str) -> None:
        """The best checkpoint as a new version of registered model ``name``."""
        from detr_ray.tracking.registry import register_checkpoint

        score, location = best
        version = register_checkpoint(
            self.tracker.uri,
            self.tracker.run_id,
            location,
            name,
            score,
            self.config.run.storage,
        )
        self.tracker.set_tags({REGISTERED_MODEL_TAG: f"models:/{name}/{version}"})
        print(f"[detr-ray] registered {location} as models:/{name}/{version}", flush=True)

    def _log_sample_images(self) -> None:
        count = min(self.config.tracking.log_images, len(self.val_set))
        if not count:
            return
        model = self.engine.reference_detr
        model.eval()
        for index in range(count):
            sample = self.val_set[index]
            batch = None if sample is None else self.engine.collate([sample])
            if batch is None:
                continue
            det = detect_batch(model, batch, top_k=None, score_threshold=0.5)[0]
            record = self.val_set.records[index]
            image = self.val_set.original_image(index)
            drawn = draw_detections(image, describe_detections(det, self.label_map))
            self.tracker.log_image(drawn, f"val_images/image_{record.image_id}.png")
        model.train()


def open_tracker(config: ExperimentConfig, run_dir: str, start: dict | None) -> RunTracker:
    """Rank 0's MLflow run: the one the checkpoint names, else the run folder's,
    else a new one (with the resolved config and, for a sweep's trial, its parent)."""
    from detr_ray.tracking.runs import RunTracker

    tracker = RunTracker(
        tracking_uri_of(config),
        config.tracking.experiment,
        config.run.name,
        without_query(run_dir),
        run_id=(start or {}).get("mlflow_run_id"),
        params=config.flat(),
        loss_series=keys_by_term(config.model.num_decoder_layers),
        asynchronous=config.tracking.async_logging,
    )
    if not tracker.resumed:
        tracker.log_text(config.to_yaml(), CONFIG_ARTIFACT)
        if config.tracking.parent_run_id:  # a sweep's trial: nest it under the sweep's run
            tracker.set_tags({PARENT_TAG: config.tracking.parent_run_id})
    return tracker


def log_datasets(
    tracker: RunTracker,
    config: ExperimentConfig,
    train_set: CocoDetection,
    val_set: CocoDetection,
    label_map: LabelMap,
) -> None:
    """The training and validation sets as the run's dataset inputs (digest, counts)."""
    for context, dataset, images in (
        ("training", train_set, config.data.train_images),
        ("validation", val_set, config.data.val_images),
    ):
        counts = {
            "images": len(dataset.records),
            "annotations": sum(len(r.labels) for r in dataset.records),
            "categories": label_map.num_classes,
        }
        tracker.log_dataset(context, dataset.ann_file, dataset.digest, images, counts)


def node_sampler(
    config: ExperimentConfig, run_id: str, node_id: str, local_rank: int
) -> SystemSampler | None:
    """This node's system-metrics sampler, on the worker with local rank 0 (None
    elsewhere, or when ``tracking.system_metrics_every`` is 0)."""
    every = config.tracking.system_metrics_every
    if every <= 0 or local_rank != 0:
        return None
    from detr_ray.tracking.lifecycle import metrics_logger

    node = f"node-{node_id[:8]}"
    return SystemSampler(node, metrics_logger(tracking_uri_of(config), run_id), every_s=every)


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
