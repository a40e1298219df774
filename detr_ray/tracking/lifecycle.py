"""How runs end when nobody is left to end them: a worker error, a stopped or dead driver.

Runs are found by their folder (the ``detr_ray.run_dir`` tag), so a driver
can end the run its workers opened without knowing its id.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Mapping

from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from detr_ray.tracking.names import (
    DRIVER_TAG,
    ENDED_TAG,
    ERROR_TAG,
    MAX_TAG_LENGTH,
    PARENT_TAG,
    RUN_DIR_TAG,
)


def metrics_logger(uri: str, run_id: str) -> Callable[[dict[str, float], int], None]:
    """``log(values, step)`` into run ``run_id``: for processes without a tracker
    (each node's system-metrics sampler)."""
    client = MlflowClient(tracking_uri=uri)

    def log_values(values: dict[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        points = [Metric(k, float(v), now, step) for k, v in values.items() if math.isfinite(v)]
        client.log_batch(run_id, metrics=points)

    return log_values


def fail_run(uri: str, experiment: str, run_dir: str | os.PathLike, message: str) -> None:
    """Mark the run of ``run_dir`` (if it has one) FAILED with ``message`` as its
    ``detr_ray.error`` tag; a run that never started tracking gets none."""
    end_run(uri, experiment, run_dir, "FAILED", {ERROR_TAG: message[:MAX_TAG_LENGTH]})


def end_run(
    uri: str,
    experiment: str,
    run_dir: str | os.PathLike,
    status: str,
    tags: Mapping[str, str],
    only_running: bool = False,
) -> bool:
    """End the run of ``run_dir`` (if it has one) with ``status`` (FAILED,
    KILLED) and ``tags``; with ``only_running``, only if it is still RUNNING
    (a driver stopped just after its run FINISHED leaves it FINISHED).
    Returns whether ``run_dir`` has a run."""
    client = MlflowClient(tracking_uri=uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return False
    runs = client.search_runs(
        [found.experiment_id], filter_string=f"tags.`{RUN_DIR_TAG}` = '{run_dir}'", max_results=1
    )
    for run in runs:
        if only_running and run.info.status != "RUNNING":
            continue
        for key, value in tags.items():
            client.set_tag(run.info.run_id, key, value)
        client.set_terminated(run.info.run_id, status=status)
    return bool(runs)


def close_abandoned_runs(uri: str, experiment: str, host: str) -> list[str]:
    """Mark KILLED the RUNNING runs whose driver ran on ``host`` and is gone (a
    driver killed without a chance to say so); returns their names. Runs driven
    from other hosts are left: their drivers cannot be checked from here; so
    are a sweep's trials: the sweep closes them (its trial drivers end while
    their runs are still open)."""
    client = MlflowClient(tracking_uri=uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return []
    closed = []
    running = client.search_runs(
        [found.experiment_id], filter_string="attributes.status = 'RUNNING'", max_results=1000
    )
    for run in running:
        driver = run.data.tags.get(DRIVER_TAG, "")
        driver_host, _, pid = driver.rpartition(":")
        if driver_host != host or not pid.isdigit() or _alive(int(pid)):
            continue
        if run.data.tags.get(PARENT_TAG):
            continue
        client.set_tag(run.info.run_id, ENDED_TAG, f"driver {driver} was gone")
        client.set_terminated(run.info.run_id, status="KILLED")
        closed.append(run.info.run_name)
    return closed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True
