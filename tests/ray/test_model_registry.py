"""From a training run to a served model: registration, serving, lineage, system metrics.

One tiny training run with ``tracking.register_model`` (real Ray, a real
sqlite MLflow store), then what the run must hold and what the registered
model must answer: ``mlflow models serve`` on a loopback port (started here,
stopped by its own process group) gives the detections ``detr-ray predict``
gives for the same PNG, through ``--model`` and through the checkpoint itself.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from detr_ray.checkpoint import CHECKPOINT_FILE
from detr_ray.cli import main as cli_main
from detr_ray.config import ExperimentConfig
from detr_ray.tracking.names import CHAMPION_ALIAS as CHAMPION
from detr_ray.tracking.names import EXPERIMENT_KIND, EXPERIMENT_KIND_TAG
from detr_ray.tracking.names import VERSION_AP_TAG as AP_TAG
from detr_ray.tracking.registry import register_checkpoint
from detr_ray.tracking.runs import RunTracker
from detr_ray.train.launcher import run_training

from tests.support.experiments import tiny_experiment
from tests.support.registry import digest, registered_checkpoints
from tests.support.servers import invoke, served_model

MODEL = "shapes-detr"


@pytest.fixture(scope="module")
def trained(ray_session, tmp_path_factory, make_shapes):
    root = tmp_path_factory.mktemp("registry")
    shapes = make_shapes(num_train=8, num_val=4, size=64, seed=3)
    raw = tiny_experiment(
        shapes,
        root / "runs",
        "registered",
        tracking={"register_model": MODEL, "system_metrics_every": 0.5, "log_images": 0},
        # evaluated at the end only: the best checkpoint is the run's last, the
        # one registration reads straight after it is reported
        train={"epochs": 2, "eval_every": 2},
    )
    outcome = run_training(ExperimentConfig.from_dict(raw))
    return shapes, outcome


def test_the_best_checkpoint_is_registered_as_the_champion(trained):
    _, outcome = trained
    client = MlflowClient(outcome.tracking_uri)
    run = client.get_run(outcome.mlflow_run_id)
    champion = client.get_model_version_by_alias(MODEL, CHAMPION)
    assert str(champion.version) == "1"
    assert run.data.tags["detr_ray.registered_model"] == f"models:/{MODEL}/1"
    assert champion.tags["checkpoint"] == run.data.tags["best_checkpoint"]
    assert float(champion.tags[AP_TAG]) == pytest.approx(float(run.data.tags["best_val_AP"]))
    assert run.info.status == "FINISHED"
    # the logged model belongs to the run
    assert champion.run_id == run.info.run_id
    # it carries the whole best checkpoint (not a copy taken while it was being stored)
    best = Path(run.data.tags["best_checkpoint"]) / CHECKPOINT_FILE
    assert best.parent.name == "epoch0002_step0000004"
    carried = registered_checkpoints(outcome.tracking_uri, MODEL)
    assert carried == {"1": (digest(best.read_bytes()), str(best.parent))}


def test_the_experiment_opens_as_model_development(trained):
    _, outcome = trained
    client = MlflowClient(outcome.tracking_uri)
    run = client.get_run(outcome.mlflow_run_id)
    tags = client.get_experiment(run.info.experiment_id).tags
    assert tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND == "custom_model_development"


def test_the_run_records_which_data_it_trained_on(trained):
    shapes, outcome = trained
    client = MlflowClient(outcome.tracking_uri)
    inputs = client.get_run(outcome.mlflow_run_id).inputs.dataset_inputs
    by_context = {
        next(t.value for t in i.tags if t.key == "mlflow.data.context"): i.dataset for i in inputs
    }
    assert set(by_context) == {"training", "validation"}
    for context, ann, images in (
        ("training", shapes.train_ann, shapes.train_images),
        ("validation", shapes.val_ann, shapes.val_images),
    ):
        dataset = by_context[context]
        coco = json.loads(Path(ann).read_text())
        assert dataset.digest == hashlib.sha256(Path(ann).read_bytes()).hexdigest()[:16]
        assert json.loads(dataset.profile) == {
            "images": len(coco["images"]),
            "annotations": len(coco["annotations"]),
            "categories": len(coco["categories"]),
        }
        assert json.loads(dataset.source) == {"uri": str(ann), "images": str(images)}


def test_one_system_sampler_per_node_logs_into_the_run(trained):
    _, outcome = trained
    client = MlflowClient(outcome.tracking_uri)
    metrics = client.get_run(outcome.mlflow_run_id).data.metrics
    system = {key: value for key, value in metrics.items() if key.startswith("system/")}
    # two workers on one node: one sampler, so one node in the names
    nodes = {key.split("/")[1] for key in system}
    assert len(nodes) == 1 and next(iter(nodes)).startswith("node-")
    node = next(iter(nodes))
    assert 0.0 <= system[f"system/{node}/cpu_utilization_percentage"] <= 100.0
    assert system[f"system/{node}/system_memory_usage_megabytes"] > 0.0
    history = client.get_metric_history(
        outcome.mlflow_run_id, f"system/{node}/cpu_utilization_percentage"
    )
    assert [m.step for m in history] == list(range(len(history)))  # no sample twice


def test_the_champion_alias_moves_only_to_a_better_version(tiny_checkpoint, tmp_path):
    path, _ = tiny_checkpoint
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = RunTracker(uri, "registry", "run", tmp_path / "run", asynchronous=False)
    client = MlflowClient(uri)
    for expected_version, val_ap, champion in (("1", 0.10, "1"), ("2", 0.05, "1"), ("3", 0.2, "3")):
        assert register_checkpoint(uri, tracker.run_id, str(path), "m", val_ap) == expected_version
        assert str(client.get_model_version_by_alias("m", CHAMPION).version) == champion
    # registering into a run does not end it
    assert client.get_run(tracker.run_id).info.status == "RUNNING"


def test_the_served_model_answers_what_predict_answers(trained, tmp_path):
    shapes, outcome = trained
    uri = outcome.tracking_uri
    image = sorted(Path(shapes.val_images).iterdir())[0]
    threshold = 0.05  # low: an hour-old model of two epochs must still say something

    def predicted(*source: str) -> list[dict]:
        out = tmp_path / f"predict{len(list(tmp_path.iterdir()))}"
        argv = ["predict", str(image), *source, "--out", str(out), "--threshold", str(threshold)]
        assert cli_main(argv) == 0
        return json.loads((out / "detections.json").read_text())[0]["detections"]

    by_model = predicted("--model", f"models:/{MODEL}@{CHAMPION}", "--tracking-uri", uri)
    run = MlflowClient(uri).get_run(outcome.mlflow_run_id)
    assert by_model == predicted("--checkpoint", run.data.tags["best_checkpoint"])
    assert by_model, "no detection to compare"
    with served_model(f"models:/{MODEL}@{CHAMPION}", uri, tmp_path / "serve.log") as address:
        assert invoke(address, image, threshold) == by_model
