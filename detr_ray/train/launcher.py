"""The driver side of training: check and prepare the config, run a ``TorchTrainer``.

``run_training(config)`` checks everything that can be checked before Ray
starts (:func:`detr_ray.train.prepare.prepare_run`: paths, checkpoints, the tracking
store, the storage path, the datasets), starts (or joins) Ray, and runs
:func:`~detr_ray.train.worker.train_loop_per_worker` on ``scaling.num_workers``
workers. The same ``run.name`` in the same ``run.storage_path`` resumes from
the run's latest checkpoint.
A user-facing error inside a worker is not retried into the same failure
(see :mod:`detr_ray.train.fatal`).
"""

from __future__ import annotations

import logging
import os
import socket

from detr_ray import storage
from detr_ray.checkpoint import checkpoint_folders
from detr_ray.cluster.address import is_local
from detr_ray.cluster.local import ClusterChoice, choose_cluster
from detr_ray.cluster.resources import WorkerNeed
from detr_ray.cluster.session import RAY_ENV_DEFAULTS, init_ray, set_ray_env_defaults
from detr_ray.cluster.signals import sigint_kept, sigterm_as_interrupt
from detr_ray.cluster.waiting import wait_for_workers
from detr_ray.config import ExperimentConfig
from detr_ray.errors import ClusterError, TrainingStopped, error_kind
from detr_ray.storage import StorageOptions
from detr_ray.tracking.names import ENDED_TAG, ERROR_TAG, MAX_TAG_LENGTH, VAL_AP
from detr_ray.tracking.store import tracking_uri_of
from detr_ray.train.fatal import clear_fatal_error, read_fatal_error
from detr_ray.train.hooks import FaultHooks
from detr_ray.train.outcome import RunOutcome
from detr_ray.train.prepare import PreparedRun, prepare_run

log = logging.getLogger(__name__)


def run_training(
    config: ExperimentConfig, address: str | None = None, hooks: FaultHooks | None = None
) -> RunOutcome:
    """Check, then train to the end (or resume and finish); returns how it ended.

    ``hooks`` (tests only) inject faults or record steps; without it they come
    from :data:`~detr_ray.train.hooks.HOOKS_ENV`, if set.

    Raises:
        DetrRayError: a check failed (nothing was started or written), or a
            worker met a user-facing error (its kind is kept).
        TrainingStopped: the run stopped itself (e.g. diverged), or its workers
            kept failing beyond ``run.max_failures``; checkpoints are kept.
    """
    cluster = choose_cluster(address)  # before any slow work: a dead address fails now
    prepared = prepare_run(config, local_cluster=is_local(address))
    return launch(prepared, cluster=cluster, hooks=hooks)


def launch(
    prepared: PreparedRun,
    cluster: ClusterChoice | None = None,
    callbacks: list | None = None,
    hooks: FaultHooks | None = None,
) -> RunOutcome:
    """Run a :class:`PreparedRun` on Ray Train (a sweep's trial starts here:
    its driver checked the config once for every trial, and fitted the trials
    to the cluster).

    ``cluster``: where to run, for a command's own driver; then the driver
    first waits, bounded, for room for the workers
    (:func:`~detr_ray.cluster.waiting.wait_for_workers`). ``None``: this
    process is connected already (a trial). ``callbacks`` go to Ray Train's
    ``RunConfig`` (a sweep passes Tune's ``TuneReportCallback`` to forward
    every report to its trial).
    """
    config, label_map = prepared.config, prepared.label_map
    hooks = hooks or FaultHooks.from_env()
    set_ray_env_defaults()

    import ray
    import ray.train

    scaling = config.scaling
    options = config.run.storage
    run_dir = storage.join(config.run.storage_path, config.run.name)
    clear_fatal_error(run_dir, options)  # an earlier run's, whose cause the user has fixed
    workers = (
        f"{scaling.min_workers}-{scaling.num_workers} workers (elastic)"
        if scaling.elastic
        else f"{scaling.num_workers} worker(s)"
    )
    print(
        f"[detr-ray] run {config.run.name!r}: {workers} x batch "
        f"{config.train.batch_size}, {config.train.epochs} epochs, {label_map.num_classes} "
        f"classes; checkpoints in {storage.without_query(run_dir)}",
        flush=True,
    )
    for warning in prepared.warnings:
        print(f"[detr-ray] warning: {warning}", flush=True)
    uri = tracking_uri_of(config)
    _close_abandoned(uri, config.tracking.experiment)
    try:
        # a command's driver: never a silent wait for workers
        can_grow = cluster is not None and not init_ray(cluster)
        # after ray.init: it installs a SIGTERM handler of its own
        with sigterm_as_interrupt(), sigint_kept():
            if cluster is not None:
                wait_for_workers(WorkerNeed.of(scaling), can_grow, scaling.start_timeout_s)
            annotations = ray.put(prepared.annotations) if prepared.annotations else None
            result = _trainer(config, label_map, run_dir, hooks, callbacks, annotations).fit()
    except ClusterError as e:  # the wait for workers timed out: say so in the run
        _end_run(uri, config, run_dir, "FAILED", {ERROR_TAG: str(e)[:MAX_TAG_LENGTH]}, create=True)
        raise
    except KeyboardInterrupt:
        ended = {ENDED_TAG: f"driver {driver_id()} was stopped"}
        _end_run(uri, config, run_dir, "KILLED", ended, create=cluster is not None)
        if cluster is not None:  # a command's own driver: leave now (at exit it lingers)
            ray.shutdown()
        raise KeyboardInterrupt(
            f"interrupted; {_kept(run_dir, options)}. Run the same command again (same "
            "run.name and run.storage_path) to resume from the latest one."
        ) from None
    except ray.train.TrainingFailedError as e:
        fatal = read_fatal_error(run_dir, options)
        if fatal is not None:  # the attempt that read it ended too: say it once
            raise fatal from None
        stopped = TrainingStopped(
            f"training failed after {config.run.max_failures} restart(s) (run.max_failures): "
            f"{e}. {_kept(run_dir, options)}; fix the cause and run again to resume."
        )
        # its workers died: nobody else will say so
        _end_run(uri, config, run_dir, "FAILED", {ERROR_TAG: str(stopped)[:MAX_TAG_LENGTH]})
        raise stopped from None
    outcome = result.return_value
    if not isinstance(outcome, RunOutcome):  # a loop that returned nothing: a bug
        raise RuntimeError(f"the training loop returned {outcome!r}, not a RunOutcome")
    latest = result.checkpoint.path if result.checkpoint else None
    if latest is not None and storage.is_uri(config.run.storage_path):  # a bucket path
        latest = f"{config.run.storage_path.split('://')[0]}://{latest}"
    outcome.latest_checkpoint = latest
    outcome.run_dir = storage.without_query(run_dir)
    if outcome.status == "error":
        raise error_kind(outcome.error_kind)(outcome.message)
    if outcome.status == "stopped":
        raise TrainingStopped(f"{outcome.message} {_kept(run_dir, options)}")
    return outcome


