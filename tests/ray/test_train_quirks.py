"""Training on a set with real datasets' quirks (tests/support/quirky_coco.py), then
``eval`` and ``predict`` of what it wrote: one worker, one short epoch."""

from __future__ import annotations

import json
import signal
import time

import pytest
from mlflow.tracking import MlflowClient

from detr_ray.cli import main as cli_main
from detr_ray.config import ExperimentConfig
from detr_ray.train.launcher import run_training
from detr_ray.tune.leftovers import live_controllers

from tests.support.quirky_coco import IMAGES, write_quirky_coco


@pytest.fixture(scope="module")
def quirky(tmp_path_factory):
    return write_quirky_coco(tmp_path_factory.mktemp("quirky"))


@pytest.mark.usefixtures("ray_session")
def test_train_eval_and_predict_on_the_quirky_set(quirky, tmp_path, capsys):
    storage = tmp_path / "runs"
    config = ExperimentConfig.from_dict(
        {
            "model": {"preset": "detr_r18_tiny"},
            "data": {
                "train_ann": str(quirky["train_ann"]),
                "train_images": str(quirky["images"]),
                "val_ann": str(quirky["val_ann"]),
                "val_images": str(quirky["images"]),
                "augmentation": {"scaled_to": 64},
                "num_workers": 0,
            },
            "train": {"epochs": 1, "batch_size": 2, "log_every": 100, "lr_drop_epochs": []},
            "scaling": {"num_workers": 1},
            "run": {"name": "quirky", "storage_path": str(storage), "max_failures": 0},
            "tracking": {"log_images": 1},
        }
    )
    ours = signal.getsignal(signal.SIGINT)
    outcome = run_training(config)
    assert outcome.status == "completed" and outcome.global_step == 3
    # Ctrl-C is the driver's again (Ray Train's fit installs a handler of its own),
    # and the run's controller, no longer held by that handler, ends
    assert signal.getsignal(signal.SIGINT) is ours
    deadline = time.monotonic() + 30
    while live_controllers() != set():  # (None: no State API to ask, a failure too)
        assert time.monotonic() < deadline, "the finished run's Train controller lives on"
        time.sleep(0.5)
    client = MlflowClient(outcome.tracking_uri)
    run = client.get_run(outcome.mlflow_run_id)
    assert {"val/AP/5___", "val/AP/17___", "val/AP/42_circle"} <= set(run.data.metrics)
    # a run shorter than log_every still logs its losses: the epoch's last step
    assert [m.step for m in client.get_metric_history(run.info.run_id, "d0.loss_cls")] == [3]

    checkpoint = str(outcome.latest_checkpoint)
    capsys.readouterr()  # the training's own output
    argv = [
        "eval",
        "--ann",
        str(quirky["val_ann"]),
        "--images",
        str(quirky["images"]),
        "--checkpoint",
        checkpoint,
        "--device",
        "cpu",
        "--json",
    ]
    assert cli_main(argv) == 0
    printed = json.loads(capsys.readouterr().out)
    assert {"AP/5___", "AP/17___", "AP/42_circle"} <= set(printed)
    assert cli_main(argv[:-1]) == 0
    assert "Evaluation scored against the 6 images and the boxes the model is trained" in (
        capsys.readouterr().out
    )

    out = tmp_path / "predicted"
    images = str(quirky["images"] / "**" / "*.*")
    assert cli_main(["predict", "--checkpoint", checkpoint, "--out", str(out), images]) == 0
    records = json.loads((out / "detections.json").read_text())
    assert len(records) == len(IMAGES)
    for record, (name, width, height, _) in zip(
        sorted(records, key=lambda r: r["file"]), sorted(IMAGES)
    ):
        assert record["file"].endswith(name) and (record["width"], record["height"]) == (
            width,
            height,
        )
        for detection in record["detections"]:  # in the image's own pixels
            x1, y1, x2, y2 = detection["box_xyxy"]
            assert -1 <= x1 <= x2 <= width + 1 and -1 <= y1 <= y2 <= height + 1
