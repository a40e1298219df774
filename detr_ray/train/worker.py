"""The Ray Train worker: what every training process runs, top to bottom.

Plain PyTorch through :class:`~detr_ray.train.engine.Engine`; the Ray calls are
few and marked ``# [Ray]``: the worker's rank and device, the model's DDP
wrapping, the checkpoint to start from (:mod:`~detr_ray.train.resume`), and
the reports that carry metrics and checkpoints back to the controller
(:mod:`~detr_ray.train.reporting`). Rank 0 also tracks the run
(:mod:`~detr_ray.train.progress`).
"""

from __future__ import annotations

import logging
import os

import ray.train
import ray.train.torch
import torch

from detr_ray.checkpoint import initialise_from
from detr_ray.config import ExperimentConfig
from detr_ray.data.labels import LabelMap
from detr_ray.errors import DetrRayError, TrainingStopped
from detr_ray.model.build import build_model
from detr_ray.ops.dist import all_gather_objects
from detr_ray.storage import without_query
from detr_ray.tracking.names import DRIVER_TAG, ERROR_TAG, STOPPED_TAG, WORKER_NODES_TAG
from detr_ray.tracking.store import tracking_uri_of
from detr_ray.train.build import build_engine
from detr_ray.train.engine import Engine
from detr_ray.train.fatal import read_fatal_error, write_fatal_error
from detr_ray.train.hooks import FaultHooks
from detr_ray.train.inputs import build_datasets
from detr_ray.train.outcome import RunOutcome
from detr_ray.train.progress import Progress, log_datasets, node_sampler, open_tracker
from detr_ray.train.reporting import Checkpoints
from detr_ray.train.resume import note_resume, starting_checkpoint
from detr_ray.train.seeds import seed_everything


def train_loop_per_worker(loop_config: dict) -> RunOutcome:
    """Train to the end of ``train.epochs`` (or resume and finish).

    ``loop_config`` holds the resolved ``experiment`` config, the
    ``label_map``, the ``run_dir`` (a local folder or an object-store URI),
    the ``driver`` (host:pid), ``annotations`` (an object ref of the files the
    driver read from object storage, or None) and, in tests, ``hooks``
    (:class:`~detr_ray.train.hooks.FaultHooks` as a dict). Returns how the run
    ended (see :class:`~detr_ray.train.outcome.RunOutcome`).
    """
    _log_detr_ray_info()
    config = ExperimentConfig.from_dict(loop_config["experiment"])
    label_map = LabelMap.from_dict(loop_config["label_map"])
    run_dir = loop_config["run_dir"]
    fault_hooks = FaultHooks.from_dict(loop_config.get("hooks"))
    rank = ray.train.get_context().get_world_rank()  # [Ray]
    device = ray.train.torch.get_device()  # [Ray]
    fatal = read_fatal_error(run_dir, config.run.storage)  # a restart cannot fix it
    if fatal is not None:
        return _ended_by(fatal, config, run_dir, rank)

    # One intra-op thread per CPU this worker was given: torch otherwise takes
    # every core of the machine in each worker, and 2 workers on 2 cores fight.
    torch.set_num_threads(max(1, int(config.scaling.cpus_per_worker)))
    # Everything that reads the user's files happens before the first collective,
    # and every rank learns whether any rank failed: they end together.
    inputs, error = None, None
    try:
        shipped = loop_config.get("annotations")
        annotations = None if shipped is None else ray.get(shipped)  # [Ray]
        inputs = _read_inputs(config, label_map, run_dir, rank, annotations)
    except DetrRayError as e:
        error = e
    errors = [e for e in all_gather_objects(error) if e is not None]
    if errors or inputs is None:
        first = errors[0] if errors else DetrRayError("a worker could not read its inputs")
        return _ended_by(first, config, run_dir, rank)  # type: ignore[arg-type]
    detr, train_set, val_set, start = inputs

    hooks = fault_hooks.for_worker(run_dir, config.run.storage, rank) if fault_hooks else None
    engine = build_engine(
        config,
        label_map,
        device,
        detr=detr,
        datasets=(train_set, val_set),
        # [Ray] DDP (gloo on CPU, NCCL on GPU); frozen batch-norm buffers never
        # change: no need to broadcast them every step.
        wrap=lambda module: ray.train.torch.prepare_model(
            module, parallel_strategy_kwargs={"forward_sync_buffers": False}
        ),
        hooks=hooks,
    )
    if start is not None:
        engine.load_checkpoint(start)
    # Which node each rank runs on: shown and tracked, so a multi-node run is visible.
    worker_nodes = [str(n) for n in all_gather_objects(ray.get_runtime_context().get_node_id())]

    checkpoints = Checkpoints(config, engine, label_map, run_dir, start)
    progress = None
    if rank == 0:
        tracker = open_tracker(config, run_dir, start)
        progress = Progress(config, engine, tracker, label_map, val_set, hooks)
        tracker.set_tags(
            {WORKER_NODES_TAG: ",".join(worker_nodes), DRIVER_TAG: loop_config["driver"]}
        )
        if not tracker.resumed:
            log_datasets(tracker, config, train_set, val_set, label_map)
        print(
            f"[detr-ray] {len(worker_nodes)} worker(s) on {len(set(worker_nodes))} node(s)",
            flush=True,
        )
        if start is not None:
            note_resume(tracker, engine)

    def report(evaluated: dict[str, float] | None, final: bool = False) -> None:
        """Checkpoint and report to Ray on every rank; rank 0 also tracks it."""
        loss = progress.mean_loss_since_report() if progress else None
        run_id = progress.tracker.run_id if progress else None
        new_best = checkpoints.report(evaluated, loss=loss, mlflow_run_id=run_id, final=final)
        if progress:
            progress.on_report(checkpoints.best, new_best)

    def evaluate_and_report(final: bool) -> None:
        gathered = engine.evaluate()  # every rank takes part
        try:
            evaluated = progress.score(gathered) if progress else None
        except BaseException:
            report(None)  # the epoch's checkpoint first (unranked): no training is lost
            raise
        # the last report's checkpoints are all in storage before registration reads one
        report(evaluated, final=final)

    # One system-metrics sampler per node, into rank 0's MLflow run.
    run_id = str(all_gather_objects(progress.tracker.run_id if progress else None)[0])
    local_rank = ray.train.get_context().get_local_rank()  # [Ray]
    sampler = node_sampler(config, run_id, worker_nodes[rank], local_rank)
    outcome = RunOutcome(
        status="completed",
        worker_nodes=worker_nodes,
        started_at_step=engine.state.global_step,
        unreadable_checkpoints=(start or {}).get("passed_over", []),
    )
    if hooks:
        hooks.start_attempt(f"{engine.state.global_step}-{all_gather_objects(os.getpid())[0]}")
    try:
        engine.budget.start()  # train.time_budget_minutes: this attempt's clock
        while not engine.finished:
            engine.train_epoch(
                on_log=progress.on_log if progress else lambda _: None,
                on_mid_epoch_report=lambda: report(None),
            )
            epoch = engine.state.epoch
            last = epoch == config.train.epochs or engine.budget.exhausted
            if epoch % config.train.eval_every == 0 or last:
                if engine.budget.exhausted and progress:
                    done = epoch + engine.state.step_in_epoch / engine.steps_per_epoch
                    print(f"[detr-ray] {engine.budget.spent_message(done)}", flush=True)
                evaluate_and_report(final=last)
            else:
                report(None)
    except TrainingStopped as stopped:
        # Every worker stops at the same step (skips are agreed on), so no
        # collective is left waiting. Returning (not raising) keeps Ray Train
        # from restarting into the same divergence.
        if progress:
            progress.tracker.log_loss_plot(force=True)  # the losses that led to the stop
            progress.tracker.set_tags({STOPPED_TAG: str(stopped)})
            progress.tracker.finish("FAILED")
        if sampler:
            sampler.stop()
        outcome.status, outcome.message = "stopped", str(stopped)
        return _completed(outcome, engine, checkpoints, progress)
    except DetrRayError as e:
        # One rank's error (its collectives are left waiting): Ray stops the
        # group; the next attempt reads this record and ends at once.
        write_fatal_error(run_dir, e, config.run.storage)
        if progress:
            progress.tracker.set_tags({ERROR_TAG: str(e)})
            progress.tracker.finish("FAILED")
        raise
    finally:
        if progress:
            progress.tracker.flush()  # also when a worker failed: nothing logged is lost
    if sampler:
        sampler.stop()
    if progress:
        progress.tracker.log_loss_plot(force=True)  # the whole run's, whenever it was last drawn
        if config.tracking.register_model and checkpoints.best:
            progress.register(checkpoints.best, config.tracking.register_model)
        progress.tracker.finish("FINISHED")
    return _completed(outcome, engine, checkpoints, progress)


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