def _trainer(
    config: ExperimentConfig,
    label_map,
    run_dir: str,
    hooks: FaultHooks | None,
    callbacks: list | None,
    annotations=None,
):
    """The run's ``TorchTrainer``: its workers, storage, failures, checkpoints;
    ``annotations``: an object ref of :attr:`PreparedRun.annotations`, or None."""
    import ray.train
    from ray.train.torch import TorchTrainer

    from detr_ray.train.worker import train_loop_per_worker

    scaling = config.scaling
    filesystem, storage_path = storage.open_location(config.run.storage_path, config.run.storage)
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "experiment": config.to_dict(),
            "label_map": label_map.to_dict(),
            "run_dir": run_dir,
            "driver": driver_id(),
            "hooks": hooks.to_dict() if hooks else None,  # tests only: not the experiment's
            "annotations": annotations,
        },
        scaling_config=ray.train.ScalingConfig(
            # (min, max): Train V2's elastic policy restarts at the size that fits
            num_workers=(scaling.min_workers, scaling.num_workers)
            if scaling.elastic
            else scaling.num_workers,
            elastic_resize_monitor_interval_s=scaling.resize_interval_s,
            use_gpu=scaling.use_gpu,
            resources_per_worker={"CPU": scaling.cpus_per_worker}
            | ({"GPU": 1} if scaling.use_gpu else {}),
        ),
        run_config=ray.train.RunConfig(
            name=config.run.name,
            storage_path=storage_path,
            storage_filesystem=filesystem,
            failure_config=ray.train.FailureConfig(max_failures=config.run.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=config.run.keep_checkpoints,
                checkpoint_score_attribute=VAL_AP,
                checkpoint_score_order="max",
            ),
            worker_runtime_env={"env_vars": {k: os.environ[k] for k in RAY_ENV_DEFAULTS}},
            logging_config=ray.train.LoggingConfig(log_level="WARNING"),
            callbacks=callbacks or [],
        ),
    )


def driver_id() -> str:
    """``host:pid`` of this driver, the run's ``detr_ray.driver`` tag."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _close_abandoned(uri: str, experiment: str) -> None:
    """Runs left RUNNING by drivers of this host that died (SIGKILL, power): KILLED."""
    from detr_ray.tracking.lifecycle import close_abandoned_runs

    try:
        closed = close_abandoned_runs(uri, experiment, socket.gethostname())
    except Exception as e:  # the tracking store's trouble must not stop training
        log.warning("could not look for runs of dead drivers in %s: %s", uri, e)
        return
    for name in closed:
        print(f"[detr-ray] run {name!r} was left RUNNING by a driver that died: marked KILLED")


def _end_run(
    uri: str,
    config: ExperimentConfig,
    run_dir: str,
    status: str,
    tags: dict[str, str],
    create: bool = False,
) -> None:
    """End the run's MLflow run as the driver ends, if it is still RUNNING (a
    stop that comes after the run FINISHED changes nothing); a store that fails
    is only warned about (the error that ends the driver is the one to show).

    ``create``: a run whose workers never started has no MLflow run yet; it
    gets one (the config and params, as its workers would log them) that ends
    with ``status`` and ``tags``; running it again continues that run."""
    from detr_ray.tracking.lifecycle import end_run
    from detr_ray.train.progress import open_tracker

    try:
        run = storage.without_query(run_dir)
        found = end_run(uri, config.tracking.experiment, run, status, tags, only_running=True)
        if create and not found:
            tracker = open_tracker(config, run_dir, None)
            tracker.set_tags(tags)
            tracker.finish(status)
    except Exception as e:
        log.warning("could not mark the MLflow run %s in %s: %s", status, uri, e)


def _kept(run_dir: str, options: StorageOptions) -> str:
    """Where the run's checkpoints are, or that there are none yet."""
    kept = checkpoint_folders(storage.list_folder(run_dir, options))
    shown = storage.without_query(run_dir)
    if not kept:
        return f"no checkpoint was written (run folder {shown})"
    return f"checkpoints are kept in {shown} (latest {kept[-1]})"
