"""The Ray Train worker: what every training process runs.

Plain PyTorch through :class:`~detr_ray.train.engine.Engine`; the Ray calls are
few and marked ``# [Ray]``: the worker's rank and device, the model's DDP
wrapping, the checkpoint to start from, and the reports that carry metrics and
checkpoints back to the controller. Rank 0 also tracks the run in MLflow.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from pathlib import Path

import ray.train
import ray.train.torch
import torch
from PIL import Image

from detr_ray.checkpoint import CHECKPOINT_FILE, checkpoint_dict, load_checkpoint, save_checkpoint
from detr_ray.config import ExperimentConfig
from detr_ray.data.coco import CocoDetection
from detr_ray.data.labels import LabelMap
from detr_ray.data.transforms import build_transforms
from detr_ray.dist import all_gather_objects
from detr_ray.evaluation import evaluate
from detr_ray.inference import describe_detections, detect_batch, draw_detections
from detr_ray.model import build_model, initialise_from
from detr_ray.train.engine import Engine, StepLog, TrainingStopped, seed_everything

log = logging.getLogger(__name__)
SCORE_METRIC = "val_AP"  # what CheckpointConfig ranks checkpoints by


def train_loop_per_worker(loop_config: dict) -> dict:
    """Train; returns (on rank 0) ``{"status", "message", "mlflow_run_id", "metrics", ...}``."""
    _log_detr_ray_info()
    config = ExperimentConfig.from_dict(loop_config["experiment"])
    label_map = LabelMap.from_dict(loop_config["label_map"])
    run_dir = Path(loop_config["run_dir"])
    rank = ray.train.get_context().get_world_rank()  # [Ray]
    device = ray.train.torch.get_device()  # [Ray]

    # One intra-op thread per CPU this worker was given: torch otherwise takes
    # every core of the machine in each worker, and 2 workers on 2 cores fight.
    torch.set_num_threads(max(1, int(config.scaling.cpus_per_worker)))
    seed_everything(config.train.seed)  # the same initial weights on every worker
    model = build_model(config.model)
    train_set, val_set = _datasets(config, label_map)

    start = _starting_checkpoint(config)
    if start is None and config.init.init_from:
        loaded = initialise_from(model, config.init.init_from, label_map, config.init.class_head)
        if rank == 0:
            print(f"[detr-ray] fine-tuning: {loaded}", flush=True)
    model = model.to(device)
    if config.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    # Frozen batch-norm buffers never change: no need to broadcast them every step.
    model = ray.train.torch.prepare_model(  # [Ray] DDP (gloo on CPU, NCCL on GPU)
        model, parallel_strategy_kwargs={"forward_sync_buffers": False}
    )
    # Which node each rank runs on: shown and tracked, so a multi-node run is visible.
    worker_nodes = all_gather_objects(ray.get_runtime_context().get_node_id())  # [Ray]
    engine = Engine(config, model, train_set, val_set, label_map, device)
    if start is not None:
        engine.load_checkpoint(start)

    tracker = None
    if rank == 0:
        tracker = _tracker(config, run_dir, start)
        tracker.set_tags({"detr_ray.worker_nodes": ",".join(worker_nodes)})
        print(f"[detr-ray] {len(worker_nodes)} worker(s) on {len(set(worker_nodes))} node(s)",
              flush=True)  # fmt: skip
    reporter = _Reporter(config, engine, tracker, run_dir, rank, label_map, val_set, start)
    if rank == 0 and start is not None:
        print(f"[detr-ray] resumed at epoch {engine.state.epoch}, step {engine.state.global_step}")

    try:
        while not engine.finished:
            engine.train_epoch(
                on_log=reporter.on_log,
                on_mid_epoch_report=lambda: reporter.report(evaluated=None),
                should_fail=reporter.maybe_inject_failure,
            )
            epoch = engine.state.epoch
            due = epoch % config.train.eval_every == 0 or epoch == config.train.epochs
            reporter.report(evaluated=reporter.evaluate() if due else None)
    except TrainingStopped as stopped:
        # Every worker stops at the same step (skips are agreed on), so no
        # collective is left waiting. Returning (not raising) keeps Ray Train
        # from restarting into the same divergence.
        if tracker is not None:
            tracker.set_tags({"detr_ray.stopped": str(stopped)})
            tracker.finish("FAILED")
        return {"status": "stopped", "message": str(stopped), "worker_nodes": worker_nodes,
                **reporter.summary()}  # fmt: skip
    if tracker is not None:
        tracker.log_loss_plot(config.model.num_decoder_layers)
        tracker.finish("FINISHED")
    return {"status": "completed", "message": "", "worker_nodes": worker_nodes,
            **reporter.summary()}  # fmt: skip


# ---------------------------------------------------------------------- setup
def _log_detr_ray_info() -> None:
    """INFO for detr-ray's own loggers only. (An INFO root logger would also
    print Ray Train's "Reporting training result ..." for every worker and
    report, which buries the progress lines in job logs.)"""
    logger = logging.getLogger("detr_ray")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


def _datasets(config: ExperimentConfig, label_map: LabelMap):
    data = config.data
    common = dict(label_map=label_map, on_bad_image=data.on_bad_image)
    train_set = CocoDetection(
        data.train_ann,
        data.train_images,
        build_transforms(data.augmentation, train=True),
        filter_empty=data.filter_empty,
        **common,
    )
    val_set = CocoDetection(
        data.val_ann,
        data.val_images,
        build_transforms(data.augmentation, train=False),
        max_images=data.val_max_images,
        **common,
    )
    return train_set, val_set


def _starting_checkpoint(config: ExperimentConfig) -> dict | None:
    """Ray's latest checkpoint of this run (restart or re-run), else ``run.resume_from``."""
    checkpoint = ray.train.get_checkpoint()  # [Ray]
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            return load_checkpoint(Path(directory) / CHECKPOINT_FILE)
    if config.run.resume_from:
        loaded = load_checkpoint(config.run.resume_from)
        if "train_state" not in loaded:
            raise ValueError(
                f"run.resume_from {config.run.resume_from} has no training state (optimizer, "
                "epoch); to start from its weights only, use model.init_from"
            )
        return loaded
    return None