def _read_inputs(
    config: ExperimentConfig,
    label_map: LabelMap,
    run_dir: str,
    rank: int,
    annotations: dict | None = None,
):
    """The model (initialised from ``model.init_from`` on a fresh start), the
    datasets, and the checkpoint to start from; reads every user file a worker needs
    (but ``annotations``, when the driver sent them)."""
    seed_everything(config.train.seed)  # the same initial weights on every worker
    detr = build_model(config.model)
    train_set, val_set = build_datasets(config, label_map, annotations)
    start = starting_checkpoint(config, run_dir, rank)
    if start is None and config.init.init_from:
        loaded = initialise_from(
            detr, config.init.init_from, label_map, config.init.class_head, config.run.storage
        )
        if rank == 0:
            print(f"[detr-ray] fine-tuning: {loaded}", flush=True)
    return detr, train_set, val_set, start


def _ended_by(error: DetrRayError, config: ExperimentConfig, run_dir: str, rank: int) -> RunOutcome:
    """Every rank returns (Ray Train does not retry a returned run); rank 0 marks
    the run's MLflow run, if there is one, FAILED."""
    if rank == 0:
        from detr_ray.tracking.lifecycle import fail_run

        uri = tracking_uri_of(config)
        fail_run(uri, config.tracking.experiment, without_query(run_dir), str(error))
    return RunOutcome(status="error", error_kind=type(error).__name__, message=str(error))


def _completed(
    outcome: RunOutcome, engine: Engine, checkpoints: Checkpoints, progress: Progress | None
) -> RunOutcome:
    """``outcome`` with where training stands, and rank 0's view of the run."""
    state = engine.state
    outcome.metrics = checkpoints.last_metrics
    outcome.epoch, outcome.global_step = state.epoch, state.global_step
    outcome.skipped_steps = list(state.skipped_steps)
    if progress is not None:
        outcome.mlflow_run_id = progress.tracker.run_id
        outcome.tracking_uri = progress.tracker.uri
        outcome.best_checkpoint = checkpoints.best[1] if checkpoints.best else None
    return outcome
