"""The Ray Train worker: what every training process runs.

Plain PyTorch through :class:`~detr_ray.train.engine.Engine`; the Ray calls are
few and marked ``# [Ray]``: the worker's rank and device, the model's DDP
wrapping, the checkpoint to start from, and the reports that carry metrics and
checkpoints back to the controller. Two helpers split the reporting:
:class:`Checkpoints` (every rank: checkpoint + Ray report) and :class:`Progress`
(rank 0: progress lines and MLflow).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import ray.train
import ray.train.torch
import torch
from PIL import Image

from detr_ray import storage
from detr_ray.checkpoint import (
    CHECKPOINT_FILE,
    checkpoint_dict,
    initialise_from,
    load_checkpoint,
    save_checkpoint,
)
from detr_ray.config import ExperimentConfig
from detr_ray.criterion.set_loss import loss_names_by_term
from detr_ray.data.coco import CocoDetection
from detr_ray.data.labels import LabelMap
from detr_ray.data.transforms import build_transforms
from detr_ray.errors import CheckpointError, DataError, DetrRayError, TrainingStopped
from detr_ray.evaluation.coco_eval import GatheredResults, evaluate
from detr_ray.evaluation.predict import describe_detections, detect_batch, draw_detections
from detr_ray.model.build import build_model
from detr_ray.ops.dist import all_gather_objects
from detr_ray.storage import without_query
from detr_ray.tracking.store import DRIVER_TAG
from detr_ray.tracking.system_metrics import SystemSampler
from detr_ray.train.engine import Engine, seed_everything, trained_module
from detr_ray.train.fatal import read_fatal_error, write_fatal_error
from detr_ray.train.step_stats import StepLog

if TYPE_CHECKING:
    from detr_ray.tracking.runs import RunTracker

log = logging.getLogger(__name__)
SCORE_METRIC = "val/AP"  # what CheckpointConfig ranks checkpoints by (as MLflow names it)


def train_loop_per_worker(loop_config: dict) -> dict:
    """Train; returns (on rank 0) ``{"status", "message", "mlflow_run_id", "metrics", ...}``.

    ``status`` is ``completed``, ``stopped`` (the run stopped itself, e.g. it
    diverged) or ``error`` (a user-facing error, with its ``kind``).
    """
    _log_detr_ray_info()
    config = ExperimentConfig.from_dict(loop_config["experiment"])
    label_map = LabelMap.from_dict(loop_config["label_map"])
    run_dir = loop_config["run_dir"]  # a local folder or an object-store URI
    rank = ray.train.get_context().get_world_rank()  # [Ray]
    device = ray.train.torch.get_device()  # [Ray]
    fatal = read_fatal_error(
        run_dir, config.run.storage
    )  # an earlier attempt met an error a restart cannot fix
    if fatal is not None:
        return _ended_by(fatal, config, run_dir, rank)

    # One intra-op thread per CPU this worker was given: torch otherwise takes
    # every core of the machine in each worker, and 2 workers on 2 cores fight.
    torch.set_num_threads(max(1, int(config.scaling.cpus_per_worker)))
    # Everything that reads the user's files happens before the first collective,
    # and every rank learns whether any rank failed: they end together.
    inputs, error = None, None
    try:
        inputs = _read_inputs(config, label_map, run_dir, rank)
    except DetrRayError as e:
        error = e
    errors = [e for e in all_gather_objects(error) if e is not None]
    if errors or inputs is None:
        first = errors[0] if errors else DetrRayError("a worker could not read its inputs")
        return _ended_by(first, config, run_dir, rank)  # type: ignore[arg-type]
    detr, train_set, val_set, start = inputs

    model: torch.nn.Module = trained_module(detr, config).to(device)
    if config.train.channels_last:
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    # Frozen batch-norm buffers never change: no need to broadcast them every step.
    model = ray.train.torch.prepare_model(  # [Ray] DDP (gloo on CPU, NCCL on GPU)
        model, parallel_strategy_kwargs={"forward_sync_buffers": False}
    )
    # Which node each rank runs on: shown and tracked, so a multi-node run is visible.
    worker_nodes = [str(n) for n in all_gather_objects(ray.get_runtime_context().get_node_id())]
    engine = Engine(config, model, train_set, val_set, label_map, device)
    if start is not None:
        engine.load_checkpoint(start)

    checkpoints = Checkpoints(config, engine, label_map, run_dir, start)
    progress = None
    if rank == 0:
        progress = Progress(config, engine, _tracker(config, run_dir, start), label_map, val_set)
        progress.tracker.set_tags(
            {"detr_ray.worker_nodes": ",".join(worker_nodes), DRIVER_TAG: loop_config["driver"]}
        )
        if not progress.tracker.resumed:
            _log_datasets(progress.tracker, config, train_set, val_set, label_map)
        print(
            f"[detr-ray] {len(worker_nodes)} worker(s) on {len(set(worker_nodes))} node(s)",
            flush=True,
        )
        if start is not None:
            _note_resume(progress.tracker, engine)

    def report(evaluated: dict[str, float] | None) -> None:
        """Checkpoint and report to Ray on every rank; rank 0 also tracks it."""
        loss = progress.mean_loss_since_report() if progress else None
        run_id = progress.tracker.run_id if progress else None
        new_best = checkpoints.report(evaluated, loss=loss, mlflow_run_id=run_id)
        if progress:
            progress.on_report(checkpoints.best, new_best)

    def evaluate_and_report() -> None:
        gathered = engine.evaluate()  # every rank takes part
        try:
            evaluated = progress.score(gathered) if progress else None
        except BaseException:
            report(None)  # the epoch's checkpoint first (unranked): no training is lost
            raise
        report(evaluated)

    # One system-metrics sampler per node, into rank 0's MLflow run.
    run_id = all_gather_objects(progress.tracker.run_id if progress else None)[0]
    sampler = _system_sampler(config, str(run_id), worker_nodes[rank])
    summary: dict = {
        "worker_nodes": worker_nodes,
        "started_at_step": engine.state.global_step,
        "unreadable_checkpoints": (start or {}).get("passed_over", []),
    }
    attempt = f"{engine.state.global_step}-{all_gather_objects(os.getpid())[0]}"
    record = _image_recorder(config, engine, train_set, rank, attempt)
    try:
        while not engine.finished:
            engine.train_epoch(
                on_log=progress.on_log if progress else lambda _: None,
                on_mid_epoch_report=lambda: report(None),
                should_fail=lambda step: _inject_failure_once(config, run_dir, rank, step),
                on_step=record,
            )
            epoch = engine.state.epoch
            if epoch % config.train.eval_every == 0 or epoch == config.train.epochs:
                evaluate_and_report()
            else:
                report(None)
    except TrainingStopped as stopped:
        # Every worker stops at the same step (skips are agreed on), so no
        # collective is left waiting. Returning (not raising) keeps Ray Train
        # from restarting into the same divergence.
        if progress:
            progress.tracker.set_tags({"detr_ray.stopped": str(stopped)})
            progress.tracker.finish("FAILED")
        if sampler:
            sampler.stop()
        summary.update(status="stopped", message=str(stopped))
        return summary | _summary(engine, checkpoints, progress)
    except DetrRayError as e:
        # One rank's error (its collectives are left waiting): Ray stops the
        # group; the next attempt reads this record and ends at once.
        write_fatal_error(run_dir, e, config.run.storage)
        if progress:
            progress.tracker.set_tags({"detr_ray.error": str(e)})
            progress.tracker.finish("FAILED")
        raise
    finally:
        if progress:
            progress.tracker.flush()  # also when a worker failed: nothing logged is lost
    if sampler:
        sampler.stop()
    if progress:
        progress.tracker.log_loss_plot()
        if config.tracking.register_model and checkpoints.best:
            progress.register(checkpoints.best, config.tracking.register_model)
        progress.tracker.finish("FINISHED")
    summary.update(status="completed", message="")
    return summary | _summary(engine, checkpoints, progress)


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


def _read_inputs(config: ExperimentConfig, label_map: LabelMap, run_dir: str, rank: int):
    """The model (initialised from ``model.init_from`` on a fresh start), the
    datasets, and the checkpoint to start from; reads every user file a worker needs."""
    seed_everything(config.train.seed)  # the same initial weights on every worker
    detr = build_model(config.model)
    train_set, val_set = _datasets(config, label_map)
    start = _starting_checkpoint(config, run_dir, rank)
    if start is None and config.init.init_from:
        loaded = initialise_from(
            detr, config.init.init_from, label_map, config.init.class_head, config.run.storage
        )
        if rank == 0:
            print(f"[detr-ray] fine-tuning: {loaded}", flush=True)
    return detr, train_set, val_set, start


def _ended_by(error: DetrRayError, config: ExperimentConfig, run_dir: str, rank: int) -> dict:
    """Every rank returns (Ray Train does not retry a returned run); rank 0 marks
    the run's MLflow run, if there is one, FAILED."""
    if rank == 0:
        from detr_ray.tracking.runs import fail_run
        from detr_ray.tracking.store import tracking_uri

        uri = tracking_uri(config.tracking.uri, config.run.storage_path)
        fail_run(uri, config.tracking.experiment, without_query(run_dir), str(error))
    return {"status": "error", "kind": type(error).__name__, "message": str(error)}


