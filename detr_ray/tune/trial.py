"""One trial of a sweep: a Ray Tune function trainable that runs a whole Ray Train run.

The sampled values are applied to the sweep's base config; the trial's Train
run is named by its trial id (so a resumed sweep continues an interrupted
trial from its last checkpoint), nested under the sweep's MLflow run, and
reports every epoch to Tune through ``TuneReportCallback``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from detr_ray.data.labels import LabelMap
from detr_ray.tune.space import SearchSpace


def run_trial(
    params: dict,
    base: dict,
    label_map: dict,
    space: SearchSpace,
    train_dir: str,
    tracking_uri: str,
    parent_run_id: str,
) -> None:
    """One trial: the sampled config trained by Ray Train, reported to Tune."""
    import ray.tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from detr_ray.train.launcher import launch
    from detr_ray.train.prepare import PreparedRun

    config = space.apply(base, {key: params[key] for key in space.keys})
    trial_id = ray.tune.get_context().get_trial_id()
    config = dataclasses.replace(
        config,
        run=dataclasses.replace(config.run, name=trial_id, storage_path=train_dir),
        # Only the sweep's best trial is registered (tune --register-model), by the driver.
        tracking=dataclasses.replace(
            config.tracking, uri=tracking_uri, parent_run_id=parent_run_id, register_model=None
        ),
        # ASHA compares trials at every epoch: evaluate every epoch, report once.
        train=dataclasses.replace(config.train, eval_every=1, report_every=None),
    )
    # The sweep's driver checked the base config and its data once, for every trial.
    launch(PreparedRun(config, LabelMap.from_dict(label_map)), callbacks=[TuneReportCallback()])


def trial_folder(trial: Any) -> str:
    """A trial's folder is named by its id, as in ``results.csv``."""
    return str(trial.trial_id)
