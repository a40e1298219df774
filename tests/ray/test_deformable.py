"""Deformable DETR through everything a run does: Ray Train workers, MLflow, evaluation,
resume at another number of workers, registration and the registered model's answers.

One two-stage Deformable DETR with box refinement and the dense head (every
part of its objective) trains 1 epoch on 2 workers, registering its best
checkpoint; the same command then resumes it on 1 worker for a second epoch,
as an elastic run does after losing a node: it goes on at the image where it
stood, in the same MLflow run. ``mlflow models serve`` of the registered
model then answers what ``detr-ray predict`` answers. (Elastic scaling itself, a node lost mid-run,
is model-agnostic and shown on DETR in ``tests/cluster/test_faults.py``; 2
workers training exactly like 1 is shown for Deformable DETR in
``tests/engine/test_workers_equal_one.py``.)
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from detr_ray.checkpoint import CHECKPOINT_FILE
from detr_ray.cli import main as cli_main
from detr_ray.config import ExperimentConfig
from detr_ray.criterion.loss_keys import DENSE_TERMS, ENC_TERMS, loss_keys
from detr_ray.tracking.names import CHAMPION_ALIAS
from detr_ray.train.launcher import run_training

from tests.support.experiments import TINY_DEFORMABLE, tiny_experiment
from tests.support.registry import digest, registered_checkpoints
from tests.support.servers import invoke, served_model

pytestmark = pytest.mark.usefixtures("ray_session")

MODEL = "shapes-deformable"
NUM_TRAIN = 16  # 4 steps an epoch with 2 workers x batch 2, 8 with one


@pytest.fixture(scope="module")
def runs(make_shapes, tmp_path_factory):
    shapes = make_shapes(num_train=NUM_TRAIN, num_val=4, size=64, seed=5)
    root = tmp_path_factory.mktemp("deformable")

    def config(workers: int, epochs: int) -> ExperimentConfig:
        raw = tiny_experiment(
            shapes,
            root / "runs",
            "deformable",
            model={**TINY_DEFORMABLE, "with_box_refine": True, "two_stage": True},
            train={"epochs": epochs, "dense_aux_weight": 2.0, "log_every": 1},
            scaling={"num_workers": workers},
            tracking={"register_model": MODEL, "log_images": 1, "system_metrics_every": 0},
        )
        return ExperimentConfig.from_dict(raw)

    first = run_training(config(workers=2, epochs=1))
    resumed = run_training(config(workers=1, epochs=2))
    return shapes, first, resumed


def test_it_trains_on_two_workers_with_every_term_tracked_per_layer(runs):
    _, first, _ = runs
    assert first.status == "completed" and (first.epoch, first.global_step) == (1, 4)
    client = MlflowClient(first.tracking_uri)
    run = client.get_run(first.mlflow_run_id)
    metrics = run.data.metrics
    # DETR's names per decoder layer, the encoder's proposals, the dense head
    for key in loss_keys(2) + list(ENC_TERMS) + list(DENSE_TERMS) + ["d0.match_changed"]:
        assert key in metrics, key
    assert 0.0 <= metrics["d0.match_changed"] <= 1.0
    assert {"lr/other", "lr/backbone", "lr/linear_proj"} <= set(metrics)
    # the sampling-offset and reference-point projections learn at 0.1x
    assert metrics["lr/linear_proj"] == pytest.approx(0.1 * metrics["lr/other"])
    # evaluated (sigmoid top-k detections scored by COCOeval), checkpointed
    assert "val/AP" in metrics and "val/AP50" in metrics
    assert run.data.params["model.family"] == "deformable_detr"


def test_it_resumes_on_one_worker_where_it_stood_in_the_same_run(runs):
    _, first, resumed = runs
    assert resumed.status == "completed" and resumed.mlflow_run_id == first.mlflow_run_id
    # 4 steps of 2 x 2 images, then the second epoch's 16 images as 8 steps of 2
    assert (resumed.started_at_step, resumed.epoch, resumed.global_step) == (4, 2, 12)
    client = MlflowClient(resumed.tracking_uri)
    history = client.get_metric_history(resumed.mlflow_run_id, "enc.loss_cls")
    assert sorted(m.step for m in history) == list(range(1, 13))  # no gap, no repeat
    world = {
        m.step: m.value for m in client.get_metric_history(resumed.mlflow_run_id, "world_size")
    }
    assert {world[s] for s in range(1, 5)} == {2.0} and {world[s] for s in range(5, 13)} == {1.0}
    # each run registered its best checkpoint whole (the best may be the run's last report)
    carried = registered_checkpoints(resumed.tracking_uri, MODEL)
    assert sorted(carried) == ["1", "2"]
    for version, (sha, location) in carried.items():
        assert sha == digest((Path(location) / CHECKPOINT_FILE).read_bytes()), version


def test_the_served_model_answers_what_predict_answers(runs, tmp_path):
    shapes, _, resumed = runs
    uri = resumed.tracking_uri
    image = sorted(Path(shapes.val_images).iterdir())[0]
    threshold = 0.05
    out = tmp_path / "predict"
    model = f"models:/{MODEL}@{CHAMPION_ALIAS}"
    argv = ["predict", str(image), "--model", model, "--tracking-uri", uri]
    argv += ["--out", str(out), "--threshold", str(threshold)]
    assert cli_main(argv) == 0
    predicted = json.loads((out / "detections.json").read_text())[0]["detections"]
    assert predicted, "no detection to compare"
    with served_model(model, uri, tmp_path / "serve.log") as address:
        assert invoke(address, image, threshold) == predicted