def _datasets(config: ExperimentConfig, label_map: LabelMap):
    data = config.data
    train_set = CocoDetection(
        data.train_ann,
        data.train_images,
        build_transforms(data.augmentation, train=True),
        label_map=label_map,
        filter_empty=data.filter_empty,
        on_bad_image=data.on_bad_image,
    )
    val_set = CocoDetection(
        data.val_ann,
        data.val_images,
        build_transforms(data.augmentation, train=False),
        label_map=label_map,
        max_images=data.val_max_images,
        on_bad_image=data.on_bad_image,
    )
    return train_set, val_set


def _starting_checkpoint(config: ExperimentConfig, run_dir: str, rank: int) -> dict | None:
    """Ray's latest checkpoint of this run (restart or re-run), else ``run.resume_from``.

    A latest checkpoint that cannot be read (truncated, corrupt: a node died
    while writing it) is passed over for the newest readable one of the run,
    with a warning naming it; nothing is deleted.
    """
    checkpoint = ray.train.get_checkpoint()  # [Ray]
    if checkpoint is not None:
        try:
            with checkpoint.as_directory() as directory:
                return load_checkpoint(Path(directory) / CHECKPOINT_FILE)
        except CheckpointError as bad:
            return _newest_readable(run_dir, Path(checkpoint.path).name, bad, config, rank)
    if config.run.resume_from:
        loaded = load_checkpoint(config.run.resume_from, config.run.storage)
        if "train_state" not in loaded:
            raise CheckpointError(
                f"run.resume_from {config.run.resume_from} has no training state (optimizer, "
                "epoch); to start from its weights only, use model.init_from"
            )
        return loaded
    return None


