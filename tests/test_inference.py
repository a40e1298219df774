import json

import pytest
import torch

from detr_ray.cli import main as cli_main
from detr_ray.data.synthetic import generate
from detr_ray.errors import CheckpointError, DataError
from detr_ray.inference import evaluate_checkpoint, predict_images

from conftest import SHAPE_LABELS as LABELS


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("shapes"), num_train=1, num_val=6, size=64, seed=0)


def test_predict_writes_pictures_and_json(tiny_checkpoint, shapes, tmp_path, capsys):
    path, _ = tiny_checkpoint
    images = sorted(shapes.val_images.glob("*.png"))[:2]
    assert (
        cli_main(
            [
                "predict",
                "--checkpoint",
                str(path),
                "--out",
                str(tmp_path / "out"),
                "--threshold",
                "0.0",
                *map(str, images),
            ]
        )
        == 0
    )
    records = json.loads((tmp_path / "out" / "detections.json").read_text())
    assert [r["file"] for r in records] == [str(p) for p in images]
    for record, image in zip(records, images):
        assert (tmp_path / "out" / image.name).is_file()
        assert len(record["detections"]) == 10  # the preset's 10 queries, none below 0.0
        for det in record["detections"]:
            assert det["name"] == LABELS.name(det["label"])
            x1, y1, x2, y2 = det["box_xyxy"]
            assert -1 <= x1 <= x2 <= record["width"] + 1 and -1 <= y1 <= y2 <= record["height"] + 1


def test_predict_names_a_missing_image_and_a_bad_checkpoint(tiny_checkpoint, tmp_path):
    path, _ = tiny_checkpoint
    with pytest.raises(DataError, match="image .*nope.png does not exist"):
        predict_images(path, [tmp_path / "nope.png"], tmp_path / "out", score_threshold=0.5)
    bogus = tmp_path / "bogus.pt"
    torch.save({"weights": torch.zeros(2)}, bogus)
    with pytest.raises(
        CheckpointError, match="bogus.pt is neither a detr-ray checkpoint nor an official"
    ):
        predict_images(bogus, [], tmp_path / "out", score_threshold=0.5)
    assert cli_main(["predict", "--checkpoint", str(bogus), "--out", str(tmp_path), "x.png"]) == 2


def test_evaluate_checkpoint_runs_cocoeval(tiny_checkpoint, shapes):
    path, _ = tiny_checkpoint
    metrics, summary = evaluate_checkpoint(path, shapes.val_ann, shapes.val_images, batch_size=2)
    assert 0.0 <= metrics["AP"] <= 1.0 and "AP/circle" in metrics
    assert "Average Precision" in summary
