"""Where a worker starts from: Ray's latest checkpoint of the run, or ``run.resume_from``.

A latest checkpoint that cannot be read (truncated, corrupt: a node died
while writing it) is passed over for the newest readable one of the run,
with a warning naming it; nothing is deleted.
"""

from __future__ import annotations

import logging
from pathlib import Path

import ray.train

from detr_ray import storage
from detr_ray.checkpoint import CHECKPOINT_FILE, checkpoint_folders, load_checkpoint
from detr_ray.config import ExperimentConfig
from detr_ray.errors import CheckpointError
from detr_ray.storage import without_query
from detr_ray.tracking.names import RESTART_PREFIX, STEPS_REDONE

log = logging.getLogger(__name__)


def starting_checkpoint(config: ExperimentConfig, run_dir: str, rank: int) -> dict | None:
    """The checkpoint to start from (``None``: a fresh start). A checkpoint that
    was passed over for an older one carries the passed-over names in
    ``passed_over``."""
    checkpoint = ray.train.get_checkpoint()  # [Ray] this run's latest (restart or re-run)
    if checkpoint is not None:
        try:
            with checkpoint.as_directory() as directory:
                return load_checkpoint(Path(directory) / CHECKPOINT_FILE)
        except CheckpointError as bad:
            return newest_readable(run_dir, Path(checkpoint.path).name, bad, config, rank)
    if config.run.resume_from:
        loaded = load_checkpoint(config.run.resume_from, config.run.storage)
        if "train_state" not in loaded:
            raise CheckpointError(
                f"run.resume_from {config.run.resume_from} has no training state (optimizer, "
                "epoch); to start from its weights only, use model.init_from"
            )
        return loaded
    return None


def newest_readable(
    run_dir: str, bad_name: str, bad: CheckpointError, config: ExperimentConfig, rank: int
) -> dict:
    """The newest of the run's checkpoints older than ``bad_name`` that loads."""
    options = config.run.storage
    names = checkpoint_folders(storage.list_folder(run_dir, options))
    older = [n for n in reversed(names) if n < bad_name]
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


def note_resume(tracker, engine) -> None:  # (RunTracker, Engine)
    """Say where the run resumed; log ``restart/steps_redone``: steps an earlier
    attempt logged past the checkpoint (their work was lost; the same step
    numbers are trained again but not logged twice)."""
    state = engine.state
    redone = max(0, tracker.last_logged_step - state.global_step)
    tracker.log_metrics(state.global_step, {STEPS_REDONE: float(redone)}, prefix=RESTART_PREFIX)
    print(
        f"[detr-ray] resumed at epoch {state.epoch} step {state.global_step} "
        f"({state.epoch_images_seen} images into the epoch) with {engine.world_size} "
        f"worker(s); {redone} logged step(s) after that checkpoint are redone",
        flush=True,
    )