def _newest_readable(
    run_dir: str, bad_name: str, bad: CheckpointError, config: ExperimentConfig, rank: int
) -> dict:
    """The newest of the run's checkpoints older than ``bad_name`` that loads."""
    options = config.run.storage
    names = storage.list_folder(run_dir, options)
    older = sorted((n for n in names if n.startswith("epoch") and n < bad_name), reverse=True)
    problems = [str(bad)]
    for name in older:
        try:
            loaded = load_checkpoint(storage.join(run_dir, name, CHECKPOINT_FILE), options)
        except CheckpointError as e:
            problems.append(str(e))
            continue
        if rank == 0:
            log.warning(
                "the latest checkpoint %s cannot be read (%s); resuming from %s instead, "
                "the newest readable one. Nothing was deleted.",
                bad_name,
                bad,
                name,
            )
        passed_over = [bad_name] + [n for n in older if n > name]
        return {**loaded, "passed_over": passed_over}
    raise CheckpointError(
        f"no checkpoint of run folder {without_query(run_dir)} can be read: "
        + "; ".join(problems)
        + ". Move the run folder aside to start afresh, or set run.resume_from to a good file."
    )


def _tracker(config: ExperimentConfig, run_dir: str, start: dict | None):
    from detr_ray.tracking.runs import PARENT_TAG, RunTracker
    from detr_ray.tracking.store import tracking_uri

    uri = tracking_uri(config.tracking.uri, config.run.storage_path)
    tracker = RunTracker(
        uri,
        config.tracking.experiment,
        config.run.name,
        without_query(run_dir),
        run_id=(start or {}).get("mlflow_run_id"),
        params=config.flat(),
        loss_series=loss_names_by_term(config.model.num_decoder_layers),
        asynchronous=config.tracking.async_logging,
    )
    if not tracker.resumed:
        tracker.log_text(config.to_yaml(), "config.yaml")
        if config.tracking.parent_run_id:  # a sweep's trial: nest it under the sweep's run
            tracker.set_tags({PARENT_TAG: config.tracking.parent_run_id})
    return tracker


