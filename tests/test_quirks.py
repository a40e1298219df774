"""Real datasets' quirks (tests/quirky_coco.py): loaded, trained on, evaluated and predicted.

The Ray part trains one worker for one short epoch on the quirky set and
then runs ``eval`` and ``predict`` on what it wrote.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image
from quirky_coco import IMAGES, write_quirky_coco

from detr_ray.cli import main as cli_main
from detr_ray.config import ExperimentConfig
from detr_ray.data.check import check_dataset
from detr_ray.data.coco import CocoDetection
from detr_ray.data.images import open_rgb
from detr_ray.evaluation.coco_eval import evaluate
from detr_ray.train.launcher import run_training


@pytest.fixture(scope="module")
def quirky(tmp_path_factory):
    return write_quirky_coco(tmp_path_factory.mktemp("quirky"))


def test_every_quirk_loads(quirky):
    dataset = CocoDetection(quirky["train_ann"], quirky["images"])
    assert dataset.label_map.category_ids == (5, 17, 42)  # sorted ids, contiguous labels
    assert len(dataset) == len(IMAGES)
    assert dataset.stats["crowd boxes left out of training"] == 1
    dropped = {k: v for k, v in dataset.stats.items() if k.startswith("invalid boxes")}
    assert dropped == {
        "invalid boxes dropped (width or height <= 0)": 1,
        "invalid boxes dropped (NaN or inf)": 1,
        "invalid boxes dropped (outside the image)": 1,
    }
    first = dataset.records[0]
    assert len(first.labels) == 3  # two shapes and the clipped box
    assert first.boxes_xyxy[:, 2].max() == first.width  # clipped at the right edge
    for index in range(len(dataset)):  # every mode becomes 8-bit RGB of the annotated size
        image, target = dataset[index]
        assert image.mode == "RGB" and image.size == (IMAGES[index][1], IMAGES[index][2])


def test_a_16_bit_png_is_scaled_to_8_bits_not_clipped_to_white(quirky):
    path = quirky["images"] / "deep" / "e.png"
    raw = np.asarray(Image.open(path)).astype(np.int64)  # I;16, up to 65535
    assert raw.max() > 255
    rgb = np.asarray(open_rgb(path))
    np.testing.assert_array_equal(rgb[..., 0], np.round(raw / 257).astype(np.uint8))
    assert rgb.min() < 255  # PIL's own convert("RGB") would clip almost all of it to 255


def test_validation_without_area_or_iscrowd_is_completed(quirky):
    dataset = CocoDetection(quirky["val_ann"], quirky["images"])
    assert dataset.stats["annotations without 'area' (filled in)"] > 0
    assert all("area" in a and "iscrowd" in a for a in dataset.coco.dataset["annotations"])


@pytest.mark.parametrize("split", ["train_ann", "val_ann"])
def test_detections_equal_to_the_training_targets_score_ap_1(quirky, split):
    """Evaluation scores against what the model is trained on: the cleaned boxes
    (clipped, invalid ones dropped), crowd boxes as ignore regions. Against the
    raw file, the clipped and invalid boxes would count as misses."""
    dataset = CocoDetection(quirky[split], quirky["images"])
    results = []
    for record in dataset.records:
        for (x1, y1, x2, y2), label in zip(record.boxes_xyxy.tolist(), record.labels.tolist()):
            results.append(
                {
                    "image_id": record.image_id,
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "score": 1.0,
                    "category_id": dataset.label_map.category_id(label),
                }
            )
    metrics, _ = evaluate(dataset.coco, results, image_ids=dataset.image_ids)
    assert metrics["AP"] == pytest.approx(1.0) and metrics["AR100"] == pytest.approx(1.0)
    # one key per class, however alike their names look once made safe for MLflow
    per_class = sorted(k for k in metrics if k.startswith("AP/"))
    assert per_class == ["AP/17___", "AP/42_circle", "AP/5___"]
    assert all(metrics[k] == pytest.approx(1.0) for k in per_class)


def test_data_check_reports_the_quirks(quirky, capsys):
    report = check_dataset(quirky["train_ann"], quirky["images"])
    assert report.num_images == 6 and report.crowd_boxes == 1 and report.clipped_boxes == 1
    assert sum(report.invalid_boxes.values()) == 3 and len(report.invalid_examples) == 3
    assert report.per_category == {"四角 (id 5)": 4, "三角 (id 17)": 4, "circle (id 42)": 5}
    assert report.problems() == []
    assert cli_main(["data", "check", str(quirky["train_ann"]), str(quirky["images"])]) == 0
    out = capsys.readouterr().out
    assert "images           6 (0 without any box)" in out and "ready to train" in out
    assert "invalid boxes    3 (1 NaN or inf, 1 outside the image, 1 width or height <= 0)" in out


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
    outcome = run_training(config)
    assert outcome["status"] == "completed" and outcome["global_step"] == 3
    client = MlflowClient(outcome["tracking_uri"])
    run = client.get_run(outcome["mlflow_run_id"])
    assert {"val/AP/5___", "val/AP/17___", "val/AP/42_circle"} <= set(run.data.metrics)
    # a run shorter than log_every still logs its losses: the epoch's last step
    assert [m.step for m in client.get_metric_history(run.info.run_id, "d0.loss_cls")] == [3]

    checkpoint = outcome["latest_checkpoint"]
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
