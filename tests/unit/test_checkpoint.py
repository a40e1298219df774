"""detr-ray's checkpoint file: writing, safe reading, models and fine-tuning from files."""

import pytest
import torch

from detr_ray.checkpoint import (
    initialise_from,
    load_checkpoint,
    load_model,
)
from detr_ray.config.model import preset_config
from detr_ray.data.labels import LabelMap
from detr_ray.errors import CheckpointError
from detr_ray.model.build import build_model
from detr_ray.model.official import to_official_state_dict

from tests.support.datasets import SHAPE_LABELS as LABELS


def test_checkpoint_round_trip_file_and_directory(tiny_checkpoint):
    path, model = tiny_checkpoint
    for where in (path, path.parent):
        loaded = load_model(where)
        assert loaded.label_map == LABELS and loaded.augmentation.val_scale == 64
        for k, v in model.state_dict().items():
            assert torch.equal(loaded.model.state_dict()[k], v)
        assert not loaded.model.training


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
    with pytest.raises(CheckpointError, match=r"no rows for category ids \[500\]"):
        initialise_from(fresh, path, LabelMap((500,), ("x",)), class_head="keep")


def test_fine_tune_to_more_or_fewer_queries_keeps_the_sources_first_ones(tmp_path):
    # A dataset with more objects per image needs more queries than the
    # checkpoint has: its queries come first, the rest are the model's own.
    torch.manual_seed(0)
    source = build_model(preset_config("detr_r18_tiny", num_classes=3, num_queries=6))
    path = tmp_path / "official.pth"
    torch.save({"model": to_official_state_dict(source)}, path)
    theirs = source.query_embed.weight.detach()
    for queries in (12, 4):
        target = build_model(preset_config("detr_r18_tiny", num_classes=3, num_queries=queries))
        own = target.query_embed.weight.detach().clone()
        initialise_from(target, path, LABELS, class_head="reinit")
        kept = min(6, queries)
        assert target.query_embed.weight.shape == (queries, theirs.shape[1])
        assert torch.equal(target.query_embed.weight[:kept], theirs[:kept])
        assert torch.equal(target.query_embed.weight[kept:], own[kept:])
        mine, source_weights = target.state_dict(), source.state_dict()
        others = [k for k in mine if not k.startswith(("query_embed.", "class_head."))]
        assert others and all(torch.equal(mine[k], source_weights[k]) for k in others)


def test_fine_tune_from_an_incompatible_checkpoint_names_the_problem(tiny_checkpoint):
    path, _ = tiny_checkpoint
    other = build_model(preset_config("detr_r18_small", num_classes=3))
    with pytest.raises(CheckpointError, match="does not fit the configured model"):
        initialise_from(other, path, LABELS)


def test_fine_tune_backbone_from_a_torchvision_file(tmp_path):
    from tests.support.torchvision_fixtures import formula_state_dict
    from tests.unit.test_backbone import _torchvision_keys

    path = tmp_path / "resnet18.pth"
    torch.save(formula_state_dict(_torchvision_keys(18)), path)
    model = build_model(preset_config("detr_r18_tiny", num_classes=3, backbone_norm="frozen"))
    assert "torchvision" in initialise_from(model, path, LABELS)
    assert torch.equal(
        model.backbone.layer3[1].conv2.weight,
        torch.load(path, weights_only=True)["layer3.1.conv2.weight"],
    )


class _NotAllowed:
    pass


def _unsafe(path):
    torch.save({"model": {}, "payload": _NotAllowed()}, path)


def _truncated(path):
    torch.save({"model": {"w": torch.zeros(1000)}}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize(
    "write, message",
    [
        (lambda p: p.write_bytes(b""), r"is empty \(0 bytes\)"),
        (_truncated, r"is truncated or damaged \(\d+ bytes, its zip directory is missing\)"),
        (lambda p: p.write_text("not a checkpoint"), "is not a PyTorch file"),
        (lambda p: p.write_bytes(b"\x80" + bytes(range(200))), "is not a PyTorch file|damaged"),
        (
            _unsafe,
            r"refused checkpoint .*evil.pth: it holds Python objects beyond tensors "
            r"\(tests.unit.test_checkpoint._NotAllowed\), and loading it could run code. "
            r"Re-save it with torch.save",
        ),
    ],
    ids=["empty", "truncated", "text", "pickle-garbage", "unsafe"],
)
def test_unreadable_checkpoints_say_what_happened(tmp_path, write, message):
    path = tmp_path / "evil.pth"
    write(path)
    with pytest.raises(CheckpointError, match=message) as error:
        load_checkpoint(path)
    assert "weights_only=False" not in str(error.value)
    assert "weights_only" not in str(error.value)


def test_a_checkpoint_of_another_kind_is_named(tmp_path):
    from tests.support.torchvision_fixtures import formula_state_dict
    from tests.unit.test_backbone import _torchvision_keys

    path = tmp_path / "resnet18.pth"
    torch.save(formula_state_dict(_torchvision_keys(18)), path)
    with pytest.raises(
        CheckpointError, match="is a torchvision ResNet state_dict .*model.init_from"
    ):
        load_model(path)
    unknown = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(2)}, unknown)
    with pytest.raises(
        CheckpointError,
        match=r"other.pt is none of the checkpoints detr-ray reads \(top-level keys "
        r"\['weights'\]\); it reads a detr-ray checkpoint .* or a Hugging Face folder",
    ):
        load_model(unknown)


def test_stored_model_config_is_read_through_the_config_loader(tmp_path, tiny_checkpoint):
    path, _ = tiny_checkpoint
    checkpoint = load_checkpoint(path)
    checkpoint["model_config"]["d_model"] = 63
    broken = tmp_path / "broken.pt"
    torch.save(checkpoint, broken)
    with pytest.raises(CheckpointError, match="model_config.d_model must be positive and even"):
        load_model(broken)