def _tracker(config: ExperimentConfig, run_dir: Path, start: dict | None):
    from detr_ray.tracking import PARENT_TAG, RunTracker, tracking_uri

    uri = tracking_uri(config.tracking.uri, config.run.storage_path)
    tracker = RunTracker(
        uri,
        config.tracking.experiment,
        config.run.name,
        run_dir,
        config.run.storage_path,
        run_id=(start or {}).get("mlflow_run_id"),
        params=config.flat(),
    )
    if not tracker.resumed:
        tracker.log_text(config.to_yaml(), "config.yaml")
        if config.tracking.parent_run_id:  # a sweep's trial: nest it under the sweep's run
            tracker.set_tags({PARENT_TAG: config.tracking.parent_run_id})
    return tracker


# ---------------------------------------------------------------------- reporting
class _Reporter:
    """Progress lines, MLflow logging (rank 0) and Ray reports (every rank)."""

    def __init__(self, config, engine: Engine, tracker, run_dir, rank, label_map, val_set, start):
        self.config, self.engine, self.tracker = config, engine, tracker
        self.run_dir, self.rank, self.label_map, self.val_set = run_dir, rank, label_map, val_set
        self.started = time.perf_counter()
        self.start_step = engine.state.global_step
        self.logged_losses: list[float] = []  # since the last report (rank 0)
        start = start or {}
        self.last_metrics: dict[str, float] = start.get("val_metrics", {})
        best = start.get("best_checkpoint")
        self.best: tuple[float, str] | None = tuple(best) if best else None
        if tracker is not None and not tracker.resumed:
            tracker.log_text(json.dumps(label_map.to_dict(), indent=2), "label_map.json")

    def on_log(self, step: StepLog) -> None:
        if self.rank != 0:
            return
        self.logged_losses.append(step.metrics["loss"])
        self.tracker.log_metrics(step.global_step, step.metrics)
        total = self.config.train.epochs * step.steps_per_epoch
        done = step.global_step - self.start_step
        rate = (time.perf_counter() - self.started) / max(done, 1)
        eta = _duration(rate * max(total - step.global_step, 0))
        print(
            f"[detr-ray] epoch {step.epoch + 1}/{self.config.train.epochs} "
            f"step {step.step_in_epoch}/{step.steps_per_epoch} (total {step.global_step}/{total}) "
            f"loss {step.metrics['loss']:.4f} ({step.metrics['images_per_s']:.1f} img/s) "
            f"ETA {eta}",
            flush=True,
        )

    def maybe_inject_failure(self, global_step: int) -> None:
        target = self.config.debug.fail_once_at_step
        if target is None or global_step != target or self.rank != 0:
            return
        marker = self.run_dir / f".injected_failure_{target}"
        if marker.exists():
            return
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()
        raise RuntimeError(f"injected failure at step {global_step} (debug.fail_once_at_step)")

    def evaluate(self) -> dict[str, float] | None:
        results = self.engine.evaluate()  # every rank takes part
        if self.rank != 0:
            return None
        metrics, _ = evaluate(self.val_set.coco, results, image_ids=self.val_set.image_ids)
        step = self.engine.state.global_step
        self.tracker.log_metrics(step, metrics, prefix="val/")
        self._log_sample_images()
        shown = "  ".join(f"{k} {metrics[k]:.3f}" for k in ("AP", "AP50", "AP75", "AR100"))
        print(f"[detr-ray] epoch {self.engine.state.epoch} validation: {shown}", flush=True)
        return metrics

    def report(self, evaluated: dict[str, float] | None) -> None:
        """Checkpoint and report to Ray (every rank calls this)."""
        state = self.engine.state
        name = f"epoch{state.epoch:04d}_step{state.global_step:07d}"
        ap = evaluated.get("AP") if evaluated else None
        score = ap if ap is not None and ap == ap else -1.0  # NaN/none: unranked
        metrics = {"epoch": state.epoch, "global_step": state.global_step, SCORE_METRIC: score}
        if evaluated:
            metrics["val_AP50"] = evaluated.get("AP50", -1.0)
        if self.logged_losses:  # the mean logged training loss since the last report
            metrics["loss"] = sum(self.logged_losses) / len(self.logged_losses)
            self.logged_losses = []
        if self.rank != 0:
            ray.train.report(metrics, checkpoint=None)  # [Ray]
            return
        new_best = evaluated is not None and (self.best is None or score > self.best[0])
        if evaluated:
            self.last_metrics = evaluated
        if new_best:
            self.best = (score, str(self.run_dir / name))
        checkpoint = checkpoint_dict(
            self.engine.module,
            self.config.model,
            self.label_map,
            self.config.data.augmentation,
            **self.engine.training_state(),
            config=self.config.to_dict(),
            mlflow_run_id=self.tracker.run_id,
            val_metrics=self.last_metrics,
            best_checkpoint=list(self.best) if self.best else None,
        )
        with tempfile.TemporaryDirectory() as tmp:
            save_checkpoint(checkpoint, Path(tmp) / CHECKPOINT_FILE)
            ray.train.report(  # [Ray] persists the checkpoint to the run's storage
                metrics,
                checkpoint=ray.train.Checkpoint.from_directory(tmp),
                checkpoint_dir_name=name,
            )
        self.tracker.log_loss_plot(self.config.model.num_decoder_layers)
        if new_best:
            self.tracker.set_tags({"best_checkpoint": self.best[1], "best_val_AP": f"{score:.4f}"})
            self.tracker.log_text(f"{self.best[1]}\nval AP {score:.4f}\n", "best_checkpoint.txt")

    def _log_sample_images(self) -> None:
        count = min(self.config.tracking.log_images, len(self.val_set))
        if not count:
            return
        model = self.engine.module
        model.eval()
        for index in range(count):
            sample = self.val_set[index]
            if sample is None:
                continue
            batch = self.engine.collate([sample])
            det = detect_batch(model, batch, top_k=None, score_threshold=0.5)[0]
            record = self.val_set.records[index]
            with Image.open(self.val_set.image_dir / record.file_name) as opened:
                image = opened.convert("RGB")
            drawn = draw_detections(image, describe_detections(det, self.label_map))
            self.tracker.log_image(drawn, f"val_images/image_{record.image_id}.png")
        model.train()

    def summary(self) -> dict:
        out = {"metrics": self.last_metrics, "epoch": self.engine.state.epoch,
               "global_step": self.engine.state.global_step,
               "skipped_steps": list(self.engine.state.skipped_steps)}  # fmt: skip
        if self.tracker is not None:
            out.update(mlflow_run_id=self.tracker.run_id, tracking_uri=self.tracker.uri,
                       best_checkpoint=self.best[1] if self.best else None)  # fmt: skip
        return out


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
