"""Real datasets' quirks (tests/support/quirky_coco.py): loaded, cleaned, checked, scored.

Training on them, then ``eval`` and ``predict`` of what was trained, is
``tests/ray/test_train_quirks.py``.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from detr_ray.cli import main as cli_main
from detr_ray.data.check import check_dataset
from detr_ray.data.coco import CocoDetection
from detr_ray.data.images import open_rgb
from detr_ray.evaluation.coco_eval import evaluate

from tests.support.quirky_coco import IMAGES, write_quirky_coco


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
