"""The driver side of training: prepare the config, run a ``TorchTrainer``, summarise.

``run_training(config)`` resolves paths, generates the synthetic dataset if the
config asks for it and it is missing, takes the number of classes from the
training annotations, starts (or joins) Ray, and runs
:func:`~detr_ray.train.worker.train_loop_per_worker` on ``scaling.num_workers``
workers. The same ``run.name`` in the same ``run.storage_path`` resumes from
the run's latest checkpoint.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from detr_ray.cluster import check_cluster_address
from detr_ray.config import ExperimentConfig
from detr_ray.data.coco import load_coco_json
from detr_ray.data.labels import LabelMap
from detr_ray.errors import ConfigError, TrainingStopped

# Quiet, single-copy worker output; no usage reporting. Users may override.
RAY_ENV_DEFAULTS = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
    "MLFLOW_DISABLE_TELEMETRY": "true",
}


def prepare_config(config: ExperimentConfig) -> tuple[ExperimentConfig, LabelMap]:
    """Absolute paths, the synthetic dataset if needed, ``model.num_classes``, the store.

    Paths may start with ``~`` (the home directory of the machine that runs this:
    inside a cluster job, the head's). ``tracking.uri`` null takes MLflow's
    ``MLFLOW_TRACKING_URI`` from the environment, if set.
    """
    data = config.data
    if data.synthetic is not None and not Path(data.train_ann).expanduser().is_file():
        from detr_ray.data.synthetic import generate

        s = data.synthetic
        print(f"[detr-ray] generating the synthetic dataset in {s.root} (missing)", flush=True)
        generate(Path(s.root).expanduser(), s.num_train, s.num_val, size=s.size, seed=s.seed)
    data = dataclasses.replace(
        data,
        train_ann=_absolute(data.train_ann),
        train_images=_absolute(data.train_images),
        val_ann=_absolute(data.val_ann),
        val_images=_absolute(data.val_images),
    )
    run = dataclasses.replace(
        config.run,
        storage_path=_absolute(config.run.storage_path),
        resume_from=_absolute_or_none(config.run.resume_from),
    )
    init = dataclasses.replace(config.init, init_from=_absolute_or_none(config.init.init_from))
    # Pinned here: workers on other nodes need not share the driver's environment.
    tracking = dataclasses.replace(
        config.tracking, uri=config.tracking.uri or os.environ.get("MLFLOW_TRACKING_URI") or None
    )
    label_map = LabelMap.from_categories(load_coco_json(data.train_ann)["categories"])
    num_classes = config.model.num_classes
    if num_classes is None:
        num_classes = label_map.num_classes
    elif num_classes < label_map.num_classes:
        raise ConfigError(
            f"model.num_classes is {num_classes} but {data.train_ann} has "
            f"{label_map.num_classes} categories; leave it null to use theirs"
        )
    model = dataclasses.replace(config.model, num_classes=num_classes)
    resolved = dataclasses.replace(
        config, data=data, run=run, init=init, model=model, tracking=tracking
    )
    return resolved, label_map


def _absolute(path: str) -> str:
    return str(Path(path).expanduser().resolve())


def _absolute_or_none(path: str | None) -> str | None:
    return None if path is None else _absolute(path)


def run_training(
    config: ExperimentConfig, address: str | None = None, callbacks: list | None = None
) -> dict:
    """Train to the end (or resume and finish); returns the rank-0 worker's summary.

    Raises:
        TrainingStopped: the run stopped itself (e.g. diverged), or its workers
            kept failing beyond ``run.max_failures``; checkpoints are kept.

    ``callbacks`` go to Ray Train's ``RunConfig`` (a sweep passes Tune's
    ``TuneReportCallback`` to forward every report to its trial).
    """
    check_cluster_address(address)  # before any slow work: an unreachable one fails now
    config, label_map = prepare_config(config)
    for key, value in RAY_ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)

    import ray
    import ray.train
    from ray.train.torch import TorchTrainer

    from detr_ray.train.worker import SCORE_METRIC, train_loop_per_worker

    if not ray.is_initialized():
        ray.init(address=address, log_to_driver=True)
    run_dir = Path(config.run.storage_path) / config.run.name
    scaling = config.scaling
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "experiment": config.to_dict(),
            "label_map": label_map.to_dict(),
            "run_dir": str(run_dir),
        },
        scaling_config=ray.train.ScalingConfig(
            num_workers=scaling.num_workers,
            use_gpu=scaling.use_gpu,
            resources_per_worker={"CPU": scaling.cpus_per_worker}
            | ({"GPU": 1} if scaling.use_gpu else {}),
        ),
        run_config=ray.train.RunConfig(
            name=config.run.name,
            storage_path=config.run.storage_path,
            failure_config=ray.train.FailureConfig(max_failures=config.run.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=config.run.keep_checkpoints,
                checkpoint_score_attribute=SCORE_METRIC,
                checkpoint_score_order="max",
            ),
            worker_runtime_env={"env_vars": {k: os.environ[k] for k in RAY_ENV_DEFAULTS}},
            logging_config=ray.train.LoggingConfig(log_level="WARNING"),
            callbacks=callbacks or [],
        ),
    )
    print(
        f"[detr-ray] run {config.run.name!r}: {scaling.num_workers} worker(s) x batch "
        f"{config.train.batch_size}, {config.train.epochs} epochs, {label_map.num_classes} "
        f"classes; checkpoints in {run_dir}",
        flush=True,
    )
    try:
        result = trainer.fit()
    except KeyboardInterrupt:
        raise KeyboardInterrupt(
            f"interrupted; checkpoints are in {run_dir}. Run the same command again "
            "(same run.name and run.storage_path) to resume from the latest one."
        ) from None
    except ray.train.TrainingFailedError as e:
        raise TrainingStopped(
            f"training failed after {config.run.max_failures} restart(s): {e}. Checkpoints "
            f"in {run_dir} are kept; fix the cause and run again to resume."
        ) from None
    outcome = dict(result.return_value or {})
    outcome["latest_checkpoint"] = result.checkpoint.path if result.checkpoint else None
    outcome["run_dir"] = str(run_dir)
    if outcome.get("status") == "stopped":
        raise TrainingStopped(
            f"{outcome['message']} Latest checkpoint: {outcome['latest_checkpoint']}"
        )
    return outcome
