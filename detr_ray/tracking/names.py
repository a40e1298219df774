"""Every name detr-ray writes into MLflow and reads back: tags, metrics, artifacts.

One module for both sides: the worker that sets a tag and the sweep, the
launcher or a test that reads it import the same constant, so renaming one
side cannot silently break the other. No MLflow here.
"""

from __future__ import annotations

# ---------------------------------------------------------------------- run tags
RUN_DIR_TAG = "detr_ray.run_dir"  # the run's folder: finds its MLflow run again on resume
DRIVER_TAG = "detr_ray.driver"  # host:pid of the `detr-ray train` driving the run now
PARENT_TAG = "mlflow.parentRunId"  # MLflow's own: the UI nests a sweep's trials under it
WORKER_NODES_TAG = "detr_ray.worker_nodes"  # the node of each rank, comma-separated
ERROR_TAG = "detr_ray.error"  # why a run FAILED (a user-facing error)
STOPPED_TAG = "detr_ray.stopped"  # why a run stopped itself (it diverged)
ENDED_TAG = "detr_ray.ended"  # why the driver marked the run KILLED
STOPPED_EARLY_TAG = "detr_ray.stopped_early"  # a sweep's trial that ASHA stopped
DROPPED_POINTS_TAG = "detr_ray.dropped_metric_points"  # points the tracking store never took
REGISTERED_MODEL_TAG = "detr_ray.registered_model"  # models:/NAME/VERSION of the run's best
BEST_CHECKPOINT_TAG = "best_checkpoint"  # where the run's best checkpoint is
BEST_VAL_AP_TAG = "best_val_AP"  # its validation AP
SWEEP_TAG = "detr_ray.sweep"  # on a sweep's parent run: the sweep's name
TRIALS_AT_ONCE_TAG = "detr_ray.trials_at_once"
BEST_TRIAL_TAG = "best_trial"

EXPERIMENT_KIND_TAG = "mlflow.experimentKind"  # MLflow 3's UI: open as model development
EXPERIMENT_KIND = "custom_model_development"

MAX_TAG_LENGTH = 5000  # an error message kept as a tag is cut to this

# ---------------------------------------------------------------------- metrics
LOSS = "loss"  # the training objective (last decoder layer + auxiliary layers)
VAL_PREFIX = "val/"  # COCOeval's metrics, e.g. val/AP, val/AP50, val/AP/<id>_<name>
VAL_AP = VAL_PREFIX + "AP"  # what checkpoints are ranked by
VAL_AP50 = VAL_PREFIX + "AP50"
RESTART_PREFIX = "restart/"
STEPS_REDONE = "steps_redone"  # under RESTART_PREFIX: logged steps lost to a restart

# ---------------------------------------------------------------------- artifacts
CONFIG_ARTIFACT = "config.yaml"
LABEL_MAP_ARTIFACT = "label_map.json"
BEST_CHECKPOINT_ARTIFACT = "best_checkpoint.txt"
LOSS_PLOT_ARTIFACT = "plots/decoder_layer_losses.png"

# ---------------------------------------------------------------------- the model registry
CHAMPION_ALIAS = "champion"  # moves to the registered version with the best validation AP
VERSION_AP_TAG = "val_AP"  # a model version's validation AP
VERSION_CHECKPOINT_TAG = "checkpoint"  # the checkpoint a model version was made from
