"""Checkpoints and Ray reports: every rank reports, rank 0 saves the checkpoint.

What each report carries (as MLflow names it): ``epoch``, ``global_step``,
``val/AP`` (what Ray ranks checkpoints by; -1 when the report has no
evaluation), ``val/AP50``, and ``loss`` (the mean logged training loss since
the last report). A sweep reads the same names (:mod:`detr_ray.tune.options`).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import ray.train

from detr_ray import storage
from detr_ray.checkpoint import (
    CHECKPOINT_FILE,
    checkpoint_dict,
    checkpoint_folder_name,
    save_checkpoint,
)
from detr_ray.config import ExperimentConfig
from detr_ray.data.labels import LabelMap
from detr_ray.storage import without_query
from detr_ray.tracking.names import LOSS, VAL_AP, VAL_AP50
from detr_ray.train.engine import Engine


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
        final: bool = False,
    ) -> bool:
        """Report ``evaluated`` metrics (and ``loss``, the mean logged training
        loss since the last report) with a checkpoint; returns whether it is the
        new best.

        A ``final`` report (the run's last) uploads in the foreground whatever
        ``run.checkpoint_upload`` says: Ray handles reports in order, so when it
        returns every checkpoint of the run is complete in storage, and what
        the worker does next (registering the best one) reads whole files."""
        state = self.engine.state
        name = checkpoint_folder_name(state.epoch, state.global_step)
        ap = evaluated.get("AP") if evaluated else None
        score = ap if ap is not None and ap == ap else -1.0  # NaN/none: unranked
        metrics = {"epoch": state.epoch, "global_step": state.global_step, VAL_AP: score}
        if evaluated:
            metrics[VAL_AP50] = evaluated.get("AP50", -1.0)
        if loss is not None:
            metrics[LOSS] = loss
        if self.engine.rank != 0:
            ray.train.report(metrics, checkpoint=None)  # [Ray]
            return False
        new_best = evaluated is not None and (self.best is None or score > self.best[0])
        if evaluated:
            self.last_metrics = evaluated
        if new_best:
            self.best = (score, without_query(storage.join(self.run_dir, name)))
        checkpoint = checkpoint_dict(
            self.engine.reference_detr,  # training-only parts ride in the training state
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
            if self.config.run.checkpoint_upload == "async" and not final
            else upload.SYNC,
            delete_local_checkpoint_after_upload=True,
        )
        return new_best
