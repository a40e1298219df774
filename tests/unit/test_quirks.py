"""Real datasets' quirks (tests/support/quirky_coco.py): loaded, cleaned, checked, scored.

Training on them, then ``eval`` and ``predict`` of what was trained, is
``tests/ray/test_train_quirks.py``.
"""

from __future__ import annotations

import contextlib
import io
import json
import math

import numpy as np
import pytest
from PIL import Image

from detr_ray.cli import main as cli_main
from detr_ray.data.check import check_dataset
from detr_ray.data.coco import CocoDetection
from detr_ray.data.images import open_rgb
from detr_ray.evaluation.coco_eval import COCO_METRICS, evaluate, evaluate_results_file

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


def _perfect_detections(ann_file) -> list[dict]:
    """Each valid ground-truth box of the file as it is, clipped to its image, as a
    detection of score 1 (worked out here from the JSON, not by detr-ray's cleaning)."""
    data = json.loads(open(ann_file).read())
    sizes = {img["id"]: (img["width"], img["height"]) for img in data["images"]}
    found = []
    for ann in data["annotations"]:
        x, y, w, h = ann["bbox"]
        if ann.get("iscrowd") or not all(map(math.isfinite, (x, y, w, h))) or w <= 0 or h <= 0:
            continue
        width, height = sizes[ann["image_id"]]
        x1, y1 = min(max(x, 0), width), min(max(y, 0), height)
        x2, y2 = min(max(x + w, 0), width), min(max(y + h, 0), height)
        if x2 > x1 and y2 > y1:
            box = [x1, y1, x2 - x1, y2 - y1]
            found.append(
                {"image_id": ann["image_id"], "category_id": ann["category_id"], "bbox": box}
                | {"score": 1.0}
            )
    return found


@pytest.mark.parametrize("split", ["train_ann", "val_ann"])
def test_eval_results_scores_perfect_detections_1_against_the_cleaned_ground_truth(
    quirky, split, tmp_path, capsys
):
    results = tmp_path / "perfect.json"
    results.write_text(json.dumps(_perfect_detections(quirky[split])))
    metrics, summary = evaluate_results_file(quirky[split], results)
    assert metrics["AP"] == pytest.approx(1.0) and metrics["AR100"] == pytest.approx(1.0)
    # one line says what cleaning did: the quirky train file has 1 box running off
    # its image and 3 invalid ones (zero width, NaN, outside), and 1 crowd region
    first = summary.splitlines()[0]
    assert first.startswith(
        f"Evaluation scored against the cleaned ground truth of {quirky[split]}"
    )
    if split == "train_ann":
        assert "1 boxes clipped to their image, 3 dropped (" in first
        assert "1 crowd boxes are ignore regions" in first
    assert cli_main(["eval", "--ann", str(quirky[split]), "--results", str(results)]) == 0
    assert first in capsys.readouterr().out


def test_raw_ground_truth_is_what_pycocotools_alone_gives(quirky, tmp_path):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    detections = _perfect_detections(quirky["train_ann"])
    results = tmp_path / "perfect.json"
    results.write_text(json.dumps(detections))
    metrics, summary = evaluate_results_file(
        quirky["train_ann"], results, backend="pycocotools", raw_ground_truth=True
    )
    assert "as it is (--raw-ground-truth)" in summary.splitlines()[0]
    with contextlib.redirect_stdout(io.StringIO()):
        ground_truth = COCO(str(quirky["train_ann"]))
        evaluator = COCOeval(ground_truth, ground_truth.loadRes(detections), iouType="bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    for name, value in zip(COCO_METRICS, evaluator.stats):
        expected = math.nan if value == -1 else value
        assert metrics[name] == pytest.approx(expected, abs=1e-12, nan_ok=True), name
    assert metrics["AP50"] < 1.0  # the clipped and the invalid boxes count as misses here
