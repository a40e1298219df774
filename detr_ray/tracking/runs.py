"""The MLflow runs of training runs and sweeps: what detr-ray logs, and how a run resumes.

Only the rank-0 worker tracks. One MLflow run per training run: it is found
again after a restart (by the run id in the checkpoint, else by the run
folder tag), and steps already logged by an earlier attempt are not logged
twice, so the metric history of a run that lost a worker has neither gaps nor
repeats. How runs end when their driver cannot end them is
:mod:`detr_ray.tracking.lifecycle`; the names of tags and metrics are
:mod:`detr_ray.tracking.names`; where the store is, :mod:`detr_ray.tracking.store`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import time
from array import array
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, RunStatus
from mlflow.tracking import MlflowClient

from detr_ray.tracking import plots
from detr_ray.tracking.metric_queue import MetricQueue
from detr_ray.tracking.names import (
    DROPPED_POINTS_TAG,
    EXPERIMENT_KIND,
    EXPERIMENT_KIND_TAG,
    LOSS,
    LOSS_PLOT_ARTIFACT,
    PARENT_TAG,
    RUN_DIR_TAG,
    VAL_AP,
    VAL_PREFIX,
)
from detr_ray.tracking.store import artifact_root

log = logging.getLogger(__name__)

MAX_PARAM_LENGTH = 6000
# The loss plot is redrawn during a run at most this often (drawing and storing
# it takes rank 0 0.3-0.6 s on a 2-core machine, bench/bench_loss_plot.py; a
# run's reports may come every few steps).
PLOT_REFRESH_S = 60.0


class _TrackedRun:
    """An MLflow run found by its directory tag, or created: what both kinds of run share.

    Args:
        uri: tracking URI (see :mod:`detr_ray.tracking.store`).
        experiment: MLflow experiment name (created if missing).
        run_name: shown in the UI.
        run_dir: the run's directory, the key that finds the run again.
        run_id: the run to continue (from a checkpoint), if known.
        params: flattened config, logged when the run is created.
    """

    def __init__(
        self,
        uri: str,
        experiment: str,
        run_name: str,
        run_dir: str | os.PathLike,
        run_id: str | None = None,
        params: Mapping[str, Any] | None = None,
    ):
        self.client = MlflowClient(tracking_uri=uri)
        self.uri = uri
        found = self.client.get_experiment_by_name(experiment)
        if found is None:
            self.experiment_id = self.client.create_experiment(
                experiment, artifact_location=_as_uri(artifact_root(uri))
            )
        else:
            self.experiment_id = found.experiment_id
        # MLflow 3's UI opens an experiment in its GenAI view unless told it is
        # model development; detr-ray's experiments are.
        self.client.set_experiment_tag(self.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
        existing = run_id or self._find_run(str(run_dir))
        self.resumed = existing is not None
        if existing is None:
            run = self.client.create_run(
                self.experiment_id, run_name=run_name, tags={RUN_DIR_TAG: str(run_dir)}
            )
            self.run_id: str = run.info.run_id
            self._log_params(params or {})
        else:
            self.run_id = existing
            self.client.update_run(self.run_id, status="RUNNING")

    def _find_run(self, run_dir: str) -> str | None:
        runs = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`{RUN_DIR_TAG}` = '{run_dir}'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        return runs[0].info.run_id if runs else None

    def _log_params(self, params: Mapping[str, Any]) -> None:
        items = [
            Param(k, (v if isinstance(v, str) else json.dumps(v))[:MAX_PARAM_LENGTH])
            for k, v in params.items()
        ]
        for start in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[start : start + 100])

    def log_text(self, text: str, artifact_file: str) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / Path(artifact_file).name
            path.write_text(text)
            self.client.log_artifact(self.run_id, str(path), _parent(artifact_file))

    def log_image(self, image: Any, artifact_file: str) -> None:
        """A PIL image or a matplotlib figure, as a PNG artifact."""
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / Path(artifact_file).name
            if hasattr(image, "savefig"):
                image.savefig(path, dpi=100)
            else:
                image.save(path)
            self.client.log_artifact(self.run_id, str(path), _parent(artifact_file))

    def set_tags(self, tags: Mapping[str, str]) -> None:
        for key, value in tags.items():
            self.client.set_tag(self.run_id, key, value)

    def finish(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(
            self.run_id, status=RunStatus.to_string(getattr(RunStatus, status))
        )


class RunTracker(_TrackedRun):
    """The MLflow run of one training run: metrics per step and the loss plot.

    Steps an earlier attempt of the run logged already (before a restart) are
    not logged again. ``loss_series`` names the loss keys of the plot, per
    term, one key per decoder layer in layer order (see
    :func:`detr_ray.criterion.loss_keys.keys_by_term`); their history is kept in
    memory, so drawing the plot never reads the whole history back from the
    tracking store. The plot is drawn at most every ``plot_refresh_s`` seconds
    of the run, counted from the tracker's start, and whenever it is forced
    (at the run's end): a short run draws it once.
    """

    def __init__(
        self,
        *args: Any,
        loss_series: Mapping[str, Sequence[str]] | None = None,
        asynchronous: bool = True,
        plot_refresh_s: float = PLOT_REFRESH_S,
        **kwargs: Any,
    ):
        super().__init__(*args, **kwargs)
        self.plot_refresh_s = plot_refresh_s
        self._plotted_at = time.monotonic()  # as if drawn at the start: nothing to show yet
        # Metric points go through a background queue (see detr_ray.tracking.metric_queue)
        # unless ``asynchronous`` is False: then each log_metrics waits for the store.
        self._queue = (
            MetricQueue(lambda batch: self.client.log_batch(self.run_id, metrics=batch))
            if asynchronous
            else None
        )
        self.loss_series = dict(loss_series or {})
        plotted = [key for keys in self.loss_series.values() for key in keys]
        self._history: dict[str, tuple[array, array]] = {
            key: (array("q"), array("d")) for key in plotted
        }
        if self.resumed:  # read once what an earlier attempt logged
            for key, (steps, values) in self._history.items():
                for metric in sorted(
                    self.client.get_metric_history(self.run_id, key), key=lambda m: m.step
                ):
                    steps.append(metric.step)
                    values.append(metric.value)
        self._logged_up_to = {"": self._last_step(LOSS), VAL_PREFIX: self._last_step(VAL_AP)}

    @property
    def last_logged_step(self) -> int:
        """The last training step an attempt of this run logged (0: none)."""
        return self._logged_up_to[""]

    def _last_step(self, key: str) -> int:
        if not self.resumed:
            return -1
        history = self.client.get_metric_history(self.run_id, key)
        return max((m.step for m in history), default=-1)

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
        if self._queue is not None:
            self._queue.put(batch)
        else:
            for start in range(0, len(batch), 1000):
                self.client.log_batch(self.run_id, metrics=batch[start : start + 1000])
        for metric in batch:
            series = self._history.get(metric.key)
            if series is not None:
                series[0].append(step)
                series[1].append(metric.value)

    def flush(self, timeout_s: float | None = 120.0) -> None:
        """Wait until the queued metric points are stored (or dropped after retries)."""
        if self._queue is not None and not self._queue.flush(timeout_s):
            log.warning("tracking: metric points still queued after %s s", timeout_s)

    @property
    def dropped_points(self) -> int:
        return self._queue.dropped if self._queue is not None else 0

    def finish(self, status: str = "FINISHED") -> None:
        self.flush()
        if self.dropped_points:
            self.set_tags({DROPPED_POINTS_TAG: str(self.dropped_points)})
        super().finish(status)

    def log_dataset(
        self, context: str, ann_file: str, digest: str, image_dir: str, counts: Mapping[str, int]
    ) -> None:
        """Record a dataset as an input of the run: its annotation file (a path or a
        URI) and that file's content ``digest`` (two versions of a dataset are two
        digests), where its images are, its counts."""
        dataset = Dataset(
            name=f"{Path(ann_file).stem} ({context})",
            digest=digest,
            source_type="local",
            source=json.dumps({"uri": ann_file, "images": image_dir}),
            profile=json.dumps(dict(counts)),
        )
        tags = [InputTag(key="mlflow.data.context", value=context)]
        self.client.log_inputs(self.run_id, datasets=[DatasetInput(dataset=dataset, tags=tags)])

    def log_loss_plot(self, force: bool = False) -> bool:
        """``plots/decoder_layer_losses.png``: every decoder layer's loss terms,
        if ``plot_refresh_s`` have passed since it was last drawn or ``force``;
        returns whether it was drawn."""
        if not self.loss_series:
            return False
        now = time.monotonic()
        if not force and now - self._plotted_at < self.plot_refresh_s:
            return False
        self._plotted_at = now
        series = {
            term: [self._history[key] for key in keys] for term, keys in self.loss_series.items()
        }
        figure = plots.decoder_layer_losses(series)
        self.log_image(figure, LOSS_PLOT_ARTIFACT)
        plots.close(figure)
        return True


class SweepTracker(_TrackedRun):
    """The MLflow parent run of a sweep: its trials are child runs."""

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
        figure = plots.metric_by_value(rows, keys, metric)
        self.log_image(figure, f"plots/{metric}_vs_params.png")
        plots.close(figure)


def _parent(artifact_file: str) -> str | None:
    parent = str(Path(artifact_file).parent)
    return None if parent == "." else parent


def _as_uri(path: str | None) -> str | None:
    return None if path is None else Path(path).as_uri()