def _log_datasets(
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
        tracker.log_dataset(context, str(dataset.ann_file), images, counts)


def _system_sampler(config: ExperimentConfig, run_id: str, node_id: str) -> SystemSampler | None:
    """This node's sampler, on the worker with local rank 0 (None elsewhere or when off)."""
    every = config.tracking.system_metrics_every
    if every <= 0 or ray.train.get_context().get_local_rank() != 0:  # [Ray]
        return None
    from detr_ray.tracking.runs import metrics_logger
    from detr_ray.tracking.store import tracking_uri

    uri = tracking_uri(config.tracking.uri, config.run.storage_path)
    node = f"node-{node_id[:8]}"
    return SystemSampler(node, metrics_logger(uri, run_id), every_s=every)


def _inject_failure_once(config: ExperimentConfig, run_dir: str, rank: int, step: int) -> None:
    """``debug.fail_once_at_step``: rank 0 raises once before that step (tests of restarts)."""
    target = config.debug.fail_once_at_step
    if target is None or step != target or rank != 0:
        return
    marker = storage.join(run_dir, f".injected_failure_{target}")
    if storage.kind(marker, config.run.storage) == "file":
        return
    storage.write_bytes(marker, b"", config.run.storage)
    raise RuntimeError(f"injected failure at step {step} (debug.fail_once_at_step)")


def _note_resume(tracker: RunTracker, engine: Engine) -> None:
    """Say where the run resumed; log ``steps_redone``: steps an earlier attempt
    logged past the checkpoint (their work was lost; the same step numbers are
    trained again but not logged twice)."""
    state = engine.state
    redone = max(0, tracker.last_logged_step - state.global_step)
    tracker.log_metrics(state.global_step, {"steps_redone": float(redone)}, prefix="restart/")
    print(
        f"[detr-ray] resumed at epoch {state.epoch} step {state.global_step} "
        f"({state.epoch_images_seen} images into the epoch) with {engine.world_size} "
        f"worker(s); {redone} logged step(s) after that checkpoint are redone",
        flush=True,
    )


def _image_recorder(
    config: ExperimentConfig, engine: Engine, train_set: CocoDetection, rank: int, attempt: str
):
    """``debug.record_images``: a step hook appending what this worker trained
    on to ``<folder>/rank<r>-pid<pid>.jsonl`` (``attempt`` tells restarts apart:
    the step it started from and rank 0's pid); it also sleeps
    ``debug.step_delay_s``. Only the sleep when unset."""
    folder, delay = config.debug.record_images, config.debug.step_delay_s
    if not folder:
        return (lambda _: time.sleep(delay)) if delay else (lambda _: None)
    Path(folder).mkdir(parents=True, exist_ok=True)
    path = Path(folder) / f"rank{rank}-pid{os.getpid()}.jsonl"

    def record(indices: list[int]) -> None:
        time.sleep(delay)
        state = engine.state
        line = {
            "attempt": attempt,
            "epoch": state.epoch,
            "step": state.global_step + 1,
            "world": engine.world_size,
            "rank": rank,
            "pid": os.getpid(),
            "time": time.time(),
            "images": [train_set.records[i].image_id for i in indices],
        }
        with path.open("a") as out:
            out.write(json.dumps(line) + "\n")

    return record


# ---------------------------------------------------------------------- checkpoints
class Checkpoints:
    """Checkpoints and Ray reports (every rank calls :meth:`report`; rank 0 saves).

    Keeps the best validation AP seen and where its checkpoint is, across restarts.
    """

    def __init__(
        self,
        config: ExperimentConfig,
        engine: Engine,
        label_map: LabelMap,
        run_dir: str,
        start: dict | None,
    ):
        self.config, self.engine, self.label_map, self.run_dir = config, engine, label_map, run_dir
        start = start or {}
        self.last_metrics: dict[str, float] = start.get("val_metrics", {})
        best = start.get("best_checkpoint")
        self.best: tuple[float, str] | None = (float(best[0]), str(best[1])) if best else None

    def report(
        self,
        evaluated: dict[str, float] | None,
        loss: float | None = None,
        mlflow_run_id: str | None = None,
    ) -> bool:
        """Report ``evaluated`` metrics (and ``loss``, the mean logged training
        loss since the last report) with a checkpoint; returns whether it is the
        new best."""
        state = self.engine.state
        name = f"epoch{state.epoch:04d}_step{state.global_step:07d}"
        ap = evaluated.get("AP") if evaluated else None
        score = ap if ap is not None and ap == ap else -1.0  # NaN/none: unranked
        metrics = {"epoch": state.epoch, "global_step": state.global_step, SCORE_METRIC: score}
        if evaluated:
            metrics["val/AP50"] = evaluated.get("AP50", -1.0)
        if loss is not None:
            metrics["loss"] = loss
        if self.engine.rank != 0:
            ray.train.report(metrics, checkpoint=None)  # [Ray]
            return False
        new_best = evaluated is not None and (self.best is None or score > self.best[0])
        if evaluated:
            self.last_metrics = evaluated
        if new_best:
            self.best = (score, without_query(storage.join(self.run_dir, name)))
        checkpoint = checkpoint_dict(
            self.engine.detr,  # the reference DETR: extra query groups are training state
            self.config.model,
            self.label_map,
            self.config.data.augmentation,
            **self.engine.training_state(),
            config=self.config.to_dict(),
            mlflow_run_id=mlflow_run_id,
            val_metrics=self.last_metrics,
            best_checkpoint=list(self.best) if self.best else None,
        )
        # Ray deletes the folder once the checkpoint is in the run's storage (with
        # run.checkpoint_upload async, after report() returns: not a with-block).
        local = tempfile.mkdtemp(prefix="detr-ray-checkpoint-")
        save_checkpoint(checkpoint, Path(local) / CHECKPOINT_FILE)
        upload = ray.train.CheckpointUploadMode  # [Ray]
        ray.train.report(  # [Ray] persists the checkpoint to the run's storage
            metrics,
            checkpoint=ray.train.Checkpoint.from_directory(local),
            checkpoint_dir_name=name,
            checkpoint_upload_mode=upload.ASYNC
            if self.config.run.checkpoint_upload == "async"
            else upload.SYNC,
            delete_local_checkpoint_after_upload=True,
        )
        return new_best


# ---------------------------------------------------------------------- progress
class Progress:
    """Rank 0's view of the run: progress lines, MLflow metrics, images and plots."""

    def __init__(
        self,
        config: ExperimentConfig,
        engine: Engine,
        tracker: RunTracker,
        label_map: LabelMap,
        val_set: CocoDetection,
    ):
        self.config, self.engine, self.tracker = config, engine, tracker
        self.label_map, self.val_set = label_map, val_set
        self.started = time.perf_counter()
        self.start_step = engine.state.global_step
        self.logged_losses: list[float] = []  # since the last report
        self.noted_ground_truth = False
        if not tracker.resumed:
            tracker.log_text(json.dumps(label_map.to_dict(), indent=2), "label_map.json")

    def on_log(self, step: StepLog) -> None:
        self.logged_losses.append(step.metrics["loss"])
        self.tracker.log_metrics(step.global_step, step.metrics)
        # steps still to come at the current world size (an elastic run's change it)
        epochs_after = self.config.train.epochs - step.epoch - 1
        to_come = step.steps_per_epoch - step.step_in_epoch
        total = step.global_step + to_come + epochs_after * self.engine.full_epoch_steps
        done = step.global_step - self.start_step
        rate = (time.perf_counter() - self.started) / max(done, 1)
        eta = _duration(rate * max(total - step.global_step, 0))
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
        if self.config.debug.fail_scoring:  # fault injection for tests
            raise DataError("injected data error while scoring (debug.fail_scoring)")
        if not self.noted_ground_truth:
            print(f"[detr-ray] validation is {self.val_set.ground_truth_note}", flush=True)
            self.noted_ground_truth = True
        metrics, _ = evaluate(
            self.val_set.coco,
            gathered.results,
            image_ids=gathered.image_ids,
            backend=self.config.train.eval_backend,
        )
        self.tracker.log_metrics(self.engine.state.global_step, metrics, prefix="val/")
        self._log_sample_images()
        shown = "  ".join(f"{k} {metrics[k]:.3f}" for k in ("AP", "AP50", "AP75", "AR100"))
        print(f"[detr-ray] epoch {self.engine.state.epoch} validation: {shown}", flush=True)
        return metrics

    def on_report(self, best: tuple[float, str] | None, new_best: bool) -> None:
        self.tracker.flush()  # what was queued since the last report reaches the store
        self.tracker.log_loss_plot()
        if new_best and best is not None:
            score, path = best
            self.tracker.set_tags({"best_checkpoint": path, "best_val_AP": f"{score:.4f}"})
            self.tracker.log_text(f"{path}\nval AP {score:.4f}\n", "best_checkpoint.txt")

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
        self.tracker.set_tags({"detr_ray.registered_model": f"models:/{name}/{version}"})
        print(f"[detr-ray] registered {location} as models:/{name}/{version}", flush=True)

    def _log_sample_images(self) -> None:
        count = min(self.config.tracking.log_images, len(self.val_set))
        if not count:
            return
        model = self.engine.detr
        model.eval()
        for index in range(count):
            sample = self.val_set[index]
            batch = None if sample is None else self.engine.collate([sample])
            if batch is None:
                continue
            det = detect_batch(model, batch, top_k=None, score_threshold=0.5)[0]
            record = self.val_set.records[index]
            with Image.open(self.val_set.image_dir / record.file_name) as opened:
                image = opened.convert("RGB")
            drawn = draw_detections(image, describe_detections(det, self.label_map))
            self.tracker.log_image(drawn, f"val_images/image_{record.image_id}.png")
        model.train()


def _summary(engine: Engine, checkpoints: Checkpoints, progress: Progress | None) -> dict:
    out: dict = {
        "metrics": checkpoints.last_metrics,
        "epoch": engine.state.epoch,
        "global_step": engine.state.global_step,
        "skipped_steps": list(engine.state.skipped_steps),
    }
    if progress is not None:
        out["mlflow_run_id"] = progress.tracker.run_id
        out["tracking_uri"] = progress.tracker.uri
        out["best_checkpoint"] = checkpoints.best[1] if checkpoints.best else None
    return out


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
