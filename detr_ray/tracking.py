"""MLflow tracking of training runs and sweeps: the only module that imports MLflow.

Only the rank-0 worker tracks. One MLflow run per training run: it is found
again after a restart (by the run id in the checkpoint, else by the run
directory tag), and steps already logged by an earlier attempt are not logged
twice, so the metric history of a run that lost a worker has neither gaps nor
repeats.

Default store: ``sqlite:///<storage_path>/mlflow.db`` with artifacts under
``<storage_path>/mlartifacts``; on a cluster, ``tracking.uri`` (or MLflow's
``MLFLOW_TRACKING_URI``, see ``prepare_config``) names an ``http://`` server.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

from mlflow.entities import Metric, Param, RunStatus
from mlflow.tracking import MlflowClient

RUN_DIR_TAG = "detr_ray.run_dir"
PARENT_TAG = "mlflow.parentRunId"  # MLflow's own: the UI nests children under it
MAX_PARAM_LENGTH = 6000


def tracking_uri(configured: str | None, storage_path: str | os.PathLike) -> str:
    """``configured``, or the default sqlite file in ``storage_path``."""
    if configured:
        return configured
    return f"sqlite:///{Path(storage_path).expanduser().resolve() / 'mlflow.db'}"


def artifact_root(uri: str, storage_path: str | os.PathLike) -> str | None:
    """Where a new experiment keeps artifacts: beside a sqlite file, else the server's choice."""
    if not uri.startswith("sqlite:"):
        return None
    return str(Path(storage_path).expanduser().resolve() / "mlartifacts")


