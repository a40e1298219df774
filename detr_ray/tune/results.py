"""A sweep's results: one row per trial, the best trial, its config, the MLflow parent's record.

Read from Tune's public record of the sweep (a ``ResultGrid``: one Result per
trial, its folder named by its trial id), then written as ``results.csv``,
``best_config.yaml`` and a plot; trials ASHA stopped have their MLflow runs
closed here (Tune stops a trial right after the report that ends it, often
before its Train run closes its own run).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import posixpath
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from detr_ray import storage
from detr_ray.config import ExperimentConfig
from detr_ray.tracking.names import (
    BEST_CHECKPOINT_TAG,
    BEST_TRIAL_TAG,
    BEST_VAL_AP_TAG,
    REGISTERED_MODEL_TAG,
    STOPPED_EARLY_TAG,
)
from detr_ray.tune.options import SweepOptions
from detr_ray.tune.space import SearchSpace

if TYPE_CHECKING:
    import pandas

    from detr_ray.tracking.runs import SweepTracker


@dataclass
class SweepOutcome:
    sweep_dir: str  # a local folder or an object-store URI
    interrupted: bool
    rows: list[dict]  # one per trial, as in results.csv
    best: dict | None  # the best row
    best_config_path: str | None
    parent_run_id: str
    tracking_uri: str
    concurrency: str = ""  # how many trials ran at once, and why


def finish_sweep(
    grid: Any,  # ray.tune.ResultGrid
    base: ExperimentConfig,
    space: SearchSpace,
    options: SweepOptions,
    sweep_dir: str,
    parent: SweepTracker,
    concurrency: str,
) -> SweepOutcome:
    """Results table, best config, plots; early-stopped children marked KILLED."""
    children = parent.child_runs()  # trial id (the child's run name) -> (run id, status)
    rows: list[dict[str, Any]] = []
    interrupted = False
    # Tune's public record of the sweep: one Result per trial (its folder is
    # named by its trial id), with its sampled config, last result, error and
    # metric history.
    for result in grid:
        metrics = result.metrics or {}
        trial_id = posixpath.basename(str(result.path).rstrip("/"))
        epochs = int(metrics.get("epoch", 0) or 0)
        done = bool(metrics.get("done"))
        status = _status(result.error is not None, done, epochs, base.train.epochs)
        interrupted |= status == "unfinished"
        run_id, run_status = children.get(trial_id, (None, None))
        # Tune stops a trial right after the report that ends it (ASHA at max_t
        # too), often before its Train run closes its MLflow run: close it here.
        if run_id is not None and run_status == "RUNNING" and status == "stopped early":
            parent.end_child(run_id, "KILLED", {STOPPED_EARLY_TAG: "true"})
        elif run_id is not None and run_status == "RUNNING" and status == "finished":
            parent.end_child(run_id, "FINISHED", {})
        sampled = {key: (result.config or {}).get(key) for key in space.keys}
        rows.append(
            {
                "trial": trial_id,
                "status": status,
                "epochs": epochs,
                **sampled,
                options.metric: _best_value(result.metrics_dataframe, options),
                "last_loss": metrics.get("loss"),
                "mlflow_run_id": run_id,
                "train_dir": storage.without_query(storage.join(sweep_dir, "train", trial_id)),
            }
        )
    ranked = [r for r in rows if r[options.metric] is not None]
    sign = 1 if options.mode == "max" else -1
    best = max(ranked, key=lambda r: sign * r[options.metric]) if ranked else None
    best_config_path = None
    table = _csv(rows)
    storage.write_bytes(storage.join(sweep_dir, "results.csv"), table.encode(), base.run.storage)
    parent.log_text(table, "results.csv")
    if best is not None:
        best_config = _best_config(base, space, best, options)
        best_config_path = storage.join(sweep_dir, "best_config.yaml")
        storage.write_bytes(best_config_path, best_config.to_yaml().encode(), base.run.storage)
        parent.log_text(best_config.to_yaml(), "best_config.yaml")
        best["checkpoint"] = parent.child_tag(best["mlflow_run_id"], BEST_CHECKPOINT_TAG)
        parent.set_tags(
            {
                BEST_TRIAL_TAG: str(best["trial"]),
                f"best_{options.metric}": f"{best[options.metric]:.4f}",
            }
        )
        if options.register_model and best["checkpoint"]:
            best["registered_model"] = _register_best(parent, best, options.register_model, base)
    parent.log_sweep_plot(rows, space.keys, options.metric)
    parent.finish("KILLED" if interrupted else "FINISHED")
    return SweepOutcome(
        sweep_dir=sweep_dir,
        interrupted=interrupted,
        rows=rows,
        best=best,
        best_config_path=best_config_path,
        parent_run_id=parent.run_id,
        tracking_uri=parent.uri,
        concurrency=concurrency,
    )


def _register_best(parent: SweepTracker, best: dict, name: str, base: ExperimentConfig) -> str:
    """The best trial's best checkpoint as a new version of ``name`` (in the trial's run)."""
    from detr_ray.tracking.registry import register_checkpoint

    val_ap = float(parent.child_tag(best["mlflow_run_id"], BEST_VAL_AP_TAG) or "-1")
    version = register_checkpoint(
        parent.uri, best["mlflow_run_id"], best["checkpoint"], name, val_ap, base.run.storage
    )
    model = f"models:/{name}/{version}"
    parent.set_tags({REGISTERED_MODEL_TAG: model})
    return model


def _status(errored: bool, done: bool, epochs_done: int, epochs: int) -> str:
    """A trial's outcome. Tune marks ``done`` the last result of a trial that
    returned or that its scheduler stopped; a sweep interrupted by Ctrl-C
    leaves its running trials without it (and pending ones without results)."""
    if errored:
        return "error"
    if not done:
        return "unfinished"
    return "finished" if epochs_done >= epochs else "stopped early"


def _best_value(history: pandas.DataFrame | None, options: SweepOptions) -> float | None:
    if history is None or options.metric not in history:
        return None
    values = [
        v for v in history[options.metric].tolist() if v is not None and math.isfinite(v) and v >= 0
    ]
    if not values:
        return None
    return max(values) if options.mode == "max" else min(values)


def _best_config(
    base: ExperimentConfig, space: SearchSpace, best: dict, options: SweepOptions
) -> ExperimentConfig:
    """The best trial's config as a normal run of its own."""
    config = space.apply(base.to_dict(), {key: best[key] for key in space.keys})
    return dataclasses.replace(
        config, run=dataclasses.replace(config.run, name=f"{options.name}-best")
    )


def _csv(rows: list[dict]) -> str:
    out = io.StringIO()
    if rows:
        writer = csv.DictWriter(out, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return out.getvalue()
