import json

import pytest
import torch

from detr_ray.checkpoint import checkpoint_dict, load_model, save_checkpoint
from detr_ray.cli import main as cli_main
from detr_ray.data import AugmentationConfig, DataError, LabelMap
from detr_ray.data.synthetic import generate
from detr_ray.inference import evaluate_checkpoint, predict_images
from detr_ray.model import build_model, initialise_from, preset_config, to_official_state_dict

LABELS = LabelMap((1, 2, 3), ("circle", "rectangle", "triangle"))


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("ckpt")
    config = preset_config("detr_r18_tiny", num_classes=3)
    model = build_model(config)
    augmentation = AugmentationConfig(train_scales=(64,), max_size=128, val_scale=64)
    path = save_checkpoint(
        checkpoint_dict(model, config, LABELS, augmentation, epoch=3),
        root / "run" / "checkpoint.pt",
    )
    return path, model


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("shapes"), num_train=1, num_val=6, size=64, seed=0)


def test_checkpoint_round_trip_file_and_directory(tiny_checkpoint):
    path, model = tiny_checkpoint
    for where in (path, path.parent):
        loaded = load_model(where)
        assert loaded.label_map == LABELS and loaded.augmentation.val_scale == 64
        for k, v in model.state_dict().items():
            assert torch.equal(loaded.model.state_dict()[k], v)
        assert not loaded.model.training


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
        predict_images(path, [tmp_path / "nope.png"], tmp_path / "out")
    bogus = tmp_path / "bogus.pt"
    torch.save({"weights": torch.zeros(2)}, bogus)
    with pytest.raises(
        ValueError, match="bogus.pt is neither a detr-ray checkpoint nor an official"
    ):
        predict_images(bogus, [], tmp_path / "out")
    assert cli_main(["predict", "--checkpoint", str(bogus), "--out", str(tmp_path), "x.png"]) == 2


def test_evaluate_checkpoint_runs_cocoeval(tiny_checkpoint, shapes):
    path, _ = tiny_checkpoint
    metrics, summary = evaluate_checkpoint(path, shapes.val_ann, shapes.val_images)
    assert 0.0 <= metrics["AP"] <= 1.0 and "AP/circle" in metrics
    assert "Average Precision" in summary


def test_fine_tune_keeps_class_rows_by_category_id(tmp_path):
    torch.manual_seed(0)
    source_config = preset_config("detr_r18_tiny", num_classes=91)
    source = build_model(source_config)
    path = tmp_path / "official.pth"
    torch.save({"model": to_official_state_dict(source)}, path)
    target = build_model(preset_config("detr_r18_tiny", num_classes=2))
    labels = LabelMap((18, 3), ("dog", "car"))  # COCO ids 18 and 3, in this order
    initialise_from(target, path, labels, class_head="keep")
    w, b = source.class_head.weight, source.class_head.bias
    assert torch.equal(target.class_head.weight, torch.stack([w[18], w[3], w[91]]))
    assert torch.equal(target.class_head.bias, torch.stack([b[18], b[3], b[91]]))
    assert torch.equal(target.query_embed.weight, source.query_embed.weight)

    fresh = build_model(preset_config("detr_r18_tiny", num_classes=2))
    before = fresh.class_head.weight.detach().clone()
    initialise_from(fresh, path, LabelMap((500, 501), ("x", "y")), class_head="reinit")
    assert torch.equal(fresh.class_head.weight[:2], before[:2])
    assert torch.equal(fresh.class_head.weight[2], w[91])
    with pytest.raises(ValueError, match=r"no rows for category ids \[500\]"):
        initialise_from(fresh, path, LabelMap((500,), ("x",)), class_head="keep")


def test_fine_tune_from_an_incompatible_checkpoint_names_the_problem(tiny_checkpoint):
    path, _ = tiny_checkpoint
    other = build_model(preset_config("detr_r18_small", num_classes=3))
    with pytest.raises(ValueError, match="does not fit the configured model"):
        initialise_from(other, path, LABELS)


def test_fine_tune_backbone_from_a_torchvision_file(tmp_path):
    from test_backbone import _torchvision_keys
    from torchvision_fixtures import formula_state_dict

    path = tmp_path / "resnet18.pth"
    torch.save(formula_state_dict(_torchvision_keys(18)), path)
    model = build_model(preset_config("detr_r18_tiny", num_classes=3, backbone_norm="frozen"))
    assert "torchvision" in initialise_from(model, path, LABELS)
    assert torch.equal(
        model.backbone.layer3[1].conv2.weight,
        torch.load(path, weights_only=True)["layer3.1.conv2.weight"],
    )
