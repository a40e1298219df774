import json
from pathlib import Path

import pytest
import torch

from detr_ray.cli import main as cli_main
from detr_ray.errors import CheckpointError, DataError
from detr_ray.evaluation.predict import evaluate_checkpoint, predict_images

from tests.support.datasets import SHAPE_LABELS as LABELS


@pytest.fixture(scope="module")
def shapes(make_shapes):
    return make_shapes(num_train=1, num_val=6, size=64, seed=0)


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


def test_predict_checks_every_input_before_writing_anything(tiny_checkpoint, shapes, tmp_path):
    path, _ = tiny_checkpoint
    good = sorted(shapes.val_images.glob("*.png"))[0]
    broken = tmp_path / "broken.png"
    broken.write_text("not an image")
    out = tmp_path / "out"
    cases = [
        ([good, tmp_path / "nope.png"], DataError, "image .*nope.png does not exist"),
        ([good, broken], DataError, "cannot read image .*broken.png"),
        ([str(tmp_path / "none-*.jpg")], DataError, "matches no file"),
    ]
    for inputs, kind, message in cases:
        with pytest.raises(kind, match=message):
            predict_images(path, inputs, out, score_threshold=0.5)
        assert not out.exists()
    bogus = tmp_path / "bogus.pt"
    torch.save({"weights": torch.zeros(2)}, bogus)
    with pytest.raises(CheckpointError, match="bogus.pt is none of the checkpoints detr-ray reads"):
        predict_images(bogus, [good], out, score_threshold=0.5)
    assert not out.exists()
    assert cli_main(["predict", "--checkpoint", str(bogus), "--out", str(out), str(good)]) == 2
    assert (
        cli_main(
            [
                "predict",
                "--checkpoint",
                str(path),
                "--out",
                str(out),
                str(good),
                "--threshold",
                "1.5",
            ]
        )
        == 2
    )
    assert not out.exists()


def test_predict_takes_folders_and_globs_and_keeps_equal_names_apart(
    tiny_checkpoint, shapes, tmp_path
):
    path, _ = tiny_checkpoint
    source = sorted(shapes.val_images.glob("*.png"))
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    for folder, image in (("a", source[0]), ("b", source[1])):
        (tmp_path / folder / "img.png").write_bytes(image.read_bytes())
    out = tmp_path / "out"
    json_path, count = predict_images(
        path, [tmp_path / "a", str(tmp_path / "b" / "*.png")], out, score_threshold=0.0
    )
    assert count == 2
    records = json.loads(json_path.read_text())
    assert [Path(r["file"]).parent.name for r in records] == ["a", "b"]
    assert (out / "a" / "img.png").is_file() and (out / "b" / "img.png").is_file()
    assert (out / "a" / "img.png").read_bytes() != (out / "b" / "img.png").read_bytes()
    assert [r["drawing"] for r in records] == [
        str(out / "a" / "img.png"),
        str(out / "b" / "img.png"),
    ]


def test_evaluate_checkpoint_runs_cocoeval(tiny_checkpoint, shapes):
    path, _ = tiny_checkpoint
    metrics, summary = evaluate_checkpoint(path, shapes.val_ann, shapes.val_images, batch_size=2)
    assert 0.0 <= metrics["AP"] <= 1.0 and "AP/1_circle" in metrics
    assert "Average Precision" in summary