class RunTracker:
    """The MLflow run of one training run.

    Args:
        uri: tracking URI (see :func:`tracking_uri`).
        experiment: MLflow experiment name (created if missing).
        run_name: shown in the UI.
        run_dir: the training run's directory, the key that finds the run again.
        run_id: the run to continue (from a checkpoint), if known.
        params: flattened config, logged when the run is created.
    """

    def __init__(self, uri, experiment, run_name, run_dir, storage_path, run_id=None, params=None):
        self.client = MlflowClient(tracking_uri=uri)
        self.uri = uri
        found = self.client.get_experiment_by_name(experiment)
        if found is None:
            experiment_id = self.client.create_experiment(
                experiment, artifact_location=_as_uri(artifact_root(uri, storage_path))
            )
        else:
            experiment_id = found.experiment_id
        self.experiment_id = experiment_id
        self.run_id = run_id or self._find_run(str(run_dir))
        self.resumed = self.run_id is not None
        if self.run_id is None:
            run = self.client.create_run(
                experiment_id, run_name=run_name, tags={RUN_DIR_TAG: str(run_dir)}
            )
            self.run_id = run.info.run_id
            self._log_params(params or {})
        else:
            self.client.update_run(self.run_id, status="RUNNING")
        # Steps an earlier attempt of this run logged already, per metric family.
        self._logged_up_to = {"": self._last_step("loss"), "val/": self._last_step("val/AP")}

    def _find_run(self, run_dir: str) -> str | None:
        runs = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`{RUN_DIR_TAG}` = '{run_dir}'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        return runs[0].info.run_id if runs else None

    def _last_step(self, key: str) -> int:
        history = self.client.get_metric_history(self.run_id, key)
        return max((m.step for m in history), default=-1)

    def _log_params(self, params: Mapping) -> None:
        items = [
            Param(k, json.dumps(v) if not isinstance(v, str) else v) for k, v in params.items()
        ]
        items = [Param(p.key, p.value[:MAX_PARAM_LENGTH]) for p in items]
        for start in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[start : start + 100])

    # ------------------------------------------------------------------ metrics
    def log_metrics(self, step: int, metrics: Mapping[str, float], prefix: str = "") -> None:
        """Log finite values at ``step``; steps an earlier attempt logged are skipped."""
        if step <= self._logged_up_to.get(prefix, -1):
            return
        now = int(time.time() * 1000)
        batch = [
            Metric(prefix + key, float(value), now, step)
            for key, value in metrics.items()
            if value is not None and math.isfinite(value)
        ]
        for start in range(0, len(batch), 1000):
            self.client.log_batch(self.run_id, metrics=batch[start : start + 1000])

    def metric_history(self, key: str) -> list[tuple[int, float]]:
        return [(m.step, m.value) for m in self.client.get_metric_history(self.run_id, key)]

    # ------------------------------------------------------------------ artifacts
    def log_text(self, text: str, artifact_file: str) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / Path(artifact_file).name
            path.write_text(text)
            self.client.log_artifact(self.run_id, str(path), _parent(artifact_file))

    def log_image(self, image, artifact_file: str) -> None:
        """A PIL image or a matplotlib figure, as a PNG artifact."""
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / Path(artifact_file).name
            if hasattr(image, "savefig"):
                image.savefig(path, dpi=100)
            else:
                image.save(path)
            self.client.log_artifact(self.run_id, str(path), _parent(artifact_file))

    def log_loss_plot(self, num_layers: int) -> None:
        """``plots/decoder_layer_losses.png``: every decoder layer's three losses."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        figure, axes = plt.subplots(1, 3, figsize=(15, 4))
        for ax, term in zip(axes, ("loss_cls", "loss_bbox", "loss_iou")):
            for layer in range(num_layers):
                key = term if layer == num_layers - 1 else f"d{layer}.{term}"
                history = sorted(self.metric_history(key))
                if history:
                    steps, values = zip(*history)
                    label = f"layer {layer}" + (" (last)" if layer == num_layers - 1 else "")
                    ax.plot(steps, values, label=label, linewidth=1.2)
            ax.set_title(term)
            ax.set_xlabel("step")
            ax.grid(alpha=0.3)
        if axes[0].lines:  # nothing logged yet in a very short run
            axes[0].legend(fontsize=8)
        figure.tight_layout()
        self.log_image(figure, "plots/decoder_layer_losses.png")
        plt.close(figure)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        for key, value in tags.items():
            self.client.set_tag(self.run_id, key, value)

    def finish(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(
            self.run_id, status=RunStatus.to_string(getattr(RunStatus, status))
        )

    # ------------------------------------------------------------------ sweeps
    def child_runs(self) -> dict[str, tuple[str, str]]:
        """This run's children (a sweep's trials): run name -> (run id, status)."""
        runs = self.client.search_runs(
            [self.experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{self.run_id}'"
        )
        return {r.info.run_name: (r.info.run_id, r.info.status) for r in runs}

    def child_tag(self, run_id: str | None, key: str) -> str | None:
        return None if run_id is None else self.client.get_run(run_id).data.tags.get(key)

    def end_child(self, run_id: str, status: str, tags: Mapping[str, str]) -> None:
        """Close a child run that cannot close itself (its trial was stopped)."""
        for key, value in tags.items():
            self.client.set_tag(run_id, key, value)
        self.client.set_terminated(run_id, status=status)

    def log_sweep_plot(self, rows: list[dict], keys: list[str], metric: str) -> None:
        """``plots/<metric>_vs_params.png``: each trial's best ``metric`` against each key."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        figure, axes = plt.subplots(1, len(keys), figsize=(4.5 * len(keys), 3.8), squeeze=False)
        for ax, key in zip(axes[0], keys):
            for stopped in (False, True):
                shown = [(r[key], r[metric]) for r in rows if r.get(metric) is not None
                         and (r["status"] == "stopped early") == stopped]  # fmt: skip
                if shown:
                    xs, ys = zip(*shown)
                    ax.scatter([_plottable(x) for x in xs], ys, marker="x" if stopped else "o",
                               label="stopped early" if stopped else "ran to the end")  # fmt: skip
            ax.set_xlabel(key)
            ax.set_ylabel(metric)
            ax.grid(alpha=0.3)
        axes[0][0].legend(fontsize=8)
        figure.tight_layout()
        self.log_image(figure, f"plots/{metric}_vs_params.png")
        plt.close(figure)


def _plottable(value):
    return value if isinstance(value, (int, float)) else str(value)


def _parent(artifact_file: str) -> str | None:
    parent = str(Path(artifact_file).parent)
    return None if parent == "." else parent


def _as_uri(path: str | None) -> str | None:
    return None if path is None else Path(path).as_uri()
